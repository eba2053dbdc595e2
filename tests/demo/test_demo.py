"""``molphenix demo`` end to end on the tiny profile (seconds), resume, and its errors."""

from __future__ import annotations

import json

import pytest

from molphenix.cli.main import main

METHODS = "molphenix,molphenix-cosine-labels,ridge"


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    assert main(["demo", "--tiny", "--methods", METHODS, "--out", str(out)]) == 0
    return out


def test_demo_writes_report_metrics_and_plots(demo_dir):
    report = (demo_dir / "report.md").read_text()
    for split in ("unseen molecules", "unseen wells", "unseen dataset"):
        assert f"## {split}" in report
    assert "*chance*" in report and "| molphenix |" in report and "| ridge |" in report
    for m in METHODS.split(","):
        metrics = json.loads((demo_dir / m / "metrics.json").read_text())
        assert metrics["schema_version"] >= 1
        for split in ("unseen_wells", "unseen_molecules", "unseen_dataset"):
            g = metrics[split]
            assert 0.0 <= g["all"]["top1"] <= 1.0 and "ci95" in g["all"] and g["per_concentration"]
    pngs = sorted(p.name for p in (demo_dir / "plots").glob("*.png"))
    assert "recall_vs_samples.png" in pngs and "similarity_cdfs.png" in pngs
    for name in pngs:
        assert f"plots/{name}" in report


def test_demo_resumes_finished_methods(demo_dir, capsys):
    before = (demo_dir / "molphenix" / "metrics.json").read_bytes()
    assert main(["demo", "--tiny", "--methods", METHODS, "--out", str(demo_dir)]) == 0
    out = capsys.readouterr().out
    assert "molphenix: done earlier" in out and "ridge: done earlier" in out
    assert (demo_dir / "molphenix" / "metrics.json").read_bytes() == before


def test_demo_refuses_other_settings_in_the_same_out(demo_dir, capsys):
    assert main(["demo", "--tiny", "--seed", "1", "--methods", METHODS, "--out", str(demo_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --out:") and "seed" in err[0]


def test_demo_flag_errors(tmp_path, capsys):
    assert main(["demo", "--tiny", "--methods", "nope", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith("error: --methods:")
    f = tmp_path / "file"
    f.write_text("")
    assert main(["demo", "--out", str(f)]) == 2
    assert capsys.readouterr().err.startswith("error: --out:")


def test_demo_overwrite_refuses_a_directory_that_holds_no_demo(tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    (d / "mine.txt").write_text("keep")
    assert main(["demo", "--tiny", "--overwrite", "--out", str(d)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out:") and "holds no demo" in err and (d / "mine.txt").is_file()
