"""Library directories (molphenix.retrieval.storage): round trips, lazy opening, trust and damage."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from molphenix import ops
from molphenix.retrieval import Index, storage as S


def data(n=300, q=9, d=12, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(n, d)).astype(np.float32)
    c[5] = c[3]
    return rng.normal(size=(q, d)).astype(np.float32), c


@pytest.mark.parametrize("metric", ["cosine", "dot", "arctan_l2"])
@pytest.mark.parametrize("ids_kind", ["default", "str", "int"])
def test_library_round_trip_is_exact(tmp_path, metric, ids_kind):
    q, c = data()
    ids = {"default": None, "str": [f"s{i}" for i in range(len(c))],
           "int": np.arange(len(c))[::-1] * 3}[ids_kind]
    ix = Index(c, ids, metric=metric)
    path = ix.save(tmp_path / "lib")
    assert path.is_dir() and (path / "manifest.json").is_file()
    back = Index.load(path)
    assert repr(back) == repr(ix) and back.path == path
    assert torch.equal(back.embeddings, ix.embeddings)
    np.testing.assert_array_equal(back.ids, ix.ids)
    for kw in ({"k": 9}, {"fraction": 0.1}):
        for a, b in zip(ix.search(q, **kw), back.search(q, **kw)):
            np.testing.assert_array_equal(a, b)
    tid = ix.ids[[3, 0, 7]]
    np.testing.assert_array_equal(ix.rank(q[:3], tid), back.rank(q[:3], tid))
    verify = Index.load(path, verify=True)
    np.testing.assert_array_equal(verify.search(q, k=3)[1], ix.search(q, k=3)[1])


def test_library_in_several_shards_equals_one_index(tmp_path):
    q, c = data(n=1000)
    ix = Index(c, [f"m{i}" for i in range(1000)])
    recs, row = [], 0
    for i, m in enumerate((1, 333, 0, 500, 166)):  # shards that do not line up with panels
        part = c[row:row + m]
        recs.append(S.write_shard(tmp_path / "lib", f"p{i}", part, pa.table(
            {"id": [f"m{j}" for j in range(row, row + m)], "extra": list(range(row, row + m))}),
            metric="cosine"))
        row += m
    S.finish_library(tmp_path / "lib", recs, dim=12, metric="cosine", id_kind="str",
                     columns=["id", "extra"], info={"made_by": "test"})
    back = Index.load(tmp_path / "lib")
    assert len(back) == 1000 and len(back.storage.blocks) == 4 and back.info == {"made_by": "test"}
    for a, b in zip(ix.search(q, k=17), back.search(q, k=17)):
        np.testing.assert_array_equal(a, b)
    assert back.column("extra").to_pylist()[330:336] == list(range(330, 336))
    cols = S.read_columns(tmp_path / "lib", ["id", "extra"], 332, 336)
    assert cols.column("id").to_pylist() == ["m332", "m333", "m334", "m335"]
    # rows [200, 700) of it, as a sharded reader maps them
    rows, ids, meta = S.open_index(tmp_path / "lib", 200, 700)
    assert rows.n == 500 and meta["n"] == 1000
    assert torch.equal(rows.tensor(), ix.embeddings[200:700])
    assert ids.take(np.array([0, 499])).tolist() == ["m200", "m699"]


def test_open_reads_no_rows_and_no_ids(tmp_path):
    _, c = data(n=2000)
    Index(c, [f"m{i}" for i in range(2000)]).save(tmp_path / "lib")
    back = Index.load(tmp_path / "lib")
    blk = back.storage.blocks[0]
    assert isinstance(blk.numpy().base, np.memmap) or isinstance(blk.numpy(), np.memmap) \
        or blk.numpy().base is not None
    assert back.id_store._values is None  # ids read on first use only
    back.search(c[:2], k=1)
    assert back.id_store._values is not None


def test_float16_storage(tmp_path):
    q, c = data(n=500)
    ix = Index(c)
    back = Index.load(ix.save(tmp_path / "h", storage="float16"))
    assert back.dtype == torch.float32 and back.storage.blocks[0].dtype == torch.float16
    assert (tmp_path / "h" / "shards").is_dir()
    s32, i32 = ix.search(q, k=10)
    s16, i16 = back.search(q, k=10)
    assert np.abs(s16 - s32).max() < 2e-3  # float16 rows: about 3 decimal digits
    assert np.mean(i16[:, 0] == i32[:, 0]) >= 0.8
    with pytest.raises(ValueError, match="storage"):
        ix.save(tmp_path / "x", storage="int8")
    with pytest.raises(ValueError, match="storage: only"):
        ix.save(tmp_path / "x.parquet", storage="float16")


def test_unfinished_damaged_and_foreign_libraries(tmp_path):
    _, c = data()
    path = Index(c).save(tmp_path / "lib")
    manifest = json.loads((path / "manifest.json").read_text())
    # tampered manifest
    m2 = dict(manifest, n=manifest["n"] + 1)
    (path / "manifest.json").write_text(json.dumps(m2))
    with pytest.raises(ValueError, match="checksum mismatch"):
        Index.load(path)
    (path / "manifest.json").write_text(json.dumps(manifest))
    # a truncated shard file is caught at open (sizes are checked)
    emb = path / manifest["shards"][0]["embeddings"]
    good = emb.read_bytes()
    emb.write_bytes(good[:-4])
    with pytest.raises(ValueError, match="truncated or replaced"):
        Index.load(path)
    # same size, other bytes: caught by verify=True
    emb.write_bytes(good[:-4] + b"\x00\x00\x00\x00")
    Index.load(path)  # trusted: sizes match
    with pytest.raises(ValueError, match="does not match the manifest"):
        Index.load(path, verify=True)
    emb.write_bytes(good)
    # an unfinished library (no manifest) is never opened
    (path / "manifest.json").unlink()
    with pytest.raises(ValueError, match="not a finished molphenix library"):
        Index.load(path)
    with pytest.raises(FileNotFoundError):
        Index.load(tmp_path / "nope")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_text('{"format": "something"}')
    with pytest.raises(ValueError, match="not a molphenix library manifest"):
        Index.load(tmp_path / "other")
    newer = dict(manifest, version=99)
    newer["manifest_sha256"] = S._manifest_digest(newer)
    (path / "manifest.json").write_text(json.dumps(newer))
    with pytest.raises(ValueError, match="newer"):
        Index.load(path)


def test_written_rows_are_validated(tmp_path):
    _, c = data(n=10)
    bad = c.copy()
    bad[4, 1] = np.nan
    tab = pa.table({"id": [str(i) for i in range(10)]})
    with pytest.raises(ValueError, match="NaN"):
        S.write_shard(tmp_path, "a", bad, tab, metric="dot")
    zero = c.copy()
    zero[2] = 0
    with pytest.raises(ValueError, match="row 2 has zero norm"):
        S.write_shard(tmp_path, "a", zero, tab, metric="cosine")
    with pytest.raises(ValueError, match="table"):
        S.write_shard(tmp_path, "a", c, tab.slice(0, 3), metric="dot")
    big = c * 1e6
    with pytest.raises(ValueError, match="overflows float16"):
        S.write_shard(tmp_path, "a", big, tab, metric="dot", storage="float16")
    r1 = S.write_shard(tmp_path, "a", c, tab, metric="dot")
    r2 = S.write_shard(tmp_path, "b", c, tab, metric="dot")
    assert S.shard_complete(tmp_path, r1)
    with pytest.raises(ValueError, match="duplicate id '0' \\(library rows 0 and 10\\)"):
        S.finish_library(tmp_path, [r1, r2], dim=12, metric="dot", id_kind="str")
    assert not (tmp_path / "manifest.json").exists()
    # a half-written shard (a file shorter than its record) is not complete
    (tmp_path / r1["embeddings"]).write_bytes(b"\x00" * 8)
    assert not S.shard_complete(tmp_path, r1)
    assert not S.shard_complete(tmp_path, {"name": "x"})


def test_parquet_index_still_loads_and_saves(tmp_path):
    q, c = data()
    ix = Index(c, [f"m{i}" for i in range(len(c))])
    p = ix.save(tmp_path / "lib.parquet", columns={"extra": np.arange(len(c))})
    back = Index.load(p)
    for a, b in zip(ix.search(q, k=4), back.search(q, k=4)):
        np.testing.assert_array_equal(a, b)
    assert back.column("extra").to_pylist()[:3] == [0, 1, 2]
    with pytest.raises(KeyError, match="no column 'nope'"):
        back.column("nope")
    with pytest.raises(KeyError, match="only the 'id' column"):
        ix.column("extra")
    # the library save of a loaded Parquet index equals it too
    lib = Index.load(back.save(tmp_path / "lib"))
    np.testing.assert_array_equal(lib.search(q, k=4)[1], ix.search(q, k=4)[1])
    # overwriting a library directory replaces it whole
    Index(c[:10]).save(tmp_path / "lib")
    assert len(Index.load(tmp_path / "lib")) == 10


def test_index_searches_do_not_rescan_the_rows(monkeypatch):
    """After the first search packs the rows, later searches neither validate nor pack them."""
    q, c = data(n=400)
    ix = Index(c)
    ix.search(q, k=3)
    packed = ix.storage._packed
    assert packed is not None

    def fail(*a, **k):  # noqa: ARG001
        raise AssertionError("the candidates were scanned again")

    finite = S.P.check_finite
    monkeypatch.setattr(S.P, "check_finite", lambda t, name: finite(t, name) if name == "queries" else fail())
    monkeypatch.setattr(S.P, "check_zero_norm", lambda t, name: None if name == "queries" else fail())
    monkeypatch.setattr(S.P.PackedCandidates, "from_blocks", fail)
    got = ix.search(q, k=3)
    assert ix.storage._packed is packed
    want = ops.topk_retrieve(q, c, 3)
    np.testing.assert_array_equal(got[0], want[0])
    ix.release()
    assert ix.storage._packed is None
