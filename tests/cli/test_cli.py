"""The CLI's ``main([...])`` in-process: info and the kernel benchmark (tiny sizes)."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

import molphenix
from molphenix.cli.main import main


def test_info_runs(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "molphenix" in out and "Backend chosen" in out


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("bench", "info"):
        assert cmd in out


@pytest.mark.skipif(not molphenix.has_extension(), reason="needs the compiled kernels")
def test_bench_tiny_writes_csv(tmp_path, capsys):
    out = tmp_path / "bench.csv"
    assert main(["bench", "--tiny", "--threads", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "check retrieval_ranks: ours float32: ranks identical to the reference" in text
    rows = list(csv.DictReader(out.open()))
    assert [r["provider"] for r in rows if r["op"] == "matmul"] == ["torch.mm"]  # the yardstick
    rows = [r for r in rows if r["op"] != "matmul"]
    ops = {r["op"] for r in rows}
    assert ops == {"s2l_loss", "retrieval_ranks", "topk_retrieve", "arctan_l2_similarity"}
    assert {r["provider"] for r in rows} == {"naive", "ours"}
    assert all(r["repeats"] == "3" and r["warmup"] == "1" and r["status"] == "ok" for r in rows)
    assert all(float(r["median_s"]) > 0 for r in rows)
    assert all(r["threads"] == "2" for r in rows)


def test_bench_cuda_without_gpu_is_a_clean_error(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["bench", "--tiny", "--device", "cuda"]) == 2
    assert "cuda" in capsys.readouterr().err


def test_module_entry_point():
    res = subprocess.run([sys.executable, "-m", "molphenix.info"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Compiled extension" in res.stdout


def test_simulate_then_load(tmp_path, capsys):
    from molphenix.data import load_dataset

    out = tmp_path / "sim"
    assert main(["simulate", "--out", str(out), "--molecules", "60", "--seed", "3", "--no-progress"]) == 0
    ds = load_dataset(out)
    assert ds.wells.num_rows > 0
    assert (out / "truth.parquet").exists()
    # the same seed again into another directory gives identical wells
    out2 = tmp_path / "sim2"
    assert main(["simulate", "--out", str(out2), "--molecules", "60", "--seed", "3", "--no-progress"]) == 0
    assert (out / "wells.parquet").read_bytes() == (out2 / "wells.parquet").read_bytes()


def test_simulate_bad_argument_is_a_clean_error(tmp_path, capsys):
    code = main(["simulate", "--out", str(tmp_path / "x"), "--molecules", "not-a-number"])
    assert code == 2
