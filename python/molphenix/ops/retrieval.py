"""Retrieval ops: rank of the true candidate, exact top-k, and top-K% recall.

Scores are never materialised as ``Q x N``: the kernels stream GEMM tiles into compare-and-count
(``retrieval_ranks``) or a per-query selection (``topk_retrieve``).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from molphenix import _ext
from molphenix.ops import _common as C
from molphenix.ops import _reference

__all__ = ["retrieval_ranks", "topk_retrieve", "recall_at_fraction", "k_for_fraction"]

_METRIC_CODE = {"cosine": 0, "dot": 0, "arctan_l2": 1}  # kernel keys: 0 = dot, 1 = squared L2


@torch.library.custom_op("molphenix::retrieval_ranks", mutates_args=())
def _ranks_op(queries: torch.Tensor, candidates: torch.Tensor, targets: torch.Tensor,
              target_scores: torch.Tensor, metric: int,
              num_threads: int) -> Tuple[torch.Tensor, torch.Tensor]:
    ext = _ext.load()
    queries, candidates, targets = C.contiguous(queries, candidates, targets)
    scores = target_scores.detach().to(torch.float64).clone().contiguous()
    ranks = torch.empty(queries.shape[0], dtype=torch.int64, device=queries.device)
    ws = None
    if queries.device.type == "cuda":
        ws = C.workspace(ext.retrieval_ranks_workspace_bytes(
            C.dtype_name(queries.dtype), queries.shape[0], candidates.shape[0], queries.shape[1],
            metric), queries)
    ext.retrieval_ranks(queries, candidates, targets, scores, ranks, ws, metric=metric,
                        num_threads=num_threads, stream=C.stream_of(queries))
    return ranks, scores


@_ranks_op.register_fake
def _(queries, candidates, targets, target_scores, metric, num_threads):
    q = queries.shape[0]
    return queries.new_empty(q, dtype=torch.int64), queries.new_empty(q, dtype=torch.float64)


@torch.library.custom_op("molphenix::topk_retrieve", mutates_args=())
def _topk_op(queries: torch.Tensor, candidates: torch.Tensor, k: int, metric: int,
             num_threads: int) -> Tuple[torch.Tensor, torch.Tensor]:
    ext = _ext.load()
    queries, candidates = C.contiguous(queries, candidates)
    q = queries.shape[0]
    sdtype = queries.dtype if queries.dtype in (torch.float32, torch.float64) else torch.float32
    scores = torch.empty((q, k), dtype=sdtype, device=queries.device)
    indices = torch.empty((q, k), dtype=torch.int64, device=queries.device)
    ws = None
    if queries.device.type == "cuda":
        ws = C.workspace(ext.topk_retrieve_workspace_bytes(
            C.dtype_name(queries.dtype), q, candidates.shape[0], queries.shape[1], k, metric),
            queries)
    ext.topk_retrieve(queries, candidates, k, scores, indices, ws, metric=metric,
                      num_threads=num_threads, stream=C.stream_of(queries))
    return scores, indices


@_topk_op.register_fake
def _(queries, candidates, k, metric, num_threads):
    q = queries.shape[0]
    sdtype = queries.dtype if queries.dtype in (torch.float32, torch.float64) else torch.float32
    return (queries.new_empty((q, k), dtype=sdtype), queries.new_empty((q, k), dtype=torch.int64))


def _prepare_pair(queries: Any, candidates: Any, metric: Any):
    qt, ct = C.to_torch(queries, "queries"), C.to_torch(candidates, "candidates")
    C.check_float_matrix(qt, "queries")
    C.check_float_matrix(ct, "candidates")
    C.check_same_dtype(qt, "queries", ct, "candidates")
    C.check_same_width(qt, "queries", ct, "candidates")
    C.check_same_device(qt, "queries", (ct, "candidates"))
    if ct.shape[0] == 0:
        raise ValueError("candidates: the candidate set is empty (0 rows)")
    metric = C.check_metric(metric)
    if metric == "cosine":
        for t, name in ((qt, "queries"), (ct, "candidates")):
            norms = torch.linalg.vector_norm(t.float() if t.dtype != torch.float64 else t, dim=1)
            zero = (norms == 0).nonzero()
            if zero.numel():
                raise ValueError(f"{name}: row {int(zero[0, 0])} has zero norm; cosine is undefined")
    return qt, ct, metric


def _normalize(t: torch.Tensor) -> torch.Tensor:
    work = t if t.dtype == torch.float64 else t.float()
    return torch.nn.functional.normalize(work, dim=1).to(t.dtype)


def retrieval_ranks(
    queries: Any,
    candidates: Any,
    targets: Any,
    *,
    target_scores: Any = None,
    metric: str = "cosine",
    backend: str = "auto",
    num_threads: Optional[int] = None,
    return_target_scores: bool = False,
) -> Any:
    """Rank of each query's true candidate among all candidates (0 = best).

    ``rank_i = #{j != t(i): f(i, j) >= f(i, t(i))}`` -- ties count against the query, so recall is
    never overstated. The target's score comes from the same arithmetic as every other score.
    The guarantee is about the *computed* scores: equal computed scores count against the
    query, and identical candidate rows always tie. Distinct candidates whose scores are equal
    only mathematically (e.g. parallel rows ``c`` and ``2 c`` under cosine) can get different
    float scores after normalisation and rounding, and then do not tie.
    Metrics: ``cosine`` (default), ``dot``, ``arctan_l2`` (ranks by squared L2 distance,
    ascending, so arctan saturation creates no false ties).

    Rank counts are additive over shards of the candidates: a shard that does not hold query i's
    target gets ``targets[i] = -1`` and the target's key in ``target_scores[i]`` (similarity for
    cosine/dot, squared distance for arctan_l2), as returned by the shard that holds it with
    ``return_target_scores=True``.

    Args:
        queries: [Q, D] query embeddings (torch, numpy or cupy).
        candidates: [N, D] candidate embeddings, same dtype/device.
        targets: [Q] integer indices into candidates, or -1 = "not in this set".
        target_scores: [Q] keys used where targets == -1 (required then).
        metric: "cosine" | "dot" | "arctan_l2".
        backend: "auto" | "cpu" | "cuda" | "reference".
        num_threads: CPU threads (None: ``torch.get_num_threads()``).
        return_target_scores: also return the [Q] float64 target keys.

    Returns:
        ranks [Q] int64 (and the target keys [Q] float64), as the queries' array kind.

    Shapes:
        queries: [Q, D], candidates: [N, D], targets: [Q] -> [Q]

    Raises:
        TypeError: non-floating embeddings, non-integer targets. ValueError: wrong ranks or
            widths, empty candidates, targets out of [-1, N), -1 without target_scores, NaN/Inf,
            zero-norm rows under cosine, mixed devices, unknown metric/backend.
    """
    kind = C.result_kind(queries, candidates)
    qt, ct, metric = _prepare_pair(queries, candidates, metric)
    tt = C.to_torch(targets, "targets")
    if tt.dtype.is_floating_point or tt.dtype.is_complex or tt.dtype == torch.bool:
        raise TypeError(f"targets: expected an integer dtype, got {tt.dtype}")
    if tt.dim() != 1 or tt.shape[0] != qt.shape[0]:
        raise ValueError(f"targets: expected shape [{qt.shape[0]}] (one per query), got {tuple(tt.shape)}")
    C.check_same_device(qt, "queries", (tt, "targets"))
    tt = tt.to(torch.int64)
    n = ct.shape[0]
    if tt.numel():
        lo, hi = int(tt.min()), int(tt.max())
        if lo < -1 or hi >= n:
            bad = int(((tt < -1) | (tt >= n)).nonzero()[0, 0])
            raise ValueError(f"targets: entry {bad} is {int(tt[bad])}; expected an index in [0, {n}) "
                             "or -1 (not in this candidate set)")
    missing = tt < 0
    if target_scores is None:
        if bool(missing.any()):
            raise ValueError("target_scores: required where targets == -1 (the target is in another shard)")
        st = torch.zeros(qt.shape[0], dtype=torch.float64, device=qt.device)
    else:
        st = C.to_torch(target_scores, "target_scores")
        if not st.dtype.is_floating_point:
            raise TypeError(f"target_scores: expected a floating-point dtype, got {st.dtype}")
        if st.dim() != 1 or st.shape[0] != qt.shape[0]:
            raise ValueError(f"target_scores: expected shape [{qt.shape[0]}], got {tuple(st.shape)}")
        C.check_same_device(qt, "queries", (st, "target_scores"))
        C.check_finite(st[missing], "target_scores")
        st = st.to(torch.float64)
    nt = C.resolve_threads(num_threads)
    which = C.resolve_backend("retrieval_ranks", backend, qt.device, qt.dtype)
    ranks, keys = _ranks_validated(qt, ct, tt, st, metric, which, nt)
    ranks = C.from_torch(ranks, kind)
    if return_target_scores:
        return ranks, C.from_torch(keys, kind)
    return ranks


def _ranks_validated(qt: torch.Tensor, ct: Optional[torch.Tensor], tt: torch.Tensor,
                     st: torch.Tensor, metric: str, which: str, nt: int,
                     packed: Any = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(ranks [Q] int64, target keys [Q] float64) on validated tensors (``which``: the resolved
    backend; ``st``: float64 keys where ``tt == -1``). With ``packed`` (a CPU
    ``molphenix._C.PackedCandidates`` of the same rows, current SIMD level) the CPU kernel reads
    the packed panels and ``ct`` may be None."""
    if qt.shape[0] == 0:
        return (torch.empty(0, dtype=torch.int64, device=qt.device),
                torch.empty(0, dtype=torch.float64, device=qt.device))
    if which == "reference":
        return (_reference.retrieval_ranks(qt, ct, tt, target_scores=st, metric=metric),
                _reference_target_keys(qt, ct, tt, st, metric))
    if metric == "cosine":
        qt = _normalize(qt)
        ct = None if ct is None else _normalize(ct)
        packed = None  # a packed copy holds the rows as given, not normalised
    if packed is not None and which == "cpu":
        ext = _ext.load()
        q = qt.detach().contiguous()
        keys = st.detach().to(torch.float64).clone().contiguous()
        ranks = torch.empty(q.shape[0], dtype=torch.int64)
        ext.retrieval_ranks_packed(q, packed, tt.contiguous(), keys, ranks,
                                   metric=_METRIC_CODE[metric], num_threads=nt)
        return ranks, keys
    return _ranks_op(qt.detach(), ct.detach(), tt, st, _METRIC_CODE[metric], nt)


def _reference_target_keys(qt, ct, tt, st, metric):
    present = tt >= 0
    keys = st.clone()
    if bool(present.any()):
        rows = present.nonzero().squeeze(1)
        k = _reference._keys(qt[rows], ct, metric).double()
        got = k.gather(1, tt[rows].unsqueeze(1)).squeeze(1)
        keys[rows] = -got if metric == "arctan_l2" else got
    return keys


def k_for_fraction(fraction: float, num_candidates: int) -> int:
    """``k = max(1, ceil(fraction * N))``, exact for decimal fractions (0.07 * 100 -> 7).

    A float32 / float16 fraction (numpy or torch scalar) is read as its own shortest decimal:
    ``np.float32(0.07)`` gives k = 7 at N = 100, like the Python float 0.07.
    """
    return C.fraction_to_k(fraction, C.check_int(num_candidates, "num_candidates"))


def topk_retrieve(
    queries: Any,
    candidates: Any,
    k: Optional[int] = None,
    *,
    fraction: Optional[float] = None,
    metric: str = "cosine",
    backend: str = "auto",
    num_threads: Optional[int] = None,
) -> Tuple[Any, Any]:
    """Exact top-k candidates per query, best first; ties broken by the lower candidate index.

    A listing, not a metric (evaluation uses :func:`retrieval_ranks`). Give exactly one of ``k``
    (1 <= k <= N; k > N is an error, not clamped) or ``fraction`` (0 < f <= 1, k = ceil(f N)).

    Args:
        queries: [Q, D]; candidates: [N, D] (torch, numpy or cupy).
        k: number of results per query.
        fraction: fraction of the candidates to return instead of k.
        metric: "cosine" | "dot" | "arctan_l2" (scores are then ``1 - (4/pi) atan(d2 / 0.3)``,
            ordered by d2).
        backend, num_threads: as the other ops.

    Returns:
        (scores [Q, k], indices [Q, k] int64) as the queries' array kind; scores are float32
        (float64 for float64 inputs) and never require grad on any backend (a listing is not
        differentiable; rank with :func:`retrieval_ranks`, train with the losses).

    Memory:
        Never ``Q x N``. The compiled CPU backend packs the candidates once (about ``N x D``
        values) and keeps, per thread, selection buffers of ``2k`` items (a key and an int64
        index, 12 bytes for float32 / 16 for float64) for each of at most 96 query rows, plus a
        ``2k`` merge buffer and ``3k`` items of selection scratch: at most about
        ``threads x (2 rows + 5) x k x 16`` bytes with rows <= 96 (linear in the thread count;
        with few queries the candidates are split across threads and merged per query).
        ``molphenix._C.cpu_workspace_stats()`` reports the peak.

    Raises:
        TypeError / ValueError: as :func:`retrieval_ranks`, plus k / fraction out of range or
            both / neither given.
    """
    kind = C.result_kind(queries, candidates)
    qt, ct, metric = _prepare_pair(queries, candidates, metric)
    n = ct.shape[0]
    if (k is None) == (fraction is None):
        raise ValueError("k/fraction: give exactly one of k or fraction")
    if k is not None:
        k = C.check_int(k, "k")
        if not 1 <= k <= n:
            raise ValueError(f"k: expected 1 <= k <= N = {n} (number of candidates), got {k}")
    else:
        k = C.fraction_to_k(fraction, n)
    nt = C.resolve_threads(num_threads)
    which = C.resolve_backend("topk_retrieve", backend, qt.device, qt.dtype)
    scores, idx = _topk_validated(qt, ct, k, metric, which, nt)
    return C.from_torch(scores.detach(), kind), C.from_torch(idx, kind)


def _topk_kernel(qt: torch.Tensor, ct: Optional[torch.Tensor], k: int, metric: str, nt: int,
                 packed: Any = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The compiled kernel's raw output on validated tensors: (keys [Q, k] -- the similarity
    for cosine / dot, the squared distance for arctan_l2 --, indices [Q, k])."""
    if metric == "cosine":
        qt = _normalize(qt)
        ct = None if ct is None else _normalize(ct)
        packed = None  # a packed copy holds the rows as given, not normalised
    if packed is not None and qt.device.type == "cpu":
        ext = _ext.load()
        q = qt.detach().contiguous()
        scores = torch.empty((q.shape[0], k), dtype=q.dtype)
        indices = torch.empty((q.shape[0], k), dtype=torch.int64)
        ext.topk_retrieve_packed(q, packed, k, scores, indices, metric=_METRIC_CODE[metric],
                                 num_threads=nt)
        return scores, indices
    return _topk_op(qt.detach(), ct.detach(), k, _METRIC_CODE[metric], nt)


def _topk_validated(qt: torch.Tensor, ct: Optional[torch.Tensor], k: int, metric: str,
                    which: str, nt: int, packed: Any = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(scores [Q, k], indices [Q, k]) exactly as :func:`topk_retrieve` returns them, on
    validated tensors (``which``: the resolved backend). With ``packed`` the CPU kernel reads the
    packed panels (``ct`` may then be None on the CPU backend)."""
    if qt.shape[0] == 0:
        sdtype = qt.dtype if qt.dtype in (torch.float32, torch.float64) else torch.float32
        return (torch.empty((0, k), dtype=sdtype, device=qt.device),
                torch.empty((0, k), dtype=torch.int64, device=qt.device))
    if which == "reference":
        return _reference.topk_retrieve(qt, ct, k, metric=metric)
    scores, idx = _topk_kernel(qt, ct, k, metric, nt, packed if which == "cpu" else None)
    if metric == "arctan_l2":  # the kernel returns squared distances
        scores = (1.0 - (4.0 / math.pi) * torch.atan(scores.double() / 0.3)).to(scores.dtype)
    return scores, idx


def recall_at_fraction(
    ranks: Any,
    num_candidates: int,
    fractions: Sequence[float] = (0.01, 0.05),
) -> Dict[float, float]:
    """Top-K% recall: the fraction of queries whose rank is below ``k = max(1, ceil(f N))``.

    Args:
        ranks: [Q] integer ranks (from :func:`retrieval_ranks`).
        num_candidates: N, the size of the candidate set the ranks were computed against.
        fractions: the fractions f (0 < f <= 1), e.g. (0.01, 0.05) for top-1% and top-5%.

    Returns:
        ``{f: recall}`` with recall in [0, 1] (NaN when there are no queries). Keys are Python
        floats: a float32 fraction ``np.float32(0.07)`` is read as its shortest decimal, so its
        key is ``0.07`` and its k is that of 0.07.

    Raises:
        TypeError: non-integer ranks. ValueError: negative ranks or ranks >= N, bad N or f.
    """
    n = C.check_int(num_candidates, "num_candidates")
    if n < 1:
        raise ValueError(f"num_candidates: expected >= 1, got {n}")
    r = C.to_torch(ranks, "ranks") if not isinstance(ranks, (list, tuple)) else torch.as_tensor(ranks)
    if r.dtype.is_floating_point or r.dtype == torch.bool or r.dtype.is_complex:
        raise TypeError(f"ranks: expected an integer dtype, got {r.dtype}")
    if r.dim() != 1:
        raise ValueError(f"ranks: expected a 1-D array, got shape {tuple(r.shape)}")
    r = r.detach().to("cpu", torch.int64)
    if r.numel() and (int(r.min()) < 0 or int(r.max()) >= n):
        raise ValueError(f"ranks: expected values in [0, {n}), got min {int(r.min())}, max {int(r.max())}")
    if isinstance(fractions, (int, float, np.generic)) or (
            isinstance(fractions, (np.ndarray, torch.Tensor)) and fractions.ndim == 0):
        fractions = (fractions,)
    out: Dict[float, float] = {}
    for f in fractions:
        key, exact = C.fraction_value(f)
        k = max(1, math.ceil(exact * n))
        out[key] = float((r < k).double().mean()) if r.numel() else float("nan")
    return out
