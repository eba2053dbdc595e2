"""Control centering, TVN whitening, replicate averaging."""

from __future__ import annotations

import numpy as np
import pytest

from molphenix.data import average_replicates, center_by_controls, fit_tvn, typical_variation_normalize


def _toy(seed=0, n=600, e=6):
    rng = np.random.default_rng(seed)
    batch = rng.integers(0, 3, n)
    ctrl = rng.random(n) < 0.3
    shift = rng.normal(0, 5, (3, e))
    mix = rng.normal(size=(e, e))
    x = rng.normal(size=(n, e)) @ mix + shift[batch]
    return x.astype(np.float32), np.array([f"b{b}" for b in batch]), ctrl


def test_center_by_controls_zeroes_control_means():
    x, b, c = _toy()
    out = center_by_controls(x, b, c)
    for name in np.unique(b):
        m = (b == name) & c
        np.testing.assert_allclose(out[m].mean(0), 0, atol=1e-4)
    sd = center_by_controls(x, b, c, standardize=True)
    for name in np.unique(b):
        m = (b == name) & c
        np.testing.assert_allclose(sd[m].std(0, ddof=1), 1, atol=1e-3)


def test_leave_one_out_matches_definition():
    x, b, c = _toy(1, n=80)
    out = center_by_controls(x, b, c, leave_one_out=True, dtype=np.float64)
    i = np.flatnonzero(c)[0]
    others = c & (b == b[i])
    others[i] = False
    np.testing.assert_allclose(out[i], x[i] - x[others].mean(0), rtol=1e-5, atol=1e-5)


def test_batch_without_controls_is_named():
    x, b, c = _toy()
    c[b == "b2"] = False
    with pytest.raises(ValueError, match="b2"):
        center_by_controls(x, b, c)


def test_tvn_whitens_controls():
    x, b, c = _toy(2, n=3000)
    out, tvn = typical_variation_normalize(x, b, c, eps=0.0)
    cov = np.cov(out[c], rowvar=False)
    np.testing.assert_allclose(cov, np.eye(cov.shape[0]), atol=1e-3)
    assert tvn.dim == x.shape[1]
    raw, none = typical_variation_normalize(x, b, c, whiten=False)
    assert none is None and raw.shape == x.shape
    with pytest.raises(ValueError):
        fit_tvn(np.zeros((1, 3)))


def test_average_replicates():
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    keys, means, counts = average_replicates(x, ["a", "b", "a", "c", "b", "a"])
    assert list(keys) == ["a", "b", "c"] and list(counts) == [3, 2, 1]
    np.testing.assert_allclose(means[0], x[[0, 2, 5]].mean(0))
    np.testing.assert_allclose(means[2], x[3])


def test_rows_and_precisions_of_the_one_centering():
    from molphenix.data import ControlMeans, normalize_wells

    x, b, c = _toy(3, n=400)
    rows = np.flatnonzero(~c)[::3]
    full = center_by_controls(x, b, c)
    np.testing.assert_array_equal(center_by_controls(x, b, c, rows=rows), full[rows])
    # "float32": float64 sums, control means rounded to float32, float32 difference (the
    # arithmetic of a training run's inputs); "float64": one rounding at the end
    cm = ControlMeans.fit(x, b, c)
    mean32 = cm.mean.astype(np.float32)
    want32 = x[rows] - mean32[cm.codes[rows]]
    np.testing.assert_array_equal(center_by_controls(x, b, c, rows=rows, precision="float32"), want32)
    np.testing.assert_array_equal(normalize_wells(x, b, c, rows), want32)
    want64 = (x[rows].astype(np.float64) - cm.mean[cm.codes[rows]]).astype(np.float32)
    np.testing.assert_array_equal(full[rows], want64)
    np.testing.assert_array_equal(normalize_wells(x, b, c, rows, normalize="none"), x[rows])
    with pytest.raises(ValueError, match="precision"):
        center_by_controls(x, b, c, precision="float16")
    with pytest.raises(ValueError, match="normalize"):
        normalize_wells(x, b, c, normalize="zscore")


def test_normalize_wells_checks_only_the_batches_it_returns():
    from molphenix.data import normalize_wells

    x, b, c = _toy(4, n=300)
    c[b == "b2"] = False
    ok = np.flatnonzero(b != "b2")
    assert normalize_wells(x, b, c, ok).shape == (ok.size, x.shape[1])
    with pytest.raises(ValueError, match="batch 'b2' has no control wells"):
        normalize_wells(x, b, c)


def test_centre_wells_is_a_deprecated_alias():
    import molphenix.train as train
    from molphenix.data import normalize_wells

    x, b, c = _toy(5, n=200)
    with pytest.warns(DeprecationWarning, match="normalize_wells"):
        old = train.centre_wells(x, b, c, normalize="tvn")
    np.testing.assert_array_equal(old, normalize_wells(x, b, c, normalize="tvn"))
