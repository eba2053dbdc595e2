"""molphenix.benchmark: interleaved timing, memory in a fresh process, checks that fail, CSV layout."""

from __future__ import annotations

import csv

import pytest
import torch

import molphenix
from molphenix import benchmark as B
from molphenix.benchmark import cases as C


def test_interleaved_rounds_rotate_and_share_warmup():
    calls = []
    provs = [B.Provider(n, lambda n=n: calls.append(n)) for n in ("a", "b", "c")]
    times = B.time_interleaved(provs, warmup=2, repeats=3)
    assert calls == ["a", "b", "c"] * 2 + ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}


def test_provider_env_is_set_only_during_its_calls(monkeypatch):
    import os

    monkeypatch.delenv("MOLPHENIX_TEST_KNOB", raising=False)
    seen = []
    p = B.Provider("x", lambda: seen.append(os.environ.get("MOLPHENIX_TEST_KNOB")), env={"MOLPHENIX_TEST_KNOB": "1"})
    B.time_interleaved([p], warmup=1, repeats=1)
    assert seen == ["1", "1"] and "MOLPHENIX_TEST_KNOB" not in os.environ


def test_verify_ranks_accepts_near_ties_and_rejects_wrong_ranks():
    q = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    c = torch.tensor([[1.0, 0.0], [1.0, 1e-7], [0.0, 1.0]], dtype=torch.float64)
    c = c / c.norm(dim=1, keepdim=True)
    t = torch.tensor([1])  # the target ties (within 1e-12) with candidate 0
    exact = int(((q @ c.T) >= (q @ c.T)[0, 1]).sum() - 1)
    for rank in (0, 1):
        nd, nbad, _ = C.verify_ranks(torch.tensor([rank]), q, c, t, tol=1e-6)
        assert nbad == 0 and nd == int(rank != exact)
    _, nbad, _ = C.verify_ranks(torch.tensor([2]), q, c, t, tol=1e-6)
    assert nbad == 1
    # a censored rank (target not in a top-1 list) is wrong when the target is clearly first
    _, nbad, _ = C.verify_ranks(torch.tensor([1]), q, c[[1, 2]], torch.tensor([0]), tol=1e-9, censor_k=1)
    assert nbad == 1


def test_verify_topk_flags_a_missing_best_candidate():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(4, 8, generator=g, dtype=torch.float64)
    c = torch.randn(30, 8, generator=g, dtype=torch.float64)
    s, i = (q @ c.T).topk(5, dim=1)
    assert C.verify_topk(s.float(), i, q, c, 5, 1e-6)[0] == 0
    bad = i.clone()
    bad[0, 0] = (q @ c.T)[0].argmin()
    assert C.verify_topk(s.float(), bad, q, c, 5, 1e-6)[0] == 1


class _BadSpec:
    op = "bad"

    def check(self, device, dtype, threads, only):
        raise B.CheckFailed("bad: disagrees")
        yield ""  # pragma: no cover


def test_a_failing_check_raises(tmp_path):
    run = B.Run(threads=1, csv_path=tmp_path / "x.csv", command="test")
    with pytest.raises(B.CheckFailed):
        B.run_checks(run, _BadSpec(), dtype="float32")
    run.close()


@pytest.mark.skipif(not molphenix.has_extension(), reason="needs the compiled kernels")
def test_run_case_rows_memory_and_csv_layout(tmp_path):
    with B.Run(threads=1, results_dir=tmp_path / "run", command="test") as run:
        run.measure_matmul(n=256, repeats=3)
        rows = B.run_case(run, C.RANKS, {"Q": 300, "N": 500, "D": 32}, dtype="float32",
                          only=["naive", "ours"], warmup=1, repeats=3)
    assert [r.provider for r in rows] == ["naive", "ours"]
    assert all(len(r.times) == 3 and r.warmup == 1 for r in rows)
    # measured in a fresh process each, never clamped: the naive one materialises Q x N
    assert all(r.peak_mem_bytes is not None and r.mem_counted == B.MEM_CPU for r in rows)
    assert rows[0].peak_mem_bytes > 300 * 500 * 4
    with (tmp_path / "run" / "results.csv").open() as fh:
        out = list(csv.DictReader(fh))
    assert list(out[0].keys()) == B.CSV_FIELDS
    assert [r["op"] for r in out] == ["matmul", "retrieval_ranks", "retrieval_ranks"]
    assert all(r["pct_of_matmul"] for r in out[1:]) and all(r["machine"] and r["git_sha"] for r in out)
    log = (tmp_path / "run" / "run.log").read_text()
    assert "load average at start" in log and "naive" in log


def test_variant_settings_reach_the_kernels_through_set_options():
    import molphenix

    before = molphenix.options()
    seen = []
    p = B.Provider("ours-simple", lambda: seen.append(molphenix.options()["cuda_mainloop"]),
                   env={"MOLPHENIX_CUDA_MAINLOOP": "simple"})
    B.time_interleaved([p], warmup=0, repeats=2)
    assert seen == ["simple", "simple"] and molphenix.options() == before
