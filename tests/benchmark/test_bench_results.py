"""benches/: the README's benchmark tables match their committed runs; saved and published rows
come from a committed tree (the harness refuses a dirty one, make_tables never publishes one)."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from molphenix.benchmark import CSV_FIELDS, Row

ROOT = Path(__file__).resolve().parents[2]
BENCHES = ROOT / "benches"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"benches_{name}", BENCHES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def make_tables():
    return _load("make_tables")


@pytest.fixture(scope="module")
def harness():
    return _load("_harness")


def test_readme_tables_match_their_runs():
    out = subprocess.run([sys.executable, str(BENCHES / "make_tables.py"), "--check", "README.md"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "matches benches/results/" in out.stdout


def _fake_run(tmp: Path, sha: str, *, command: str = "run_all.py --threads 2") -> Path:
    """A machine table with one run's rows (matmul + two providers) and that run's raw log."""
    logs = tmp / "results" / "cpu-test-2c"
    logs.mkdir(parents=True)
    log = logs / "2026-12-01T100000Z-run_all.log"
    log.write_text(f"# benches/run_all.py: 2026-12-01T10:00:00+00:00\n# command: {command}\n"
                   "# machine: cpu-test-2c (Test CPU (2 cores)); device cpu; threads 2\n"
                   f"# versions: python 3.11.7, torch 2.13.0+cpu; git {sha}\n"
                   "# load average at start (1/5/15 min): 0.10/0.20/0.30\n")
    base = {k: "" for k in CSV_FIELDS}
    base.update(git_sha=sha, machine="cpu-test-2c", device="cpu", device_name="Test CPU (2 cores)", dtype="float32",
                threads="2", warmup="1", repeats="3", status="ok", load_avg_start="0.10/0.20/0.30", python="3.11.7",
                torch="2.13.0+cpu", molphenix="0.1.0", command=command, mem_counted="peak RSS increase")
    rows = [dict(base, timestamp="2026-12-01T10:00:05+00:00", op="matmul", provider="torch.mm",
                 case=json.dumps({"K": 8, "M": 8, "N": 8}), median_s="1", min_s="1", max_s="1", gflops="50",
                 matmul_case="4096^3 float32", notes="the machine's own GEMM rate, measured at the start of the run")]
    for prov, t in (("ours", "1.0"), ("naive", "4.0")):
        rows.append(dict(base, timestamp="2026-12-01T10:01:00+00:00", op="s2l_loss", provider=prov,
                         case=json.dumps({"B": 64, "D": 8, "E": 4}), median_s=t, min_s=t, max_s=t, peak_mem_mb="3"))
    # a row of another run (other command) in the same table: not part of this run
    rows.append(dict(rows[1], command="bench_s2l_loss.py", median_s="9", timestamp="2026-12-01T11:00:00+00:00"))
    with (tmp / "results" / "cpu-test-2c.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)
    return log


def _doc(tmp: Path) -> Path:
    doc = tmp / "DOC.md"
    doc.write_text("intro\n<!-- bench-table START -->\nold\n<!-- bench-table END -->\ntail\n")
    return doc


def test_make_tables_publishes_committed_rows_and_checks_them(tmp_path, make_tables, capsys):
    log = _fake_run(tmp_path, "0123456789ab")
    doc = _doc(tmp_path)
    assert make_tables.main([str(log), "--update", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("intro\n<!-- bench-table START -->\n<!-- runs: ") and text.endswith("END -->\ntail\n")
    assert "| `s2l_loss` | B=64, D=8, E=4 | naive | 4 (4–4), 1+3 | 4.00 |" in text
    assert "| 9 (" not in text  # the other run's row stays out
    assert make_tables.main(["--check", str(doc)]) == 0  # reads its runs from the table itself
    doc.write_text(text.replace("| 4.00 |", "| 5.00 |"))
    assert make_tables.main(["--check", str(doc)]) == 1
    assert "differs" in capsys.readouterr().err


def test_make_tables_refuses_rows_of_an_uncommitted_tree(tmp_path, make_tables, capsys):
    log = _fake_run(tmp_path, "0123456789ab-dirty")
    doc = _doc(tmp_path)
    assert make_tables.main([str(log), "--update", str(doc)]) == 1
    assert "uncommitted tree" in capsys.readouterr().err
    assert "old" in doc.read_text()
    assert make_tables.main([str(log)]) == 1
    assert make_tables.main([str(log), "--allow-dirty"]) == 0  # history may be printed, labelled
    assert "`0123456`-dirty" in capsys.readouterr().out


def test_make_tables_rejects_a_file_that_is_not_a_benchmark_log(tmp_path, make_tables, capsys):
    bad = tmp_path / "results" / "cpu-test-2c" / "notes.log"
    bad.parent.mkdir(parents=True)
    bad.write_text("hello\n")
    assert make_tables.main([str(bad)]) == 1
    assert "not a benchmark log" in capsys.readouterr().err


def test_tree_state_sees_changes_outside_the_results(tmp_path, harness):
    if shutil.which("git") is None:
        pytest.skip("git is not installed: tree_state reports no history there")

    def git(*a):
        subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "benches" / "results").mkdir(parents=True)
    (tmp_path / "benches" / "results" / "m.csv").write_text("a\n")
    git("add", ".")
    git("commit", "-q", "-m", "init")
    sha, dirty = harness.tree_state(tmp_path)
    assert len(sha) == 12 and dirty == []
    (tmp_path / "benches" / "results" / "m.csv").write_text("a\nb\n")  # results: not code
    (tmp_path / "benches" / "results" / "new.log").write_text("log\n")
    assert harness.tree_state(tmp_path)[1] == []
    (tmp_path / "code.py").write_text("x = 2\n")
    (tmp_path / "new.py").write_text("y = 1\n")
    assert sorted(harness.tree_state(tmp_path)[1]) == ["code.py", "new.py"]


def test_open_run_refuses_a_dirty_tree_and_labels_allowed_dirty_rows(tmp_path, harness, monkeypatch, capsys):
    import os

    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads())))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # a Run sets the process's threads
    monkeypatch.setattr(harness, "tree_state", lambda root=None: ("0123456789ab", ["benches/x.py"]))
    monkeypatch.setattr(harness, "RESULTS", tmp_path)
    monkeypatch.setattr(harness, "machine_table",
                        lambda device="cpu", root=None: (tmp_path / "m.csv", tmp_path / "m"))
    args = harness.parser("t").parse_args(["--threads", "1"])
    with pytest.raises(SystemExit) as e:
        harness.open_run(args, title="t", matmul=False)
    assert e.value.code == 2 and "differs from HEAD" in capsys.readouterr().err
    assert not (tmp_path / "m.csv").exists()

    args = harness.parser("t").parse_args(["--threads", "1", "--allow-dirty", "--tag", "x"])
    with harness.open_run(args, title="t", matmul=False) as run:
        run.add(Row(op="demo", provider="quick", case={"mode": "quick"}, dtype="float32", device="cpu", threads=1,
                    times=[1.0]))
    with (tmp_path / "m.csv").open(newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["git_sha"].endswith("-dirty")
    (log,) = (tmp_path / "m").glob("*-x.log")
    assert "rows are marked" in log.read_text() and "# load average at end" in log.read_text()
    assert not isinstance(sys.stdout, harness.Tee)  # the raw log is closed with the run
