"""The benchmarked ops: data, providers and correctness checks, for the CPU and a GPU alike.

Each spec (:data:`S2L`, :data:`RANKS`, :data:`TOPK`, :data:`ARCTAN`) has

* ``build(params, device, dtype, threads, only=None, variants=False) -> (Case, [Provider])``: the
  case's inputs (generated, seeded) and one closure per provider. Providers: ``naive`` (the
  reference of :mod:`molphenix.ops.reference`, with autograd where the op has a backward),
  ``chunked`` (torch in row blocks), ``ours`` (``backend=device``), ``faiss`` (CPU, float32) and,
  with ``variants=True`` on a GPU, ``ours-<mode>`` (kernel knobs);
* ``check(device, dtype, threads, only)``: every selected provider against the float64 reference
  on small cases; yields one line per provider and raises :class:`CheckFailed`. Where a provider
  may legitimately order near-equal scores differently, the check computes the float64 scores and
  verifies that every difference lies within a stated score tolerance of a tie;
* ``small(params)``: a small instance of the case (the memory process warms up on it);
* ``memory_estimate(params, provider, dtype)``: bytes a provider needs when that is large (the
  harness skips it, with a row saying so, when the machine lacks them).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

import molphenix.ops as ops
from molphenix.benchmark import Case, CheckFailed, Provider
from molphenix.ops import reference
from molphenix.ops import k_for_fraction

__all__ = ["S2L", "RANKS", "TOPK", "ARCTAN", "SPECS", "torch_dtype"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
           "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype: expected one of {sorted(_DTYPES)}, got {name!r}") from None


def _esize(dtype: str) -> int:
    return torch.empty((), dtype=torch_dtype(dtype)).element_size()


def _low(dtype: str) -> bool:
    return dtype in ("bfloat16", "float16")


def _want(name: str, only: Optional[Sequence[str]]) -> bool:
    return only is None or name in only


def _ours_variants(device: str, dtype: str, op: str) -> List[Tuple[str, Dict[str, str], Dict[str, Any], str]]:
    """(name, env, kwargs, notes) of the GPU kernel variants."""
    if not device.startswith("cuda") or not _low(dtype):
        return []
    out = [("ours-simple", {"MOLPHENIX_CUDA_MAINLOOP": "simple"}, {}, "simple 64x64 WMMA mainloop")]
    if op == "s2l_loss":
        out += [("ours-atomic", {}, {"deterministic": False}, "float atomics for dQ (not bitwise reproducible)"),
                ("ours-1blk", {"MOLPHENIX_S2L_BLOCKS_PER_SM": "1"}, {}, "fast mainloop, 1 block/SM"),
                ("ours-uSIMT", {"MOLPHENIX_S2L_U_SIMT": "1"}, {}, "u.v^T on fp32 SIMT instead of 3xTF32")]
    return out


# ------------------------------------------------------------------------------------------------
# shared data

def _window_sigma(E: int) -> float:
    """Row noise whose pairwise squared distances sit around the arctan window (c tan(pi/16))."""
    return math.sqrt(0.3 * math.tan(math.pi / 16) / 2 / (2 * E))


def phenomic_rows(n: int, E: int, g: torch.Generator) -> torch.Tensor:
    """float64 rows in the input similarity space: control-like rows near the origin (pairwise
    squared distances around the arctan window) and a third of 'active' rows far away."""
    x = _window_sigma(E) * torch.randn(n, E, generator=g, dtype=torch.float64)
    active = torch.rand(n, generator=g) < 1 / 3
    x[active] += 0.5 * torch.randn(int(active.sum()), E, generator=g, dtype=torch.float64) / math.sqrt(E)
    return x


def retrieval_data(Q: int, N: int, D: int, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit queries and candidates, candidate i a noisy copy of query i (the target), float64."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(Q, D, generator=g, dtype=torch.float64)
    c = torch.randn(N, D, generator=g, dtype=torch.float64)
    m = min(Q, N)
    c[:m] = q[:m] + 1.5 * c[:m]
    q = q / q.norm(dim=1, keepdim=True)
    c = c / c.norm(dim=1, keepdim=True)
    return q, c, torch.arange(Q, dtype=torch.int64) % N


def _to(x: torch.Tensor, device: str, dtype: str) -> torch.Tensor:
    return x.to(torch_dtype(dtype)).to(device).contiguous()


def _score_tol(dtype: str, scale: float, provider: str) -> float:
    """Score tolerance within which two candidates count as tied for ``provider``: float32
    accumulation error for kernels and float32 torch; plus the rounding of the scores themselves
    where a torch provider keeps them in a 16-bit dtype."""
    tol = 2e-5 * scale
    if _low(dtype) and provider in ("chunked",):
        tol += (2.0 ** -7 if dtype == "bfloat16" else 2.0 ** -10) * scale
    elif _low(dtype):
        tol += 1e-4 * scale
    return tol


# ------------------------------------------------------------------------------------------------
# s2l_loss

S2L_KW = dict(c=0.3, threshold=0.75, gamma=1.75, delta=0.75)
S2L_SCALE, S2L_BIAS = 10.0, -10.0


def chunked_s2l(p: torch.Tensor, q: torch.Tensor, u: torch.Tensor, scale: float, bias: float,
                chunk: int = 1024, c: float = 0.3, threshold: float = 0.75, gamma: float = 1.75,
                delta: float = 0.75):
    """Loss and gradients (p, q, scale, bias) by row chunks, O(chunk * B) memory: per chunk z, the
    soft labels, the loss and G = dl/dz / B, then dp_chunk = scale G q and dq += scale G^T p_chunk
    (what autograd would do, without keeping every chunk's graph). Scores and labels in float32."""
    B1 = p.shape[0]
    dev = p.device
    uf = u.float()
    sq_u = (uf * uf).sum(1)
    dq = torch.zeros(q.shape, dtype=torch.float32, device=dev)
    dp = torch.empty(p.shape, dtype=torch.float32, device=dev)
    loss = torch.zeros((), dtype=torch.float64, device=dev)
    dscale = torch.zeros((), dtype=torch.float64, device=dev)
    dbias = torch.zeros((), dtype=torch.float64, device=dev)
    for i0 in range(0, B1, chunk):
        i1 = min(B1, i0 + chunk)
        dots = (p[i0:i1] @ q.T).float()
        z = dots * scale + bias
        d2 = (sq_u[i0:i1, None] + sq_u[None, :] - 2.0 * (uf[i0:i1] @ uf.T)).clamp_min_(0.0)
        s = 1.0 - (4.0 / math.pi) * torch.atan(d2.div_(c))
        s = torch.where(s >= threshold, s, torch.zeros_like(s))
        rows = torch.arange(i0, i1, device=dev)
        s[rows - i0, rows] = 1.0
        a = gamma + (1.0 - delta) * s  # w+ + w-
        loss += (a * torch.nn.functional.softplus(z) - s * z).sum(dtype=torch.float64)
        G = (a * torch.sigmoid(z) - s) / B1
        dscale += (G * dots).sum(dtype=torch.float64)
        dbias += G.sum(dtype=torch.float64)
        Gc = G.to(p.dtype)
        dp[i0:i1] = scale * (Gc @ q).float()
        if p.dtype == torch.float32:
            dq.addmm_(Gc.T, p[i0:i1], alpha=scale)
        else:
            dq.add_((Gc.T @ p[i0:i1]).float(), alpha=scale)
    return loss / B1, dp.to(p.dtype), dq.to(q.dtype), dscale, dbias


class _S2LSpec:
    op = "s2l_loss"
    ref = "molphenix.benchmark.cases:S2L"

    @staticmethod
    def data(B: int, D: int, E: int, seed: int = 0):
        """float64 p, q (unit rows; q_i close to p_i) and u (:func:`phenomic_rows`)."""
        g = torch.Generator().manual_seed(seed)
        p = torch.randn(B, D, generator=g, dtype=torch.float64)
        q = p + torch.randn(B, D, generator=g, dtype=torch.float64)
        p = p / p.norm(dim=1, keepdim=True)
        q = q / q.norm(dim=1, keepdim=True)
        return p, q, phenomic_rows(B, E, g)

    def small(self, params):
        return dict(params, B=min(params["B"], 256))

    def memory_estimate(self, params, provider, dtype):
        B = params["B"]
        if provider == "naive":  # about eight B x B float32 temporaries under autograd
            return 32 * B * B
        return None

    def _providers(self, p, q, u, device, dtype, threads, only, variants) -> List[Provider]:
        sdt = torch.float64 if dtype == "float64" else torch.float32

        def autograd_run(fn):
            pp = p.detach().requires_grad_()
            qq = q.detach().requires_grad_()
            sc = torch.tensor(S2L_SCALE, dtype=sdt, device=device, requires_grad=True)
            bi = torch.tensor(S2L_BIAS, dtype=sdt, device=device, requires_grad=True)
            loss = fn(pp, qq, sc, bi)
            loss.backward()
            return loss.detach(), pp.grad, qq.grad, sc.grad, bi.grad

        backend = "cuda" if device.startswith("cuda") else "cpu"

        def ours(**kw):
            return lambda: autograd_run(lambda pp, qq, sc, bi: ops.s2l_loss(
                pp, qq, sc, bi, u, backend=backend, num_threads=threads, **S2L_KW, **kw))

        chunk = 4096 if device.startswith("cuda") else 1024
        out = []
        if _want("naive", only):
            out.append(Provider("naive", lambda: autograd_run(
                lambda pp, qq, sc, bi: reference.s2l_loss(pp, qq, sc, bi, u, **S2L_KW)),
                notes="reference: materialises B x B, autograd"))
        if _want("chunked", only):
            out.append(Provider("chunked", lambda: chunked_s2l(p, q, u, S2L_SCALE, S2L_BIAS, chunk=chunk, **S2L_KW),
                                notes=f"torch, row chunks of {chunk}, gradients by hand"))
        if _want("ours", only):
            out.append(Provider("ours", ours(), notes="fused kernel, deterministic, autograd wrapper"))
        for name, env, kw, notes in _ours_variants(device, dtype, self.op):
            if (variants or only is not None) and _want(name, only):
                out.append(Provider(name, ours(**kw), env=env, notes=notes))
        return out

    def build(self, params, device="cpu", dtype="float32", threads=1, only=None, variants=False):
        B, D, E = params["B"], params["D"], params["E"]
        p, q, u = self.data(B, D, E, seed=params.get("seed", 0))
        p, q = _to(p, device, dtype), _to(q, device, dtype)
        u = _to(u, device, "float32" if _low(dtype) else dtype)
        case = Case(op=self.op, sizes={"B": B, "D": D, "E": E}, dtype=dtype,
                    flops=2.0 * B * B * (3 * D + E), work=float(B) * B, unit="pairs/s",
                    outputs_bytes=2 * B * D * _esize(dtype))
        return case, self._providers(p, q, u, device, dtype, threads, only, variants)

    def check(self, device="cpu", dtype="float32", threads=1, only=None) -> Iterator[str]:
        shapes = [(333, 37, 19)] + ([(777, 256, 384)] if device.startswith("cuda") else [])
        tol = 3e-2 if _low(dtype) else 1e-4
        for B, D, E in shapes:
            p, q, u = self.data(B, D, E, seed=1)
            p, q = _to(p, device, dtype), _to(q, device, dtype)
            u = _to(u, device, "float32" if _low(dtype) else dtype)
            want = [t.double() for t in self._providers(p.double(), q.double(), u.double(), device,
                                                        "float64", threads, ["naive"], False)[0].fn()]
            for prov in self._providers(p, q, u, device, dtype, threads, only, True):
                from molphenix.benchmark import _Env

                with _Env(prov.env):
                    got = [t.double() for t in prov.fn()]
                errs = {}
                for what, g_, w in zip(("loss", "grad_p", "grad_q", "grad_scale", "grad_bias"), got, want):
                    errs[what] = float((g_ - w).abs().max() / w.abs().max().clamp_min(1e-12))
                worst = max(errs, key=errs.get)
                if not errs[worst] < tol:
                    raise CheckFailed(f"s2l_loss {prov.name} (B={B} D={D} E={E} {dtype}): {worst} relative "
                                      f"error {errs[worst]:.2e} vs the float64 reference (tolerance {tol:g})")
                yield (f"{prov.name} B={B} D={D} E={E} {dtype}: loss and gradients within {errs[worst]:.1e} "
                       f"(relative to max |ref|) of the float64 reference (tolerance {tol:g})")


S2L = _S2LSpec()


# ------------------------------------------------------------------------------------------------
# retrieval: ranks and top-k

def chunked_ranks(q: torch.Tensor, c: torch.Tensor, t: torch.Tensor, block: int = 2048) -> torch.Tensor:
    """torch per block of queries: S = q_blk @ c.T, rank = #(S >= S[i, t_i]) - 1 (the target's score
    read from the same product, so it ties with itself exactly)."""
    out = torch.empty(q.shape[0], dtype=torch.int64, device=q.device)
    ct = c.T
    for i0 in range(0, q.shape[0], block):
        s = q[i0:i0 + block] @ ct
        tgt = s.gather(1, t[i0:i0 + block, None])
        out[i0:i0 + block] = (s >= tgt).sum(1) - 1
    return out


def chunked_topk(q: torch.Tensor, c: torch.Tensor, k: int, block: int = 2048):
    """torch per block of queries: torch.topk(q_blk @ c.T, k) (ties in no defined order)."""
    scores = torch.empty(q.shape[0], k, dtype=q.dtype, device=q.device)
    idx = torch.empty(q.shape[0], k, dtype=torch.int64, device=q.device)
    ct = c.T
    for i0 in range(0, q.shape[0], block):
        s, i = torch.topk(q[i0:i0 + block] @ ct, k, dim=1, largest=True, sorted=True)
        scores[i0:i0 + block], idx[i0:i0 + block] = s, i
    return scores, idx


def _faiss_index(c: torch.Tensor):
    import faiss

    index = faiss.IndexFlatIP(c.shape[1])
    index.add(c.numpy())
    return index


def faiss_ranks(q: torch.Tensor, c: torch.Tensor, t: torch.Tensor, k: int) -> torch.Tensor:
    """faiss IndexFlatIP top-k search (index built inside the call), then the target's position in
    the list; k when it is not in the list (faiss gives no rank beyond k: censored)."""
    import numpy as np

    _, idx = _faiss_index(c).search(q.numpy(), k)
    hit = idx == t.numpy()[:, None]
    return torch.from_numpy(np.where(hit.any(1), hit.argmax(1), k).astype(np.int64))


def faiss_topk(q: torch.Tensor, c: torch.Tensor, k: int):
    s, i = _faiss_index(c).search(q.numpy(), k)
    return torch.from_numpy(s), torch.from_numpy(i)


def _faiss_ok(device: str, dtype: str) -> bool:
    if device.startswith("cuda") or dtype != "float32":
        return False
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def verify_ranks(got: torch.Tensor, q: torch.Tensor, c: torch.Tensor, t: torch.Tensor, tol: float,
                 censor_k: Optional[int] = None) -> Tuple[int, int, str]:
    """Ranks that differ from the float64 recount must differ only through near-ties: with
    S = float64 scores of the inputs as given, rank_i must lie in
    [#(S_ij > S_it + tol), #(S_ij >= S_it - tol) - 1]; a censored rank (``censor_k``) needs the
    upper end >= k. Returns (number differing, number out of bounds, a description)."""
    S = q.double() @ c.double().T
    st = S.gather(1, t[:, None])
    exact = (S >= st).sum(1) - 1
    lo = (S > st + tol).sum(1)
    hi = (S >= st - tol).sum(1) - 1
    got = got.to(exact.device)
    if censor_k is None:
        ok = (got >= lo) & (got <= hi)
        differ = got != exact
    else:
        cens = got >= censor_k
        ok = torch.where(cens, hi >= censor_k, (got >= lo) & (got <= hi))
        differ = torch.where(cens, exact < censor_k, got != exact)
    nd, nbad = int(differ.sum()), int((~ok).sum())
    gap = ""
    if nd:
        # the score gap that explains each differing rank: |S_ij - S_it| of the nearest competitor
        d = (S - st).abs()
        d[torch.arange(len(t)), t] = float("inf")
        gap = f"; largest nearest-competitor gap among them {float(d[differ].min(1).values.max()):.2e}"
    return nd, nbad, f"{nd} of {len(t)} ranks differ from the float64 recount{gap}"


def verify_topk(gs: torch.Tensor, gi: torch.Tensor, q: torch.Tensor, c: torch.Tensor, k: int,
                tol: float) -> Tuple[int, str]:
    """A top-k listing is right up to near-ties when every listed index is distinct, scores at
    least the float64 k-th best score minus ``tol``, carries its float64 score within ``tol``, and
    the list is non-increasing within ``tol``. Returns (violations, a description)."""
    S = q.double() @ c.double().T
    gi = gi.to(S.device)
    kth = S.topk(k, dim=1).values[:, -1:]
    s_at = S.gather(1, gi)
    bad = torch.zeros(gi.shape[0], dtype=torch.bool, device=S.device)
    bad |= (gi.sort(1).values.diff(dim=1) == 0).any(1)
    bad |= (s_at < kth - tol).any(1)
    bad |= ((gs.to(S.device).double() - s_at).abs() > tol).any(1)
    bad |= (s_at[:, :-1] < s_at[:, 1:] - tol).any(1)
    want = S.topk(k, dim=1).indices
    same_sets = (gi.sort(1).values == want.sort(1).values).all(1)
    return int(bad.sum()), (f"{int((~same_sets).sum())} of {gi.shape[0]} index sets differ from the "
                            f"float64 top-k, all by near-ties" if not bad.any() else
                            f"{int(bad.sum())} queries violate the near-tie bounds")


class _RetrievalSpec:
    def small(self, params):
        out = dict(params, Q=min(params["Q"], 256), N=min(params["N"], 512))
        if "k" in params:
            out["k"] = min(params["k"], out["N"])
        return out

    def memory_estimate(self, params, provider, dtype):
        if provider == "naive":  # Q x N float32 scores plus a same-size temporary
            return 12 * params["Q"] * params["N"]
        return None

    def _inputs(self, params, device, dtype, seed=0):
        q, c, t = retrieval_data(params["Q"], params["N"], params["D"], seed=seed)
        return _to(q, device, dtype), _to(c, device, dtype), t.to(device)


class _RanksSpec(_RetrievalSpec):
    op = "retrieval_ranks"
    ref = "molphenix.benchmark.cases:RANKS"

    def _providers(self, q, c, t, device, dtype, threads, only, variants, k) -> List[Provider]:
        backend = "cuda" if device.startswith("cuda") else "cpu"
        block = 4096 if device.startswith("cuda") else 2048
        out = []
        if _want("naive", only):
            out.append(Provider("naive", lambda: reference.retrieval_ranks(q, c, t, metric="dot"),
                                notes="reference: materialises Q x N"))
        if _want("chunked", only):
            out.append(Provider("chunked", lambda: chunked_ranks(q, c, t, block),
                                notes=f"torch matmul + compare, blocks of {block} queries"))
        if _want("ours", only):
            out.append(Provider("ours", lambda: ops.retrieval_ranks(q, c, t, metric="dot", backend=backend,
                                                                    num_threads=threads),
                                notes="streamed GEMM tiles + fused compare-and-count"))
        for name, env, _kw, notes in _ours_variants(device, dtype, self.op):
            if (variants or only is not None) and _want(name, only):
                out.append(Provider(name, lambda: ops.retrieval_ranks(q, c, t, metric="dot", backend=backend),
                                    env=env, notes=notes))
        if _want("faiss", only) and _faiss_ok(device, dtype):
            out.append(Provider("faiss", lambda: faiss_ranks(q, c, t, k),
                                notes=f"IndexFlatIP built + searched with k={k} (5% of N); ranks >= k censored"))
        return out

    def build(self, params, device="cpu", dtype="float32", threads=1, only=None, variants=False):
        Q, N, D = params["Q"], params["N"], params["D"]
        q, c, t = self._inputs(params, device, dtype, params.get("seed", 0))
        k = k_for_fraction(0.05, N)
        case = Case(op=self.op, sizes={"Q": Q, "N": N, "D": D}, dtype=dtype, flops=2.0 * Q * N * D,
                    work=float(Q), unit="queries/s", outputs_bytes=8 * Q)
        return case, self._providers(q, c, t, device, dtype, threads, only, variants, k)

    def check(self, device="cpu", dtype="float32", threads=1, only=None) -> Iterator[str]:
        params = {"Q": 700, "N": 1300, "D": 64 if _low(dtype) else 67}
        q, c, t = self._inputs(params, device, dtype, seed=1)
        k = k_for_fraction(0.05, params["N"])
        want = reference.retrieval_ranks(q, c, t, metric="dot")
        from molphenix.benchmark import _Env

        for prov in self._providers(q, c, t, device, dtype, threads, only, True, k):
            with _Env(prov.env):
                got = prov.fn().to(want.device)
            if prov.name == "ours" and not _low(dtype):
                # the kernel's guarantee: ranks of its computed float32 scores equal the reference's
                if not torch.equal(got, want):
                    raise CheckFailed(f"retrieval_ranks ours: {int((got != want).sum())} of {len(want)} ranks "
                                      "differ from the reference")
                yield f"ours {dtype}: ranks identical to the reference"
                continue
            tol = _score_tol(dtype, 1.0, prov.name)
            nd, nbad, desc = verify_ranks(got, q, c, t, tol, censor_k=k if prov.name == "faiss" else None)
            if nbad:
                raise CheckFailed(f"retrieval_ranks {prov.name} ({dtype}): {nbad} ranks are not explained by "
                                  f"near-ties within {tol:.1e} ({desc})")
            yield f"{prov.name} {dtype}: {desc}; all within near-ties (score gap <= {tol:.1e})"


class _TopkSpec(_RetrievalSpec):
    op = "topk_retrieve"
    ref = "molphenix.benchmark.cases:TOPK"

    def _providers(self, q, c, k, device, dtype, threads, only, variants) -> List[Provider]:
        backend = "cuda" if device.startswith("cuda") else "cpu"
        block = 1024 if device.startswith("cuda") else 2048
        out = []
        if _want("naive", only):
            out.append(Provider("naive", lambda: reference.topk_retrieve(q, c, k, metric="dot"),
                                notes="reference: materialises Q x N, stable sort"))
        if _want("chunked", only):
            out.append(Provider("chunked", lambda: chunked_topk(q, c, k, block),
                                notes=f"torch matmul + torch.topk, blocks of {block} queries (ties unordered)"))
        if _want("ours", only):
            out.append(Provider("ours", lambda: ops.topk_retrieve(q, c, k, metric="dot", backend=backend,
                                                                  num_threads=threads),
                                notes="exact, ties by index"))
        for name, env, _kw, notes in _ours_variants(device, dtype, self.op):
            if (variants or only is not None) and _want(name, only):
                out.append(Provider(name, lambda: ops.topk_retrieve(q, c, k, metric="dot", backend=backend),
                                    env=env, notes=notes))
        if _want("faiss", only) and _faiss_ok(device, dtype):
            out.append(Provider("faiss", lambda: faiss_topk(q, c, k),
                                notes="IndexFlatIP built + searched (ties unordered)"))
        return out

    def build(self, params, device="cpu", dtype="float32", threads=1, only=None, variants=False):
        Q, N, D = params["Q"], params["N"], params["D"]
        k = params.get("k") or k_for_fraction(params.get("fraction", 0.05), N)
        q, c, _ = self._inputs(params, device, dtype, params.get("seed", 0))
        case = Case(op=self.op, sizes={"Q": Q, "N": N, "D": D, "k": k}, dtype=dtype, flops=2.0 * Q * N * D,
                    work=float(Q), unit="queries/s", outputs_bytes=Q * k * (4 + 8))
        return case, self._providers(q, c, k, device, dtype, threads, only, variants)

    def check(self, device="cpu", dtype="float32", threads=1, only=None) -> Iterator[str]:
        params = {"Q": 300, "N": 1700, "D": 64 if _low(dtype) else 67}
        k = 85
        q, c, _ = self._inputs(params, device, dtype, seed=1)
        ws, wi = reference.topk_retrieve(q, c, k, metric="dot")
        from molphenix.benchmark import _Env

        for prov in self._providers(q, c, k, device, dtype, threads, only, True):
            with _Env(prov.env):
                gs, gi = prov.fn()
            if prov.name == "ours" and not _low(dtype):
                if not (torch.equal(gi.to(wi.device), wi) and torch.equal(gs.to(ws.device), ws)):
                    raise CheckFailed(f"topk_retrieve ours: {int((gi.to(wi.device) != wi).sum())} of {wi.numel()} "
                                      "indices (or scores) differ from the reference")
                yield f"ours {dtype}: indices and scores identical to the reference"
                continue
            tol = _score_tol(dtype, 1.0, prov.name)
            nbad, desc = verify_topk(gs, gi, q, c, k, tol)
            if nbad:
                raise CheckFailed(f"topk_retrieve {prov.name} ({dtype}): {desc} (tolerance {tol:.1e})")
            yield f"{prov.name} {dtype}: {desc} (score gap <= {tol:.1e})"


RANKS = _RanksSpec()
TOPK = _TopkSpec()


# ------------------------------------------------------------------------------------------------
# arctan_l2_similarity

class _ArctanSpec:
    op = "arctan_l2_similarity"
    ref = "molphenix.benchmark.cases:ARCTAN"

    def small(self, params):
        return dict(params, N=min(params["N"], 256), M=min(params["M"], 256))

    def memory_estimate(self, params, provider, dtype):
        if provider == "naive":
            return 24 * params["N"] * params["M"]
        return None

    def _inputs(self, N, M, E, device, dtype, seed=0):
        g = torch.Generator().manual_seed(seed)
        return _to(phenomic_rows(N, E, g), device, dtype), _to(phenomic_rows(M, E, g), device, dtype)

    def _providers(self, a, b, threshold, backward, device, dtype, threads, only) -> List[Provider]:
        gout = torch.ones(a.shape[0], b.shape[0], dtype=a.dtype, device=a.device) if backward else None
        backend = "cuda" if device.startswith("cuda") else "cpu"

        def run(fn):
            if not backward:
                return fn(a, b)
            aa, bb = a.detach().requires_grad_(), b.detach().requires_grad_()
            out = fn(aa, bb)
            out.backward(gout)
            return out.detach(), aa.grad, bb.grad

        out = []
        if _want("naive", only):
            out.append(Provider("naive", lambda: run(lambda x, y: reference.arctan_l2_similarity(x, y, threshold=threshold)),
                                notes="reference" + (" + autograd" if backward else "")))
        if _want("ours", only):
            out.append(Provider("ours", lambda: run(lambda x, y: ops.arctan_l2_similarity(
                x, y, threshold=threshold, backend=backend, num_threads=threads)),
                notes="tiled GEMM + fused epilogue" + ("; backward recomputes tiles" if backward else "")))
        return out

    def build(self, params, device="cpu", dtype="float32", threads=1, only=None, variants=False):
        N, M, E = params["N"], params["M"], params["E"]
        thr, backward = params.get("threshold"), params.get("pass", "fwd") == "fwd+bwd"
        a, b = self._inputs(N, M, E, device, dtype, params.get("seed", 0))
        es = _esize(dtype)
        case = Case(op=self.op, sizes={"N": N, "M": M, "E": E, "threshold": thr,
                                       "pass": "fwd+bwd" if backward else "fwd"},
                    dtype=dtype, flops=(6.0 if backward else 2.0) * N * M * E, work=float(N) * M, unit="pairs/s",
                    outputs_bytes=N * M * es + ((N + M) * E * es if backward else 0))
        return case, self._providers(a, b, thr, backward, device, dtype, threads, only)

    def check(self, device="cpu", dtype="float32", threads=1, only=None) -> Iterator[str]:
        tol = 3e-2 if _low(dtype) else 1e-4
        a, b = self._inputs(301, 77, 19 if not _low(dtype) else 64, device, dtype, seed=1)
        for thr in (None, 0.75):
            want = self._providers(a.double(), b.double(), thr, True, device, "float64", threads, ["naive"])[0].fn()
            for prov in self._providers(a, b, thr, True, device, dtype, threads, only):
                if prov.name == "naive":
                    continue
                got = prov.fn()
                # entries whose reference similarity is within the dtype's resolution of the
                # threshold may legitimately land on the other side of it (forward only)
                near = torch.zeros_like(want[0], dtype=torch.bool)
                if thr is not None:
                    near = (want[0] - thr).abs() < (2e-2 if _low(dtype) else 1e-6)
                errs = {}
                for what, g_, w in zip(("out", "grad_a", "grad_b"), got, want):
                    d = (g_.double() - w).abs()
                    if what == "out":
                        d = d.masked_fill(near, 0.0)
                    elif near.any():
                        continue  # a flipped entry changes whole gradient rows: checked at thr=None
                    errs[what] = float(d.max() / w.abs().max().clamp_min(1e-12))
                worst = max(errs, key=errs.get)
                if not errs[worst] < tol:
                    raise CheckFailed(f"arctan_l2_similarity {prov.name} (threshold={thr}, {dtype}): {worst} "
                                      f"relative error {errs[worst]:.2e} (tolerance {tol:g})")
                yield (f"{prov.name} threshold={thr} {dtype}: fwd+bwd within {errs[worst]:.1e} of the float64 "
                       f"reference ({int(near.sum())} entries within the threshold's resolution excluded)")


ARCTAN = _ArctanSpec()

SPECS = {"s2l_loss": S2L, "retrieval_ranks": RANKS, "topk_retrieve": TOPK, "arctan_l2_similarity": ARCTAN}
