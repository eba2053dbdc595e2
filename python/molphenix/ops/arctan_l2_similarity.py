"""Pairwise arctan-L2 similarity as a differentiable torch custom op."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch

from molphenix import _ext
from molphenix.ops import _common as C
from molphenix.ops import _reference

__all__ = ["arctan_l2_similarity"]


@torch.library.custom_op("molphenix::arctan_l2_similarity", mutates_args=())
def _fwd(a: torch.Tensor, b: torch.Tensor, c: float, has_threshold: bool, threshold: float,
         num_threads: int) -> torch.Tensor:
    a, b = C.contiguous(a, b)
    out = a.new_empty((a.shape[0], b.shape[0]))
    _ext.load().arctan_l2_similarity_fwd(a, b, out, c=c, has_threshold=has_threshold,
                                         threshold=threshold, num_threads=num_threads,
                                         stream=C.stream_of(a))
    return out


@_fwd.register_fake
def _(a, b, c, has_threshold, threshold, num_threads):
    return a.new_empty((a.shape[0], b.shape[0]))


@torch.library.custom_op("molphenix::arctan_l2_similarity_backward", mutates_args=())
def _bwd(grad: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: float, has_threshold: bool,
         threshold: float, num_threads: int) -> Tuple[torch.Tensor, torch.Tensor]:
    grad, a, b = C.contiguous(grad, a, b)
    grad = grad.to(a.dtype)
    ga, gb = torch.empty_like(a), torch.empty_like(b)
    _ext.load().arctan_l2_similarity_bwd(grad, a, b, ga, gb, c=c, has_threshold=has_threshold,
                                         threshold=threshold, num_threads=num_threads,
                                         stream=C.stream_of(a))
    return ga, gb


@_bwd.register_fake
def _(grad, a, b, c, has_threshold, threshold, num_threads):
    return torch.empty_like(a), torch.empty_like(b)


def _setup_context(ctx, inputs, output):
    a, b, c, has_threshold, threshold, num_threads = inputs
    ctx.save_for_backward(a, b)
    ctx.params = (c, has_threshold, threshold, num_threads)


def _backward(ctx, grad):
    a, b = ctx.saved_tensors
    # The compiled backward is first-order: under create_graph=True its results are tied to a
    # node that raises on a second derivative (instead of silently dropping terms).
    ga, gb = _bwd(grad.detach(), a.detach(), b.detach(), *ctx.params)
    ga, gb = C.first_order_only("arctan_l2_similarity", (ga, gb), (a, b))
    return (ga if ctx.needs_input_grad[0] else None, gb if ctx.needs_input_grad[1] else None,
            None, None, None, None)


torch.library.register_autograd("molphenix::arctan_l2_similarity", _backward,
                                setup_context=_setup_context)


def arctan_l2_similarity(
    a: Any,
    b: Any,
    *,
    c: float = 0.3,
    threshold: Optional[float] = None,
    backend: str = "auto",
    num_threads: Optional[int] = None,
) -> Any:
    """Pairwise arctan-L2 similarity ``s_ij = 1 - (4/pi) atan(d2_ij / c)``.

    ``d2_ij = max(|a_i|^2 + |b_j|^2 - 2<a_i, b_j>, 0)`` is accumulated in float32 or wider. With a
    ``threshold``, entries below it are set to 0 (their gradient is 0). Differentiable in ``a``
    and ``b``; the compiled backends give first-order gradients only (a second derivative
    raises ``ValueError``; use ``backend="reference"`` for higher orders).

    Args:
        a: rows (torch, numpy or cupy; float32/float64, plus bfloat16/float16 on CUDA).
        b: columns, same dtype/device and width as ``a``.
        c: the width of the arctan window (> 0).
        threshold: None, or a value in [-1, 1] below which similarities are zeroed.
        backend: "auto" | "cpu" | "cuda" | "reference".
        num_threads: CPU threads (None: ``torch.get_num_threads()``).

    Returns:
        The [N, M] similarity matrix, same kind and dtype as ``a``.

    Shapes:
        a: [N, E], b: [M, E] -> [N, M]

    Raises:
        TypeError: non-floating or mismatched dtypes. ValueError: wrong rank or width, NaN/Inf,
            mixed devices, c <= 0, threshold outside [-1, 1], unknown backend; a second-order
            gradient through a compiled backend (raised by the second backward pass).
    """
    kind = C.result_kind(a, b)
    at, bt = C.to_torch(a, "a"), C.to_torch(b, "b")
    C.check_float_matrix(at, "a")
    C.check_float_matrix(bt, "b")
    C.check_same_dtype(at, "a", bt, "b")
    C.check_same_width(at, "a", bt, "b")
    C.check_same_device(at, "a", (bt, "b"))
    c = C.check_real(c, "c", positive=True)
    thr = None if threshold is None else C.check_real(threshold, "threshold", lo=-1.0, hi=1.0)
    nt = C.resolve_threads(num_threads)
    which = C.resolve_backend("arctan_l2_similarity", backend, at.device, at.dtype)
    if which == "reference":
        out = _reference.arctan_l2_similarity(at, bt, c=c, threshold=thr)
    elif at.shape[0] == 0 or bt.shape[0] == 0:
        out = at.new_zeros((at.shape[0], bt.shape[0])) + 0 * (at.sum() + bt.sum())
    else:
        out = _fwd(at, bt, c, thr is not None, 0.0 if thr is None else thr, nt)
    return C.from_torch(out, kind)
