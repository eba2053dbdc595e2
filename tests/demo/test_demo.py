"""``molphenix demo`` end to end on the tiny profile (seconds), resume, and its errors."""

from __future__ import annotations

import json

import pytest
import torch

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


def test_cosine_label_loss_is_s2l_on_normalised_inputs():
    from molphenix.demo._cosine import UnitS2LLoss, unit_s2l_loss_available
    from molphenix.losses import S2LLoss, create_loss

    g = torch.Generator().manual_seed(0)
    p = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=1)
    q = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=1)
    u = torch.randn(16, 5, generator=g) * 3
    got = UnitS2LLoss(unit_scale=0.2, backend="reference")(p, q, u).loss
    want = S2LLoss(backend="reference")(p, q, torch.nn.functional.normalize(u, dim=1) / 0.2).loss
    assert torch.equal(got, want)
    with unit_s2l_loss_available():
        import molphenix.losses as losses

        assert isinstance(losses.create_loss("s2l", unit_u=True, unit_scale=0.5), UnitS2LLoss)
        assert type(losses.create_loss("s2l")) is S2LLoss
    with pytest.raises(ValueError, match="unit_u"):
        create_loss("s2l", unit_u=True)  # outside the demo: an unknown option, named
