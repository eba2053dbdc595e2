"""Per-plate normalization of well profiles against each plate's control wells.

Used by :func:`molphenix.data.load_profiles` (``molphenix import-profiles --normalize``). Every
method works on a feature matrix ``x`` [N, F], a plate label per well and a control mask:

* ``none``: the features as they are (many published tables are already normalized).
* ``center``: ``x - mean(controls of the plate)``.
* ``robust-z``: ``(x - median) / (1.4826 * MAD + eps)`` with the median and the median absolute
  deviation of the plate's control wells, per feature; ``eps = 1e-18``. This is pycytominer's
  ``normalize(method="mad_robustize", samples=<the controls>)`` applied plate by plate
  (``RobustMAD``: pandas median, ``scipy.stats.median_abs_deviation(scale=1/1.4826)``).
* ``tvn``: ``center``, then a PCA whitening fitted on the pooled centred control wells of all
  plates (:func:`molphenix.data.fit_tvn`): one plate's controls are too few to estimate an
  F x F covariance. The output has ``k = min(F, n_controls - 1)`` columns.

Training's own per-batch control centring is separate and unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .preprocess import encode_labels, fit_tvn

__all__ = [
    "MAD_SCALE",
    "NORMALIZATIONS",
    "ROBUST_Z_EPSILON",
    "Normalized",
    "controls_per_plate",
    "normalize_by_plate",
    "robust_z_by_plate",
]

#: The normalization methods, in the order the CLI lists them.
NORMALIZATIONS = ("none", "center", "robust-z", "tvn")
#: 1.4826 * MAD estimates the standard deviation of normally distributed data.
MAD_SCALE = 1.4826
#: pycytominer's default ``mad_robustize_epsilon``.
ROBUST_Z_EPSILON = 1e-18
#: Fewest control wells per plate each method needs.
MIN_CONTROLS = {"none": 0, "center": 1, "robust-z": 2, "tvn": 1}


@dataclass
class Normalized:
    """The result of :func:`normalize_by_plate`.

    Attributes:
        x: Normalized features [N, K] float32 (K = F except for ``tvn``).
        method: The method used.
        zero_mad: For ``robust-z``: bool [F], True where some plate's controls have MAD 0 for
            that feature (its values there are ``(x - median) / eps``); all False otherwise.
        info: JSON-ready details (control wells per plate, TVN components, epsilon).
    """

    x: np.ndarray
    method: str
    zero_mad: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def controls_per_plate(plates, is_control: np.ndarray) -> dict[str, int]:
    """Number of control wells on every plate (plates without controls included, as 0).

    Args:
        plates: Plate label per well [N].
        is_control: bool [N].

    Returns:
        ``{plate: n_controls}`` in sorted plate order.
    """
    codes, names = encode_labels(plates)
    counts = np.bincount(codes[np.asarray(is_control, bool)], minlength=len(names))
    return {str(n): int(c) for n, c in zip(names, counts)}


def robust_z_by_plate(
    x: np.ndarray, plates, is_control: np.ndarray, *, epsilon: float = ROBUST_Z_EPSILON
) -> tuple[np.ndarray, np.ndarray]:
    """``(x - median) / (1.4826 * MAD + epsilon)`` per plate, from that plate's control wells.

    Args:
        x: Features [N, F].
        plates: Plate label per well [N].
        is_control: bool [N].
        epsilon: Added to the scaled MAD (pycytominer's ``mad_robustize_epsilon``).

    Returns:
        (normalized features [N, F] float64, zero_mad bool [F]: some plate's MAD is 0).

    Raises:
        ValueError: a plate without control wells.
    """
    x = np.asarray(x, dtype=np.float64)
    is_control = np.asarray(is_control, dtype=bool)
    codes, names = encode_labels(plates)
    out = np.empty_like(x)
    zero_mad = np.zeros(x.shape[1], dtype=bool)
    for g, name in enumerate(names):
        rows = codes == g
        ctrl = x[rows & is_control]
        if len(ctrl) == 0:
            raise ValueError(f"plate {name!r} has no control wells")
        med = np.median(ctrl, axis=0)
        mad = MAD_SCALE * np.median(np.abs(ctrl - med), axis=0)
        zero_mad |= mad == 0
        out[rows] = (x[rows] - med) / (mad + epsilon)
    return out, zero_mad


def normalize_by_plate(
    x: np.ndarray,
    plates,
    is_control: np.ndarray,
    method: str,
    *,
    epsilon: float = ROBUST_Z_EPSILON,
    tvn_eps: float = 0.05,
) -> Normalized:
    """Normalize features plate by plate against each plate's control wells.

    Args:
        x: Features [N, F].
        plates: Plate label per well [N].
        is_control: bool [N].
        method: One of :data:`NORMALIZATIONS`.
        epsilon: ``robust-z``'s epsilon.
        tvn_eps: ``tvn``'s eigenvalue ridge, relative to the mean eigenvalue
            (see :func:`molphenix.data.fit_tvn`).

    Returns:
        :class:`Normalized`.

    Raises:
        ValueError: an unknown method; plates with fewer control wells than the method needs
            (all of them named); fewer than 2 control wells in all for ``tvn``.
    """
    if method not in NORMALIZATIONS:
        raise ValueError(f"method must be one of {', '.join(NORMALIZATIONS)}, got {method!r}")
    x = np.asarray(x)
    is_control = np.asarray(is_control, dtype=bool)
    zero = np.zeros(x.shape[1], dtype=bool)
    if method == "none":
        return Normalized(np.asarray(x, dtype=np.float32), method, zero, {"method": "none"})
    counts = controls_per_plate(plates, is_control)
    need = MIN_CONTROLS[method]
    short = [p for p, c in counts.items() if c < need]
    if short:
        what = "no control wells" if need == 1 else f"fewer than {need} control wells"
        raise ValueError(
            f"normalization {method!r} needs control wells on every plate; {len(short)} plate(s) "
            f"have {what}: {', '.join(short)}"
        )
    info: dict[str, Any] = {"method": method, "controls_per_plate": counts}
    codes, names = encode_labels(plates)
    if method == "robust-z":
        out, zero = robust_z_by_plate(x, plates, is_control, epsilon=epsilon)
        info.update(epsilon=epsilon, mad_scale=MAD_SCALE)
        return Normalized(out.astype(np.float32), method, zero, info)
    x64 = np.asarray(x, dtype=np.float64)
    means = np.zeros((len(names), x.shape[1]))
    for g in range(len(names)):
        means[g] = x64[(codes == g) & is_control].mean(0)
    centred = x64 - means[codes]
    if method == "center":
        return Normalized(centred.astype(np.float32), method, zero, info)
    if int(is_control.sum()) < 2:
        raise ValueError("normalization 'tvn' needs at least 2 control wells in all")
    tvn = fit_tvn(centred[is_control], eps=tvn_eps)
    info.update(components=tvn.dim, eps=tvn_eps, pooled_controls=int(is_control.sum()))
    return Normalized(tvn.transform(centred), method, zero, info)
