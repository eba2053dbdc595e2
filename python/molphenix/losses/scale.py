"""The soft-label scale: divide u by sigma so a chosen fraction of random pairs are soft positives."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["fit_similarity_scale", "soft_label_window"]


def soft_label_window(c: float = 0.3, threshold: float = 0.75) -> float:
    """The squared-distance window ``w = c * tan(pi * (1 - threshold) / 4)``: ``s~ >= threshold``
    exactly when ``d^2 <= w``.

    Args:
        c: arctan width (> 0).
        threshold: Soft-label threshold in (-1, 1).

    Returns:
        ``w`` (> 0).

    Raises:
        ValueError: ``c <= 0`` or ``threshold`` outside (-1, 1).
    """
    if not (isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) and c > 0):
        raise ValueError(f"c: must be a finite number > 0, got {c!r}")
    if not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and -1.0 < threshold < 1.0):
        raise ValueError(f"threshold: must be in (-1, 1) (at 1 the window is empty, at -1 it is "
                         f"unbounded), got {threshold!r}")
    return float(c) * math.tan(math.pi * (1.0 - float(threshold)) / 4.0)


def fit_similarity_scale(x: Any, target_fraction: float, c: float = 0.3, threshold: float = 0.75,
                         seed: int = 0, n_pairs: int = 100_000) -> float:
    """Scale ``sigma`` such that a fraction ``target_fraction`` of random pairs of rows of
    ``x / sigma`` have arctan-L2 similarity ``s~ >= threshold``.

    ``s~_ij >= threshold`` iff ``|x_i - x_j|^2 / sigma^2 <= w`` with ``w`` from
    :func:`soft_label_window`, so ``sigma = sqrt(Q / w)`` where ``Q`` is the ``target_fraction``
    quantile of the squared distances of ``n_pairs`` random pairs ``(i, j)``, ``i != j``, drawn
    uniformly with a seeded generator (distances accumulated in float64). The caller divides
    ``u`` by ``sigma`` before the loss (``S2LLoss`` / ``CWCLLoss`` with ``sim_space="input"``).

    Args:
        x: Rows defining similarity (e.g. the control-centred training wells), array-like
            (numpy, a CPU torch tensor, lists).
        target_fraction: Desired fraction of soft-positive random pairs, in (0, 1).
        c: arctan width (> 0).
        threshold: Soft-label threshold, in (-1, 1).
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
