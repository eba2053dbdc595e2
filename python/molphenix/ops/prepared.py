"""The kernels for inputs that are already validated: molphenix's internal entry point.

The S2L / SigLIP losses (:func:`s2l_loss`, :func:`siglip_loss`): the public ops check their
inputs on every call, and on a GPU those checks read values on the host (a finiteness screen of
``p``, ``q`` and ``u``, the value of ``scale`` and ``bias``): a device synchronisation each. A
training step that checks its embeddings itself (deferred, on the device) calls the versions here,
which run the same kernel on the same arguments -- the loss and the gradients are bit for bit
those of the public ops -- without the checks.

The retrieval kernels:

The public ops (:func:`molphenix.ops.topk_retrieve`, :func:`molphenix.ops.retrieval_ranks`)
check every argument on every call: shapes, dtypes, devices, a finiteness pass over the
candidates and, for cosine, a norm pass and a normalised copy. A layer that owns its candidates
(:class:`molphenix.retrieval.Index`, :class:`molphenix.distributed.ShardedIndex`) validates them
once, when they are built or written, and then calls the functions here, which run the same
kernels (so the results are bit for bit those of the public ops) without those passes. On the CPU
they can also read the candidates from a :class:`PackedCandidates`: packed once into the kernels'
panel layout instead of on every call.

Nothing below checks its inputs beyond what the extension checks itself. The caller guarantees:
2-D floating torch tensors, queries and candidates of one dtype, width and device, finite values,
rows already unit-normalised (with :func:`normalize_rows`) where cosine is meant -- call with
``metric="dot"`` then --, ``1 <= k <= N``, targets in ``[-1, N)``.

The validation helpers the public ops use (same error messages) are exported here too, so that
those layers check *queries* exactly as the ops do.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional, Tuple

import torch

from molphenix import _ext
from molphenix.ops import _reference
from molphenix.ops import retrieval as _retrieval
from molphenix.ops.s2l_loss import _loss, _siglip, _trusted
from molphenix.ops._common import (  # noqa: F401 - re-exported: the ops' own checks
    METRICS,
    array_kind,
    check_finite,
    check_float_matrix,
    check_int,
    check_metric,
    check_same_dtype,
    dtype_name,
    fraction_to_k,
    from_torch,
    resolve_backend,
    resolve_threads,
    result_kind,
    to_torch,
)

__all__ = [
    "METRICS",
    "PackedCandidates",
    "array_kind",
    "check_finite",
    "check_float_matrix",
    "check_int",
    "check_metric",
    "check_same_dtype",
    "check_zero_norm",
    "dtype_name",
    "fraction_to_k",
    "from_torch",
    "normalize_rows",
    "ranks",
    "resolve_backend",
    "resolve_threads",
    "result_kind",
    "s2l_loss",
    "scores_from_keys",
    "siglip_loss",
    "to_torch",
    "topk",
    "topk_keys",
]


def normalize_rows(t: torch.Tensor) -> torch.Tensor:
    """Unit-normalise rows exactly as the ops do for cosine (float32 work, float64 for float64,
    rounded back to the input dtype). Rows normalised here and searched with ``metric="dot"``
    give the ops' cosine results bit for bit."""
    return _retrieval._normalize(t)


def check_zero_norm(t: torch.Tensor, name: str) -> None:
    """ValueError naming ``name`` and the first row whose norm is zero (cosine is undefined)."""
    work = t if t.dtype in (torch.float32, torch.float64) else t.float()
    zero = (torch.linalg.vector_norm(work, dim=1) == 0).nonzero()
    if zero.numel():
        raise ValueError(f"{name}: row {int(zero[0, 0])} has zero norm; cosine is undefined")


class PackedCandidates:
    """CPU candidates packed once into the retrieval kernels' panels, for many searches.

    The compiled CPU kernels read candidates as panels of their matrix-multiply micro-kernel;
    the public ops pack them on every call (a pass over ``N x D`` and a copy of that size). This
    handle holds one packed copy (about ``N x D`` values plus one norm per row for
    ``with_norms``) that :func:`topk` / :func:`ranks` reuse. Rows are written block by block
    with :meth:`fill` (a library stored in blocks of any size packs without first being
    concatenated). The panel width follows the SIMD level; :meth:`is_current` says whether the
    handle still matches it (``molphenix.set_options(simd=...)`` can change it: pack again).

    Args:
        n, dim: the candidates' shape.
        dtype: ``torch.float32`` or ``torch.float64``.
        with_norms: also keep ``|c|^2`` per row (needed by ``metric="arctan_l2"``).

    Raises:
        ValueError: the extension is missing, or n / dim < 1. TypeError: another dtype.
    """

    def __init__(self, n: int, dim: int, dtype: torch.dtype, *, with_norms: bool) -> None:
        ext = _ext.load()
        if ext is None:
            raise ValueError(f"PackedCandidates: the compiled extension is not importable "
                             f"({_ext.import_error()})")
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"PackedCandidates: dtype must be float32 or float64, got {dtype}")
        self._handle = ext.pack_candidates(dtype_name(dtype), int(n), int(dim), bool(with_norms))
        self.n, self.dim, self.dtype, self.with_norms = int(n), int(dim), dtype, bool(with_norms)

    @classmethod
    def from_blocks(cls, blocks: Iterable[torch.Tensor], n: int, dim: int, dtype: torch.dtype, *,
                    with_norms: bool, num_threads: Optional[int] = None,
                    rows_per_fill: int = 1 << 16) -> "PackedCandidates":
        """Pack rows given as consecutive CPU blocks (any floating dtype; cast to ``dtype`` a
        slice of ``rows_per_fill`` rows at a time, so a float16 or memory-mapped block is never
        copied whole)."""
        self = cls(n, dim, dtype, with_norms=with_norms)
        nt = resolve_threads(num_threads)
        row = 0
        for b in blocks:
            for s in range(0, b.shape[0], rows_per_fill):
                part = b[s:s + rows_per_fill]
                self.fill(part.to(dtype).contiguous(), row + s, num_threads=nt)
            row += b.shape[0]
        if row != n:
            raise ValueError(f"PackedCandidates.from_blocks: the blocks hold {row} rows, expected {n}")
        return self

    def fill(self, rows: torch.Tensor, row0: int, *, num_threads: Optional[int] = None) -> None:
        """Write ``rows`` ([m, dim], this dtype, C-contiguous, CPU) as candidates
        ``[row0, row0 + m)``."""
        self._handle.fill(rows, int(row0), num_threads=resolve_threads(num_threads))

    @property
    def nbytes(self) -> int:
        """Bytes held by the packed panels and norms."""
        return int(self._handle.nbytes)

    def is_current(self) -> bool:
        """True when packed under the current SIMD level (the kernels can read it)."""
        return bool(self._handle.is_current())

    def __repr__(self) -> str:
        return (f"PackedCandidates(n={self.n}, dim={self.dim}, dtype={dtype_name(self.dtype)}, "
                f"with_norms={self.with_norms}, simd={self._handle.simd_level}, "
                f"nbytes={self.nbytes})")


def _handle(packed: Optional[PackedCandidates], which: str) -> Any:
    if packed is None or which != "cpu" or not packed.is_current():
        return None
    return packed._handle


def topk(queries: torch.Tensor, candidates: Optional[torch.Tensor], k: int, *, metric: str,
         which: str, num_threads: int, packed: Optional[PackedCandidates] = None
         ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exactly :func:`molphenix.ops.topk_retrieve`'s (scores [Q, k], indices [Q, k]) on
    validated tensors.

    Args:
        queries: [Q, D]; candidates: [N, D] (may be None on the CPU backend when ``packed``
            holds them and is current).
        k: 1 <= k <= N.
        metric: ``"dot"``, ``"arctan_l2"`` (or ``"cosine"``: normalises both on every call).
        which: the resolved backend (:func:`resolve_backend`): ``"cpu"``, ``"cuda"`` or
            ``"reference"``.
        num_threads: CPU threads (>= 1).
        packed: the candidates packed once (CPU).
    """
    h = _handle(packed, which)
    if candidates is None and h is None:
        raise ValueError("candidates: required unless current packed candidates are given")
    return _retrieval._topk_validated(queries, candidates, k, metric, which, num_threads, h)


def topk_keys(queries: torch.Tensor, candidates: Optional[torch.Tensor], k: int, *, metric: str,
              which: str, num_threads: int, packed: Optional[PackedCandidates] = None
              ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact local top-k as the keys the kernels order by: (keys [Q, k], larger first; indices
    [Q, k]). Keys are the similarity for cosine / dot and minus the squared distance for
    ``arctan_l2`` (saturated similarities still order exactly), so lists from several candidate
    blocks merge exactly; :func:`scores_from_keys` turns merged keys into
    :func:`molphenix.ops.topk_retrieve`'s scores. Arguments as :func:`topk`."""
    if which == "reference":
        keys = _reference._keys(queries.detach(), candidates.detach(), metric)
        order = torch.sort(keys, dim=1, descending=True, stable=True).indices[:, :k]
        return keys.gather(1, order), order
    h = _handle(packed, which)
    if candidates is None and h is None:
        raise ValueError("candidates: required unless current packed candidates are given")
    raw, idx = _retrieval._topk_kernel(queries, candidates, k, metric, num_threads, h)
    return (-raw if metric == "arctan_l2" else raw), idx


def scores_from_keys(keys: torch.Tensor, metric: str, which: str, dtype: torch.dtype) -> torch.Tensor:
    """The scores :func:`molphenix.ops.topk_retrieve` returns for keys from :func:`topk_keys`
    (the same arithmetic; ``dtype``: the candidates' dtype)."""
    out_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    if metric != "arctan_l2":
        return keys.to(out_dtype)
    if which == "reference":  # keys are minus the squared distances there
        return (1.0 - (4.0 / math.pi) * torch.atan(-keys / 0.3)).to(out_dtype)
    d2 = -keys
    return (1.0 - (4.0 / math.pi) * torch.atan(d2.double() / 0.3)).to(d2.dtype)


def ranks(queries: torch.Tensor, candidates: Optional[torch.Tensor], targets: torch.Tensor, *,
          target_scores: Optional[torch.Tensor] = None, metric: str, which: str, num_threads: int,
          packed: Optional[PackedCandidates] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exactly :func:`molphenix.ops.retrieval_ranks`'s (ranks [Q] int64, target keys [Q]
    float64) on validated tensors; ``targets`` int64 [Q] in [-1, N), ``target_scores`` float64
    [Q] where a target is -1 (zeros when None). Other arguments as :func:`topk`."""
    if target_scores is None:
        target_scores = torch.zeros(queries.shape[0], dtype=torch.float64, device=queries.device)
    h = _handle(packed, which)
    if candidates is None and h is None:
        raise ValueError("candidates: required unless current packed candidates are given")
    return _retrieval._ranks_validated(queries, candidates, targets, target_scores, metric, which,
                                       num_threads, h)



def s2l_loss(p: torch.Tensor, q: torch.Tensor, scale: Any, bias: Any, u: Optional[torch.Tensor] = None, *,
             c: float, threshold: Optional[float], gamma: float, delta: float, diagonal: str = "soft",
             u_cols: Optional[torch.Tensor] = None, diag_offset: int = 0, normalizer: Optional[float] = None,
             backend: str = "auto", num_threads: Optional[int] = None, deterministic: bool = True) -> torch.Tensor:
    """:func:`molphenix.ops.s2l_loss` on validated torch inputs, without its checks.

    The caller guarantees what the public op would check: ``p``, ``q`` 2-D floating tensors of
    one dtype, width and device with at least one row and finite values; ``u`` (``u_cols``)
    finite, floating, on that device, with ``p``'s (``q``'s) rows; ``scale > 0`` and ``bias``
    finite (floats or 0-dim tensors, the differentiable parameters); ``c > 0``, ``threshold`` in
    [-1, 1] or None, ``diagonal`` "soft" or "hard", ``normalizer > 0`` or None. Nothing here
    reads a tensor's value on the host (the compiled op itself reads ``scale`` and ``bias``).

    Args:
        p, q, scale, bias, u, c, threshold, gamma, delta, diagonal, u_cols, diag_offset,
        normalizer, backend, num_threads, deterministic: as :func:`molphenix.ops.s2l_loss`.

    Returns:
        The scalar loss, a 0-dim tensor of ``p``'s dtype (differentiable as the public op's).

    Shapes:
        p: [B1, D], q: [B2, D], u: [B1, E], u_cols: [B2, E] -> []

    Raises:
        ValueError: an unknown backend (as the public op); inputs that break the guarantees
            are not detected (NaN in, NaN out).
    """
    a = _trusted("s2l_loss", p, q, scale, bias, u, u_cols, c, threshold, gamma, delta, diagonal,
                 diag_offset, normalizer, backend, num_threads)
    return _loss(a, diagonal, deterministic)


def siglip_loss(p: torch.Tensor, q: torch.Tensor, scale: Any, bias: Any, *, diag_offset: int = 0,
                normalizer: Optional[float] = None, backend: str = "auto", num_threads: Optional[int] = None,
                deterministic: bool = True) -> torch.Tensor:
    """:func:`molphenix.ops.siglip_loss` on validated torch inputs, without its checks (the
    guarantees of :func:`s2l_loss` here, for ``p``, ``q``, ``scale`` and ``bias``).

    Args:
        p, q, scale, bias, diag_offset, normalizer, backend, num_threads, deterministic: as
        :func:`molphenix.ops.siglip_loss`.

    Returns:
        The scalar loss, a 0-dim tensor of ``p``'s dtype.

    Shapes:
        p: [B1, D], q: [B2, D] -> []
    """
    a = _trusted("siglip_loss", p, q, scale, bias, None, None, 0.3, None, 1.0, 1.0, "soft",
                 diag_offset, normalizer, backend, num_threads)
    return _siglip(a, deterministic)
