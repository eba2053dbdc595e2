"""Fused S2L loss (and SigLIP, its identity-label special case) as a torch custom op.

The compiled kernel computes the loss *and* the gradients for p, q, scale and bias in one tiled
pass without allocating ``B1 x B2``. The torch op ``molphenix::s2l_loss_fwd`` returns
``(stats[3] float64 = (loss, dL/dscale, dL/dbias), dL/dp, dL/dq)``; its registered backward
only rescales those gradients by the incoming gradient, in place (first-order only: a second
derivative through it raises ``ValueError``; ``backend="reference"`` supports higher orders).
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch

from molphenix import _ext
from molphenix.ops import _common as C
from molphenix.ops import _reference

__all__ = ["s2l_loss", "siglip_loss"]


# ---------------------------------------------------------------------------------------------
# the torch op
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("molphenix::s2l_loss_fwd", mutates_args=())
def _s2l_loss_fwd(
    p: torch.Tensor,
    q: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    u: Optional[torch.Tensor],
    u_cols: Optional[torch.Tensor],
    c: float,
    has_threshold: bool,
    threshold: float,
    gamma: float,
    delta: float,
    hard_diagonal: bool,
    diag_offset: int,
    normalizer: float,
    compute_grad: bool,
    deterministic: bool,
    num_threads: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ext = _ext.load()
    p, q, u, u_cols = C.contiguous(p, q, u, u_cols)
    b1, d = p.shape
    b2 = q.shape[0]
    e = 0 if u is None else u.shape[1]
    stats = torch.empty(3, dtype=torch.float64, device=p.device)
    if compute_grad:
        grad_p, grad_q = torch.empty_like(p), torch.empty_like(q)
    else:
        grad_p, grad_q = p.new_empty(0), q.new_empty(0)
    ws = None
    if p.device.type == "cuda":
        nbytes = ext.s2l_loss_workspace_bytes(C.dtype_name(p.dtype), b1, b2, d, e, u is not None,
                                              compute_grad, deterministic)
        ws = C.workspace(nbytes, p)
    # scale and bias are read on the host: a 0-dim CUDA tensor costs one small device sync here.
    ext.s2l_loss_fwd(
        p, q, u, u_cols, stats, grad_p if compute_grad else None, grad_q if compute_grad else None, ws,
        scale=float(scale.item()), bias=float(bias.item()), c=c, has_threshold=has_threshold,
        threshold=threshold, gamma=gamma, delta=delta, hard_diagonal=hard_diagonal,
        diag_offset=diag_offset, normalizer=normalizer, compute_grad=compute_grad,
        deterministic=deterministic, num_threads=num_threads, stream=C.stream_of(p),
    )
    return stats, grad_p, grad_q


@_s2l_loss_fwd.register_fake
def _(p, q, scale, bias, u, u_cols, c, has_threshold, threshold, gamma, delta, hard_diagonal,
      diag_offset, normalizer, compute_grad, deterministic, num_threads):
    stats = p.new_empty(3, dtype=torch.float64)
    if compute_grad:
        return stats, torch.empty_like(p), torch.empty_like(q)
    return stats, p.new_empty(0), q.new_empty(0)


_TENSOR_INPUTS = (0, 1, 2, 3, 4, 5)  # p, q, scale, bias, u, u_cols


def _setup_context(ctx, inputs, output):
    stats, grad_p, grad_q = output
    # dL/dp and dL/dq are by-products of the forward pass, not differentiable outputs; unused
    # output gradients are not materialised (no B x D zeros in the backward pass).
    ctx.mark_non_differentiable(grad_p, grad_q)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(stats, grad_p, grad_q, *(inputs[i] for i in _TENSOR_INPUTS))
    ctx.params = tuple(inputs[6:])
    ctx.first = True
    ctx.compute_grad = inputs[14]


def _backward(ctx, g_stats, g_grad_p, g_grad_q):
    stats, grad_p, grad_q, *tensor_inputs = ctx.saved_tensors
    if g_stats is None or not any(ctx.needs_input_grad[:4]):
        return (None,) * 17
    if not ctx.compute_grad:
        raise ValueError("s2l_loss: the compiled op was run with compute_grad=False; "
                         "call it with gradients enabled to differentiate")
    g = g_stats[0].detach()
    if not C.is_eager(grad_p):  # traced (torch.compile / opcheck): plain out-of-place products
        dp = grad_p * g if ctx.needs_input_grad[0] else None
        dq = grad_q * g if ctx.needs_input_grad[1] else None
    elif ctx.first:
        # Scale the kernel's gradients in place, through `.data` (a fresh version counter, so
        # the saved tensors stay valid) and hand them over: autograd stores them as p.grad /
        # q.grad without a copy, so the backward pass allocates nothing of size B x D.
        ctx.first = False
        grad_p, grad_q = grad_p.data, grad_q.data
        dp = grad_p.mul_(g) if ctx.needs_input_grad[0] else None
        dq = grad_q.mul_(g) if ctx.needs_input_grad[1] else None
    else:
        # A second backward through this node (retain_graph=True): the first one handed the
        # buffers out, so recompute them (the kernel is deterministic: identical results).
        _, grad_p, grad_q = _s2l_loss_fwd(*(t.detach() if t is not None else None
                                            for t in tensor_inputs), *ctx.params)
        dp = grad_p.mul_(g) if ctx.needs_input_grad[0] else None
        dq = grad_q.mul_(g) if ctx.needs_input_grad[1] else None
    s_dtype, b_dtype = tensor_inputs[2].dtype, tensor_inputs[3].dtype
    ds = (g * stats[1]).to(s_dtype) if ctx.needs_input_grad[2] else None
    db = (g * stats[2]).to(b_dtype) if ctx.needs_input_grad[3] else None
    # siglip_loss is this op with identity labels and gamma = delta = 1: name it in the error.
    name = ("siglip_loss" if tensor_inputs[4] is None and ctx.params[3] == ctx.params[4] == 1.0
            else "s2l_loss")
    dp, dq, ds, db = C.first_order_only(name, (dp, dq, ds, db), tensor_inputs[:4])
    return dp, dq, ds, db, None, None, None, None, None, None, None, None, None, None, None, None, None


torch.library.register_autograd("molphenix::s2l_loss_fwd", _backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------


def _as_scalar_tensor(value: Any, name: str, like: torch.Tensor, positive: bool = False) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        C.check_real(value, name, positive=positive)
        if value.device != like.device:
            raise ValueError(f"{name}: is on {value.device} but p is on {like.device}; "
                             "all arrays must be on the same device")
        return value
    v = C.check_real(value, name, positive=positive)
    return torch.tensor(v, dtype=torch.float64, device=like.device)


class _Args:
    """Validated, converted arguments of s2l_loss / siglip_loss."""

    __slots__ = ("kind", "p", "q", "u", "u_cols", "scale", "bias", "c", "threshold", "gamma",
                 "delta", "hard", "diag_offset", "normalizer", "threads", "backend")


def _prepare(op, p, q, scale, bias, u, u_cols, c, threshold, gamma, delta, diagonal, diag_offset,
             normalizer, backend, num_threads) -> _Args:
    a = _Args()
    a.kind = C.result_kind(p, q)
    pt, qt = C.to_torch(p, "p"), C.to_torch(q, "q")
    C.check_float_matrix(pt, "p", allow_empty_rows=False)
    C.check_float_matrix(qt, "q", allow_empty_rows=False)
    C.check_same_dtype(pt, "p", qt, "q")
    C.check_same_width(pt, "p", qt, "q")
    C.check_same_device(pt, "p", (qt, "q"))
    # u and u_cols are constants on every backend: one that requires grad is accepted and
    # detached (no gradient flows to it, as the fused kernels compute none).
    ut = None if u is None else C.to_torch(u, "u").detach()
    uct = None if u_cols is None else C.to_torch(u_cols, "u_cols").detach()
    b1, b2 = pt.shape[0], qt.shape[0]
    if ut is None and uct is not None:
        raise ValueError("u_cols: given without u; pass u (rows) as well, or neither")
    if ut is not None:
        C.check_float_matrix(ut, "u")
        C.check_same_device(pt, "p", (ut, "u"), (uct, "u_cols"))
        if ut.shape[0] != b1:
            raise ValueError(f"u: expected {b1} rows (as p), got shape {tuple(ut.shape)}")
        if uct is None:
            if b1 != b2:
                raise ValueError(
                    f"u_cols: required when p and q have different row counts ({b1} != {b2})")
            uct = ut
        else:
            C.check_float_matrix(uct, "u_cols")
            C.check_same_width(ut, "u", uct, "u_cols")
            if uct.shape[0] != b2:
                raise ValueError(f"u_cols: expected {b2} rows (as q), got shape {tuple(uct.shape)}")
    a.p, a.q, a.u, a.u_cols = pt, qt, ut, uct
    a.c = C.check_real(c, "c", positive=True)
    a.threshold = None if threshold is None else C.check_real(threshold, "threshold", lo=-1.0, hi=1.0)
    a.gamma = C.check_real(gamma, "gamma")
    a.delta = C.check_real(delta, "delta")
    if diagonal not in ("soft", "hard"):
        raise ValueError(f"diagonal: expected 'soft' or 'hard', got {diagonal!r}")
    a.hard = diagonal == "hard"
    a.diag_offset = C.check_int(diag_offset, "diag_offset")
    a.normalizer = float(b1) if normalizer is None else C.check_real(normalizer, "normalizer", positive=True)
    a.scale = _as_scalar_tensor(scale, "scale", pt, positive=True)
    a.bias = _as_scalar_tensor(bias, "bias", pt)
    a.threads = C.resolve_threads(num_threads)
    a.backend = C.resolve_backend(op, backend, pt.device, pt.dtype)
    return a


def _trusted(op, p, q, scale, bias, u, u_cols, c, threshold, gamma, delta, diagonal, diag_offset,
             normalizer, backend, num_threads) -> _Args:
    """:func:`_prepare` without the checks (for :mod:`molphenix.ops.prepared`): the same
    conversions, so the kernel sees the same arguments, but no pass over the values and no read
    of a tensor's value on the host."""
    a = _Args()
    a.kind = "torch"
    a.p, a.q = p, q
    a.u = None if u is None else u.detach()
    a.u_cols = a.u if u_cols is None else u_cols.detach()
    if a.u is None:
        a.u_cols = None
    a.c = float(c)
    a.threshold = None if threshold is None else float(threshold)
    a.gamma, a.delta = float(gamma), float(delta)
    a.hard = diagonal == "hard"
    a.diag_offset = int(diag_offset)
    a.normalizer = float(p.shape[0]) if normalizer is None else float(normalizer)
    a.scale = scale if isinstance(scale, torch.Tensor) else torch.tensor(float(scale), dtype=torch.float64,
                                                                          device=p.device)
    a.bias = bias if isinstance(bias, torch.Tensor) else torch.tensor(float(bias), dtype=torch.float64,
                                                                       device=p.device)
    a.threads = C.resolve_threads(num_threads)
    a.backend = C.resolve_backend(op, backend, p.device, p.dtype)
    return a


def _loss(a: _Args, diagonal: str, deterministic: bool) -> torch.Tensor:
    """The loss of prepared arguments on their backend (a torch 0-dim tensor)."""
    if a.backend == "reference":
        return _reference.s2l_loss(a.p, a.q, a.scale, a.bias, a.u, c=a.c, threshold=a.threshold,
                                   gamma=a.gamma, delta=a.delta, diagonal=diagonal,
                                   u_cols=a.u_cols, diag_offset=a.diag_offset,
                                   normalizer=a.normalizer)
    return _run_kernel(a, deterministic)


def _siglip(a: _Args, deterministic: bool) -> torch.Tensor:
    if a.backend == "reference":
        return _reference.siglip_loss(a.p, a.q, a.scale, a.bias, diag_offset=a.diag_offset,
                                      normalizer=a.normalizer)
    return _run_kernel(a, deterministic)


def _run_kernel(a: _Args, deterministic: bool) -> torch.Tensor:
    ut, uct = a.u, a.u_cols
    if ut is not None:  # the similarity space is float32 (float64 for float64 embeddings)
        u_dtype = torch.float64 if a.p.dtype == torch.float64 else torch.float32
        ut, uct = ut.to(u_dtype), uct.to(u_dtype)
    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (a.p, a.q, a.scale, a.bias))
    stats, _, _ = _s2l_loss_fwd(
        a.p, a.q, a.scale, a.bias, ut, uct, a.c, a.threshold is not None,
        0.0 if a.threshold is None else a.threshold, a.gamma, a.delta, a.hard, a.diag_offset,
        a.normalizer, needs_grad, bool(deterministic), a.threads)
    return stats[0].to(a.p.dtype)


def s2l_loss(
    p: Any,
    q: Any,
    scale: Any,
    bias: Any,
    u: Any = None,
    *,
    c: float = 0.3,
    threshold: Optional[float] = 0.75,
    gamma: float = 1.75,
    delta: float = 0.75,
    diagonal: str = "soft",
    u_cols: Any = None,
    diag_offset: int = 0,
    normalizer: Optional[float] = None,
    backend: str = "auto",
    num_threads: Optional[int] = None,
    deterministic: bool = True,
) -> Any:
    """Soft-weighted sigmoid ("S2L") loss of MolPhenix, fused: loss and gradients in one pass.

    ``L = sum_ij [(w+ + w-) softplus(z_ij) - w+ z_ij] / normalizer`` with ``z = scale <p_i, q_j>
    + bias``, ``w+ = s``, ``w- = gamma - delta s`` and ``s`` the thresholded arctan-L2 similarity
    of ``u`` rows and ``u_cols`` rows (1 on the positive pair ``j == i + diag_offset``; the
    identity without ``u``). ``p`` and ``q`` are used as given (normalise them yourself).

    Args:
        p: row embeddings (phenomic head output). torch (autograd), numpy or cupy.
        q: column embeddings (molecular head output), same dtype/device as ``p``.
        scale: the multiplier ``t > 0`` (float or 0-dim tensor; differentiable).
        bias: the bias ``b`` (float or 0-dim tensor; differentiable).
        u: similarity-space rows. A constant on every backend: a ``u`` that requires grad is
            accepted and detached (no gradient flows to it). None: identity labels.
        c: arctan width (> 0).
        threshold: soft-label threshold in [-1, 1], or None for no thresholding.
        gamma, delta: negative weights ``w- = gamma - delta s``.
        diagonal: "soft" (the positive pair is weighted like any pair, with s = 1) or "hard"
            (w+ = 1, w- = 0 on the positive pair).
        u_cols: similarity-space columns (a constant, like ``u``); None means ``u`` (then B1
            must equal B2).
        diag_offset: row i's positive is column ``i + diag_offset`` (none when out of range).
        normalizer: the pair sum is divided by this (default B1). Blocks of a split batch with
            the same normalizer sum exactly to the whole-batch loss.
        backend: "auto" | "cpu" | "cuda" | "reference" (``MOLPHENIX_BACKEND`` overrides auto).
        num_threads: CPU threads (None: ``torch.get_num_threads()``).
        deterministic: CUDA only: no floating-point atomics (bitwise reproducible). The CPU
            kernel is always deterministic and independent of the thread count.

    Returns:
        The scalar loss: a 0-dim tensor of ``p``'s dtype (a 0-dim numpy / cupy array for those
        inputs). With the compiled backends the gradients are first-order only: a second
        derivative (``create_graph=True`` and differentiating again) raises ``ValueError``;
        ``backend="reference"`` supports higher orders.

    Memory:
        The compiled CPU backend never allocates ``B1 x B2``. Beyond the inputs and the
        gradients it returns (which autograd keeps as ``p.grad`` / ``q.grad`` without a copy),
        its working memory is the squared norms of ``u`` rows and columns, ``2 tile^2`` values
        per thread (tile edge <= 512), 24 bytes per row sweep of tiles (``ceil(B1 / tile)``
        times at most 16 groups), and for very rectangular shapes at most 32 MiB of partial
        gradients; ``molphenix._C.cpu_workspace_stats()`` reports the peak.

    Shapes:
        p: [B1, D], q: [B2, D], u: [B1, E], u_cols: [B2, E] -> []

    Raises:
        TypeError: non-floating or mismatched dtypes, non-array inputs.
        ValueError: wrong ranks or widths, empty batches, NaN/Inf, mixed devices, c <= 0,
            threshold outside [-1, 1], scale <= 0, normalizer <= 0, unknown diagonal/backend;
            a second-order gradient through a compiled backend (raised by the second backward).
    """
    a = _prepare("s2l_loss", p, q, scale, bias, u, u_cols, c, threshold, gamma, delta, diagonal,
                 diag_offset, normalizer, backend, num_threads)
    return C.from_torch(_loss(a, diagonal, deterministic), a.kind)


def siglip_loss(
    p: Any,
    q: Any,
    scale: Any,
    bias: Any,
    *,
    diag_offset: int = 0,
    normalizer: Optional[float] = None,
    backend: str = "auto",
    num_threads: Optional[int] = None,
    deterministic: bool = True,
) -> Any:
    """SigLIP sigmoid loss ``-(1/normalizer) sum_ij log sigmoid(y_ij z_ij)`` (y = +1 on the
    positive pair, -1 elsewhere): S2L with identity labels and gamma = delta = 1, on the same
    fused kernel. Arguments, returns and errors as :func:`s2l_loss`.

    Shapes:
        p: [B1, D], q: [B2, D] -> []
    """
    a = _prepare("siglip_loss", p, q, scale, bias, None, None, 0.3, None, 1.0, 1.0, "soft",
                 diag_offset, normalizer, backend, num_threads)
    return C.from_torch(_siglip(a, deterministic), a.kind)
