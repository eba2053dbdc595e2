"""Property-based checks (hypothesis) of the concentration encodings and the heads."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from molphenix import nn as mnn

doses_st = st.lists(st.floats(1e-3, 1e3), min_size=1, max_size=6, unique=True).filter(
    lambda d: all(abs(math.log10(a) - math.log10(b)) > 1e-2 for a in d for b in d if a != b))
concs_st = st.lists(st.floats(0.0, 1e4), min_size=1, max_size=20)


@settings(max_examples=40, deadline=None)
@given(doses=doses_st, concs=concs_st)
def test_onehot_nearest_is_one_hot_of_the_nearest_dose(doses, concs):
    enc = mnn.ConcentrationEncoder(["onehot"], doses=doses)
    y = enc(torch.tensor(concs, dtype=torch.float64))
    assert y.shape == (len(concs), len(doses))
    assert torch.equal(y.sum(1), torch.ones(len(concs), dtype=torch.float64))
    srt = sorted(doses)
    for c, row in zip(concs, y):
        lc = math.log10(max(c, 1e-6))
        best = min(abs(lc - math.log10(d)) for d in srt)
        k = int(row.argmax())
        assert abs(abs(lc - math.log10(srt[k])) - best) <= 1e-9


@settings(max_examples=40, deadline=None)
@given(doses=doses_st, concs=concs_st)
def test_onehot_zero_marks_only_known_doses(doses, concs):
    enc = mnn.ConcentrationEncoder(["onehot"], doses=doses, unknown="zero")
    y = enc(torch.tensor(concs + doses, dtype=torch.float64))
    assert set(y.sum(1).tolist()) <= {0.0, 1.0}
    assert y[len(concs):].sum().item() == len(doses)  # every dose of the set is recognised


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 9), width=st.integers(1, 12), scale=st.floats(1e-3, 1e3))
def test_head_rows_are_unit_norm_at_any_input_scale(rows, width, scale):
    torch.manual_seed(0)
    head = mnn.PhenomicHead(width, 8, 1, 4).double()
    y = head(torch.randn(rows, width, dtype=torch.float64) * scale)
    assert torch.allclose(y.norm(dim=1), torch.ones(rows, dtype=torch.float64), atol=1e-12)
