"""``molphenix cv``: grouped k-fold cross-validation through the CLI on a tiny simulation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from molphenix.cli.main import main

FOLDS = 3
TINY = {"model_overrides": {"phenomic_hidden": 32, "molecular_hidden": 32, "embed_dim": 16, "phenomic_blocks": 1},
        "featurizer_kwargs": {"n_bits": 256}, "eval_every": 2}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from molphenix.data import simulate

    out = tmp_path_factory.mktemp("cv_sim") / "ds"
    simulate(out, n_molecules=48, seed=2, embedding_dim=16, min_replicates=2, max_replicates=2,
             return_dataset=False)
    return out


def _argv(data: Path, out: Path, *extra: str, methods: str = "s2l,ridge") -> list:
    cfg = out.parent / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    return ["cv", "--data", str(data), "--out", str(out), "--folds", str(FOLDS), "--methods", methods,
            "--steps", "4", "--batch-size", "8", "--threads", "1", "--bootstrap", "200", "--config", str(cfg),
            "--no-progress", *extra]


@pytest.fixture(scope="module")
def cv_dir(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("cv") / "cv"
    assert main(_argv(data, out)) == 0
    return out


def _primary_molecules(data: Path) -> set:
    from molphenix.data import load_dataset

    ds = load_dataset(data)
    w = ds.wells
    mol = np.asarray(w.column("molecule_id").to_pylist(), dtype=object)
    dset = np.asarray(w.column("dataset").to_pylist(), dtype=object)
    return set(mol[(dset == "lib_a") & ~ds.control_mask()])


def test_folds_are_disjoint_by_scaffold_and_test_every_molecule_once(cv_dir, data):
    from molphenix.data import Splits, load_dataset, scaffold_of

    folds = pq.read_table(cv_dir / "folds.parquet").to_pydict()
    prim = _primary_molecules(data)
    assert set(folds["molecule_id"]) == prim
    fold_of = dict(zip(folds["molecule_id"], folds["fold"]))
    ds = load_dataset(data)
    smiles = ds.smiles_of()
    by_scaf = {}
    for m, f in fold_of.items():
        assert by_scaf.setdefault(scaffold_of(smiles[m]), f) == f  # a scaffold in one fold only
    mol = np.asarray(ds.wells.column("molecule_id").to_pylist(), dtype=object)
    for method in ("s2l", "ridge"):
        tested = []
        for k in range(FOLDS):
            run = cv_dir / method / f"fold-{k}"
            sp = Splits.load(run / "split.parquet", ds)
            test_m = set(mol[sp.mask("unseen_molecules")])
            assert test_m == {m for m, f in fold_of.items() if f == k}
            assert not test_m & set(mol[sp.mask("train")]) and not test_m & set(mol[sp.mask("val")])
            tested.append(test_m)
        assert sum(map(len, tested)) == len(prim) and set().union(*tested) == prim
        # both methods saw the same split in every fold
    for k in range(FOLDS):
        a = pq.read_table(cv_dir / "s2l" / f"fold-{k}" / "split.parquet").to_pydict()
        b = pq.read_table(cv_dir / "ridge" / f"fold-{k}" / "split.parquet").to_pydict()
        assert a == b


def test_pooled_ranks_are_the_folds_queries(cv_dir):
    from molphenix.eval import read_metrics, read_query_ranks

    res = json.loads((cv_dir / "results.json").read_text())
    assert res["folds"] == FOLDS and res["kind"] == "grouped_cv" and res["reference"] == "s2l"
    for method in ("s2l", "ridge"):
        pooled = read_query_ranks(cv_dir / method / "ranks.parquet")
        per_fold = [read_metrics(cv_dir / method / f"fold-{k}" / "metrics.json")["unseen_molecules"]
                    for k in range(FOLDS)]
        assert len(pooled["rank"]) == sum(m["all"]["n_queries"] for m in per_fold)
        assert res["methods"][method]["pooled"]["all"]["n_queries"] == len(pooled["rank"])
        for k in range(FOLDS):
            sel = pooled["fold"] == k
            assert (pooled["n_candidates"][sel] == per_fold[k]["n_candidates"]).all()
            fold_ranks = read_query_ranks(cv_dir / method / f"fold-{k}" / "ranks.parquet")
            fsel = fold_ranks["split"] == "unseen_molecules"
            assert sorted(fold_ranks["rank"][fsel].tolist()) == sorted(pooled["rank"][sel].tolist())
        keys = list(zip(pooled["molecule"], pooled["concentration"]))
        assert len(set(keys)) == len(keys)  # each query once
        # pooled metrics are the per-query means, with hits counted
        g = res["methods"][method]["pooled"]["all"]
        assert g["hits"]["rank1"] == int((pooled["rank"] == 0).sum())
        assert g["mrr"] == pytest.approx(float(np.mean(1.0 / (pooled["rank"] + 1))))
        assert g["chance"]["rank1"] == pytest.approx(float(np.mean(1.0 / pooled["n_candidates"])))
    comp = [c for c in res["comparisons"] if c["subset"] == "all"]
    assert [(c["a"], c["b"]) for c in comp] == [("s2l", "ridge")]
    assert set(comp[0]["metrics"]) == {"mrr", "rank1", "top1", "top5", "mean_rank"}
    report = (cv_dir / "report.md").read_text()
    assert "| s2l |" in report and "| ridge |" in report and "*chance*" in report and "s2l vs ridge" in report


def test_rerun_skips_finished_folds_and_resumes_the_rest(cv_dir, data, tmp_path, capsys):
    out = tmp_path / "cv"
    shutil.copytree(cv_dir, out)
    for p in out.rglob("config.json"):  # the copied runs live elsewhere now
        cfg = json.loads(p.read_text())
        cfg["out"] = str(p.parent)
        p.write_text(json.dumps(cfg))
    ck = {p: p.stat().st_mtime_ns for p in out.rglob("last.pt")}
    shutil.rmtree(out / "s2l" / "fold-1")  # a fold never trained
    (out / "ridge" / "fold-2" / "cv_fold.json").unlink()  # a fold killed before its evaluation finished
    capsys.readouterr()
    assert main(_argv(data, out)) == 0
    log = capsys.readouterr().out
    assert log.count("done earlier") == 2 * FOLDS - 2
    assert "s2l fold 1: training" in log and "ridge fold 2: fitting the ridge baseline" in log
    assert "already finished" in log  # ridge fold 2's fit was confirmed, not redone
    for p, t in ck.items():
        if "s2l/fold-1" not in str(p):
            assert p.stat().st_mtime_ns == t, p  # no finished run was retrained
    res = json.loads((out / "results.json").read_text())
    assert res["methods"]["s2l"]["pooled"]["all"]["n_queries"] == \
        json.loads((cv_dir / "results.json").read_text())["methods"]["s2l"]["pooled"]["all"]["n_queries"]
    # a third run: every fold done earlier; a method can be added
    capsys.readouterr()
    assert main(_argv(data, out, methods="s2l,ridge,clip")) == 0
    log = capsys.readouterr().out
    assert log.count("done earlier") == 2 * FOLDS and log.count("clip fold") == 2 * FOLDS
    res = json.loads((out / "results.json").read_text())
    assert list(res["methods"]) == ["s2l", "ridge", "clip"]


def test_the_other_checkpoint_is_evaluated_without_training_again(cv_dir, data, tmp_path, capsys):
    out = tmp_path / "cv"
    shutil.copytree(cv_dir, out)
    for p in out.rglob("config.json"):  # the copied runs live elsewhere now
        cfg = json.loads(p.read_text())
        cfg["out"] = str(p.parent)
        p.write_text(json.dumps(cfg))
    ck = {p: p.stat().st_mtime_ns for p in out.rglob("last.pt")}
    capsys.readouterr()
    assert main(_argv(data, out, "--checkpoint", "last")) == 0
    log = capsys.readouterr().out
    assert "done earlier" not in log and log.count("already finished") == 2 * FOLDS  # re-evaluated only
    for p, t in ck.items():
        assert p.stat().st_mtime_ns == t, p
    last, best = (json.loads((out / f"results-{c}.json").read_text()) for c in ("last", "best"))
    assert last["checkpoint"] == "last" and best["checkpoint"] == "best"
    assert json.loads((out / "results.json").read_text())["checkpoint"] == "last"
    assert (out / "report-last.md").is_file() and (out / "report-best.md").is_file()
    assert json.loads((out / "cv.json").read_text())["checkpoint"] == "last"


def test_settings_that_differ_are_refused(cv_dir, data, capsys):
    rc = main(_argv(data, cv_dir, "--split-seed", "3"))
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --out:") and "split_seed: 3 now vs 0 there" in err
    argv = _argv(data, cv_dir)
    argv[argv.index("--steps") + 1] = "5"
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and "method 's2l' with other settings (steps: 5 now vs 4 there)" in err


@pytest.mark.parametrize("extra,flag,msg", [
    (("--folds", "1"), "--folds", "must be >= 2"),
    (("--folds", "1000"), "--folds", "1000 folds need at least 1000 scaffold groups"),
    (("--methods", "s2l,nope"), "--methods", "unknown method 'nope'"),
    (("--reference", "clip"), "--reference", "'clip' is not one of the methods"),
    (("--match", "x"), "--match", "must be pair or molecule"),
    (("--lr", "-1"), "--lr", "must be > 0"),
])
def test_cli_errors(data, tmp_path, capsys, extra, flag, msg):
    argv = _argv(data, tmp_path / "cv")
    for i in range(0, len(extra), 2):
        if extra[i] in argv:
            argv[argv.index(extra[i]) + 1] = extra[i + 1]
        else:
            argv += list(extra[i:i + 2])
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: {flag}:") and msg in err, err


def test_refuses_a_directory_that_is_not_a_cv(data, tmp_path, capsys):
    out = tmp_path / "cv"
    out.mkdir()
    (out / "something").write_text("x")
    rc = main(_argv(data, out))
    assert rc == 2 and "holds no cross-validation" in capsys.readouterr().err
