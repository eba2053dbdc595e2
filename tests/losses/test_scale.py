"""molphenix.losses.fit_similarity_scale: hits its target fraction; seeded; validates its inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from _utils import np_rng
from molphenix import losses as L
from molphenix.ops import arctan_l2_similarity


def pair_fraction(x: np.ndarray, sigma: float, c: float, threshold: float) -> float:
    """Fraction of ALL off-diagonal pairs of x / sigma with s~ >= threshold (exact)."""
    u = torch.from_numpy(x / sigma)
    s = arctan_l2_similarity(u, u, c=c, threshold=threshold)
    n = u.shape[0]
    return float(((s > 0).sum() - (s.diagonal() > 0).sum()).item()) / (n * (n - 1))


@pytest.mark.parametrize("target", [0.01, 0.05, 0.25])
@pytest.mark.parametrize("c,threshold", [(0.3, 0.75), (1.0, 0.5)])
def test_hits_target_fraction(target, c, threshold):
    rng = np_rng(0)
    # anisotropic clusters plus noise: not a distribution where any scale rule is trivially right
    centers = rng.normal(size=(12, 24)) * rng.uniform(0.5, 3.0, size=24)
    x = centers[rng.integers(0, 12, size=800)] + rng.normal(size=(800, 24))
    sigma = L.fit_similarity_scale(x, target, c=c, threshold=threshold, n_pairs=50_000)
    assert sigma > 0
    got = pair_fraction(x, sigma, c, threshold)
    assert abs(got - target) <= 0.1 * target + 0.003, (got, target)


def test_matches_window_formula_and_scaling():
    x = np_rng(1).normal(size=(300, 8))
    w = L.soft_label_window(0.3, 0.75)
    assert w == pytest.approx(0.3 * math.tan(math.pi / 16))
    s1 = L.fit_similarity_scale(x, 0.1)
    # sigma scales linearly with the data
    assert L.fit_similarity_scale(3.0 * x, 0.1) == pytest.approx(3.0 * s1, rel=1e-12)
    # larger target -> more pairs inside the window -> larger sigma
    assert L.fit_similarity_scale(x, 0.5) > s1


def test_seeded_and_accepts_torch():
    x = np_rng(2).normal(size=(200, 5)).astype(np.float32)
    a = L.fit_similarity_scale(x, 0.05, seed=3)
    assert a == L.fit_similarity_scale(x, 0.05, seed=3)
    assert a != L.fit_similarity_scale(x, 0.05, seed=4)
    assert a == L.fit_similarity_scale(torch.from_numpy(x), 0.05, seed=3)


@pytest.mark.parametrize("kwargs,field", [
    ({"target_fraction": 0.0}, "target_fraction"),
    ({"target_fraction": 1.0}, "target_fraction"),
    ({"target_fraction": float("nan")}, "target_fraction"),
    ({"c": 0.0}, "c"),
    ({"threshold": 1.0}, "threshold"),
    ({"threshold": -1.0}, "threshold"),
    ({"n_pairs": 0}, "n_pairs"),
    ({"seed": 1.5}, "seed"),
])
def test_argument_errors(kwargs, field):
    x = np_rng(3).normal(size=(20, 3))
    args = {"target_fraction": 0.1, **kwargs}
    with pytest.raises(ValueError, match=f"^{field}:"):
        L.fit_similarity_scale(x, **args)


def test_bad_x():
    with pytest.raises(ValueError, match="^x:.*2 rows"):
        L.fit_similarity_scale(np.zeros((1, 4)), 0.1)
    with pytest.raises(ValueError, match="^x:.*2 rows"):
        L.fit_similarity_scale(np.zeros(4), 0.1)
    bad = np.ones((5, 2))
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="^x: contains NaN"):
        L.fit_similarity_scale(bad, 0.1)
    with pytest.raises(ValueError, match="^x:.*no spread"):
        L.fit_similarity_scale(np.full((50, 3), 2.5), 0.1)
    # 90% identical rows: the 10% quantile of distances is 0 too
    dup = np.vstack([np.zeros((90, 3)), np_rng(4).normal(size=(10, 3))])
    with pytest.raises(ValueError, match="^x:.*identical"):
        L.fit_similarity_scale(dup, 0.1)
