"""``molphenix demo --data cell-injury`` on the bundled real screen with tiny budgets: the report
(every method, chance, counts, attribution, command, commit), resume, settings and flag errors,
the MiniMol variants (skipped line without the extra; run with it)."""

from __future__ import annotations

import json

import pytest

from molphenix.cli.main import main

METHODS = "molphenix,clip,ridge"
#: what the tests ask for: the MiniMol variants too (skipped where the extra is, here, missing)
ASKED = METHODS + ",molphenix-minimol,ridge-minimol"


def _argv(out, *extra, methods=ASKED):
    return ["demo", "--data", "cell-injury", "--tiny", "--threads", "1", "--methods", methods, "--out", str(out),
            *extra]


@pytest.fixture
def no_minimol(monkeypatch):
    import molphenix.data.minimol as mm

    monkeypatch.setattr(mm, "minimol_available", lambda: False)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("real_demo") / "out"
    mp = pytest.MonkeyPatch()
    import molphenix.data.minimol as mm

    mp.setattr(mm, "minimol_available", lambda: False)  # the same report with or without the extra
    try:
        assert main(_argv(out)) == 0
    finally:
        mp.undo()
    return out


def test_report_has_every_method_chance_counts_and_attribution(demo_dir):
    from molphenix.demo.real import REAL_DATASETS

    report = (demo_dir / "report.md").read_text()
    for m in METHODS.split(","):
        assert f"| {m} |" in report
    assert "*chance*" in report and "top-1 (hits / queries)" in report and "= top-1" in report
    assert REAL_DATASETS["cell-injury"][1] in report and "CC BY 4.0" in report
    assert "`molphenix demo --data cell-injury --out" in report and "git commit `" in report
    assert "## Paired comparisons against molphenix, all queries" in report
    assert "molphenix vs clip" in report and "molphenix vs ridge" in report
    assert "## Per fold" in report and "wall time, all folds" in report
    assert 'MiniMol variants (molphenix-minimol, ridge-minimol) skipped' in report
    assert 'pip install "molphenix[minimol]"' in report
    for png in ("mrr_all.png", "mrr_active.png", "rank_cdf.png"):
        assert (demo_dir / "plots" / png).stat().st_size > 0 and f"plots/{png}" in report
    doc = json.loads((demo_dir / "report.json").read_text())
    assert doc["kind"] == "real_demo" and doc["attribution"] == REAL_DATASETS["cell-injury"][1]
    assert list(doc["methods"]) == METHODS.split(",")
    assert doc["minimol"]["skipped"] == ["molphenix-minimol", "ridge-minimol"]
    assert all(v["wall_s"] > 0 for v in doc["methods"].values())
    cv = doc["cv"]
    assert cv["folds"] == 3 and cv["match"] == "molecule" and cv["reference"] == "molphenix"
    pooled = cv["methods"]["molphenix"]["pooled"]["all"]
    # every query of the primary dataset's molecules is tested once, pooled over the folds
    assert pooled["n_queries"] == sum(s["n_queries"] for s in cv["fold_sizes"])
    assert pooled["chance"]["mrr"] > 0 and pooled["hits"]["rank1"] >= 0
    # the demo's run config: each method its own fields, the tiny budget shared
    assert cv["methods"]["clip"]["config"]["loss"] == "clip"
    assert cv["methods"]["molphenix"]["config"]["steps"] == 4


def test_rerun_skips_finished_fold_runs(demo_dir, capsys, no_minimol):
    before = {p: p.stat().st_mtime_ns for p in (demo_dir / "cv").rglob("last.pt")}
    assert before
    assert main(_argv(demo_dir)) == 0
    log = capsys.readouterr().out
    assert "resuming: 9 of 9 fold-runs finished earlier are kept and skipped" in log
    assert log.count("done earlier") == 9 and "training (" not in log
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())


def test_a_killed_fold_run_is_redone_and_the_rest_kept(demo_dir, tmp_path, capsys, no_minimol):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(demo_dir, out)
    for p in out.rglob("config.json"):  # the copied runs live elsewhere now
        cfg = json.loads(p.read_text())
        cfg["out"] = str(p.parent)
        cfg["data"] = str(out / "data")
        p.write_text(json.dumps(cfg))
    shutil.rmtree(out / "cv" / "clip" / "fold-2")
    assert main(_argv(out)) == 0
    log = capsys.readouterr().out
    assert "resuming: 8 of 9 fold-runs" in log and log.count("done earlier") == 8
    assert "clip fold 2: training (clip)" in log


def test_other_settings_in_the_same_out_give_one_line(demo_dir, capsys, no_minimol):
    assert main(_argv(demo_dir, "--seed", "1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --out:") and "seed: 1 now vs 0 there" in err[0]
    assert "--overwrite" in err[0]
    # the simulator demo in the real demo's directory: refused the same way
    assert main(["demo", "--tiny", "--out", str(demo_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --out:")


def test_overwrite_starts_over(demo_dir, tmp_path, capsys, no_minimol):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(demo_dir, out)
    assert main(_argv(out, "--seed", "1", methods="molphenix")) == 2
    capsys.readouterr()
    assert main(_argv(out, "--seed", "1", "--overwrite", methods="molphenix")) == 0
    log = capsys.readouterr().out
    assert "done earlier" not in log and "resuming" not in log
    assert json.loads((out / "demo.json").read_text())["seed"] == 1
    assert not (out / "cv" / "clip").exists()  # the old demo's runs are gone


@pytest.mark.parametrize("argv,flag,msg", [
    (["demo", "--data", "nope"], "--data", "unknown dataset 'nope'"),
    (["demo", "--data", "cell-injury", "--tiny", "--methods", "molphenix,nope"], "--methods", "unknown method 'nope'"),
    (["demo", "--data", "cell-injury", "--seed", "-1"], "--seed", ""),
    (["demo", "--data", "cell-injury", "--threads", "0"], "--threads", "must be >= 1"),
])
def test_bad_flags_give_one_line(argv, flag, msg, tmp_path, capsys):
    rc = main(argv + ["--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: {flag}:") and msg in err[0], err


def test_out_that_is_a_file_or_a_foreign_directory(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("")
    assert main(_argv(f)) == 2
    assert capsys.readouterr().err.startswith("error: --out:")
    d = tmp_path / "d"
    d.mkdir()
    (d / "mine.txt").write_text("keep")
    assert main(_argv(d, "--overwrite")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out:") and "holds no demo" in err and (d / "mine.txt").is_file()


@pytest.mark.requires_minimol
def test_minimol_variants_run_with_the_extra(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_argv(out, methods="molphenix,molphenix-minimol,ridge-minimol")) == 0
    doc = json.loads((out / "report.json").read_text())
    assert list(doc["methods"]) == ["molphenix", "molphenix-minimol", "ridge-minimol"]
    assert doc["minimol"]["skipped"] == []
    report = (out / "report.md").read_text()
    assert "| molphenix-minimol |" in report and "| ridge-minimol |" in report
    assert "skipped: the optional extra" not in report and "MiniMol variants included" in report
    run = json.loads((out / "cv" / "molphenix-minimol" / "fold-0" / "run.json").read_text())
    assert run["features"]["mol_input"] == "minimol"
