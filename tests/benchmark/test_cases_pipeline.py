"""molphenix.benchmark.cases_pipeline: the pipeline cases build, run and agree at small sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from molphenix.benchmark import cases_pipeline as P


pytestmark = pytest.mark.requires_extension  # the "ours" providers call the compiled CPU ops


def test_train_step_providers_take_a_step_and_report_the_soft_fraction():
    case, provs = P.TRAIN_STEP.build({"B": 64, "E": 32, "F": 64, "soft_frac": 0.05}, threads=1)
    assert [p.name for p in provs] == ["naive", "ours"] and case.work == 64 and case.unit == "samples/s"
    for p in provs:
        loss = p.fn()
        assert torch.isfinite(loss) and p.fn.stats["soft_pos_frac"] > 0


def test_evaluate_providers_agree_and_noboot_has_no_intervals():
    _, provs = P.EVALUATE.build({"Q": 120, "N": 160, "D": 16, "n_bootstrap": 50}, threads=1)
    got = {p.name: p.fn() for p in provs}
    assert repr(got["naive"]) == repr(got["ours"])
    assert got["ours"]["n_candidates"] == 160 and got["ours"]["all"]["n_queries"] == 120
    assert got["ours-noboot"]["all"]["ci95"]["top1"] is None
    assert got["ours-noboot"]["all"]["top1"] == got["ours"]["all"]["top1"]


def test_index_search_ours_and_faiss_list_the_same_ids():
    pytest.importorskip("faiss")
    _, provs = P.INDEX_SEARCH.build({"N": 3000, "D": 32, "Q": 7, "k": 5}, threads=1)
    out = {p.name: p.fn() for p in provs}
    assert set(out) == {"ours", "faiss"}
    np.testing.assert_array_equal(np.asarray(out["ours"][1]), out["faiss"][1])
    np.testing.assert_allclose(np.asarray(out["ours"][0]), out["faiss"][0], atol=1e-5)


def test_finite_check_case_rejects_nan():
    assert list(P.FINITE_CHECK.check())
    _, provs = P.FINITE_CHECK.build({"N": 2000, "D": 8}, threads=1)
    assert [p.name for p in provs] == ["ours", "torch-isfinite", "torch-sum"]
    assert [p.fn() for p in provs] == [None, True, True]
