"""Pure-PyTorch twins of the compiled ops: the oracle for tests and the baseline for benchmarks.

Every function here has the same name and signature as its public counterpart in
:mod:`molphenix.ops` (minus ``backend`` / ``num_threads``), works on any device and dtype torch
supports, and is differentiable through plain torch autograd. They are written for clarity, not
memory: ``s2l_loss`` materialises the ``B1 x B2`` logits, which is exactly what the fused kernels
avoid. Inputs are expected to be validated torch tensors (the public ops validate and convert).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch

from molphenix.ops._common import fraction_to_k

Scalar = Union[float, torch.Tensor]

__all__ = [
    "arctan_l2_similarity",
    "s2l_loss",
    "siglip_loss",
    "retrieval_ranks",
    "topk_retrieve",
    "squared_l2",
]


def squared_l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise squared distances ``max(|a_i|^2 + |b_j|^2 - 2<a_i, b_j>, 0)``.

    Shapes:
        a: [N, E], b: [M, E] -> [N, M]

    Low-precision inputs are promoted to float32 first (the arctan window does not survive
    bfloat16 cancellation).
    """
    if a.dtype in (torch.bfloat16, torch.float16):
        a, b = a.float(), b.float()
    sq_a = (a * a).sum(dim=1, keepdim=True)
    sq_b = (b * b).sum(dim=1, keepdim=True)
    return (sq_a + sq_b.T - 2.0 * (a @ b.T)).clamp_min(0.0)


def arctan_l2_similarity(
    a: torch.Tensor, b: torch.Tensor, *, c: float = 0.3, threshold: Optional[float] = None
) -> torch.Tensor:
    """arctan-L2 similarity ``s = 1 - (4/pi) atan(d2 / c)``, zeroed where ``s < threshold``.

    Shapes:
        a: [N, E], b: [M, E] -> [N, M]
    """
    d2 = squared_l2(a, b)
    s = 1.0 - (4.0 / math.pi) * torch.atan(d2 / c)
    if threshold is not None:
        s = torch.where(s >= threshold, s, torch.zeros_like(s))
    return s.to(a.dtype)


def _positive_mask(b1: int, b2: int, diag_offset: int, device: torch.device) -> torch.Tensor:
    rows = torch.arange(b1, device=device).unsqueeze(1)
    cols = torch.arange(b2, device=device).unsqueeze(0)
    return cols == rows + diag_offset


def s2l_loss(
    p: torch.Tensor,
    q: torch.Tensor,
    scale: Scalar,
    bias: Scalar,
    u: Optional[torch.Tensor] = None,
    *,
    c: float = 0.3,
    threshold: Optional[float] = 0.75,
    gamma: float = 1.75,
    delta: float = 0.75,
    diagonal: str = "soft",
    u_cols: Optional[torch.Tensor] = None,
    diag_offset: int = 0,
    normalizer: Optional[float] = None,
) -> torch.Tensor:
    """Naive S2L loss (materialises ``B1 x B2``); see :func:`molphenix.ops.s2l_loss`.

    ``u`` and ``u_cols`` are constants (detached), as on every backend.

    Shapes:
        p: [B1, D], q: [B2, D], u: [B1, E], u_cols: [B2, E] -> scalar
    """
    b1, b2 = p.shape[0], q.shape[0]
    compute = torch.float64 if p.dtype == torch.float64 else torch.float32
    z = scale * (p.to(compute) @ q.to(compute).T) + bias
    pos = _positive_mask(b1, b2, diag_offset, p.device)
    # u and u_cols are constants (as on the compiled backends): no gradient flows to them.
    u = None if u is None else u.detach()
    u_cols = None if u_cols is None else u_cols.detach()
    if u is None:
        s = pos.to(compute)
    else:
        v = u if u_cols is None else u_cols
        s = arctan_l2_similarity(u.to(compute), v.to(compute), c=c, threshold=threshold)
        s = torch.where(pos, torch.ones_like(s), s)
    w_pos = s
    w_neg = gamma - delta * s
    if diagonal == "hard":
        w_pos = torch.where(pos, torch.ones_like(s), w_pos)
        w_neg = torch.where(pos, torch.zeros_like(s), w_neg)
    pair = (w_pos + w_neg) * torch.nn.functional.softplus(z) - w_pos * z
    norm = float(b1) if normalizer is None else float(normalizer)
    return (pair.sum() / norm).to(p.dtype)


def siglip_loss(
    p: torch.Tensor,
    q: torch.Tensor,
    scale: Scalar,
    bias: Scalar,
    *,
    diag_offset: int = 0,
    normalizer: Optional[float] = None,
) -> torch.Tensor:
    """SigLIP loss ``-(1/B) sum_ij log sigmoid(y_ij z_ij)`` (y = +1 on the positive pair, else -1).

    Written independently of :func:`s2l_loss` so that the identity S2L(u=None, gamma=delta=1) ==
    SigLIP is a real check.

    Shapes:
        p: [B1, D], q: [B2, D] -> scalar
    """
    compute = torch.float64 if p.dtype == torch.float64 else torch.float32
    z = scale * (p.to(compute) @ q.to(compute).T) + bias
    pos = _positive_mask(p.shape[0], q.shape[0], diag_offset, p.device)
    y = torch.where(pos, torch.ones_like(z), -torch.ones_like(z))
    norm = float(p.shape[0]) if normalizer is None else float(normalizer)
    return (-torch.nn.functional.logsigmoid(y * z).sum() / norm).to(p.dtype)


def _keys(queries: torch.Tensor, candidates: torch.Tensor, metric: str) -> torch.Tensor:
    """Comparison keys, larger is better: cosine/dot similarity or minus the squared distance.

    Cosine normalises rows in float32 (float64 for float64) and rounds them back to the input
    dtype before the product, exactly as the compiled path feeds its kernels; products are then
    accumulated in float32 or wider.
    """
    # Score each distinct candidate row once and expand: a GEMM's rounding can depend on where a
    # row sits in the matrix, and identical candidates must tie exactly (ties count against the
    # query; top-k breaks them by index).
    candidates, inverse = torch.unique(candidates, dim=0, return_inverse=True)
    return _distinct_keys(queries, candidates, metric)[:, inverse]


def _distinct_keys(queries: torch.Tensor, candidates: torch.Tensor, metric: str) -> torch.Tensor:
    low = queries.dtype in (torch.bfloat16, torch.float16)
    if metric == "cosine":
        work = torch.float64 if queries.dtype == torch.float64 else torch.float32
        queries = torch.nn.functional.normalize(queries.to(work), dim=1).to(queries.dtype)
        candidates = torch.nn.functional.normalize(candidates.to(work), dim=1).to(candidates.dtype)
    if low:
        queries, candidates = queries.float(), candidates.float()
    if metric == "cosine":
        return queries @ candidates.T
    if metric == "dot":
        return queries @ candidates.T
    if metric == "arctan_l2":
        return -squared_l2(queries, candidates)
    raise ValueError(f"metric: expected 'cosine', 'dot' or 'arctan_l2', got {metric!r}")


def retrieval_ranks(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    targets: torch.Tensor,
    *,
    target_scores: Optional[torch.Tensor] = None,
    metric: str = "cosine",
) -> torch.Tensor:
    """Rank of each query's true candidate: ``#{j != t(i): f(i, j) >= f(i, t(i))}``.

    Ties count against the query. For ``targets[i] == -1`` the target is not in this candidate
    set and ``target_scores[i]`` (similarity for cosine/dot, squared distance for arctan_l2) is
    used instead. Materialises ``Q x N``.

    Shapes:
        queries: [Q, D], candidates: [N, D], targets: [Q] int64, target_scores: [Q] -> [Q] int64
    """
    keys = _keys(queries, candidates, metric).double()
    n = candidates.shape[0]
    present = targets >= 0
    t = targets.clamp(min=0)
    tgt = keys.gather(1, t.unsqueeze(1)).squeeze(1)
    if target_scores is not None:
        given = target_scores.to(keys)
        if metric == "arctan_l2":
            given = -given
        tgt = torch.where(present, tgt, given)
    ge = keys >= tgt.unsqueeze(1)
    if n:
        self_hit = torch.zeros_like(ge)
        self_hit[present, t[present]] = True
        ge = ge & ~self_hit
    return ge.sum(dim=1).to(torch.int64)


def topk_retrieve(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    k: Optional[int] = None,
    *,
    fraction: Optional[float] = None,
    metric: str = "cosine",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k candidates per query, best first, ties broken by the lower candidate index.

    Scores: cosine / dot similarity, or for ``arctan_l2`` the similarity ``1 - (4/pi) atan(d2/0.3)``
    (ordered by ``d2``, so saturation creates no ties). Scores never require grad.

    Shapes:
        queries: [Q, D], candidates: [N, D] -> scores [Q, k], indices [Q, k] int64
    """
    n = candidates.shape[0]
    if k is None:
        if fraction is None:
            raise ValueError("k/fraction: give exactly one of k or fraction")
        k = fraction_to_k(fraction, n)
    # A listing: scores never require grad (as on the compiled backends).
    keys = _keys(queries.detach(), candidates.detach(), metric)
    # Stable sort on the key (descending) keeps lower indices first among equal keys.
    order = torch.sort(keys, dim=1, descending=True, stable=True).indices[:, :k]
    top = keys.gather(1, order)
    if metric == "arctan_l2":
        top = 1.0 - (4.0 / math.pi) * torch.atan(-top / 0.3)
    out_dtype = queries.dtype if queries.dtype in (torch.float32, torch.float64) else torch.float32
    return top.to(out_dtype), order
