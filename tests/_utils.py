"""Shared test helpers: the ONE tolerance table, the ONE ``assert_close``, devices, seeded data.

Tests never invent tolerances: they pass a dtype and a kind ("value" or "grad") and read the
numbers from :data:`TOLERANCES`.

Tolerance semantics (per element):
    value: |actual - expected| <= atol + rtol * |expected|
    grad:  |actual - expected| <= atol * max(1, max|expected|) + rtol * |expected|
Gradient entries are sums with cancellation (dp_i = sum_j G_ij q_j), so their absolute error
scales with the largest gradient entry rather than with the entry itself.

Low-precision kernels are compared with the reference evaluated on the *same* (already rounded)
inputs upcast to float64, i.e. with the exact answer rounded once; see :func:`reference_dtype`.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest
import torch

# ---------------------------------------------------------------------------------------------
# the tolerance table
# ---------------------------------------------------------------------------------------------

#: dtype -> kind -> (rtol, atol)
TOLERANCES: Dict[torch.dtype, Dict[str, Tuple[float, float]]] = {
    torch.float64: {"value": (1e-9, 1e-12), "grad": (1e-8, 1e-11)},
    torch.float32: {"value": (3e-5, 1e-5), "grad": (2e-4, 2e-5)},
    torch.bfloat16: {"value": (1.6e-2, 2e-3), "grad": (3e-2, 1e-2)},
    torch.float16: {"value": (2e-3, 2e-4), "grad": (1e-2, 2e-3)},
}

FLOAT_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
CPU_DTYPES = (torch.float32, torch.float64)
LOW_PRECISION = (torch.bfloat16, torch.float16)

def tolerance(dtype: torch.dtype, kind: str = "value") -> Tuple[float, float]:
    """(rtol, atol) for ``dtype`` and ``kind`` ("value" or "grad")."""
    if kind not in ("value", "grad"):
        raise ValueError(f"kind must be 'value' or 'grad', got {kind!r}")
    return TOLERANCES[dtype][kind]


def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, np.ndarray) or np.isscalar(x):
        return torch.from_numpy(np.array(x, copy=True))
    return torch.as_tensor(x)


def assert_close(actual: Any, expected: Any, *, dtype: Optional[torch.dtype] = None,
                 kind: str = "value", msg: str = "", show: int = 5) -> None:
    """Assert ``actual`` matches ``expected`` within the table's tolerance for ``dtype``.

    Integer and bool arrays must match exactly. Shapes must match. On failure the message lists
    the ``show`` worst elements: index, actual, expected, absolute and relative error.
    """
    a, e = _as_tensor(actual), _as_tensor(expected)
    assert tuple(a.shape) == tuple(e.shape), f"{msg}: shape {tuple(a.shape)} != expected {tuple(e.shape)}"
    exact = not (a.dtype.is_floating_point or e.dtype.is_floating_point)
    if exact:
        a64, e64 = a.cpu().to(torch.int64), e.cpu().to(torch.int64)
        bad = a64 != e64
        if bool(bad.any()):
            idx = bad.nonzero()[:show].tolist()
            lines = [f"  {tuple(i)}: actual {int(a64[tuple(i)])}, expected {int(e64[tuple(i)])}" for i in idx]
            raise AssertionError(f"{msg}: {int(bad.sum())} of {a64.numel()} integer elements differ\n"
                                 + "\n".join(lines))
        return
    if dtype is None:
        dtype = a.dtype if a.dtype.is_floating_point else e.dtype
    rtol, atol = tolerance(dtype, kind)
    a64, e64 = a.cpu().to(torch.float64), e.cpu().to(torch.float64)
    if a64.numel() == 0:
        return
    if not bool(torch.isfinite(a64).all()) or not bool(torch.isfinite(e64).all()):
        same_nonfinite = bool(((~torch.isfinite(a64)) == (~torch.isfinite(e64))).all())
        if not same_nonfinite:
            raise AssertionError(f"{msg}: non-finite values differ: actual has "
                                 f"{int((~torch.isfinite(a64)).sum())}, expected has "
                                 f"{int((~torch.isfinite(e64)).sum())}")
    scale = 1.0
    if kind == "grad" and e64.numel():
        scale = max(1.0, float(e64.abs().max()))
    err = (a64 - e64).abs()
    allowed = atol * scale + rtol * e64.abs()
    bad = ~(err <= allowed)
    bad &= ~((a64 == e64))  # equal infinities
    if bool(bad.any()):
        excess = torch.where(bad, err - allowed, torch.zeros_like(err)).flatten()
        worst = torch.argsort(excess, descending=True)[:show]
        lines = []
        for flat in worst.tolist():
            if not bool(bad.flatten()[flat]):
                break
            idx = tuple(int(v) for v in np.unravel_index(flat, tuple(a64.shape))) if a64.dim() else ()
            av, ev = float(a64.flatten()[flat]), float(e64.flatten()[flat])
            ab = abs(av - ev)
            rel = ab / abs(ev) if ev != 0 else math.inf
            lines.append(f"  {idx}: actual {av!r}, expected {ev!r}, abs err {ab:.3e}, rel err {rel:.3e}")
        raise AssertionError(
            f"{msg}: {int(bad.sum())} of {a64.numel()} elements exceed {kind} tolerance for {dtype} "
            f"(rtol={rtol}, atol={atol}{' x ' + format(scale, '.3g') if scale != 1.0 else ''}); "
            "worst:\n" + "\n".join(lines))


# ---------------------------------------------------------------------------------------------
# devices and backends
# ---------------------------------------------------------------------------------------------


def cuda_available() -> bool:
    return bool(torch.cuda.is_available())


def devices() -> List[str]:
    """Devices present on this machine: "cpu", plus "cuda" when torch sees a GPU."""
    return ["cpu"] + (["cuda"] if cuda_available() else [])


def kernel_device_params() -> List[Any]:
    """pytest params for the compiled backends: "cpu" (requires_extension) and "cuda"
    (requires_cuda; skipped only on machines without a GPU -- conftest fails a GPU run that
    skips it)."""
    return [pytest.param("cpu", marks=pytest.mark.requires_extension, id="cpu"),
            pytest.param("cuda", marks=pytest.mark.requires_cuda, id="cuda")]


def kernel_grid_params(dtypes_cpu: Sequence[torch.dtype] = CPU_DTYPES,
                       dtypes_cuda: Sequence[torch.dtype] = FLOAT_DTYPES) -> List[Any]:
    """(device, dtype) params: float32/float64 on the CPU kernel, all four dtypes on CUDA."""
    out = []
    for dt in dtypes_cpu:
        out.append(pytest.param("cpu", dt, marks=pytest.mark.requires_extension,
                                id=f"cpu-{dtype_id(dt)}"))
    for dt in dtypes_cuda:
        out.append(pytest.param("cuda", dt, marks=pytest.mark.requires_cuda,
                                id=f"cuda-{dtype_id(dt)}"))
    return out


def dtype_id(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


def reference_dtype(dtype: torch.dtype) -> torch.dtype:
    """The reference is always evaluated in float64 on the kernel's (rounded) inputs."""
    return torch.float64


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------


def generator(seed: int) -> torch.Generator:
    """A seeded CPU generator (data are generated on the CPU, then moved)."""
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


def np_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(int(seed))


def randn(shape: Sequence[int], *, seed: int, dtype: torch.dtype = torch.float64,
          device: str = "cpu") -> torch.Tensor:
    return torch.randn(tuple(shape), generator=generator(seed), dtype=torch.float64).to(device=device, dtype=dtype)


def unit_rows(n: int, d: int, *, seed: int, dtype: torch.dtype = torch.float64,
              device: str = "cpu") -> torch.Tensor:
    """Rows of unit L2 norm (normalised in float64, then rounded to ``dtype``)."""
    x = torch.randn(n, d, generator=generator(seed), dtype=torch.float64)
    x = torch.nn.functional.normalize(x, dim=1)
    return x.to(device=device, dtype=dtype)


def quantized_clusters(n: int, e: int, *, seed: int, dtype: torch.dtype = torch.float64,
                       device: str = "cpu", cluster_size: int = 4) -> torch.Tensor:
    """Similarity-space rows whose pairwise squared distances are exact multiples of 1/64.

    Entries are multiples of 1/8 in [-9/8, 9/8] (exact in every float dtype, bfloat16 included),
    so ``|a|^2 + |b|^2 - 2<a, b>`` is computed exactly in float32 and wider, and d^2 = k/64 never
    lies near the threshold boundary d^2 = 0.3 tan(pi/16) ~ 0.0597 (between 3/64 and 4/64). Rows
    come in clusters (a center plus at most two +-1/8 moves), so s takes the values 1, 0.934,
    0.868, 0.803 inside a cluster, and the threshold really zeroes some pairs.
    """
    g = generator(seed)
    n_clusters = max(1, (n + cluster_size - 1) // cluster_size)
    centers = torch.randint(-8, 9, (n_clusters, e), generator=g).to(torch.float64)
    assign = torch.randint(0, n_clusters, (n,), generator=g)
    rows = centers[assign].clone()
    for move in range(2):
        col = torch.randint(0, e, (n,), generator=g)
        step = torch.randint(-1, 2, (n,), generator=g).to(torch.float64)
        rows[torch.arange(n), col] = (rows[torch.arange(n), col] + step).clamp(-9, 9)
    return (rows / 8.0).to(device=device, dtype=dtype)


def make_noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """Same values, non-contiguous memory (row stride 2*cols + 1, column stride 2)."""
    if t.dim() == 0:
        return t
    if t.dim() == 1:
        buf = torch.zeros(2 * t.shape[0] + 1, dtype=t.dtype, device=t.device)
        out = buf[1::2]
        out.copy_(t)
        return out
    rows, cols = t.shape[0], t.shape[-1]
    buf = torch.zeros(rows, 2 * cols + 1, dtype=t.dtype, device=t.device)
    out = buf[:, 1::2][:, :cols] if cols else buf[:, :0]
    out.copy_(t)
    assert rows <= 1 or cols == 0 or not out.is_contiguous()
    return out


def with_layout(t: Optional[torch.Tensor], contiguous: bool) -> Optional[torch.Tensor]:
    if t is None or contiguous:
        return t
    return make_noncontiguous(t)


def eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps)


def retrieval_keys64(queries: torch.Tensor, candidates: torch.Tensor, metric: str) -> torch.Tensor:
    """Keys (larger is better) in float64 from exactly the arrays the kernel receives (the ops
    normalise rows in the working dtype before the cosine kernel)."""
    q, c = queries.detach().cpu(), candidates.detach().cpu()
    if metric == "cosine":
        def norm(t):
            work = t if t.dtype == torch.float64 else t.float()
            return torch.nn.functional.normalize(work, dim=1).to(t.dtype)
        q, c = norm(q), norm(c)
    q64, c64 = q.double(), c.double()
    if metric in ("cosine", "dot"):
        return q64 @ c64.T
    sq = (q64 * q64).sum(1, keepdim=True) + (c64 * c64).sum(1, keepdim=True).T - 2 * q64 @ c64.T
    return -sq.clamp_min(0)


def kernel_rows(x: torch.Tensor, metric: str) -> torch.Tensor:
    """The rows as the kernel receives them (cosine: normalised in the working precision)."""
    x = x.detach().cpu()
    if metric == "cosine":
        work = x if x.dtype == torch.float64 else x.float()
        return torch.nn.functional.normalize(work, dim=1).to(x.dtype)
    return x


def retrieval_margin(queries: torch.Tensor, candidates: torch.Tensor, metric: str) -> float:
    """Distance between keys below which float rounding may reorder them (kernel vs reference)."""
    dt = queries.dtype if queries.dtype in (torch.float32, torch.float64) else torch.float32
    d = queries.shape[1]
    qn = float(queries.detach().double().norm(dim=1).max()) if queries.shape[0] else 1.0
    cn = float(candidates.detach().double().norm(dim=1).max()) if candidates.shape[0] else 1.0
    scale = {"cosine": 1.0, "dot": qn * cn, "arctan_l2": qn * qn + cn * cn + 2 * qn * cn}[metric]
    return 8.0 * math.sqrt(d) * eps(dt) * scale


def separated_retrieval_case(nq: int, n: int, d: int, *, dtype: torch.dtype, metric: str,
                             seed: int, device: str = "cpu", max_rounds: int = 50):
    """(queries [nq, d], candidates [n, d], targets [nq]) with no candidate whose key lies within
    rounding distance of its query's target key (exact ties excepted), so kernel and reference
    ranks must agree exactly. Offending candidate rows are redrawn until none is left."""
    g = generator(seed)
    q = torch.randn(nq, d, generator=g, dtype=torch.float64).to(dtype)
    c = torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype)
    t = torch.randint(0, n, (nq,), generator=g)
    for _ in range(max_rounds):
        if nq == 0:
            break
        keys = retrieval_keys64(q, c, metric)
        m = retrieval_margin(q, c, metric)
        tk = keys.gather(1, t.unsqueeze(1))
        diff = (keys - tk).abs()
        # an exact float64 tie is only safe between rows the kernel sees as identical (the
        # same arithmetic); distinct rows with equal exact keys may round differently
        seen = kernel_rows(c, metric)
        same_row = (seen.unsqueeze(0) == seen[t].unsqueeze(1)).all(-1)  # [nq, n]
        close = (diff < m) & ~same_row
        cols = close.any(0).nonzero().squeeze(1)
        if cols.numel() == 0:
            break
        c[cols] = torch.randn(cols.numel(), d, generator=g, dtype=torch.float64).to(dtype)
    else:
        raise RuntimeError("could not separate retrieval keys")
    return q.to(device), c.to(device), t.to(device)


def topk_ambiguous(keys64: torch.Tensor, k: int, margin: float) -> torch.Tensor:
    """[Q, k] bool: position whose key is within ``margin`` of another candidate's key, so that
    rounding may legitimately swap it (the reference itself works in the input precision)."""
    srt = torch.sort(keys64, dim=1, descending=True).values
    ext = srt[:, : k + 1]
    gap_prev = torch.full_like(ext, math.inf)
    gap_prev[:, 1:] = (ext[:, :-1] - ext[:, 1:]).abs()
    gap_next = torch.full_like(ext, math.inf)
    gap_next[:, :-1] = (ext[:, :-1] - ext[:, 1:]).abs()
    amb = ((gap_prev < margin) & (gap_prev != 0)) | ((gap_next < margin) & (gap_next != 0))
    return amb[:, :k]
