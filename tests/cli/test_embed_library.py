"""``molphenix embed-library``: streamed, resumable, any input format, rejects, bad input.

A tiny trained run (Morgan 256 bits, D = 16) embeds a few hundred molecules from RDKit's bundled
NCI set in chunks of 50 rows, so every test crosses several chunks in seconds.
"""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
import torch

from molphenix.cli.main import main
from molphenix.retrieval import Index

ROOT = Path(__file__).resolve().parents[2]


def _nci(n: int):
    import rdkit

    path = Path(rdkit.__file__).parent / "Data" / "NCI" / "first_5K.smi"
    rows = [line.split() for line in path.read_text().splitlines()[:n]]
    return [r[0] for r in rows], [f"nci-{r[1]}" for r in rows]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from molphenix.data import simulate
    from molphenix.train import TrainConfig, fit

    root = tmp_path_factory.mktemp("embed_library")
    simulate(root / "data", n_molecules=30, seed=5, embedding_dim=16, progress=False)
    fit(TrainConfig(data=str(root / "data"), out=str(root / "run"), steps=4, batch_size=16,
                    threads=1, progress=False, eval_every=4,
                    model_overrides=dict(phenomic_hidden=32, molecular_hidden=32, embed_dim=16,
                                         phenomic_blocks=1),
                    featurizer_kwargs=dict(n_bits=256)), log=lambda m: None)
    smiles, ids = _nci(400)
    smiles[7] = "C1CC"             # unclosed ring
    smiles[60] = "CN(C)(C)(C)C"    # valence
    smiles[61] = ""                # missing
    ids[120] = ids[3]              # a repeated id
    table = pa.table({"molecule_id": ids, "smiles": smiles})
    pcsv.write_csv(table, root / "mols.csv")
    return root, table


def _run(root, out, *extra, mols=None):
    return main(["embed-library", "--run", str(root / "run"), "--molecules", str(mols or root / "mols.csv"),
                 "--out", str(out), "--concentrations", "10", "--chunk-rows", "50", "--threads", "1",
                 "--no-progress", *extra])


def _err(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def _shards(path: Path):
    """(ids, stored embedding bytes) of a library directory."""
    ix = Index.load(path)
    blob = b"".join(b.numpy().tobytes() for b in ix.storage.blocks)
    return ix.ids.tolist(), blob


def test_streamed_library_equals_the_in_memory_embedding(env, tmp_path, capsys):
    from molphenix.train import load_run

    root, table = env
    out = tmp_path / "lib"
    assert _run(root, out) == 0
    msg = capsys.readouterr().out
    assert "396 (molecule, concentration) rows from 396 of 400 input rows" in msg
    assert "4 rows rejected" in msg and "1 duplicate id" in msg
    ix = Index.load(out)
    assert len(ix) == 396 and ix.dim == 16 and ix.info["counts"]["rejected"] == 4
    assert not (out / ".embed").exists() and (out / "manifest.json").is_file()
    rej = pcsv.read_csv(out / "rejects.csv")
    assert rej.column("row").to_pylist() == [7, 60, 61, 120]
    reasons = rej.column("reason").to_pylist()
    assert reasons[0].startswith("SMILES Parse Error: unclosed ring")
    assert "valence" in reasons[1] and reasons[2] == "missing SMILES"
    assert reasons[3] == "duplicate of row 3"
    # the same rows as the run's own embed_molecules, one concentration
    tm = load_run(root / "run")
    keep = [i for i in range(400) if i not in (7, 60, 61, 120)]
    smiles = [table.column("smiles")[i].as_py() for i in keep]
    want = tm.embed_molecules(smiles, 10.0)
    torch.testing.assert_close(ix.embeddings, torch.nn.functional.normalize(want, dim=1),
                               rtol=0, atol=2e-6)
    assert ix.ids[:2].tolist() == [f"{table.column('molecule_id')[0].as_py()}@10",
                                   f"{table.column('molecule_id')[1].as_py()}@10"]
    assert ix.column("smiles").to_pylist()[0] == smiles[0]
    # rerunning a finished library does nothing, and says so
    assert _run(root, out) == 0
    assert "already complete" in capsys.readouterr().out


def test_input_formats_give_the_same_library(env, tmp_path):
    root, table = env
    want = _shards_of(root, tmp_path / "csv", root / "mols.csv")
    pq.write_table(table, tmp_path / "m.parquet", row_group_size=37)
    with gzip.open(tmp_path / "m.csv.gz", "wb") as f:
        f.write((root / "mols.csv").read_bytes())
    lines = [f"{s}\t{m}" if s else f"\t{m}" for s, m in zip(table.column("smiles").to_pylist(),
                                                            table.column("molecule_id").to_pylist())]
    (tmp_path / "m.smi").write_text("# a comment\n" + "\n".join(lines[:61] + lines[62:]) + "\n")
    assert _shards_of(root, tmp_path / "pq", tmp_path / "m.parquet") == want
    assert _shards_of(root, tmp_path / "gz", tmp_path / "m.csv.gz") == want
    smi_ids, _ = _shards_of(root, tmp_path / "smi", tmp_path / "m.smi")
    assert smi_ids == want[0]  # one row fewer in the file: the chunk grid moved, not the rows


def _shards_of(root, out, mols):
    assert _run(root, out, mols=mols) == 0
    return _shards(out)


def test_resume_after_an_interruption_is_bitwise_equal(env, tmp_path, monkeypatch, capsys):
    from molphenix.retrieval import library as L

    root, _ = env
    full = tmp_path / "full"
    assert _run(root, full, "--workers", "0") == 0
    part = tmp_path / "part"
    real = L._finish_chunk
    calls = []

    def dying(*a, **k):
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if killed after 3 chunks
        calls.append(a[1])
        return real(*a, **k)

    monkeypatch.setattr(L, "_finish_chunk", dying)
    assert _run(root, part, "--workers", "0") == 130  # "interrupted"
    monkeypatch.setattr(L, "_finish_chunk", real)
    assert not (part / "manifest.json").exists()
    with pytest.raises(ValueError, match="not a finished molphenix library"):
        Index.load(part)
    # a half-written shard: the record of chunk 1 survives, its shard file is cut short
    rec = L._load_record(part, 1)
    emb = part / rec["shard"]["embeddings"]
    emb.write_bytes(emb.read_bytes()[:100])
    assert L._load_record(part, 1) is None
    capsys.readouterr()
    assert _run(root, part, "--workers", "0") == 0
    io = capsys.readouterr()
    assert "resuming" in io.err and "2 of 8 chunks already done" in io.err
    assert "2 of 8 chunks resumed" in io.out
    assert _shards(part) == _shards(full)
    assert (part / "rejects.csv").read_bytes() == (full / "rejects.csv").read_bytes()


def test_settings_change_and_overwrite(env, tmp_path, capsys):
    root, _ = env
    out = tmp_path / "lib"
    (out / ".embed").mkdir(parents=True)
    (out / ".embed" / "state.json").write_text('{"chunk_rows": 7}')
    assert _run(root, out) == 2
    assert "started with other settings" in _err(capsys)
    assert _run(root, out, "--overwrite") == 0
    capsys.readouterr()
    assert _run(root, out, "--storage", "float16") == 2
    assert "other settings; pass --overwrite" in _err(capsys)
    assert _run(root, out, "--storage", "float16", "--overwrite") == 0
    ix = Index.load(out)
    assert ix.storage.blocks[0].dtype == torch.float16 and ix.dtype == torch.float32
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    capsys.readouterr()
    assert _run(root, other, "--overwrite") == 2
    assert "not a molphenix library; refusing" in _err(capsys)
    assert (other / "notes.txt").read_text() == "keep me"


def test_bad_input_is_one_line_and_exit_2(env, tmp_path, capsys):
    root, _ = env
    cases = {
        "empty.csv": b"",
        "header.csv": b"smiles,molecule_id\n",
        "nosmiles.csv": b"name,value\na,1\n",
        "empty.smi": b"",
        "invalid.csv": b"smiles\nC1CC\nXYZ\n",
    }
    want = {"empty.csv": "empty file", "header.csv": "no molecules (0 rows)",
            "nosmiles.csv": "no 'smiles' column", "empty.smi": "empty file",
            "invalid.csv": "no valid molecules: all 2 rows were rejected"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        assert _run(root, tmp_path / f"out-{name}", mols=tmp_path / name) == 2, name
        line = _err(capsys)
        assert line.startswith("error: --molecules:") and want[name] in line, (name, line)
    (tmp_path / "file").write_text("")
    assert _run(root, tmp_path / "file" / "lib") == 2
    assert _err(capsys).startswith("error: --out:")
    (tmp_path / "m.sdf").write_text("")
    assert _run(root, tmp_path / "o", mols=tmp_path / "m.sdf") == 2
    assert "unknown molecules file type" in _err(capsys)
    assert _run(root, tmp_path / "o2", "--storage", "int8") == 2
    assert _err(capsys).startswith("error: --storage:")


def test_bad_input_in_every_format_is_one_line_and_exit_2(env, tmp_path, capsys):
    """The same four refusals (empty, no SMILES column, every SMILES invalid, an --out that
    cannot be written) for the SMILES, gzipped CSV and Parquet inputs, and nothing is left that
    could pass for a library."""
    root, _ = env
    pq.write_table(pa.table({"smiles": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    pq.write_table(pa.table({"name": ["a"], "value": [1]}), tmp_path / "nosmiles.parquet")
    pq.write_table(pa.table({"smiles": ["C1CC", "XYZ", "c1cc"]}), tmp_path / "invalid.parquet")
    (tmp_path / "comments.smi").write_text("# only a comment\n\n")
    (tmp_path / "invalid.smi").write_text("C1CC a\nXYZ b\n")
    with gzip.open(tmp_path / "empty.csv.gz", "wb"):
        pass
    with gzip.open(tmp_path / "nosmiles.csv.gz", "wt") as fh:
        fh.write("name,value\na,1\n")
    want = {"empty.parquet": "no molecules (0 rows)", "nosmiles.parquet": "no 'smiles' column",
            "invalid.parquet": "no valid molecules: all 3 rows were rejected",
            "comments.smi": "no molecules", "invalid.smi": "no valid molecules: all 2 rows were rejected",
            "empty.csv.gz": "empty file", "nosmiles.csv.gz": "no 'smiles' column"}
    for i, (name, expected) in enumerate(want.items()):
        out = tmp_path / f"out{i}"
        assert _run(root, out, mols=tmp_path / name) == 2, name
        line = _err(capsys)
        assert line.startswith("error: --molecules:") and expected in line, (name, line)
        assert not (out / "manifest.json").exists()
        with pytest.raises((ValueError, OSError)):
            Index.load(out)
    # --out that cannot be written: below a file, and a file path ending in .parquet below a file
    (tmp_path / "plain").write_text("x")
    for out in (tmp_path / "plain" / "lib", tmp_path / "plain" / "lib.parquet"):
        assert _run(root, out) == 2
        assert _err(capsys).startswith("error: --out:")
    assert (tmp_path / "plain").read_text() == "x"


def test_a_damaged_chunk_is_never_taken_for_a_finished_one(env, tmp_path, monkeypatch, capsys):
    """Every way a chunk can be half-written -- a record cut short, an embeddings file or id table
    cut short or of the right size with other bytes, a leftover temporary file -- makes that chunk
    count as not done: the rerun embeds it again and the library equals an uninterrupted one."""
    from molphenix.retrieval import library as L

    root, _ = env
    full = tmp_path / "full"
    assert _run(root, full, "--workers", "0") == 0
    part = tmp_path / "part"
    real = L._finish_chunk
    calls = []

    def dying(*a, **k):
        if len(calls) == 6:
            raise KeyboardInterrupt
        calls.append(a[1])
        return real(*a, **k)

    monkeypatch.setattr(L, "_finish_chunk", dying)
    assert _run(root, part, "--workers", "0") == 130
    monkeypatch.setattr(L, "_finish_chunk", real)
    recs = {c: L._load_record(part, c) for c in range(6)}
    assert all(recs.values())
    # chunk 0: the record cut short (a crash while writing it)
    rp = L._record_path(part, 0)
    rp.write_bytes(rp.read_bytes()[: len(rp.read_bytes()) // 2])
    # chunk 1: same-size embeddings, other bytes (only the checksum can tell)
    emb = part / recs[1]["shard"]["embeddings"]
    blob = bytearray(emb.read_bytes())
    blob[-1] ^= 0xFF
    emb.write_bytes(bytes(blob))
    # chunk 2: the id table cut short
    ids = next(part / v for k, v in recs[2]["shard"].items() if k != "embeddings" and isinstance(v, str)
               and v.endswith(".parquet"))
    ids.write_bytes(ids.read_bytes()[:40])
    # chunk 3: the embeddings file gone, a temporary file of it left beside
    emb3 = part / recs[3]["shard"]["embeddings"]
    emb3.rename(emb3.with_name(f".{emb3.name}.tmp"))
    for c in range(4):
        assert L._load_record(part, c) is None, c
    assert L._load_record(part, 4) and L._load_record(part, 5)
    capsys.readouterr()
    assert _run(root, part, "--workers", "0") == 0
    io = capsys.readouterr()
    assert "2 of 8 chunks already done" in io.err
    assert _shards(part) == _shards(full)
    assert not list(part.rglob(".*.tmp")) and not list(part.rglob("*.tmp"))


@pytest.mark.slow
def test_sigkill_then_the_same_command_finishes_bitwise_equal(env, tmp_path):
    """A real SIGKILL of the whole process group (the command and its workers) mid-run."""
    root, _ = env
    full = tmp_path / "full"
    assert _run(root, full, "--workers", "1") == 0
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "molphenix", "embed-library", "--run", str(root / "run"),
           "--molecules", str(root / "mols.csv"), "--out", str(out), "--concentrations", "10",
           "--chunk-rows", "50", "--threads", "1", "--no-progress", "--workers", "1"]
    env_vars = dict(os.environ, PYTHONPATH=str(ROOT / "python") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(cmd, env=env_vars, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / ".embed" / "chunks" / "c000002.json").exists():
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists(), "the run finished before it could be killed"
    assert _run(root, out, "--workers", "1") == 0
    assert _shards(out) == _shards(full)


def test_retrieve_streams_its_output_from_a_library_directory(env, tmp_path, monkeypatch, capsys):
    from molphenix.cli import retrieve as R

    root, _ = env
    lib = tmp_path / "lib"
    assert _run(root, lib) == 0
    base = ["retrieve", "--run", str(root / "run"), "--wells", str(root / "data"), "--library", str(lib)]
    assert main(base + ["--k", "5", "--out", str(tmp_path / "one.csv")]) == 0
    assert main(base + ["--top-fraction", "0.02", "--out", str(tmp_path / "one.parquet")]) == 0
    capsys.readouterr()
    monkeypatch.setattr(R, "ROWS_PER_STEP", 7)   # many steps of 1-2 queries
    monkeypatch.setattr(R, "WARN_ROWS", 10)
    assert main(base + ["--k", "5", "--out", str(tmp_path / "steps.csv")]) == 0
    err = capsys.readouterr().err
    assert "warning: --out will hold" in err and "consider a smaller --k or --top-fraction" in err
    assert (tmp_path / "steps.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()
    assert main(base + ["--top-fraction", "0.02", "--out", str(tmp_path / "steps.parquet")]) == 0
    a, b = pq.read_table(tmp_path / "one.parquet"), pq.read_table(tmp_path / "steps.parquet")
    assert a.equals(b) and a.num_rows % 8 == 0  # k = ceil(0.02 * 396) = 8
    hits = pcsv.read_csv(tmp_path / "one.csv")
    ix = Index.load(lib)
    first = hits.column("id").to_pylist()[0]
    row = int(ix.positions([first])[0])
    assert hits.column("molecule_id")[0].as_py() == ix.column("molecule_id")[row].as_py()
    assert not list(tmp_path.glob(".*.tmp"))


class _FakeMiniMol:
    """Stands in for the MiniMol encoder (64-d, deterministic per SMILES), counting its work."""

    name = "minimol"
    dim = 64
    embedded: list = []

    def __init__(self, *, threads=None, batch_size=100):
        pass

    def version(self):
        return "minimol-fake-1"

    def info(self):
        return {"model": "fake"}

    def embed(self, smiles):
        import hashlib

        _FakeMiniMol.embedded.extend(smiles)
        out = np.stack([np.frombuffer(hashlib.sha512(s.encode()).digest(), dtype=np.uint8)[:64]
                        for s in smiles]).astype(np.float32) / 255.0
        return out, [None] * len(smiles)


def _minimol_run(root: Path):
    from molphenix.data import simulate
    from molphenix.train import TrainConfig, fit

    simulate(root / "data", n_molecules=20, seed=5, embedding_dim=16, progress=False)
    fit(TrainConfig(data=str(root / "data"), out=str(root / "run"), steps=2, batch_size=16, threads=1,
                    progress=False, eval_every=2, mol_input="minimol", featurizer_kwargs={},
                    model_overrides=dict(phenomic_hidden=32, molecular_hidden=32, embed_dim=16,
                                         phenomic_blocks=1)), log=lambda m: None)


def _check_minimol_library(root: Path, capsys):
    from molphenix.train import load_run

    smiles, ids = _nci(90)
    smiles[4] = "C1CC"
    pcsv.write_csv(pa.table({"smiles": smiles, "molecule_id": ids}), root / "m.csv")
    assert main(["embed-library", "--run", str(root / "run"), "--molecules", str(root / "m.csv"),
                 "--out", str(root / "lib"), "--concentrations", "10", "--chunk-rows", "40",
                 "--no-progress"]) == 0
    assert "89 (molecule, concentration) rows" in capsys.readouterr().out
    ix = Index.load(root / "lib")
    assert ix.info["mol_input"] == "minimol"
    tm = load_run(root / "run")
    want = torch.nn.functional.normalize(tm.embed_molecules(ix.column("smiles").to_pylist(), 10.0), dim=1)
    # the run's own featurizer; the forward passes run per chunk, so only their rounding differs
    torch.testing.assert_close(ix.embeddings, want, rtol=0, atol=2e-6)


def test_a_pretrained_encoder_plugs_in_chunk_by_chunk(tmp_path, monkeypatch, capsys):
    """mol_input="minimol" with a stand-in encoder: chunks go through its batch API and its
    machine-wide cache (a second library computes nothing)."""
    import molphenix.data.minimol as mm

    monkeypatch.setattr(mm, "MinimolEmbedder", _FakeMiniMol)
    monkeypatch.setattr(mm, "require_minimol", lambda: None)
    monkeypatch.setenv("MOLPHENIX_CACHE_DIR", str(tmp_path / "cache"))
    _minimol_run(tmp_path)
    _FakeMiniMol.embedded = []
    _check_minimol_library(tmp_path, capsys)
    assert len(_FakeMiniMol.embedded) == len(set(_FakeMiniMol.embedded)) > 0
    _FakeMiniMol.embedded = []
    assert main(["embed-library", "--run", str(tmp_path / "run"), "--molecules", str(tmp_path / "m.csv"),
                 "--out", str(tmp_path / "lib2"), "--concentrations", "10", "--no-progress"]) == 0
    assert _FakeMiniMol.embedded == []  # all cached


@pytest.mark.requires_minimol
def test_minimol_library_with_the_real_encoder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MOLPHENIX_CACHE_DIR", str(tmp_path / "cache"))
    _minimol_run(tmp_path)
    _check_minimol_library(tmp_path, capsys)
