"""molphenix.ops.recall_at_fraction and k_for_fraction: exact k, recall values, validation."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from molphenix.ops import k_for_fraction, recall_at_fraction


@pytest.mark.parametrize("fraction,n,k", [
    (0.07, 100, 7),     # 0.07 * 100 = 7.000000000000001 in floating point
    (0.14, 100, 14),    # 14.000000000000002
    (0.29, 100, 29),
    (0.57, 100, 57),
    (0.01, 100, 1),
    (0.01, 99, 1),
    (0.01, 101, 2),
    (0.05, 4099, 205),
    (0.01, 4099, 41),
    (1e-12, 10, 1),     # k >= 1
    (1.0, 10, 10),
    (0.5, 1, 1),
])
def test_k_for_fraction_is_exact(fraction, n, k):
    assert k_for_fraction(fraction, n) == k


@settings(max_examples=50, deadline=None)
@given(K=st.integers(1, 100), n=st.integers(1, 100_000))
def test_whole_percentages_match_the_integer_formula(K, n):
    assert k_for_fraction(K / 100, n) == max(1, (K * n + 99) // 100)


def test_recall_values():
    ranks = torch.arange(100)  # one query at each rank 0..99
    out = recall_at_fraction(ranks, 100)
    assert set(out) == {0.01, 0.05}
    assert out[0.01] == pytest.approx(0.01) and out[0.05] == pytest.approx(0.05)
    out = recall_at_fraction(ranks, 100, fractions=(0.07,))
    assert out == {0.07: pytest.approx(0.07)}  # k = 7: ranks 0..6 hit, 7 misses


def test_recall_uses_k_not_f_times_n():
    # N = 250: top-1% is k = ceil(2.5) = 3, so ranks 0, 1, 2 are hits
    r = recall_at_fraction(np.array([0, 1, 2, 3, 249]), 250, fractions=[0.01])
    assert r[0.01] == pytest.approx(3 / 5)
    # tiny N: k = max(1, ...) = 1
    assert recall_at_fraction([0, 1, 2], 3, fractions=[0.01])[0.01] == pytest.approx(1 / 3)


@pytest.mark.parametrize("kind", ["torch", "numpy", "list", "int32"])
def test_input_kinds(kind):
    r = [0, 5, 9, 10, 50]
    ranks = {"torch": torch.tensor(r), "numpy": np.array(r), "list": r,
             "int32": torch.tensor(r, dtype=torch.int32)}[kind]
    out = recall_at_fraction(ranks, 100, fractions=(0.1, 0.5, 1.0))
    assert out == {0.1: pytest.approx(3 / 5), 0.5: pytest.approx(4 / 5), 1.0: 1.0}
    assert all(isinstance(v, float) for v in out.values())


def test_no_queries_is_nan():
    out = recall_at_fraction(torch.zeros(0, dtype=torch.int64), 10)
    assert all(math.isnan(v) for v in out.values())


def test_single_fraction_as_scalar():
    assert recall_at_fraction(torch.tensor([0, 3]), 10, fractions=0.1) == {0.1: 0.5}


@pytest.mark.parametrize("ranks,n,fractions,exc,name", [
    (torch.tensor([0.0, 1.0]), 10, (0.01,), TypeError, "ranks"),
    (torch.tensor([True, False]), 10, (0.01,), TypeError, "ranks"),
    (torch.tensor([[0, 1]]), 10, (0.01,), ValueError, "ranks"),
    (torch.tensor([-1, 0]), 10, (0.01,), ValueError, "ranks"),
    (torch.tensor([0, 10]), 10, (0.01,), ValueError, "ranks"),
    (torch.tensor([0]), 0, (0.01,), ValueError, "num_candidates"),
    (torch.tensor([0]), -3, (0.01,), ValueError, "num_candidates"),
    (torch.tensor([0]), 10.0, (0.01,), TypeError, "num_candidates"),
    (torch.tensor([0]), True, (0.01,), TypeError, "num_candidates"),
    (torch.tensor([0]), 10, (0.0,), ValueError, "fraction"),
    (torch.tensor([0]), 10, (1.5,), ValueError, "fraction"),
    (torch.tensor([0]), 10, (-0.1,), ValueError, "fraction"),
    (torch.tensor([0]), 10, (float("nan"),), ValueError, "fraction"),
    (torch.tensor([0]), 10, ("x",), TypeError, "fraction"),
])
def test_validation(ranks, n, fractions, exc, name):
    with pytest.raises(exc, match=name):
        recall_at_fraction(ranks, n, fractions=fractions)


@pytest.mark.parametrize("fraction,exc", [(0.0, ValueError), (1.01, ValueError), (True, TypeError),
                                          (None, TypeError), (float("inf"), ValueError)])
def test_k_for_fraction_validation(fraction, exc):
    with pytest.raises(exc, match="fraction"):
        k_for_fraction(fraction, 10)


@settings(max_examples=40, deadline=None)
@given(ranks=st.lists(st.integers(0, 999), max_size=60), n_extra=st.integers(0, 500),
       fs=st.lists(st.floats(1e-6, 1.0), min_size=2, max_size=6))
def test_recall_monotone_in_fraction_and_in_range(ranks, n_extra, fs):
    n = 1000 + n_extra
    out = recall_at_fraction(np.array(ranks, dtype=np.int64), n, fractions=sorted(fs))
    vals = [out[float(f)] for f in sorted(fs)]
    if not ranks:
        assert all(math.isnan(v) for v in vals)
        return
    assert all(0.0 <= v <= 1.0 for v in vals)
    assert all(a <= b for a, b in zip(vals, vals[1:]))
    for f in fs:  # recall = fraction of ranks below the exact k
        k = max(1, math.ceil(Fraction(repr(float(f))) * n))
        assert out[float(f)] == pytest.approx(sum(r < k for r in ranks) / len(ranks))
