"""Every command reports a user error as ONE stderr line naming the flag, without a usage banner,
a rich box or a traceback, and exits 2 (usage) or 1 (bad input data)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from typing import Optional

import pytest
import typer

import molphenix
from molphenix.cli._errors import MolphenixGroup, data_error, threads_option, usage_error
from molphenix.cli.main import main


def run(capsys, argv):
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def assert_one_line(err: str, startswith: str) -> None:
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(startswith), err
    for banner in ("Usage:", "Try '", "Traceback", "╭", "│", "Error:"):
        assert banner not in err, err


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    from molphenix.data import simulate

    out = tmp_path_factory.mktemp("cli") / "ds"
    simulate(out, n_molecules=20, seed=1, embedding_dim=8, call_activity=False, return_dataset=False)
    return out


def test_version(capsys):
    code, out, err = run(capsys, ["--version"])
    assert code == 0 and out.strip() == f"molphenix {molphenix.__version__}" and not err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["simulate", "--out", "x", "--molecules", "not-a-number"], "error: --molecules: "),
        (["simulate", "--molecules", "3"], "error: --out: missing required option"),
        (["simulate", "--out"], "error: --out: requires a value"),
        (["simulate", "--out", "x", "--bogus"], "error: --bogus: no such option"),
        (["simulate", "--out", "x", "--molecules", "0"], "error: --molecules: must be >= 1, got 0"),
        (["simulate", "--out", "x", "--second-library-fraction", "1.5"],
         "error: --second-library-fraction: must lie in [0, 1)"),
        (["simulate", "--out", "x", "--min-replicates", "4", "--max-replicates", "2"], "error: --min-replicates: "),
        (["simulate", "--out", "x", "--molecules", "50000"], "error: --molecules: library"),
        (["bench", "--threads", "0"], "error: --threads: must be >= 1, got 0"),
        (["bench", "--threads", "-3"], "error: --threads: must be >= 1, got -3"),
        (["bench", "--device", "tpu"], "error: --device: must be cpu or cuda"),
        (["call-activity"], "error: DATASET: missing required argument"),
        (["call-activity", "/nonexistent/ds"], "error: DATASET: /nonexistent/ds: dataset directory not found"),
        (["call-activity", "x", "--cutoff", "2"], "error: --cutoff: must lie in (0, 1]"),
        (["no-such-command"], "error: no such command 'no-such-command'"),
        (["simulate", "--out", "x", "extra"], "error: got unexpected extra argument"),
        (["simulate", "--out", "x", "--effect-scale", "nan"], "error: --effect-scale: must be finite and >= 0"),
        (["call-activity", "x", "--cutoff", "nan"], "error: --cutoff: must lie in (0, 1]"),
        (["call-activity", "x", "--n-null", "0"], "error: --n-null: must be >= 1, got 0"),
    ],
)
def test_usage_errors_are_one_line_exit_2(capsys, tmp_path, monkeypatch, argv, expected):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, argv)
    assert code == 2, err
    assert_one_line(err, expected)
    assert not (tmp_path / "x").exists()  # nothing written for a rejected command line


def test_existing_output_is_a_usage_error(capsys, tmp_path, tiny_dataset):
    out = tmp_path / "sim"
    shutil.copytree(tiny_dataset, out)
    before = (out / "wells.parquet").read_bytes()
    code, _, err = run(capsys, ["simulate", "--out", str(out), "--molecules", "20", "--no-progress"])
    assert code == 2
    assert_one_line(err, f"error: --out: {out / 'wells.parquet'} exists; pass --overwrite")
    assert "overwrite=True" not in err
    assert (out / "wells.parquet").read_bytes() == before


def test_overwrite_replaces(capsys, tmp_path, tiny_dataset):
    out = tmp_path / "sim"
    shutil.copytree(tiny_dataset, out)
    code, stdout, err = run(capsys, ["simulate", "--out", str(out), "--molecules", "20", "--seed", "2",
                                     "--embedding-dim", "8", "--no-calls", "--overwrite", "--no-progress"])
    assert code == 0, err
    assert "wrote" in stdout


def test_dataset_without_its_files_names_the_argument(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, ["call-activity", str(tmp_path / "empty")])
    assert code == 2
    assert_one_line(err, f"error: DATASET: {tmp_path / 'empty' / 'wells.parquet'} is missing")


def test_out_is_a_file(capsys, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    code, _, err = run(capsys, ["simulate", "--out", str(f)])
    assert code == 2
    assert_one_line(err, f"error: --out: {f} exists and is not a directory")


@pytest.mark.parametrize("name", ["wells.parquet", "meta.json"])
def test_corrupt_input_is_one_line_exit_1(capsys, tmp_path, tiny_dataset, name):
    d = tmp_path / "ds"
    shutil.copytree(tiny_dataset, d)
    (d / name).write_bytes(b"\x00garbage\xff" * 10)
    code, _, err = run(capsys, ["call-activity", str(d), "--n-null", "10"])
    assert code == 1
    assert_one_line(err, "error: ")
    assert str(d / name) in err


def test_schema_error_is_one_line_exit_1(capsys, tmp_path, tiny_dataset):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "ds"
    shutil.copytree(tiny_dataset, d)
    wells = pq.read_table(d / "wells.parquet")
    ctrl = wells.column("is_control").to_pylist().index(True)
    mol = wells.column("molecule_id").to_pylist()
    mol[ctrl] = "DMSO"
    wells = wells.set_column(wells.column_names.index("molecule_id"), "molecule_id", pa.array(mol, pa.string()))
    pq.write_table(wells, d / "wells.parquet")
    code, _, err = run(capsys, ["call-activity", str(d)])
    assert code == 1
    assert_one_line(err, f"error: wells, column 'molecule_id', row {ctrl}: control well")


def test_help_on_every_command(capsys):
    from typer.main import get_command

    group = get_command(molphenix.cli.main.app)
    names = sorted(group.list_commands(None))  # type: ignore[arg-type]
    assert {"bench", "info", "simulate", "call-activity"} <= set(names)
    for argv in [["--help"], *[[n, "--help"] for n in names]]:
        code, out, err = run(capsys, argv)
        assert code == 0, (argv, err)
        assert out.startswith("Usage: molphenix"), (argv, out)
        assert "╭" not in out and not err


def test_no_arguments_prints_help(capsys):
    code, out, err = run(capsys, [])
    assert code == 0
    assert "Usage: molphenix" in out and "simulate" in out


# ---------------------------------------------------------------- the helpers, for other commands


def _app_with(command):
    app = typer.Typer(cls=MolphenixGroup, add_completion=False)
    app.command("go")(command)

    @app.command("other")
    def other() -> None:
        """A second command so that typer keeps the group."""

    return app


def _run_app(app, argv, capsys):
    from typer.main import get_command

    code = get_command(app).main(args=argv, prog_name="molphenix", standalone_mode=False)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_usage_error_and_data_error_helpers(capsys):
    def go(kind: str = typer.Option("usage", "--kind")) -> None:
        if kind == "usage":
            usage_error("--kind", "a bad\nmulti-line message.")
        data_error(None, "the data is wrong")

    app = _app_with(go)
    code, _, err = _run_app(app, ["go"], capsys)
    assert code == 2
    assert err == "error: --kind: a bad multi-line message\n"
    code, _, err = _run_app(app, ["go", "--kind", "data"], capsys)
    assert code == 1
    assert err == "error: the data is wrong\n"


def test_threads_option_rejects_zero(capsys):
    seen = []

    def go(threads: Optional[int] = threads_option()) -> None:
        seen.append(threads)

    app = _app_with(go)
    assert _run_app(app, ["go"], capsys)[0] == 0
    assert _run_app(app, ["go", "--threads", "3"], capsys)[0] == 0
    assert seen == [None, 3]
    code, _, err = _run_app(app, ["go", "--threads", "0"], capsys)
    assert code == 2 and err == "error: --threads: must be >= 1, got 0\n"


@pytest.mark.parametrize(
    "exc, code, text",
    [
        (ValueError("n must be positive"), 2, "error: n must be positive\n"),
        (FileNotFoundError(2, "No such file or directory", "/x/y"), 2, "error: /x/y: no such file or directory\n"),
        (FileExistsError("out exists"), 2, "error: out exists\n"),
        (PermissionError(13, "Permission denied", "/root/z"), 1, "error: /root/z: permission denied\n"),
    ],
)
def test_library_errors_become_one_line(capsys, exc, code, text):
    def go() -> None:
        raise exc

    got, _, err = _run_app(_app_with(go), ["go"], capsys)
    assert got == code
    assert err == text


def test_unexpected_exceptions_keep_their_traceback(capsys):
    def go() -> None:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        _run_app(_app_with(go), ["go"], capsys)


def test_traceback_flag_reraises_library_errors(capsys, tmp_path, tiny_dataset):
    from molphenix.data import DataFileError

    d = tmp_path / "ds"
    shutil.copytree(tiny_dataset, d)
    (d / "meta.json").write_text("[")
    with pytest.raises(DataFileError):
        main(["--traceback", "call-activity", str(d)])
    # the next run is back to one line
    code, _, err = run(capsys, ["call-activity", str(d)])
    assert code == 1 and err.startswith("error: meta: ")
    # usage errors stay one line even with --traceback
    code, _, err = run(capsys, ["--traceback", "bench", "--threads", "0"])
    assert code == 2
    assert_one_line(err, "error: --threads:")


def test_console_script_in_a_fresh_process(tmp_path):
    # the installed entry point (app()) and python -m molphenix go through the same group
    for cmd in ([sys.executable, "-m", "molphenix", "bench", "--threads", "0"],
                [sys.executable, "-m", "molphenix", "simulate", "--out", str(tmp_path), "--molecules", "1"]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert r.stderr.startswith("error: --"), r.stderr
        assert "Usage" not in r.stderr and "Traceback" not in r.stderr


def test_train_takes_a_bundled_dataset_by_name(capsys, tmp_path, monkeypatch):
    """``--data cell-injury`` names the bundled real screen wherever no such directory exists."""
    import json

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    code, _, err = run(capsys, ["train", "--data", "cell-injury", "--out", str(out), "--steps", "2",
                                "--batch-size", "32", "--no-progress"])
    assert code == 0, err
    from molphenix.datasets import cell_injury_path

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["data"] in ("cell-injury", str(cell_injury_path()))
    assert (out / "checkpoints" / "last.pt").is_file()


@pytest.mark.parametrize("argv", [["train", "--out", "r"], ["cv", "--out", "r"]])
def test_unknown_dataset_name_lists_the_bundled_ones(capsys, tmp_path, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, argv + ["--data", "cell-injuri"])
    assert code == 2
    assert_one_line(err, "error: --data: cell-injuri: dataset directory not found (nor a bundled dataset: cell-injury)")
    assert not (tmp_path / "r").exists()
