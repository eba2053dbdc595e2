"""The arctan-L2 soft-label formula and its constants (DESIGN.md section 2), in one place.

    s~ = 1 - (4/pi) atan(d2 / c)        d2 = |u_i - u_j|^2, c = 0.3; s~ in (-1, 1], s~_ii = 1
    s  = s~ if s~ >= threshold else 0   threshold = 0.75 (the soft-label threshold)
    S2L negatives: w- = gamma - delta s, gamma = 1.75, delta = 0.75

``s~ >= threshold`` exactly when ``d2 <= c tan(pi (1 - threshold) / 4)`` (:func:`soft_label_window`).

The ops (kernels, their torch twins, the ``arctan_l2`` retrieval metric), the losses, the
distributed losses and the plots take their defaults, their validation of ``c`` and
``threshold`` and the formula from here. Root-level and private: it imports no molphenix
subpackage, so every layer may use it.
"""

from __future__ import annotations

import math
from typing import Any, Optional

__all__ = ["ARCTAN_C", "SOFT_LABEL_THRESHOLD", "S2L_GAMMA", "S2L_DELTA", "arctan_similarity",
           "soft_label_window", "check_c", "check_threshold"]

#: The arctan width ``c`` (DESIGN.md section 2).
ARCTAN_C = 0.3
#: The soft-label threshold ``theta``.
SOFT_LABEL_THRESHOLD = 0.75
#: S2L's negative weights ``w- = gamma - delta s``.
S2L_GAMMA = 1.75
S2L_DELTA = 0.75


def arctan_similarity(d2: Any, c: float = ARCTAN_C) -> Any:
    """``1 - (4/pi) atan(d2 / c)`` of squared distances (a torch tensor, numpy array or float).

    The arithmetic is that of every implementation it replaces (divide, atan, scale, subtract),
    in the dtype of ``d2``.
    """
    if hasattr(d2, "atan"):  # torch tensor
        import torch

        return 1.0 - (4.0 / math.pi) * torch.atan(d2 / c)
    import numpy as np

    return 1.0 - (4.0 / math.pi) * np.arctan(np.asarray(d2) / c)


def _real(value: Any, name: str) -> float:
    """A real Python scalar, or a 0-dim tensor / array holding one (TypeError otherwise)."""
    if isinstance(value, (bool, str, bytes)) or type(value).__name__ == "bool_":
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        if tuple(value.shape) != ():
            raise ValueError(f"{name}: expected a scalar (0-dim), got shape {tuple(value.shape)}")
        if str(value.dtype).replace("torch.", "") in ("bool", "complex64", "complex128"):
            raise TypeError(f"{name}: expected a real number, got dtype {value.dtype}")
        value = value.item()
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}") from None


def check_c(c: Any) -> float:
    """``c`` as a float: a finite real number > 0.

    Raises:
        TypeError: not a real number. ValueError: not finite, or <= 0.
    """
    v = _real(c, "c")
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"c: must be a finite number > 0, got {c!r}")
    return v


def check_threshold(threshold: Any, *, allow_none: bool = True) -> Optional[float]:
    """``threshold`` as a float in [-1, 1] (or None, meaning no threshold, when ``allow_none``).

    Raises:
        TypeError: not a real number. ValueError: outside [-1, 1] (or None not allowed).
    """
    if threshold is None:
        if allow_none:
            return None
        raise ValueError("threshold: a value in [-1, 1] is required here, got None")
    v = _real(threshold, "threshold")
    if not -1.0 <= v <= 1.0:  # NaN fails too
        raise ValueError(f"threshold: must be in [-1, 1]{' or None' if allow_none else ''}, got {threshold!r}")
    return v


def soft_label_window(c: float = ARCTAN_C, threshold: float = SOFT_LABEL_THRESHOLD) -> float:
    """The squared-distance window ``w = c * tan(pi * (1 - threshold) / 4)``: ``s~ >= threshold``
    exactly when ``d^2 <= w``.

    Args:
        c: arctan width (> 0).
        threshold: Soft-label threshold in [-1, 1]; the window is empty at 1 and unbounded at
            -1, so a window-based scale needs -1 < threshold < 1.

    Returns:
        ``w`` (> 0).

    Raises:
        ValueError: ``c <= 0``; ``threshold`` outside [-1, 1] or at either end.
    """
    c = check_c(c)
    t = check_threshold(threshold, allow_none=False)
    if t in (-1.0, 1.0):
        raise ValueError(f"threshold: the soft-label window is empty at 1 and unbounded at -1; "
                         f"a window needs -1 < threshold < 1, got {threshold!r}")
    return c * math.tan(math.pi * (1.0 - t) / 4.0)
