"""load_run (embed_wells / embed_molecules / retrieve), evaluate_run, TrainConfig files, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _train_utils import tiny_config


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory):
    from molphenix.train import fit

    return fit(tiny_config(tiny_data, tmp_path_factory.mktemp("api") / "run"))


@pytest.fixture(scope="module")
def ds(tiny_data):
    from molphenix.data import load_dataset

    return load_dataset(tiny_data)


def test_load_run_embeds(run, ds):
    import molphenix
    from molphenix.train import TrainedModel

    tm = molphenix.load_run(run)
    assert isinstance(tm, TrainedModel) and isinstance(tm, torch.nn.Module) and not tm.training
    e = tm.embed_wells(ds)
    assert e.shape == (ds.n_wells, 16) and torch.allclose(e.norm(dim=1), torch.ones(ds.n_wells), atol=1e-5)
    # raw arrays + batch labels + control mask give the same embeddings as the Dataset
    e2 = tm.embed_wells(ds.phenomic_matrix(), ds.column("batch"), ds.control_mask())
    assert torch.equal(e, e2)
    smiles = ds.molecules.column("smiles").to_pylist()[:7]
    q = tm.embed_molecules(smiles, [0.25, 1, 2.5, 10, 1, 1, 1])
    assert q.shape == (7, 16)
    assert torch.allclose(tm.embed_molecules(smiles[0], 0.25)[0], q[0], atol=1e-6)  # one SMILES, one concentration
    last = molphenix.load_run(run, "last")
    assert last.step == 12
    with pytest.raises(ValueError, match="batch"):
        tm.embed_wells(ds.phenomic_matrix())
    with pytest.raises(ValueError, match="concentrations"):
        tm.embed_molecules(smiles)
    with pytest.raises(ValueError, match="checkpoint"):
        molphenix.load_run(run, "middle")


def test_retrieve(run, ds):
    from molphenix.retrieval import Index
    from molphenix.train import load_run

    tm = load_run(run)
    # 40 wells of the first batch, controls among them (queries are centered on their batch's
    # controls; the first rows of a dataset need not hold any)
    first = ds.column("batch") == ds.column("batch")[0]
    rows = np.sort(np.r_[np.flatnonzero(first & ds.control_mask())[:8], np.flatnonzero(first & ~ds.control_mask())[:32]])
    x, b, c = ds.phenomic_matrix()[rows], ds.column("batch")[rows], ds.control_mask()[rows]
    lib = ds.molecules.slice(0, 25)
    t = tm.retrieve(x, b, c, molecules=lib, k=5)
    assert t.num_rows == 40 * 5
    assert set(t.column_names) >= {"query", "rank", "id", "score", "molecule_id", "concentration_um"}
    sc = np.asarray(t.column("score").to_pylist()).reshape(40, 5)
    assert (np.diff(sc, axis=1) <= 1e-6).all()  # best first
    assert set(t.column("concentration_um").to_pylist()) <= set(tm.doses)
    # a prebuilt index gives the same results
    smiles = [s for s in lib.column("smiles").to_pylist() for _ in tm.doses]
    conc = np.tile(tm.doses, lib.num_rows)
    idx = Index(tm.embed_molecules(smiles, conc), ids=[f"{m}@{d:g}" for m in lib.column("molecule_id").to_pylist() for d in tm.doses])
    t2 = tm.retrieve(x, b, c, candidates=idx, fraction=0.05)
    assert t2.num_rows == 40 * 5
    assert t2.column("id").to_pylist() == t.column("id").to_pylist()
    with pytest.raises(ValueError, match="candidates/molecules"):
        tm.retrieve(x, b, c, k=1)


def test_evaluate_run_layout(run, tiny_data):
    from molphenix.eval import read_metrics, read_query_ranks
    from molphenix.train import evaluate_run

    m = evaluate_run(run, tiny_data, n_bootstrap=50)
    disk = read_metrics(run / "metrics.json")
    assert disk["schema_version"] == 1
    splits = [k for k in disk if k != "schema_version"]
    assert {"val", "unseen_wells", "unseen_molecules", "unseen_dataset"} == set(splits)
    for s in splits:
        d = disk[s]
        assert d["n_candidates"] > 0
        for grp in ("all", "active"):
            assert {"top1", "top5", "n_queries", "ci95"} <= set(d[grp])
        assert d["all"]["n_queries"] == d["n_candidates"]  # every (molecule, concentration) of the split
        assert 0 <= d["all"]["top1"] <= d["all"]["top5"] <= 1
        assert set(d["per_concentration"]) <= {"0.25", "1.0", "2.5", "10.0"}
    assert m["unseen_molecules"]["all"]["top5"] == disk["unseen_molecules"]["all"]["top5"]
    ranks = read_query_ranks(run / "ranks.parquet")
    assert set(ranks["split"]) == set(splits) and (ranks["rank"] >= 0).all()
    mm = evaluate_run(run, tiny_data, match="molecule", out=run / "mol.json", n_bootstrap=0)
    assert mm["unseen_molecules"]["n_candidates"] < m["unseen_molecules"]["n_candidates"]
    with pytest.raises(ValueError, match="match"):
        evaluate_run(run, tiny_data, match="scaffold")


def test_config_files(tmp_path):
    from molphenix.train import TrainConfig

    cfg = TrainConfig(data="d", out="o", loss="clip", steps=5, model_overrides={"dropout": 0.0})
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    assert TrainConfig.from_file(tmp_path / "c.json") == cfg
    (tmp_path / "c.yaml").write_text("loss: siglip\nsteps: 7\nbatch-size: 32\n")
    y = TrainConfig.from_file(tmp_path / "c.yaml", seed=3)
    assert (y.loss, y.steps, y.batch_size, y.seed) == ("siglip", 7, 32, 3)
    (tmp_path / "bad.yaml").write_text("loss: s2l\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.from_file(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="threads"):
        TrainConfig(threads=0)
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=3, samples=100)
    assert TrainConfig(batch_size=100, samples=1001).total_steps == 11


def test_cli_train_and_evaluate(tiny_data, tmp_path, capsys):
    from molphenix.cli.main import main

    cfg = tiny_config(tiny_data, tmp_path / "run", steps=4).to_dict()
    cfg.pop("data"), cfg.pop("out")
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    args = ["train", "--data", str(tiny_data), "--out", str(tmp_path / "run"), "--config", str(tmp_path / "c.json")]
    assert main(args) == 0
    assert "run:" in capsys.readouterr().out
    assert main(args) == 0
    assert "already finished" in capsys.readouterr().out
    assert main(["evaluate", "--run", str(tmp_path / "run"), "--data", str(tiny_data), "--bootstrap", "10"]) == 0
    out = capsys.readouterr().out
    assert "unseen_molecules" in out and (tmp_path / "run" / "metrics.json").is_file()
    assert main(["evaluate", "--run", str(tmp_path / "run"), "--data", str(tiny_data), "--match", "molecule",
                 "--out", str(tmp_path / "m.json"), "--bootstrap", "0"]) == 0
    assert (tmp_path / "m.json").is_file()


@pytest.mark.parametrize("argv,flag", [
    (["train", "--data", "{d}", "--out", "{o}", "--threads", "0"], "--threads"),
    (["train", "--data", "{o}/missing", "--out", "{o}"], "--data"),
    (["train", "--data", "{d}", "--out", "{o}", "--loss", "mse"], "--loss"),
    (["train", "--data", "{d}", "--out", "{o}", "--lr", "-1"], "--lr"),
    (["train", "--data", "{d}", "--out", "{o}", "--device", "tpu"], "--device"),
    (["train", "--out", "{o}"], "--data"),
    (["evaluate", "--run", "{o}", "--data", "{d}"], "--run"),
    (["evaluate", "--run", "{o}", "--match", "scaffold"], "--match"),
])
def test_cli_errors_name_the_flag(tiny_data, tmp_path, capsys, argv, flag):
    from molphenix.cli.main import main

    argv = [a.format(d=tiny_data, o=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {flag}:"), err


def test_graph_model_takes_its_input_from_the_model_config(tiny_data, tmp_path):
    from molphenix.train import fit, load_run

    run = fit(tiny_config(tiny_data, tmp_path / "g", model="molphenix-graph-small", steps=2, eval_every=0,
                          featurizer_kwargs={}, model_overrides=dict(mpnn_hidden=16, embed_dim=16,
                                                                     phenomic_hidden=32, molecular_hidden=32)))
    tm = load_run(run)
    assert tm.features.mol_input == "graph" and tm.model.config.mol_input == "graph"
    assert tm.embed_molecules(["CCO", "c1ccccc1O"], [1.0, 2.5]).shape == (2, 16)


@pytest.mark.parametrize("loader", ["rxrx3_core", "jump"])
def test_loader_fixtures_train_with_defaults(loader, tmp_path):
    """Any dataset in the documented schema (here the loaders' fixtures: no calls, few
    molecules, one or two datasets) trains with the default settings and evaluates."""
    import warnings
    from pathlib import Path

    from molphenix.data import load_jump, load_rxrx3_core, save_dataset
    from molphenix.train import evaluate_run
    from molphenix.train import TrainConfig, fit

    fx = Path(__file__).resolve().parents[1] / "fixtures"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if loader == "rxrx3_core":
            ds = load_rxrx3_core(fx / "rxrx3_core" / "metadata_rxrx3_core.csv",
                                 fx / "rxrx3_core" / "OpenPhenom_rxrx3_core_embeddings.parquet")
        else:
            ds = load_jump(fx / "jump" / "profiles.parquet", compounds=fx / "jump" / "compound.csv",
                           plates=fx / "jump" / "plate.csv", controls=fx / "jump" / "perturbation_control.csv")
    save_dataset(ds, tmp_path / "ds")
    msgs = []
    run = fit(TrainConfig(data=str(tmp_path / "ds"), out=str(tmp_path / "run"), steps=4, threads=1,
                          progress=False), log=msgs.append)
    assert (run / "calls.parquet").is_file()  # the fixtures have no calls: computed for the run
    m = evaluate_run(run, tmp_path / "ds", n_bootstrap=0)
    assert [k for k in m if k != "schema_version"]
