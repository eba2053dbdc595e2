"""The soft-label scale: divide u by sigma so a chosen fraction of random pairs are soft positives."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from molphenix._similarity import ARCTAN_C, SOFT_LABEL_THRESHOLD, soft_label_window

__all__ = ["fit_similarity_scale", "fit_unit_scale", "soft_label_window"]


def fit_similarity_scale(x: Any, target_fraction: float, c: float = ARCTAN_C, threshold: float = SOFT_LABEL_THRESHOLD,
                         seed: int = 0, n_pairs: int = 100_000) -> float:
    """Scale ``sigma`` such that a fraction ``target_fraction`` of random pairs of rows of
    ``x / sigma`` have arctan-L2 similarity ``s~ >= threshold``.

    ``s~_ij >= threshold`` iff ``|x_i - x_j|^2 / sigma^2 <= w`` with ``w`` from
    :func:`soft_label_window`, so ``sigma = sqrt(Q / w)`` where ``Q`` is the ``target_fraction``
    quantile of the squared distances of ``n_pairs`` random pairs ``(i, j)``, ``i != j``, drawn
    uniformly with a seeded generator (distances accumulated in float64). The caller divides
    ``u`` by ``sigma`` before the loss (``S2LLoss`` / ``CWCLLoss`` with ``sim_space="input"``).

    Args:
        x: Rows defining similarity (e.g. the control-centered training wells), array-like
            (numpy, a CPU torch tensor, lists).
        target_fraction: Desired fraction of soft-positive random pairs, in (0, 1).
        c: arctan width (> 0).
        threshold: Soft-label threshold, in (-1, 1) (the window is empty at 1, unbounded at -1).
        seed: Seed of the pair sampler (same inputs and seed -> same sigma).
        n_pairs: Number of random pairs (>= 1).

    Returns:
        ``sigma`` (> 0, float).

    Shapes:
        x: [n, E] -> float

    Raises:
        ValueError: ``x`` not 2-D with at least two rows and one column, non-finite ``x``,
            out-of-range arguments (named), or a zero quantile (``x`` without spread, or so
            many identical rows that the quantile is 0).
    """
    arr = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)
    if arr.ndim != 2 or arr.shape[0] < 2 or arr.shape[1] < 1:
        raise ValueError(f"x: expected a 2-D array with at least 2 rows and 1 column, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"x: expected real numbers, got dtype {arr.dtype}")
    if not (isinstance(target_fraction, (int, float)) and not isinstance(target_fraction, bool)
            and 0.0 < target_fraction < 1.0):
        raise ValueError(f"target_fraction: must be in (0, 1), got {target_fraction!r}")
    window = soft_label_window(c, threshold)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed: expected an integer, got {seed!r}")
    if isinstance(n_pairs, bool) or not isinstance(n_pairs, (int, np.integer)) or n_pairs < 1:
        raise ValueError(f"n_pairs: must be an integer >= 1, got {n_pairs!r}")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError("x: contains NaN or Inf")
    n = arr.shape[0]
    rng = np.random.default_rng(int(seed))
    i = rng.integers(0, n, size=int(n_pairs))
    j = (i + rng.integers(1, n, size=int(n_pairs))) % n  # uniform over j != i
    d2 = np.empty(int(n_pairs), dtype=np.float64)
    chunk = max(1, (1 << 22) // arr.shape[1])  # ~32 MiB of float64 differences at a time
    for s in range(0, int(n_pairs), chunk):
        diff = arr[i[s:s + chunk]] - arr[j[s:s + chunk]]
        d2[s:s + chunk] = np.einsum("ij,ij->i", diff, diff)
    quantile = float(np.quantile(d2, float(target_fraction)))
    if not quantile > 0.0:
        raise ValueError(f"x: the {target_fraction} quantile of squared distances between random "
                         "pairs of rows is 0 (the rows have no spread, or too many are identical); "
                         "cannot choose a scale")
    return math.sqrt(quantile / window)


def fit_unit_scale(x: Any, target_fraction: float, *, c: float = ARCTAN_C, threshold: float = SOFT_LABEL_THRESHOLD,
                   seed: int = 0) -> float:
    """The ``unit_scale`` of S2L with ``u_norm="unit"``: the divisor of the L2-normalised rows of
    ``x`` that puts ``target_fraction`` of random pairs in the soft-label window
    (:func:`fit_similarity_scale` on the normalised rows; a zero row stays zero).

    Args:
        x: Rows defining similarity (e.g. the control-centered training queries) [n, E].
        target_fraction: Desired fraction of soft-positive random pairs, in (0, 1).
        c, threshold: The loss's arctan width and threshold.
        seed: Seed of the pair sampler.

    Returns:
        ``unit_scale`` (> 0).

    Shapes:
        x: [n, E] -> float

    Raises:
        ValueError: as :func:`fit_similarity_scale`.
    """
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    xn = x / np.where(norms > 0, norms, 1.0)
    return float(fit_similarity_scale(xn.astype(np.float32), target_fraction, c=c, threshold=threshold, seed=seed))
