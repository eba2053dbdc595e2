"""The machine-wide embedding cache and the pretrained-encoder featurizer, with a fake encoder.

These run without the optional MiniMol extra: :class:`FakeEmbedder` stands in for the model (a
deterministic function of the SMILES it is given, counting what it embeds). The real model's
tests are in test_minimol.py.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from molphenix.data.cache import CACHE_ENV, EmbeddingCache, default_cache_dir, entry_checksum
from molphenix.data.featurize import InvalidSmilesError, featurize, get_featurizer
from molphenix.data.minimol import MiniMol, PretrainedFeaturizer, canonical_smiles

DIM = 8


class FakeEmbedder:
    """A stand-in encoder: the vector is a hash of the exact string it receives; SMILES with a
    xenon atom cannot be embedded."""

    name = "fake"
    dim = DIM

    def __init__(self, version: str = "fake-1"):
        self._version = version
        self.seen: list = []

    def version(self) -> str:
        return self._version

    def info(self):
        return {"model": "fake", "version": self._version}

    def embed(self, smiles):
        out = np.zeros((len(smiles), DIM), np.float32)
        errors = []
        for i, s in enumerate(smiles):
            self.seen.append(s)
            if "Xe" in s:
                errors.append("no xenon here")
                continue
            h = hashlib.sha256((self._version + s).encode()).digest()
            out[i] = np.frombuffer(h[: 4 * DIM], dtype=np.uint32) / 2**32 - 0.5
            errors.append(None)
        return out, errors


def expected(s: str, version: str = "fake-1") -> np.ndarray:
    """What FakeEmbedder gives the canonical form of ``s``."""
    c = canonical_smiles([s])[0]
    h = hashlib.sha256((version + c).encode()).digest()
    return (np.frombuffer(h[: 4 * DIM], dtype=np.uint32) / 2**32 - 0.5).astype(np.float32)


def fake(tmp_path, version="fake-1", **kw):
    return PretrainedFeaturizer(FakeEmbedder(version), cache_dir=tmp_path, **kw)


SMILES = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "O=C(O)CCl", "C1CC1N"]


# ----------------------------------------------------------------------------- the featurizer


def test_values_shape_and_order(tmp_path):
    f = fake(tmp_path)
    x = f(SMILES)
    assert x.dtype == np.float32 and x.shape == (len(SMILES), DIM)
    for row, s in zip(x, SMILES):
        np.testing.assert_array_equal(row, expected(s))
    assert f.last_stats["computed"] == len(SMILES) and f.last_stats["cached"] == 0


def test_keyed_by_canonical_smiles(tmp_path):
    """Two spellings of one molecule are one entry, embedded once, from the canonical string."""
    f = fake(tmp_path)
    x = f(["CCO", "OCC", "C(O)C"])
    assert f.embedder.seen == ["CCO"]  # canonical, once
    np.testing.assert_array_equal(x[0], x[1])
    np.testing.assert_array_equal(x[0], x[2])
    assert f.last_stats == {**f.last_stats, "molecules": 3, "distinct": 1, "computed": 1}


def test_reused_across_calls_and_processes_objects(tmp_path):
    first = fake(tmp_path)
    a = first(SMILES)
    again = fake(tmp_path)  # a new featurizer: as a second process would build it
    b = again(list(reversed(SMILES)) + ["OCC"])
    assert again.embedder.seen == []  # nothing embedded the second time
    assert again.last_stats["cached"] == len(SMILES) and again.last_stats["computed"] == 0
    np.testing.assert_array_equal(b[: len(SMILES)], a[::-1])
    more = fake(tmp_path)
    more(SMILES + ["CCN"])
    assert more.embedder.seen == ["CCN"]  # only the new molecule


def test_keyed_by_model_version(tmp_path):
    fake(tmp_path, "fake-1")(SMILES)
    g = fake(tmp_path, "fake-2")
    y = g(SMILES)
    assert sorted(g.embedder.seen) == sorted(canonical_smiles(SMILES))  # another version: recomputed
    np.testing.assert_array_equal(y[0], expected("CCO", "fake-2"))
    dirs = sorted(p.name for p in (tmp_path / "embeddings").iterdir())
    assert dirs == ["fake-1", "fake-2"]
    assert (tmp_path / "embeddings" / "fake-1" / "model.json").is_file()


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"
    f = PretrainedFeaturizer(FakeEmbedder())
    f(["CCO"])
    assert f.last_stats["cache_dir"] == str(tmp_path / "env-cache" / "embeddings" / "fake-1")
    assert list((tmp_path / "env-cache" / "embeddings" / "fake-1").glob("shard-*.parquet"))
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "molphenix"


def test_no_cache(tmp_path):
    f = fake(tmp_path, cache=False)
    f(SMILES)
    f(SMILES)
    assert len(f.embedder.seen) == 2 * len(SMILES)
    assert not (tmp_path / "embeddings").exists()


def test_invalid_smiles(tmp_path):
    f = fake(tmp_path)
    with pytest.raises(InvalidSmilesError, match=r"smiles\[1\]"):
        f(["CCO", "C1CC", "CCN"])
    x = f(["CCO", "C1CC", "CCN"], on_invalid="zero")
    assert (x[1] == 0).all() and (x[0] != 0).any() and (x[2] != 0).any()
    assert f.last_stats["failed"] == 1
    assert "C1CC" not in EmbeddingCache("fake-1", DIM, root=tmp_path)


def test_molecule_the_model_cannot_embed(tmp_path):
    f = fake(tmp_path, chunk_size=2)
    with pytest.raises(ValueError, match=r"smiles\[2\] = '\[Xe\]': fake cannot embed this molecule \(no xenon here\)"):
        f(["CCO", "CCN", "[Xe]", "CCC", "CCCC"])
    cache = EmbeddingCache("fake-1", DIM, root=tmp_path)
    assert "CCO" in cache and "CCN" in cache  # the chunk done before the failure stays cached
    x = f(["CCO", "[Xe]", "CCCC"], on_invalid="zero")
    assert (x[1] == 0).all() and (x[2] != 0).any()
    assert "[Xe]" not in cache


def test_chunks_are_stored_as_they_finish(tmp_path):
    """An interrupted featurization resumes: every finished chunk is already on disk."""

    class Interrupting(FakeEmbedder):
        def embed(self, smiles):
            if len(self.seen) >= 4:
                raise KeyboardInterrupt
            return super().embed(smiles)

    mols = ["C" * n for n in range(1, 11)]
    f = PretrainedFeaturizer(Interrupting(), cache_dir=tmp_path, chunk_size=2)
    with pytest.raises(KeyboardInterrupt):
        f(mols)
    g = fake(tmp_path)
    g(mols)
    assert g.last_stats["cached"] == 4 and g.last_stats["computed"] == 6


def test_progress_bar(tmp_path, capsys):
    fake(tmp_path, progress=True, chunk_size=2)(SMILES)
    err = capsys.readouterr().err
    assert "fake" in err and f"{len(SMILES)}/{len(SMILES)}" in err and "mol" in err
    fake(tmp_path / "b", progress=False)(SMILES)
    assert capsys.readouterr().err == ""


def test_featurize_function_and_registry(tmp_path):
    f = get_featurizer("minimol", embedder=FakeEmbedder(), cache_dir=tmp_path)
    assert isinstance(f, MiniMol) and f.dim == DIM and f.cache_key() == ""
    x = featurize(["CCO", "OCC"], f, cache_dir=tmp_path / "run-cache")
    np.testing.assert_array_equal(x[1], expected("CCO"))
    assert not (tmp_path / "run-cache").exists()  # the machine-wide cache, not the run's


# ----------------------------------------------------------------------------- the cache itself


def _cache(tmp_path, **kw):
    return EmbeddingCache("fake-1", DIM, root=tmp_path, **kw)


def _vectors(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def test_put_get_roundtrip(tmp_path):
    c = _cache(tmp_path)
    keys = [f"C{'C' * i}O" for i in range(20)]
    v = _vectors(20)
    c.put(keys[:10], v[:10])
    c.put(keys[5:], v[5:])  # overlapping: only the new ones are written
    got, found = _cache(tmp_path).get(keys + ["nope"] + keys[:2])
    assert found.tolist() == [True] * 20 + [False, True, True]
    np.testing.assert_array_equal(got[:20], v)
    assert (got[20] == 0).all()
    assert len(c) == 20 and len(c.shards()) == 2
    t = pq.read_table(c.shards()[1])
    assert t.num_rows == 10 and t.column("checksum").to_pylist()[0] == entry_checksum(keys[10], v[10])


def test_put_rejects_bad_input(tmp_path):
    c = _cache(tmp_path)
    with pytest.raises(ValueError, match="shape"):
        c.put(["CCO"], np.zeros((1, DIM + 1)))
    with pytest.raises(ValueError, match="non-finite"):
        c.put(["CCO"], np.full((1, DIM), np.nan))
    with pytest.raises(ValueError, match="model key"):
        EmbeddingCache("../escape", DIM, root=tmp_path)


def _recompute_after(tmp_path, damage):
    """Fill a cache, damage its one shard, and featurize again: returns (featurizer, warnings)."""
    f = fake(tmp_path)
    f(SMILES)
    shard = EmbeddingCache("fake-1", DIM, root=tmp_path).shards()
    assert len(shard) == 1
    damage(shard[0])
    g = fake(tmp_path)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        x = g(SMILES)
    for row, s in zip(x, SMILES):  # never a damaged value: recomputed where needed
        np.testing.assert_array_equal(row, expected(s))
    return g, [str(w.message) for w in rec if issubclass(w.category, RuntimeWarning)], shard[0]


def test_truncated_shard_is_detected_and_recomputed(tmp_path):
    def truncate(p: Path):
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])

    g, msgs, shard = _recompute_after(tmp_path, truncate)
    assert len(msgs) == 1 and "unreadable" in msgs[0] and shard.name in msgs[0]
    assert g.last_stats["computed"] == len(SMILES)
    assert shard.with_name(shard.name + ".corrupt").is_file() and not shard.exists()
    h = fake(tmp_path)
    h(SMILES)
    assert h.embedder.seen == []  # the recomputed entries are cached again


def test_garbage_shard_is_detected(tmp_path):
    g, msgs, _ = _recompute_after(tmp_path, lambda p: p.write_bytes(b"not parquet at all" * 10))
    assert len(msgs) == 1 and "unreadable" in msgs[0]


def test_flipped_value_fails_its_checksum(tmp_path):
    """A changed float (valid Parquet, wrong content) is caught by the entry checksum; the good
    entries of the shard are kept, only the bad one is recomputed."""
    import pyarrow as pa

    def flip(p: Path):
        t = pq.read_table(p)
        mat = t.column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, DIM).copy()
        mat[2, 3] += 1e-3
        col = pa.FixedSizeListArray.from_arrays(pa.array(mat.reshape(-1)), DIM)
        t = t.set_column(t.schema.get_field_index("embedding"), "embedding", col)
        pq.write_table(t, p)

    g, msgs, shard = _recompute_after(tmp_path, flip)
    assert len(msgs) == 1 and "1 of 5 entries fail their checksum" in msgs[0]
    assert g.last_stats["computed"] == 1
    assert len(g.embedder.seen) == 1


def test_shard_of_another_model_is_not_used(tmp_path):
    c = _cache(tmp_path)
    c.put(["CCO"], _vectors(1))
    other = EmbeddingCache("fake-1", DIM + 1, root=tmp_path)
    with pytest.warns(RuntimeWarning, match="width"):
        _, found = other.get(["CCO"])
    assert not found.any()


def test_partial_write_is_never_visible(tmp_path, monkeypatch):
    """A writer killed mid-write leaves only a temporary file, which no reader opens."""
    import pyarrow.parquet as pqm

    c = _cache(tmp_path)
    c.put(["CCO"], _vectors(1))

    def dies(table, where, **kw):
        where.write(b"PAR1 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(pqm, "write_table", dies)
    with pytest.raises(KeyboardInterrupt):
        c.put(["CCN"], _vectors(1, 1))
    monkeypatch.undo()
    assert [p.name for p in c.directory.iterdir() if p.name.endswith(".tmp")] == []
    (c.directory / ".shard-0-1-dead.parquet.x1y2.tmp").write_bytes(b"PAR1 half")  # as after SIGKILL
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to report: the temporary file is not a shard
        got, found = _cache(tmp_path).get(["CCO", "CCN"])
    assert found.tolist() == [True, False]


def test_compaction_keeps_every_entry(tmp_path):
    c = _cache(tmp_path, max_shards=4, shard_rows=7)
    keys = [f"N{'C' * i}" for i in range(30)]
    v = _vectors(30)
    for i in range(30):
        c.put(keys[i:i + 1], v[i:i + 1])
    assert len(c.shards()) <= 5
    got, found = _cache(tmp_path).get(keys)
    assert found.all()
    np.testing.assert_array_equal(got, v)
    assert c.compact() and all(pq.read_metadata(p).num_rows <= 7 for p in c.shards())


def _writer(root: str, seed: int, n: int, out: str) -> None:
    """One process of the concurrency test: puts overlapping entries one small shard at a time,
    reads them back, and compacts often."""
    c = EmbeddingCache("fake-1", DIM, root=root, max_shards=3, shard_rows=16)
    rng = np.random.default_rng(seed)
    bad = 0
    for i in rng.permutation(n):
        key = f"C{'C' * int(i)}O"
        c.put([key], _value_of(key))
        got, found = c.get([key])
        bad += int(not found[0] or not np.array_equal(got[0], _value_of(key)[0]))
    Path(out).write_text(f"{bad} {len(c.problems)}")


def _value_of(key: str) -> np.ndarray:
    h = hashlib.sha256(key.encode()).digest()
    return (np.frombuffer(h[: 4 * DIM], dtype=np.uint32) / 2**32).astype(np.float32)[None]


def test_concurrent_processes_do_not_corrupt_it(tmp_path):
    """Four processes write overlapping entries into one cache at once, one shard per entry,
    and compact it under each other; every entry is then there exactly as written, nothing was
    reported corrupt, and no temporary or quarantined file is left."""
    ctx = mp.get_context("fork")
    n = 40
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), seed, n, str(tmp_path / f"r{seed}")))
             for seed in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    for seed in range(4):
        assert (tmp_path / f"r{seed}").read_text() == "0 0"
    c = _cache(tmp_path)
    keys = [f"C{'C' * i}O" for i in range(n)]
    got, found = c.get(keys)
    assert found.all() and not c.problems
    np.testing.assert_array_equal(got, np.concatenate([_value_of(k) for k in keys]))
    leftovers = [p.name for p in c.directory.iterdir() if p.name.endswith(".tmp") or p.name.endswith(".corrupt")]
    assert leftovers == []
    assert len(c.shards()) < n  # compaction ran (one shard per put otherwise)

