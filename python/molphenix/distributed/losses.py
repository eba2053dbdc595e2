"""Global-batch contrastive losses over ``torch.distributed``.

Each rank holds its own rows of the global batch (``p``, ``q``, ``u``; ranks may hold different
row counts). The functions here return the loss of the *global* batch (the concatenation of the
ranks' rows in rank order), the same value on every rank, normalised like the single-process loss
on that concatenated batch.

Two ways to get there:

* ``mode="ring"`` (S2L and SigLIP): the ``(q, u)`` blocks rotate around the ranks with
  point-to-point sends. At step ``k`` rank ``r`` holds the block of rank ``s = r - k (mod W)`` and
  adds ``molphenix.ops.s2l_loss(p_r, q_s, ..., u_cols=u_s, diag_offset=off_r - off_s,
  normalizer=B)``; the transfer of the next block is posted before the current block is computed,
  so communication overlaps compute. The fused kernel returns the block's gradients in the same
  pass, so the gradient of ``q_s`` travels *with* the block as an accumulator: each rank adds its
  contribution and passes it on, and after ``W`` hops it arrives back at its owner. Per step a
  rank holds two blocks and one accumulator in flight: memory ``O(B_local (D + E))``, never
  ``B x B``. Bytes a rank sends per call: ``(W - 1) B_local (D + E)`` for the blocks plus
  ``W B_local D`` for the gradient accumulators (times the element size), plus a few scalars.
* ``mode="allgather"``: every rank gathers all ``(q, u)`` rows, computes its rows against all
  columns and all-reduces the ``[B, D]`` column gradient, keeping its own rows; for comparison.

Gradient convention (what a data-parallel trainer relies on): backward gives each rank exactly
the single-process gradient rows of its local ``p`` and ``q`` rows (not multiplied by the world
size), and for ``scale`` / ``bias`` (and a wrapped loss's parameters) the full global gradient,
identical on every rank. The per-rank parameter gradients of the heads are therefore *partial*
sums: the global gradient is their sum over ranks (DDP averages, so a trainer scales by ``W``).

The gradients are computed in the forward pass (the fused kernel produces them anyway) and scaled
by the incoming gradient in backward, which therefore communicates nothing. This assumes the
incoming gradient of the loss is the same on every rank, as when every rank backpropagates the
loss it got (it is the same value everywhere).

Without an initialised process group, or with world size 1, every function here is exactly its
single-process counterpart.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import nn

from molphenix._similarity import ARCTAN_C, S2L_DELTA, S2L_GAMMA, SOFT_LABEL_THRESHOLD, check_c, check_threshold
from molphenix.distributed._group import get_rank, get_world_size, is_initialized

__all__ = [
    "MODES",
    "s2l_loss",
    "siglip_loss",
    "all_gather_with_grad",
    "DistributedLoss",
    "communication_counter",
]

#: The ways the sigmoid losses combine the ranks' blocks.
MODES = ("ring", "allgather")

_DTYPE_CODES = {torch.float32: 1, torch.float64: 2, torch.bfloat16: 3, torch.float16: 4}

# ---------------------------------------------------------------------------------------------
# communication, with an optional byte counter (for the benchmark)
# ---------------------------------------------------------------------------------------------

_COUNTERS: List[Dict[str, int]] = []


@contextlib.contextmanager
def communication_counter() -> Iterator[Dict[str, int]]:
    """Count the bytes this rank hands to the network inside the ``with`` block.

    Yields a dict updated in place: ``"p2p_bytes"`` (exact payload of the point-to-point sends),
    ``"collective_bytes"`` (what this rank sends in collectives under the usual ring-algorithm
    model: all-gather ``(W - 1) x`` its padded chunk, all-reduce ``2 (W - 1) / W x`` the buffer),
    ``"bytes"`` (their sum), ``"sends"`` and ``"collectives"`` (call counts).

    Returns:
        A context manager yielding the counter dict.
    """
    counter = {"p2p_bytes": 0, "collective_bytes": 0, "bytes": 0, "sends": 0, "collectives": 0}
    _COUNTERS.append(counter)
    try:
        yield counter
    finally:
        _COUNTERS.remove(counter)


def _count(kind: str, nbytes: float) -> None:
    for c in _COUNTERS:
        key = "p2p_bytes" if kind == "p2p" else "collective_bytes"
        c[key] += int(round(nbytes))
        c["bytes"] += int(round(nbytes))
        c["sends" if kind == "p2p" else "collectives"] += 1


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _all_gather_fixed(t: torch.Tensor, group, world: int) -> List[torch.Tensor]:
    """all_gather of same-shaped tensors (counted)."""
    t = t.contiguous()
    out = [torch.empty_like(t) for _ in range(world)]
    _count("collective", (world - 1) * _nbytes(t))
    dist.all_gather(out, t, group=group)
    return out


def _all_reduce_sum(t: torch.Tensor, group, world: int) -> torch.Tensor:
    _count("collective", 2.0 * (world - 1) / world * _nbytes(t))
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


def _all_gather_rows(t: torch.Tensor, sizes: Sequence[int], group, world: int) -> torch.Tensor:
    """Concatenate every rank's rows (row counts ``sizes``, padded to the largest for the wire)."""
    t = t.detach()
    bmax = max(sizes)
    pad = t.new_zeros((bmax,) + tuple(t.shape[1:]))
    if t.shape[0]:
        pad[: t.shape[0]] = t
    parts = _all_gather_fixed(pad, group, world)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)], dim=0)


def _p2p(ops: List[Any]) -> List[Any]:
    """Post point-to-point sends and receives together (counted). ``batch_isend_irecv`` groups
    them for NCCL, where a lone send and a lone receive between the same two ranks, issued in
    opposite orders, would wait for each other; gloo posts them one by one."""
    for op in ops:
        if op.op is dist.isend:
            _count("p2p", _nbytes(op.tensor))
    return [wk for wk in dist.batch_isend_irecv(ops) if wk is not None]


def _global_rank(group, r: int) -> int:
    return r if group is None else dist.get_global_rank(group, r)


def _active(group) -> Tuple[int, int]:
    """(rank, world size) in ``group``; world size 1 without a process group."""
    if not is_initialized():
        return 0, 1
    return get_rank(group), get_world_size(group)


def _check_mode(mode: Any) -> str:
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {list(MODES)}, got {mode!r}")
    return mode


def _exchange(values: Sequence[float], error: Optional[BaseException], group, world: int,
              device: torch.device, what: str) -> torch.Tensor:
    """All-gather one float64 row of metadata per rank, plus an ok flag.

    Every rank learns whether every other rank accepted its inputs, so an invalid input on one
    rank raises on all of them (the rank's own error there, a pointer to it elsewhere) instead of
    leaving the others waiting in a collective. Returns the ``[W, len(values)]`` table.
    """
    row = torch.tensor([0.0 if error is not None else 1.0] + [float(v) for v in values],
                       dtype=torch.float64, device=device)
    table = torch.stack(_all_gather_fixed(row, group, world)).cpu()
    bad = [r for r in range(world) if table[r, 0] != 1.0]
    if error is not None:
        raise error
    if bad:
        raise ValueError(f"{what}: rank(s) {bad} rejected their inputs (their own error says why); "
                         "every rank raises so that none waits for the others")
    return table[:, 1:]


def _check_tensor(x: Any, name: str, *, allow_none: bool = False) -> None:
    if x is None and allow_none:
        return
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: the distributed losses take torch tensors, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D tensor [rows, dim], got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name}: expected a floating dtype, got {x.dtype}")


def _scalar_value(v: Any, name: str) -> float:
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise ValueError(f"{name}: expected a float or a 0-dim tensor, got shape {tuple(v.shape)}")
        return float(v.detach().reshape(()).item())
    try:
        return float(v)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name}: expected a float or a 0-dim tensor, got {type(v).__name__}") from e


def _same_across_ranks(table: torch.Tensor, col: int, name: str) -> None:
    vals = table[:, col]
    if not bool((vals == vals[0]).all()):
        raise ValueError(f"{name}: differs across ranks ({[float(v) for v in vals]}); every rank "
                         "must pass the same value")


# ---------------------------------------------------------------------------------------------
# the sigmoid losses: ring and all-gather
# ---------------------------------------------------------------------------------------------


class _Plan:
    """Everything the block loop needs, agreed on by every rank."""

    __slots__ = ("rank", "world", "group", "rows", "cols", "row_off", "col_off", "b_rows",
                 "normalizer", "diag_offset", "op_kw", "siglip", "mode", "need")


def _block(plan: _Plan, p: torch.Tensor, q_blk: torch.Tensor, scale, bias, u: Optional[torch.Tensor],
           u_blk: Optional[torch.Tensor], offset: int, need: Tuple[bool, bool, bool, bool]):
    """One block's loss and gradients (p rows, q block rows, scale, bias), through the ops."""
    from molphenix import ops

    kw = dict(plan.op_kw)
    kw.update(diag_offset=offset, normalizer=plan.normalizer)
    if not any(need):
        with torch.no_grad():
            if plan.siglip:
                loss = ops.siglip_loss(p, q_blk, scale, bias, **kw)
            else:
                loss = ops.s2l_loss(p, q_blk, scale, bias, u, u_cols=u_blk, **kw)
        return loss.detach(), None, None, None, None
    with torch.enable_grad():
        leaves = [p.detach().requires_grad_(need[0]), q_blk.detach().requires_grad_(need[1]),
                  scale.detach().requires_grad_(need[2]), bias.detach().requires_grad_(need[3])]
        if plan.siglip:
            loss = ops.siglip_loss(*leaves, **kw)
        else:
            loss = ops.s2l_loss(*leaves, u, u_cols=u_blk, **kw)
        wrt = [t for t, n in zip(leaves, need) if n]
        grads = list(torch.autograd.grad(loss, wrt))
    out = [grads.pop(0) if n else None for n in need]
    return (loss.detach(), *out)


class _SigmoidGlobal(torch.autograd.Function):
    """Global-batch S2L / SigLIP; gradients computed in forward, scaled in backward."""

    @staticmethod
    def forward(ctx, p, q, scale, bias, u, u_cols, plan: _Plan):  # type: ignore[override]
        need = plan.need
        if plan.mode == "ring":
            loss, gp, gq, gs, gb = _ring(plan, p, q, scale, bias, u, u_cols, need)
        else:
            loss, gp, gq, gs, gb = _allgather(plan, p, q, scale, bias, u, u_cols, need)
        ctx.save_for_backward(gp, gq, gs, gb)
        ctx.need = need
        return loss

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        gp, gq, gs, gb = ctx.saved_tensors
        g = g.detach()
        out = []
        for grad, n in zip((gp, gq, gs, gb), ctx.need):
            out.append(grad * g.to(grad.dtype) if n and grad is not None else None)
        return (*out, None, None, None)


def _zero_row_grads(x: torch.Tensor, need: bool) -> Optional[torch.Tensor]:
    return torch.zeros_like(x) if need else None


def _finish(plan: _Plan, loss_local, gs_local, gb_local, p, scale, bias, device):
    """Sum (loss, dscale, dbias) over the ranks in rank order (identical bits everywhere)."""
    vec = torch.stack([torch.as_tensor(x, dtype=torch.float64, device=device).reshape(())
                       for x in (loss_local, gs_local, gb_local)])
    table = torch.stack(_all_gather_fixed(vec, plan.group, plan.world))
    tot = table[0].clone()
    for r in range(1, plan.world):
        tot = tot + table[r]
    return (tot[0].to(p.dtype), tot[1].to(scale.dtype).reshape(scale.shape),
            tot[2].to(bias.dtype).reshape(bias.shape))


def _ring(plan: _Plan, p, q, scale, bias, u, u_cols, need):
    r, w, group = plan.rank, plan.world, plan.group
    nxt, prv = _global_rank(group, (r + 1) % w), _global_rank(group, (r - 1) % w)
    device = p.device
    cur = [q.detach().contiguous()] + ([u_cols.detach().contiguous()] if u_cols is not None else [])
    loss_l = torch.zeros((), dtype=torch.float64, device=device)
    gs_l = torch.zeros((), dtype=torch.float64, device=device)
    gb_l = torch.zeros((), dtype=torch.float64, device=device)
    gp = _zero_row_grads(p, need[0])
    acc: Optional[torch.Tensor] = None
    acc_works: List[Any] = []
    acc_in: Optional[torch.Tensor] = None
    d = q.shape[1]
    for k in range(w):
        s = (r - k) % w
        works: List[Any] = []
        nxt_blk: List[torch.Tensor] = []
        if k < w - 1:  # post the next block's transfer first: it overlaps this block's compute
            s_next = (r - k - 1) % w
            n_next = plan.cols[s_next]
            ops_: List[Any] = []
            for i, t in enumerate(cur):
                buf = t.new_empty((n_next,) + tuple(t.shape[1:]))
                nxt_blk.append(buf)
                ops_.append(dist.P2POp(dist.irecv, buf, prv, group, 8 * k + i))
                ops_.append(dist.P2POp(dist.isend, t, nxt, group, 8 * k + i))
            works = _p2p(ops_)
        q_blk = cur[0]
        u_blk = cur[1] if len(cur) > 1 else None
        gq_blk = None
        if p.shape[0] and q_blk.shape[0]:
            offset = plan.row_off[r] + plan.diag_offset - plan.col_off[s]
            lb, gp_b, gq_blk, gs_b, gb_b = _block(plan, p, q_blk, scale, bias, u, u_blk, offset, need)
            loss_l = loss_l + lb.to(torch.float64)
            if gp_b is not None:
                gp += gp_b
            if gs_b is not None:
                gs_l = gs_l + gs_b.to(torch.float64)
            if gb_b is not None:
                gb_l = gb_l + gb_b.to(torch.float64)
        if need[1]:
            # the gradient accumulator of block s: received from the previous rank (which added
            # its rows' contribution at its step k - 1), plus ours, passed on to the next rank.
            for wk in acc_works:
                wk.wait()
            if k == 0:
                acc = torch.zeros((plan.cols[s], d), dtype=q.dtype, device=device)
            else:
                acc = acc_in  # type: ignore[assignment]
            if gq_blk is not None:
                acc = acc + gq_blk
            acc = acc.contiguous()
            s_in = (r - k - 1) % w  # the block the previous rank worked on at this step
            acc_in = torch.empty((plan.cols[s_in], d), dtype=q.dtype, device=device)
            acc_works = _p2p([dist.P2POp(dist.irecv, acc_in, prv, group, 8 * k + 4),
                              dist.P2POp(dist.isend, acc, nxt, group, 8 * k + 4)])
        for wk in works:
            wk.wait()
        if nxt_blk:
            cur = nxt_blk
    gq = None
    if need[1]:
        for wk in acc_works:
            wk.wait()
        gq = acc_in  # after W hops our own block's accumulator is back
    loss, gs, gb = _finish(plan, loss_l, gs_l, gb_l, p, scale, bias, device)
    return loss, gp, gq, (gs if need[2] else None), (gb if need[3] else None)


def _allgather(plan: _Plan, p, q, scale, bias, u, u_cols, need):
    r, w, group = plan.rank, plan.world, plan.group
    device = p.device
    q_all = _all_gather_rows(q, plan.cols, group, w)
    uc_all = None if u_cols is None else _all_gather_rows(u_cols, plan.cols, group, w)
    loss_l = torch.zeros((), dtype=torch.float64, device=device)
    gs_l = torch.zeros((), dtype=torch.float64, device=device)
    gb_l = torch.zeros((), dtype=torch.float64, device=device)
    gp = _zero_row_grads(p, need[0])
    gq_all = torch.zeros_like(q_all) if need[1] else None
    if p.shape[0]:
        offset = plan.row_off[r] + plan.diag_offset
        lb, gp_b, gq_b, gs_b, gb_b = _block(plan, p, q_all, scale, bias, u, uc_all, offset, need)
        loss_l = lb.to(torch.float64)
        if gp_b is not None:
            gp = gp_b
        if gq_b is not None:
            gq_all = gq_b.contiguous()
        if gs_b is not None:
            gs_l = gs_b.to(torch.float64)
        if gb_b is not None:
            gb_l = gb_b.to(torch.float64)
    gq = None
    if need[1]:
        gq_all = _all_reduce_sum(gq_all, group, w)
        gq = gq_all[plan.col_off[r]: plan.col_off[r] + plan.cols[r]].clone()
    loss, gs, gb = _finish(plan, loss_l, gs_l, gb_l, p, scale, bias, device)
    return loss, gp, gq, (gs if need[2] else None), (gb if need[3] else None)


def _as_scalar(v: Any, like: torch.Tensor) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v.reshape(())
    return torch.tensor(float(v), dtype=torch.float64, device=like.device)


def _sigmoid_global(siglip: bool, p, q, scale, bias, u, *, group, mode, c, threshold, gamma, delta,
                    diagonal, u_cols, diag_offset, normalizer, backend, num_threads, deterministic):
    from molphenix import ops

    _check_mode(mode)
    rank, world = _active(group)
    if world == 1:
        if siglip:
            return ops.siglip_loss(p, q, scale, bias, diag_offset=diag_offset, normalizer=normalizer,
                                   backend=backend, num_threads=num_threads,
                                   deterministic=deterministic)
        return ops.s2l_loss(p, q, scale, bias, u, c=c, threshold=threshold, gamma=gamma,
                            delta=delta, diagonal=diagonal, u_cols=u_cols, diag_offset=diag_offset,
                            normalizer=normalizer, backend=backend, num_threads=num_threads,
                            deterministic=deterministic)
    name = "siglip_loss" if siglip else "s2l_loss"
    # Local checks first, then one metadata exchange: every rank raises if any rank's inputs are
    # invalid or disagree with the others' (widths, dtypes, scale, bias, options).
    error: Optional[BaseException] = None
    meta = [0.0] * 13
    try:
        _check_tensor(p, "p")
        _check_tensor(q, "q")
        _check_tensor(u, "u", allow_none=True)
        _check_tensor(u_cols, "u_cols", allow_none=True)
        if u is None and u_cols is not None:
            raise ValueError("u_cols: given without u; pass u (rows) as well, or neither")
        if u is not None and u.shape[0] != p.shape[0]:
            raise ValueError(f"u: expected {p.shape[0]} rows (as p), got shape {tuple(u.shape)}")
        if u_cols is not None and u_cols.shape[0] != q.shape[0]:
            raise ValueError(f"u_cols: expected {q.shape[0]} rows (as q), got shape {tuple(u_cols.shape)}")
        if u is not None and u_cols is None and u.shape[0] != q.shape[0]:
            raise ValueError(f"u_cols: required when this rank's p and q have different row counts "
                             f"({p.shape[0]} != {q.shape[0]}): u_cols=None means u describes q's rows")
        if p.dtype != q.dtype:
            raise TypeError(f"q: dtype {q.dtype} differs from p's {p.dtype}")
        for t, nm in ((q, "q"), (u, "u"), (u_cols, "u_cols")):
            if t is not None and t.device != p.device:
                raise ValueError(f"{nm}: is on {t.device} but p is on {p.device}")
        if p.shape[1] != q.shape[1]:
            raise ValueError(f"q: width {q.shape[1]} differs from p's {p.shape[1]}")
        # Everything the op would reject on one rank only is checked here, before any transfer:
        # an op error on one rank in the middle of the ring would leave the others waiting.
        for t, nm in ((p, "p"), (q, "q"), (u, "u"), (u_cols, "u_cols")):
            if t is not None and t.numel() and not bool(torch.isfinite(t.detach()).all()):
                raise ValueError(f"{nm}: contains NaN or Inf")
        sv, bv = _scalar_value(scale, "scale"), _scalar_value(bias, "bias")
        if not (math.isfinite(sv) and sv > 0):
            raise ValueError(f"scale: must be a finite number > 0, got {sv!r}")
        if not math.isfinite(bv):
            raise ValueError(f"bias: must be finite, got {bv!r}")
        if normalizer is not None and not (math.isfinite(float(normalizer)) and float(normalizer) > 0):
            raise ValueError(f"normalizer: must be a finite number > 0, got {normalizer!r}")
        if not siglip:
            check_c(c)
            check_threshold(threshold)
            if diagonal not in ("soft", "hard"):
                raise ValueError(f"diagonal: expected 'soft' or 'hard', got {diagonal!r}")
        if isinstance(diag_offset, bool) or int(diag_offset) != diag_offset:
            raise ValueError(f"diag_offset: expected an integer, got {diag_offset!r}")
        e_u = -1 if u is None else u.shape[1]
        e_c = -1 if u is None else (u if u_cols is None else u_cols).shape[1]
        meta = [p.shape[0], q.shape[0], p.shape[1], e_u, e_c, _DTYPE_CODES.get(p.dtype, 0),
                sv, bv,
                -1.0 if normalizer is None else float(normalizer), float(diag_offset),
                float(c), -9.0 if threshold is None else float(threshold),
                float(gamma) * 1000.0 + float(delta) + (0.5 if diagonal == "hard" else 0.0)]
    except (TypeError, ValueError) as e:
        error = e
    dev = p.device if isinstance(p, torch.Tensor) else torch.device("cpu")
    table = _exchange(meta, error, group, world, dev, name)
    if not bool((table[:, 2] == table[0, 2]).all()):
        raise ValueError(f"p: embedding width D differs across ranks ({[int(v) for v in table[:, 2]]})")
    for col, nm in ((3, "u"), (4, "u_cols")):
        if not bool((table[:, col] == table[0, col]).all()):
            raise ValueError(f"{nm}: width E (or presence, -1 = None) differs across ranks "
                             f"({[int(v) for v in table[:, col]]})")
    for col, nm in ((5, "p (dtype)"), (6, "scale"), (7, "bias"), (8, "normalizer"),
                    (9, "diag_offset"), (10, "c"), (11, "threshold"), (12, "gamma/delta/diagonal")):
        _same_across_ranks(table, col, nm)
    rows = [int(v) for v in table[:, 0]]
    cols = [int(v) for v in table[:, 1]]
    b_rows = sum(rows)
    if b_rows == 0 or sum(cols) == 0:
        raise ValueError(f"{name}: the global batch is empty (rows {rows}, columns {cols})")
    plan = _Plan()
    plan.rank, plan.world, plan.group, plan.mode = rank, world, group, mode
    plan.rows, plan.cols, plan.b_rows = rows, cols, b_rows
    plan.row_off = [sum(rows[:i]) for i in range(world)]
    plan.col_off = [sum(cols[:i]) for i in range(world)]
    plan.normalizer = float(b_rows) if normalizer is None else float(normalizer)
    plan.diag_offset = int(diag_offset)
    plan.siglip = siglip
    plan.op_kw = dict(backend=backend, num_threads=num_threads, deterministic=deterministic)
    if not siglip:
        plan.op_kw.update(c=c, threshold=threshold, gamma=gamma, delta=delta, diagonal=diagonal)
    # The op computes the similarity space in float32 (float64 for float64 embeddings): convert
    # once here (the same values the op would use) so the blocks travel in that precision.
    u_dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
    ut = None if u is None else u.detach().to(u_dtype)
    uct = None if u is None else (ut if u_cols is None else u_cols.detach().to(u_dtype))
    st, bt = _as_scalar(scale, p), _as_scalar(bias, p)
    grad_on = torch.is_grad_enabled()
    plan.need = tuple(bool(grad_on and t.requires_grad) for t in (p, q, st, bt))
    return _SigmoidGlobal.apply(p, q, st, bt, ut, uct, plan)


def s2l_loss(
    p: torch.Tensor,
    q: torch.Tensor,
    scale: Any,
    bias: Any,
    u: Optional[torch.Tensor] = None,
    *,
    group: Optional[dist.ProcessGroup] = None,
    mode: str = "ring",
    c: float = ARCTAN_C,
    threshold: Optional[float] = SOFT_LABEL_THRESHOLD,
    gamma: float = S2L_GAMMA,
    delta: float = S2L_DELTA,
    diagonal: str = "soft",
    u_cols: Optional[torch.Tensor] = None,
    diag_offset: int = 0,
    normalizer: Optional[float] = None,
    backend: str = "auto",
    num_threads: Optional[int] = None,
    deterministic: bool = True,
) -> torch.Tensor:
    """S2L loss of the global batch whose rows are spread over the ranks of ``group``.

    The global batch is the concatenation, in rank order, of every rank's ``p`` rows (and of
    every rank's ``q`` rows for the columns); the result equals
    :func:`molphenix.ops.s2l_loss` on that concatenated batch, the same value on every rank.
    Gradients follow the module's convention: the local ``p`` and ``q`` rows get exactly their
    single-process gradient rows, ``scale`` and ``bias`` the full global gradient on every rank.
    Without a process group (or with world size 1) this *is* :func:`molphenix.ops.s2l_loss`.

    Args:
        p: This rank's row embeddings (torch tensor; may have 0 rows if the global batch has some).
        q: This rank's column embeddings, same dtype, width and device as ``p``.
        scale: The multiplier ``t > 0`` (float or 0-dim tensor; the same value on every rank).
        bias: The bias ``b`` (float or 0-dim tensor; the same value on every rank).
        u: This rank's similarity-space rows (a constant; detached). None: identity labels.
        group: The process group (None: the default group).
        mode: ``"ring"`` (rotate ``(q, u)`` blocks with point-to-point sends, overlapped with
            compute) or ``"allgather"`` (gather every rank's columns; for comparison).
        c, threshold, gamma, delta, diagonal: As :func:`molphenix.ops.s2l_loss` (same on every rank).
        u_cols: This rank's similarity-space rows for its ``q`` rows; None means ``u`` (then this
            rank's ``p`` and ``q`` must have the same row count).
        diag_offset: Global offset of the positive: global row ``i``'s positive is global column
            ``i + diag_offset`` (when in range).
        normalizer: The global pair sum is divided by this (default: the global row count).
        backend, num_threads, deterministic: Passed to :func:`molphenix.ops.s2l_loss` per block.

    Returns:
        The global loss, a 0-dim tensor of ``p``'s dtype, identical on every rank.

    Shapes:
        p: [B1_r, D], q: [B2_r, D], u: [B1_r, E], u_cols: [B2_r, E] -> []  (``B1 = sum_r B1_r``)

    Raises:
        ValueError: unknown ``mode``; D, E, dtype, scale, bias or an option differing across
            ranks; an invalid input on any rank (that rank raises its own error, the others a
            ValueError naming it); an empty global batch; and everything
            :func:`molphenix.ops.s2l_loss` raises.
        TypeError: non-tensor or non-floating inputs.
    """
    return _sigmoid_global(False, p, q, scale, bias, u, group=group, mode=mode, c=c,
                           threshold=threshold, gamma=gamma, delta=delta, diagonal=diagonal,
                           u_cols=u_cols, diag_offset=diag_offset, normalizer=normalizer,
                           backend=backend, num_threads=num_threads, deterministic=deterministic)


def siglip_loss(
    p: torch.Tensor,
    q: torch.Tensor,
    scale: Any,
    bias: Any,
    *,
    group: Optional[dist.ProcessGroup] = None,
    mode: str = "ring",
    diag_offset: int = 0,
    normalizer: Optional[float] = None,
    backend: str = "auto",
    num_threads: Optional[int] = None,
    deterministic: bool = True,
) -> torch.Tensor:
    """SigLIP loss of the global batch spread over the ranks (see :func:`s2l_loss`): equals
    :func:`molphenix.ops.siglip_loss` on the concatenated batch, same value on every rank, same
    gradient convention; exactly :func:`molphenix.ops.siglip_loss` without a process group.

    Args:
        p, q: This rank's rows (torch tensors, same dtype, width and device).
        scale, bias: ``t > 0`` and ``b`` (floats or 0-dim tensors, the same on every rank).
        group, mode: As :func:`s2l_loss`.
        diag_offset, normalizer: Global, as :func:`s2l_loss`.
        backend, num_threads, deterministic: Passed to :func:`molphenix.ops.siglip_loss`.

    Returns:
        The global loss, a 0-dim tensor of ``p``'s dtype, identical on every rank.

    Shapes:
        p: [B1_r, D], q: [B2_r, D] -> []

    Raises:
        ValueError, TypeError: as :func:`s2l_loss`.
    """
    return _sigmoid_global(True, p, q, scale, bias, None, group=group, mode=mode, c=ARCTAN_C,
                           threshold=None, gamma=1.0, delta=1.0, diagonal="soft", u_cols=None,
                           diag_offset=diag_offset, normalizer=normalizer, backend=backend,
                           num_threads=num_threads, deterministic=deterministic)


# ---------------------------------------------------------------------------------------------
# all-gather with gradients, and the module wrapper
# ---------------------------------------------------------------------------------------------


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sizes: List[int], rank: int, group, world: int):  # type: ignore[override]
        ctx.lo = sum(sizes[:rank])
        ctx.n = sizes[rank]
        return _all_gather_rows(x, sizes, group, world)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        # Every rank computes the same function of the gathered rows, so the gradient of this
        # rank's rows is its own slice of the gathered gradient: no sum over ranks (which would
        # give W times the single-process gradient).
        return g[ctx.lo: ctx.lo + ctx.n].clone(), None, None, None, None


def _row_counts(n: int, width: int, group, world: int, device, error=None, what="all_gather") -> List[int]:
    table = _exchange([n, width], error, group, world, device, what)
    if not bool((table[:, 1] == table[0, 1]).all()):
        raise ValueError(f"{what}: the row width differs across ranks ({[int(v) for v in table[:, 1]]})")
    return [int(v) for v in table[:, 0]]


def all_gather_with_grad(x: torch.Tensor, group: Optional[dist.ProcessGroup] = None) -> torch.Tensor:
    """Concatenate every rank's rows of ``x`` (rank order), differentiably.

    For a computation that every rank performs identically on the gathered tensor (the same
    global loss everywhere): the backward pass gives this rank's ``x`` exactly its slice of the
    gathered gradient, i.e. the single-process gradient of its rows (not ``W`` times it).
    Ranks may hold different row counts. Without a process group it returns ``x``.

    Args:
        x: This rank's rows (torch tensor, at least 1-D; trailing dims equal on every rank).
        group: The process group (None: the default group).

    Returns:
        The gathered tensor ``[sum_r N_r, ...]``.

    Shapes:
        x: [N_r, ...] -> [N, ...]

    Raises:
        TypeError: ``x`` not a tensor. ValueError: 0-dim ``x``, or trailing dims differing across ranks.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch tensor, got {type(x).__name__}")
    rank, world = _active(group)
    if world == 1:
        return x
    error = None if x.dim() >= 1 else ValueError("x: expected at least 1 dimension (rows), got a 0-dim tensor")
    width = 0 if x.dim() < 1 else int(torch.tensor(x.shape[1:]).prod().item()) * 1000 + x.dim()
    sizes = _row_counts(0 if x.dim() < 1 else x.shape[0], width, group, world, x.device, error,
                        "all_gather_with_grad")
    return _GatherRows.apply(x, sizes, rank, group, world)


class DistributedLoss(nn.Module):
    """Any :mod:`molphenix.losses` loss over the global batch spread across the ranks.

    ``forward(p_local, q_local, u_local=None)`` returns the wrapped loss of the global batch (the
    ranks' rows concatenated in rank order), the same on every rank, with the module's gradient
    convention: local rows get exactly their single-process gradient rows; the wrapped loss's
    parameters (its temperature and bias) the full global gradient, identical on every rank.
    Its parameters are the wrapped loss's parameters (``self.loss``).

    S2L (arctan-L2 similarity) and SigLIP go through :func:`s2l_loss` / :func:`siglip_loss` in
    ``mode`` with the wrapped loss's current clamped ``t`` and ``b`` and its options (``c``,
    ``threshold``, ``gamma``, ``delta``, ``diagonal``, ``sim_space``: ``"input"`` uses ``u``,
    ``"projected"`` the detached ``p`` rows of the block's owner, ``"none"`` identity labels;
    ``backend``). The others (CLIP, InfoLOOB, CLOOME, CWCL, and S2L with cosine labels) gather
    ``p``, ``q`` (and ``u``) with :func:`all_gather_with_grad` and evaluate the wrapped loss on the
    global batch on every rank. ``stats`` are the wrapped loss's for the global batch;
    :meth:`soft_positive_fraction` is the wrapped loss's statistic over the global batch (S2L:
    its first ``stats_rows`` global rows, as the wrapped loss computes it; every rank calls it).
    Without a process group (or with world size 1) it is the wrapped loss.

    Args:
        loss: A :class:`~molphenix.losses.ContrastiveLoss` (e.g. from ``create_loss``).
        group: The process group (None: the default group).
        mode: ``"ring"`` or ``"allgather"`` for S2L / SigLIP (see :func:`s2l_loss`).

    Attributes:
        loss: The wrapped loss module. needs_u, name: the wrapped loss's.

    Shapes:
        forward(p [B_r, D], q [B_r, D], u [B_r, E] | None) -> LossOutput(loss [], stats)

    Raises:
        TypeError: ``loss`` not a ContrastiveLoss. ValueError: unknown ``mode``; in forward,
        what the wrapped loss raises (on every rank when any rank's inputs are invalid) and
        widths differing across ranks.
    """

    def __init__(self, loss: nn.Module, group: Optional[dist.ProcessGroup] = None, mode: str = "ring") -> None:
        super().__init__()
        from molphenix.losses import ContrastiveLoss

        if not isinstance(loss, ContrastiveLoss):
            raise TypeError(f"loss: expected a molphenix ContrastiveLoss, got {type(loss).__name__}")
        self.loss = loss
        self.group = group
        self.mode = _check_mode(mode)

    @property
    def needs_u(self) -> bool:
        """Whether the wrapped loss needs ``u``."""
        return bool(self.loss.needs_u)

    @property
    def name(self) -> str:
        """The wrapped loss's registry name."""
        return self.loss.name

    @torch.no_grad()
    def clamp_parameters_(self) -> None:
        """The wrapped loss's :meth:`clamp_parameters_`."""
        self.loss.clamp_parameters_()

    def similarity_scale(self, x: Any, target_fraction: float, *, seed: int = 0) -> Optional[float]:
        """The wrapped loss's :meth:`~molphenix.losses.ContrastiveLoss.similarity_scale`."""
        return self.loss.similarity_scale(x, target_fraction, seed=seed)

    @torch.no_grad()
    def soft_positive_fraction(self, p: torch.Tensor, u: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """The wrapped loss's soft-positive fraction over the global batch (a collective: every
        rank calls it at the same step); None for a loss without soft labels."""
        from molphenix.losses.labels import (
            SoftLabels,
            cosine_soft_labels,
            offdiagonal_positive_fraction,
            soft_positive_fraction_tensor,
        )

        lossmod = self.loss
        _, world = _active(self.group)
        if world == 1 or not isinstance(lossmod, SoftLabels):
            return lossmod.soft_positive_fraction(p, u)
        us = lossmod.similarity_inputs(p, u)
        if us is None:
            return torch.zeros((), dtype=torch.float64, device=p.device)
        if lossmod.similarity == "cosine":  # exact over the global batch
            return offdiagonal_positive_fraction(cosine_soft_labels(self._first_rows(us, None), lossmod.threshold))
        cap = int(lossmod.stats_rows)
        return soft_positive_fraction_tensor(self._first_rows(us, cap), c=lossmod.c, threshold=lossmod.threshold,
                                             max_rows=cap, backend=lossmod.backend)

    def forward(self, p: torch.Tensor, q: torch.Tensor, u: Optional[torch.Tensor] = None):
        """The wrapped loss of the global batch (see the class).

        Args:
            p: This rank's phenomic embeddings.
            q: This rank's molecular embeddings, row i paired with ``p``'s row i.
            u: This rank's similarity-space rows, or None.

        Returns:
            :class:`~molphenix.losses.LossOutput` for the global batch.

        Shapes:
            p: [B_r, D], q: [B_r, D], u: [B_r, E] | None -> loss []
        """
        from molphenix.losses import LossOutput, S2LLoss, SigLIPLoss

        _, world = _active(self.group)
        if world == 1:
            return self.loss(p, q, u)
        lossmod = self.loss
        if isinstance(lossmod, SigLIPLoss):
            t, b = lossmod.scale_bias()
            self._check_local(p, q, None)
            val = siglip_loss(p, q, t, b, group=self.group, mode=self.mode, backend=lossmod.backend)
            return LossOutput(val, lossmod._stats(t, b))
        if isinstance(lossmod, S2LLoss) and (lossmod.similarity == "arctan_l2" or lossmod.sim_space == "none"):
            us, err = None, None
            try:
                if lossmod.sim_space == "input" or isinstance(p, torch.Tensor):
                    us = lossmod.similarity_inputs(p, u)  # u (u_norm="unit": normalised), or p
                self._check_local(p, q, us, raise_now=False)
            except (TypeError, ValueError) as e:
                err = e
            if err is not None:  # every rank must learn of it (inside s2l_loss's exchange)
                _exchange([0.0] * 13, err, self.group, world,
                          p.device if isinstance(p, torch.Tensor) else torch.device("cpu"), "s2l_loss")
            t, b = lossmod.scale_bias()
            val = s2l_loss(p, q, t, b, us, group=self.group, mode=self.mode, c=lossmod.c,
                           threshold=lossmod.threshold, gamma=lossmod.gamma, delta=lossmod.delta,
                           diagonal=lossmod.diagonal, backend=lossmod.backend)
            return LossOutput(val, lossmod._stats(t, b))
        return self._gathered(p, q, u)

    # -- helpers -----------------------------------------------------------------------------

    def _check_local(self, p, q, u, raise_now: bool = True) -> None:
        err = None
        try:
            if not isinstance(p, torch.Tensor) or not isinstance(q, torch.Tensor):
                raise TypeError(f"{self.loss.name}: p and q must be torch tensors")
            if p.dim() != 2 or q.dim() != 2 or p.shape != q.shape:
                raise ValueError(f"{self.loss.name}: p {tuple(p.shape)} and q {tuple(q.shape)} must be "
                                 "2-D [B, D] of the same shape (row i of p is paired with row i of q)")
            if u is not None and (not isinstance(u, torch.Tensor) or u.dim() != 2 or u.shape[0] != p.shape[0]):
                raise ValueError(f"u: expected [B={p.shape[0]}, E], got "
                                 f"{tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__}")
        except (TypeError, ValueError) as e:
            err = e
        if err is not None:
            if raise_now:
                _, world = _active(self.group)
                _exchange([0.0] * 13, err, self.group, world,
                          p.device if isinstance(p, torch.Tensor) else torch.device("cpu"),
                          f"{self.loss.name} loss")
            raise err

    def _first_rows(self, us: torch.Tensor, cap: Optional[int]) -> torch.Tensor:
        """The first ``cap`` rows of the global batch's ``us`` (all rows for None), on every rank."""
        rank, world = _active(self.group)
        with torch.no_grad():
            sizes = _row_counts(us.shape[0], us.shape[1], self.group, world, us.device,
                                what="soft_pos_frac")
            off = sum(sizes[:rank])
            cap = sum(sizes) if cap is None else int(cap)
            take = [max(0, min(n, cap - sum(sizes[:i]))) for i, n in enumerate(sizes)]
            mine = us[: take[rank]] if off < cap else us[:0]
            return _all_gather_rows(mine, take, self.group, world) if max(take) > 0 else us[:0]

    def _gathered(self, p, q, u):
        """Gather the global batch (with gradients) and evaluate the wrapped loss on it."""
        rank, world = _active(self.group)
        err = None
        try:
            self._check_local(p, q, None, raise_now=False)
            if u is not None and (not isinstance(u, torch.Tensor) or u.dim() != 2 or u.shape[0] != p.shape[0]):
                raise ValueError(f"u: expected [B={p.shape[0]}, E], got "
                                 f"{tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__}")
        except (TypeError, ValueError) as e:
            err = e
        dev = p.device if isinstance(p, torch.Tensor) else torch.device("cpu")
        meta = [0.0, 0.0, -1.0]
        if err is None:
            meta = [p.shape[0], p.shape[1], -1.0 if u is None else u.shape[1]]
        table = _exchange(meta, err, self.group, world, dev, f"{self.loss.name} loss")
        if not bool((table[:, 1] == table[0, 1]).all()):
            raise ValueError(f"p: embedding width D differs across ranks ({[int(v) for v in table[:, 1]]})")
        if not bool((table[:, 2] == table[0, 2]).all()):
            raise ValueError(f"u: width E (or presence, -1 = None) differs across ranks "
                             f"({[int(v) for v in table[:, 2]]})")
        sizes = [int(v) for v in table[:, 0]]
        pq = torch.cat([p, q], dim=1)  # one gather for both (same dtype): [B_r, 2D]
        g = _GatherRows.apply(pq, sizes, rank, self.group, world)
        d = p.shape[1]
        p_all, q_all = g[:, :d], g[:, d:]
        u_all = None if u is None else _all_gather_rows(u, sizes, self.group, world)
        return self.loss(p_all, q_all, u_all)
