"""The ridge baseline as a run directory: ``molphenix train --loss ridge`` -> ``evaluate``,
``embed-library``, ``retrieve`` and ``load_run`` read it like any trained run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from molphenix.cli.main import main


@pytest.fixture(scope="module")
def ridge_run(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("ridge") / "run"
    argv = ["train", "--data", str(tiny_data), "--out", str(run), "--loss", "ridge", "--split-seed", "1",
            "--folds", "4", "--fold", "2"]
    assert main(argv) == 0
    return run


def test_ridge_run_layout_and_evaluate_through_the_cli(ridge_run, tiny_data, capsys):
    for f in ("config.json", "run.json", "dataset.json", "split.parquet", "ridge_grid.json",
              "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (ridge_run / f).is_file(), f
    meta = json.loads((ridge_run / "run.json").read_text())
    assert meta["kind"] == "ridge" and meta["features"]["mol_input"] == "morgan"
    cfg = json.loads((ridge_run / "config.json").read_text())
    assert cfg["loss"] == "ridge" and (cfg["folds"], cfg["fold"], cfg["split_seed"]) == (4, 2, 1)
    capsys.readouterr()
    assert main(["evaluate", "--run", str(ridge_run), "--bootstrap", "50"]) == 0
    text = capsys.readouterr().out
    assert "unseen_molecules" in text and "chance" in text and "MRR" in text
    m = json.loads((ridge_run / "metrics.json").read_text())
    assert (ridge_run / "ranks.parquet").is_file()
    assert {"val", "unseen_molecules", "unseen_dataset"} <= set(m)

    # the same numbers as the baseline's own evaluation on the same split and calls
    from molphenix.baselines import RidgeConfig, fit_ridge
    from molphenix.data import Splits, load_dataset

    ds = load_dataset(tiny_data)
    res = fit_ridge(ds, Splits.load(ridge_run / "split.parquet", ds), config=RidgeConfig(n_bootstrap=0))
    assert res.grid["chosen_alpha"] == json.loads((ridge_run / "ridge_grid.json").read_text())["chosen_alpha"]
    for split, want in res.metrics.items():
        for grp in ("all", "active"):
            for key in ("top1", "top5", "mrr", "mean_rank", "n_queries"):
                got = m[split][grp][key]
                assert got == (pytest.approx(want[grp][key], rel=1e-9) if want[grp][key] is not None else None), \
                    (split, grp, key)


def test_ridge_run_loads_embeds_and_retrieves(ridge_run, tiny_data, tmp_path):
    from molphenix.baselines import RidgeModel
    from molphenix.data import load_dataset
    from molphenix.train import load_run

    tm = load_run(ridge_run)
    assert isinstance(tm.model, RidgeModel)
    ds = load_dataset(tiny_data)
    smiles = ds.molecules.column("smiles").to_pylist()[:3]
    q = tm.embed_molecules(smiles, [1.0, 1.0, 10.0])
    assert q.shape == (3, ds.embedding_dim)
    assert torch.allclose(q.norm(dim=1), torch.ones(3), atol=1e-5)
    w = tm.embed_wells(ds)
    assert w.shape == (ds.n_wells, ds.embedding_dim)
    # the weights round-trip: the loaded model predicts what the fitted one did
    from molphenix.baselines import RidgeConfig, fit_ridge
    from molphenix.data import Splits

    res = fit_ridge(ds, Splits.load(ridge_run / "split.parquet", ds), config=RidgeConfig(n_bootstrap=0))
    assert torch.allclose(res.model.embed_molecules(smiles, [1.0, 1.0, 10.0]), q, atol=1e-6)
    # embed-library and retrieve through the CLI
    csv = tmp_path / "lib.csv"
    csv.write_text("molecule_id,smiles\n" + "".join(f"m{i},{s}\n" for i, s in enumerate(smiles)))
    lib = tmp_path / "lib.parquet"
    assert main(["embed-library", "--run", str(ridge_run), "--molecules", str(csv), "--out", str(lib)]) == 0
    hits = tmp_path / "hits.csv"
    assert main(["retrieve", "--run", str(ridge_run), "--wells", str(tiny_data), "--library", str(lib),
                 "--k", "2", "--out", str(hits)]) == 0
    assert len(hits.read_text().splitlines()) > 2


def test_ridge_rerun_is_finished_and_flags_that_do_not_apply(ridge_run, tiny_data, capsys):
    mtime = (ridge_run / "checkpoints" / "last.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["train", "--data", str(tiny_data), "--out", str(ridge_run), "--loss", "ridge",
                 "--split-seed", "1", "--folds", "4", "--fold", "2"]) == 0
    assert "already finished" in capsys.readouterr().out
    assert (ridge_run / "checkpoints" / "last.pt").stat().st_mtime_ns == mtime
    for flag, value in (("--lr", "0.1"), ("--steps", "5"), ("--samples", "100"), ("--batch-size", "8")):
        rc = main(["train", "--data", str(tiny_data), "--out", str(ridge_run / "x"), "--loss", "ridge", flag, value])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith(f"error: {flag}: does not apply to --loss ridge"), err
    rc = main(["train", "--data", str(tiny_data), "--out", str(ridge_run / "y"), "--loss", "ridge", "--folds", "4"])
    assert rc == 2 and "error: --folds: give folds and fold together" in capsys.readouterr().err


def test_ridge_bad_fields_are_named(tiny_data, tmp_path):
    from molphenix.baselines import fit_ridge_run
    from molphenix.train import TrainConfig, fit

    def cfg(name, **kw):
        return TrainConfig(data=str(tiny_data), out=str(tmp_path / name), loss="ridge", **kw)

    with pytest.raises(ValueError, match="mol_input: the ridge baseline takes"):
        fit_ridge_run(cfg("a", mol_input="graph"))
    with pytest.raises(ValueError, match="normalize: the ridge baseline centers"):
        fit_ridge_run(cfg("b", normalize="tvn"))
    with pytest.raises(ValueError, match="loss_kwargs: the ridge baseline takes only 'alphas'"):
        fit_ridge_run(cfg("c", loss_kwargs={"x": 1}))
    with pytest.raises(ValueError, match="loss: 'ridge' is the closed-form baseline.*fit_ridge_run"):
        fit(cfg("e"))  # the trainer says where the baseline is fitted
    run = fit_ridge_run(cfg("d", loss_kwargs={"alphas": [1.0, 10.0]}, mol_input="maccs"))
    grid = json.loads((run / "ridge_grid.json").read_text())
    assert grid["alphas"] == [1.0, 10.0] and np.isfinite(grid["chosen_alpha"])
    from molphenix.train import load_run

    assert load_run(run).embed_molecules(["CCO"], [1.0]).shape == (1, 16)


@pytest.mark.requires_minimol
def test_ridge_on_minimol_is_a_run(tiny_data, tmp_path, monkeypatch):
    """The ridge baseline on the pretrained MiniMol embeddings (a linear probe) writes, loads and
    evaluates like the Morgan one; run.json records the embedder's version."""
    from molphenix.baselines import fit_ridge_run
    from molphenix.train import TrainConfig, evaluate_run, load_run

    monkeypatch.setenv("MOLPHENIX_CACHE_DIR", str(tmp_path / "cache"))
    run = fit_ridge_run(TrainConfig(data=str(tiny_data), out=str(tmp_path / "r"), loss="ridge", mol_input="minimol"))
    meta = json.loads((run / "run.json").read_text())
    assert meta["features"]["mol_input"] == "minimol" and meta["features"]["model_version"]
    assert meta["ridge"]["feature_dim"] == 512
    m = evaluate_run(run, n_bootstrap=0)
    assert m["unseen_molecules"]["all"]["n_queries"] > 0
    assert load_run(run).embed_molecules(["CCO"], [1.0]).shape == (1, 16)
