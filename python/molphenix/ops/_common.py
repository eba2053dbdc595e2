"""Shared plumbing of the public ops: array conversion (numpy / torch / cupy, zero-copy),
input validation with errors that name the argument, backend resolution and threads.

Nothing here does math; the kernels live in ``molphenix._C`` and the oracle in ``_reference``.
"""

from __future__ import annotations

import math
import os
import warnings
from fractions import Fraction
from typing import Any, Iterable, Optional, Sequence, Tuple

import numpy as np
import torch

from molphenix import _ext
from molphenix._warnings import external_stacklevel

BACKENDS = ("auto", "cpu", "cuda", "reference")
METRICS = ("cosine", "dot", "arctan_l2")
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_CPU_KERNEL_DTYPES = (torch.float32, torch.float64)

# ---------------------------------------------------------------------------------------------
# array kinds
# ---------------------------------------------------------------------------------------------


def _is_cupy(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "cupy" and hasattr(x, "__cuda_array_interface__")


def array_kind(x: Any) -> str:
    """'torch', 'numpy' or 'cupy' (anything else is a TypeError raised by :func:`to_torch`)."""
    if isinstance(x, torch.Tensor):
        return "torch"
    if isinstance(x, np.ndarray):
        return "numpy"
    if _is_cupy(x):
        return "cupy"
    return "other"


def to_torch(x: Any, name: str) -> torch.Tensor:
    """View ``x`` as a torch tensor without copying (numpy via ``from_numpy``, cupy via DLPack)."""
    kind = array_kind(x)
    if kind == "torch":
        if x.device.type not in ("cpu", "cuda"):
            raise ValueError(f"{name}: unsupported device {x.device}; expected a CPU or CUDA array")
        return x
    if kind == "numpy":
        if not x.flags.writeable:  # torch warns on read-only memory; a copy is the safe answer
            x = x.copy()
        if x.dtype.byteorder not in ("=", "|") and x.dtype.itemsize > 1:
            raise TypeError(f"{name}: expected a native-endian array, got dtype {x.dtype}")
        return torch.from_numpy(x)
    if kind == "cupy":
        return torch.from_dlpack(x)
    raise TypeError(
        f"{name}: expected a torch.Tensor, numpy.ndarray or cupy.ndarray, got {type(x).__name__}"
    )


def from_torch(t: torch.Tensor, kind: str) -> Any:
    """Return ``t`` as the caller's array kind (zero-copy)."""
    if kind == "numpy":
        return t.detach().cpu().numpy()
    if kind == "cupy":
        import cupy  # noqa: F401 - present whenever a cupy array came in

        return cupy.from_dlpack(t.detach())
    return t


def result_kind(*arrays: Any) -> str:
    """The array kind results are returned as: that of the first array argument."""
    for a in arrays:
        k = array_kind(a)
        if k != "other":
            return k
    return "torch"


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------


def check_float_matrix(t: torch.Tensor, name: str, *, allow_empty_rows: bool = True) -> None:
    """2-D floating tensor with finite values."""
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{name}: expected a floating-point dtype (float32, float64, bfloat16, float16), "
            f"got {t.dtype}"
        )
    if t.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D array [rows, dim], got {t.dim()} dimension(s) "
                         f"with shape {tuple(t.shape)}")
    if not allow_empty_rows and t.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one row, got shape {tuple(t.shape)}")
    if t.shape[1] == 0:
        raise ValueError(f"{name}: expected a non-zero embedding width, got shape {tuple(t.shape)}")
    check_finite(t, name)


_FINITE_CHUNK = 1 << 20  # elements per isfinite pass: bounds the check's temporaries (~6 MB)


def check_finite(t: torch.Tensor, name: str) -> None:
    """ValueError naming ``name`` and the first bad index if ``t`` holds NaN or Inf.

    A sum screens the common all-finite case in one pass; otherwise ``torch.isfinite``
    (which allocates temporaries of ``t``'s size) runs in row chunks of about a million elements.
    """
    if not t.numel():
        return
    # Fast screen: a NaN or Inf anywhere makes the sum non-finite, so a finite sum proves
    # every element finite, in one streaming pass without temporaries of t's size. Only a
    # non-finite sum (a bad value, or an overflow of huge finite values) takes the exact
    # element-wise scan below, which also locates the first bad index.
    if bool(torch.isfinite(t.sum())):
        return
    if t.numel() <= _FINITE_CHUNK or t.dim() == 0:
        ok = bool(torch.isfinite(t).all())
    else:
        flat = t.reshape(t.shape[0], -1) if t.dim() > 1 else t.reshape(-1, 1)
        rows = max(1, _FINITE_CHUNK // max(1, flat.shape[1]))
        ok = bool(torch.stack([torch.isfinite(flat[i:i + rows]).all()
                               for i in range(0, flat.shape[0], rows)]).all())
    if not ok:
        bad = (~torch.isfinite(t)).nonzero()[0].tolist()
        raise ValueError(f"{name}: contains NaN or Inf (first at index {tuple(bad)})")


def check_same_width(a: torch.Tensor, an: str, b: torch.Tensor, bn: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{bn}: expected {a.shape[1]} columns to match {an} (shape {tuple(a.shape)}), "
            f"got shape {tuple(b.shape)}"
        )


def check_same_device(ref: torch.Tensor, refname: str, *others: Tuple[Optional[torch.Tensor], str]) -> None:
    for t, name in others:
        if t is not None and t.device != ref.device:
            raise ValueError(
                f"{name}: is on {t.device} but {refname} is on {ref.device}; "
                "all arrays must be on the same device"
            )


def check_same_dtype(ref: torch.Tensor, refname: str, t: torch.Tensor, name: str) -> None:
    if t.dtype != ref.dtype:
        raise TypeError(f"{name}: dtype {t.dtype} does not match {refname} dtype {ref.dtype}")


def check_real(value: Any, name: str, *, positive: bool = False, lo: Optional[float] = None,
               hi: Optional[float] = None) -> float:
    """A finite real number (Python scalar or 0-dim tensor / array), optionally bounded."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    if isinstance(value, (torch.Tensor, np.ndarray)):
        if tuple(value.shape) != ():
            raise ValueError(f"{name}: expected a scalar (0-dim), got shape {tuple(value.shape)}")
        if isinstance(value, torch.Tensor) and (value.dtype == torch.bool or value.is_complex()):
            raise TypeError(f"{name}: expected a real number, got dtype {value.dtype}")
        if isinstance(value, np.ndarray) and value.dtype.kind not in "iuf":
            raise TypeError(f"{name}: expected a real number, got dtype {value.dtype}")
        value = value.item()
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {v}")
    if positive and not v > 0:
        raise ValueError(f"{name}: expected > 0, got {v}")
    if lo is not None and v < lo or hi is not None and v > hi:
        raise ValueError(f"{name}: expected a value in [{lo}, {hi}], got {v}")
    return v


def check_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    return int(value)


def check_metric(metric: Any) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {METRICS}, got {metric!r}")
    return metric


_SHORT_FLOAT_DTYPES = {np.dtype(np.float32): np.float32, np.dtype(np.float16): np.float16}


def fraction_value(fraction: Any, name: str = "fraction") -> Tuple[float, Fraction]:
    """A fraction in (0, 1] as ``(python_float, exact_decimal)``.

    The value is read as its shortest decimal representation *in its own precision*: a Python
    float 0.07 and a numpy / torch float32 scalar 0.07 both read as 7/100 (the float32 one is
    not widened to 0.07000000029802322 first). ``python_float`` is that decimal as a Python
    float (0.07), suitable as a dictionary key.
    """
    if isinstance(fraction, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a real number in (0, 1], got bool")
    f = check_real(fraction, name)
    if not 0.0 < f <= 1.0:
        raise ValueError(f"{name}: expected a value in (0, 1], got {f}")
    dtype = None
    if isinstance(fraction, (np.generic, np.ndarray)):
        dtype = np.dtype(fraction.dtype)
    elif isinstance(fraction, torch.Tensor):
        # bfloat16 values are exactly float32 values: read them at float32 precision
        dtype = {torch.float32: np.dtype(np.float32), torch.bfloat16: np.dtype(np.float32),
                 torch.float16: np.dtype(np.float16)}.get(fraction.dtype)
    if dtype in _SHORT_FLOAT_DTYPES:
        text = np.format_float_positional(_SHORT_FLOAT_DTYPES[dtype](f), unique=True, trim="-")
    else:
        text = repr(f)
    exact = Fraction(text)
    return float(exact), exact


def fraction_to_k(fraction: Any, n: int, name: str = "fraction") -> int:
    """``k = max(1, ceil(f * n))`` computed exactly from the decimal value of ``f``.

    ``Fraction(repr(f))`` reads 0.07 as 7/100, so 0.07 * 100 gives 7, never 8; float32 / float16
    scalars are read as their own shortest decimal (``np.float32(0.07)`` is 0.07 too).
    """
    _, exact = fraction_value(fraction, name)
    return max(1, math.ceil(exact * n))


# ---------------------------------------------------------------------------------------------
# backends
# ---------------------------------------------------------------------------------------------

_warned: set = set()


def _why_no_kernel(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """None when the compiled kernel for this device/dtype can run, else the reason."""
    if not _ext.has_extension():
        return f"the compiled extension molphenix._C is not importable ({_ext.import_error()})"
    if device.type == "cpu":
        if dtype not in _CPU_KERNEL_DTYPES:
            return f"the CPU kernels support float32 and float64, got {dtype}"
        return None
    if device.type == "cuda":
        if not _ext.extension_has_cuda():
            reason = _ext.build_info().get("cuda_reason") or "built with MOLPHENIX_WITH_CUDA=OFF or without nvcc"
            return (f"this molphenix build has no CUDA kernels ({reason}); reinstall with "
                    "MOLPHENIX_WITH_CUDA=ON (docs/DEV.md)")
        return None
    return f"no molphenix kernels for device type {device.type!r}"


def resolve_backend(op: str, backend: Any, device: torch.device, dtype: torch.dtype) -> str:
    """Pick the backend that runs ``op`` on ``device``/``dtype``.

    ``auto`` (or the ``MOLPHENIX_BACKEND`` environment variable, which overrides only ``auto``)
    uses the compiled kernel of the tensors' device and falls back to the reference with one
    warning per reason. An explicit ``cpu`` / ``cuda`` that cannot run raises ``ValueError``
    saying why; it never falls back.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        env = os.environ.get("MOLPHENIX_BACKEND", "").strip()
        if env:
            if env not in BACKENDS:
                raise ValueError(f"MOLPHENIX_BACKEND: expected one of {BACKENDS}, got {env!r}")
            backend = env
    if backend == "reference":
        return "reference"
    if backend in ("cpu", "cuda"):
        if device.type != backend:
            raise ValueError(
                f"backend={backend!r}: the arrays are on {device}; move them to "
                f"{'the CPU' if backend == 'cpu' else 'a CUDA device'} or use backend='auto'"
            )
        why = _why_no_kernel(device, dtype)
        if why is not None:
            raise ValueError(f"{op}: backend={backend!r} cannot run: {why}")
        return backend
    why = _why_no_kernel(device, dtype)
    if why is None:
        return device.type
    key = (op, why)
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"molphenix.ops.{op}: using the slow reference implementation because {why}",
                      RuntimeWarning, stacklevel=external_stacklevel())
    return "reference"


def resolve_threads(num_threads: Any) -> int:
    """``None`` means torch's current setting (which follows ``OMP_NUM_THREADS``)."""
    if num_threads is None:
        return max(1, torch.get_num_threads())
    n = check_int(num_threads, "num_threads")
    if n < 1:
        raise ValueError(f"num_threads: expected >= 1 or None, got {n}")
    return n


def stream_of(t: torch.Tensor) -> int:
    """The caller's current CUDA stream handle for ``t``'s device (0 on CPU)."""
    if t.device.type == "cuda":
        return int(torch.cuda.current_stream(t.device).cuda_stream)
    return 0


def workspace(nbytes: int, like: torch.Tensor) -> Optional[torch.Tensor]:
    """A caller-owned scratch buffer (from torch's allocator) for a CUDA kernel."""
    if nbytes <= 0:
        return None
    return torch.empty(int(nbytes), dtype=torch.uint8, device=like.device)


def is_eager(t: torch.Tensor) -> bool:
    """True for a plain tensor in eager mode; False while torch.compile / AOT traces the op
    (fake or functional tensors), where in-place tricks on saved tensors are not allowed."""
    if type(t) is not torch.Tensor:  # FakeTensor, FunctionalTensor and other subclasses
        return False
    if torch._is_functional_tensor(t):
        return False
    return not torch.compiler.is_compiling()


class _FirstOrderOnly(torch.autograd.Function):
    """Identity on gradients computed by a compiled kernel; differentiating through it raises.

    The compiled backward passes are first-order: they are not built from differentiable torch
    operations, so a second derivative through them would silently miss terms (or be zero).
    Under ``create_graph=True`` the ops route their gradients through this node, connected to
    the op's differentiable inputs, so that a second-order gradient raises a clear error
    instead (first-order results are unaffected).
    """

    @staticmethod
    def forward(ctx, op, n, *args):  # noqa: D102 - args: n gradients, then the op's inputs
        ctx.op = op
        return tuple(g.view_as(g) for g in args[:n])

    @staticmethod
    def backward(ctx, *unused):  # noqa: D102
        raise ValueError(
            f"{ctx.op}: second-order gradients (double backward) are not supported by the compiled "
            f"kernels; use backend='reference' to differentiate {ctx.op} more than once")


def first_order_only(op: str, grads: Sequence[Optional[torch.Tensor]],
                     inputs: Sequence[Any]) -> Tuple[Optional[torch.Tensor], ...]:
    """``grads`` unchanged, except under ``create_graph=True`` (grad mode on inside a backward):
    then each is tied to the differentiable ``inputs`` of ``op`` through a node whose backward
    raises ``ValueError`` naming ``op``."""
    grads = tuple(grads)
    if not torch.is_grad_enabled():
        return grads
    live = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    present = [i for i, g in enumerate(grads) if g is not None]
    if not present or not live:
        return grads
    tied = _FirstOrderOnly.apply(op, len(present), *[grads[i] for i in present], *live)
    if isinstance(tied, torch.Tensor):
        tied = (tied,)
    out = list(grads)
    for i, t in zip(present, tied):
        out[i] = t
    return tuple(out)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def contiguous(*ts: Optional[torch.Tensor]) -> Sequence[Optional[torch.Tensor]]:
    return [None if t is None else t.detach().contiguous() for t in ts]
