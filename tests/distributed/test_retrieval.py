"""Sharded retrieval and evaluation (molphenix.distributed.ShardedIndex, sharded_ranks,
evaluate_embeddings / evaluate_run / the CLI under a launch) equal one process exactly.

Every case of a world size runs in ONE spawn of gloo ranks (process start dominates the cost):
the rank bodies return their results and the parent compares them with the single-process
``Index`` / ``evaluate_embeddings`` on the concatenated candidates, computed here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from _utils import assert_close

from ._launch import run_ranks

METRICS = ("cosine", "dot", "arctan_l2")
N, D, Q = 41, 8, 13


def _data(seed: int = 0, dtype=np.float32):
    """Candidates with exact duplicates (ties) across every shard boundary of 2 and 3 ranks,
    queries that hit some candidates exactly (saturated arctan scores), one target per rank."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, D)).astype(dtype)
    for a, b in ((3, 30), (3, 20), (13, 14), (27, 28), (0, 40), (19, 21)):
        x[b] = x[a]
    q = rng.standard_normal((Q, D)).astype(dtype)
    q[0], q[1], q[2] = x[3], x[13], x[40]
    q[3] = x[3] * 1000  # far away: arctan similarities saturate, order by distance still exact
    targets = np.array([3, 30, 20, 14, 13, 40, 0, 1, 15, 27, 28, 39, 21], dtype=np.int64)
    return x, q, targets


def _ids(kind: str):
    if kind == "str":
        return [f"m{i:03d}" for i in range(N)]
    if kind == "int":
        return [1000 - 7 * i for i in range(N)]  # not sorted, not positions
    return None


def _uneven_block(rank: int, world: int):
    """Uneven blocks of N rows: 2 ranks 5 + 36; 3 ranks 0 + 38 + 3 (an empty block)."""
    cuts = {2: [0, 5, N], 3: [0, 0, 38, N]}[world]
    return cuts[rank], cuts[rank + 1]


def _cases():
    out = []
    for metric in METRICS:
        out.append(dict(metric=metric, ids="str", layout="full", dtype="float32"))
        out.append(dict(metric=metric, ids=None, layout="uneven", dtype="float32"))
    out.append(dict(metric="cosine", ids="int", layout="uneven", dtype="float64"))
    out.append(dict(metric="arctan_l2", ids="int", layout="full", dtype="float64"))
    return out


SEARCHES = (dict(k=1), dict(k=6), dict(k=N), dict(fraction=0.05), dict(fraction=0.5))


def _index_body(lib_path: str):
    """On every rank: every case's search/rank results, sharded_ranks, ShardedIndex.load and the
    error paths."""
    import torch
    import torch.distributed as dist

    from molphenix.distributed.retrieval import ShardedIndex, shard_range, sharded_ranks
    from molphenix.eval import evaluate_embeddings

    rank, world = dist.get_rank(), dist.get_world_size()
    res = {"cases": [], "rank": rank}
    for case in _cases():
        x, q, t = _data(dtype=np.dtype(case["dtype"]))
        ids = _ids(case["ids"])
        if case["layout"] == "full":
            idx = ShardedIndex.from_full(x, ids, metric=case["metric"])
        else:
            a, b = _uneven_block(rank, world)
            idx = ShardedIndex(x[a:b], None if ids is None else ids[a:b], metric=case["metric"])
        got = {"searches": [idx.search(q, **s) for s in SEARCHES]}
        tid = [t_ if ids is None else ids[t_] for t_ in t]
        got["rank"] = idx.rank(q, tid)
        got["rank_torch"] = idx.rank(torch.from_numpy(q), tid)
        got["len"] = len(idx)
        res["cases"].append(got)
    # the pure-torch reference backend (its scores are formatted from its own keys)
    x, q, t = _data()
    res["reference"] = {m: ShardedIndex.from_full(x, metric=m).search(q, 6, backend="reference")
                        for m in METRICS}
    # queries merged in chunks (a tiny merge budget: one query per chunk, ids gathered per chunk)
    import molphenix.distributed.retrieval as R

    budget, R._MERGE_BUDGET = R._MERGE_BUDGET, 12
    try:
        res["chunked"] = [ShardedIndex.from_full(x, _ids("str")).search(q, 6),
                          ShardedIndex.from_full(x, metric="arctan_l2").search(q, fraction=0.2)]
    finally:
        R._MERGE_BUDGET = budget
    # sharded_ranks on blocks (global targets), numpy in -> numpy out
    a, b = shard_range(N)
    res["sharded_ranks"] = {m: sharded_ranks(q, x[a:b], t, metric=m) for m in METRICS}
    # evaluation: all rows or this rank's block give the same metrics
    mol = [f"mol{i // 2}" for i in range(N)]
    conc = [float(1 + i % 2) for i in range(N)]
    qm = [mol[i] for i in t]
    qc = [conc[i] for i in t]
    act = np.arange(Q) % 3 == 0
    kw = dict(n_bootstrap=50, seed=3, return_ranks=True, distributed=True)
    res["eval_full"] = evaluate_embeddings(q, qm, qc, act, x, mol, conc, **kw)
    res["eval_block"] = evaluate_embeddings(torch.from_numpy(q), qm, qc, act,
                                            torch.from_numpy(x[a:b]), mol, conc, **kw)
    # an index file read shard-wise (row groups of 10 rows)
    li = ShardedIndex.load(lib_path)
    res["load"] = (li.offset, len(li), li.search(q, 9), li.rank(q, [f"m{i:03d}" for i in t]))
    # errors are raised on every rank alike, never a hang
    idx = ShardedIndex.from_full(x, _ids("str"))
    errs = {}
    for name, fn in {
        "missing": lambda: idx.rank(q[:2], ["m003", "nope"]),
        "k": lambda: idx.search(q, N + 1),
        "queries": lambda: idx.search(q[: 2 + rank], 3),
        "nan": lambda: ShardedIndex(np.full((2, D), np.nan, np.float32) if rank == 1 else x[:2]),
        "metric": lambda: ShardedIndex(x[:2], metric="dot" if rank == 0 else "cosine"),
        "duplicate_id": lambda: ShardedIndex(x[:2], ["a", "b"]).rank(q[:1], ["a"]),
        # bad input on one rank only: that rank's error there, a pointer to it on the others
        "nan_query_one_rank": lambda: idx.search(np.where(rank == 1, np.nan, q).astype(np.float32), 3),
        "k_one_rank": lambda: idx.search(q, N + 1 if rank == 0 else 3),
        "id_kind_one_rank": lambda: idx.rank(q[:1], [3] if rank == world - 1 else ["m003"]),
    }.items():
        try:
            fn()
            errs[name] = None
        except (ValueError, TypeError) as e:
            errs[name] = f"{type(e).__name__}: {e}"
    res["errors"] = errs
    return res


def _single(case, x, q, t):
    from molphenix.retrieval import Index

    ids = _ids(case["ids"])
    idx = Index(x, ids, metric=case["metric"])
    tid = [t_ if ids is None else ids[t_] for t_ in t]
    return {"searches": [idx.search(q, **s) for s in SEARCHES], "rank": idx.rank(q, tid)}


def _assert_same_search(got, want, what):
    (gs, gi), (ws, wi) = got, want
    gs = gs.numpy() if hasattr(gs, "numpy") else gs
    assert gs.dtype == ws.dtype and gs.shape == ws.shape, what
    assert np.array_equal(gs.view(np.uint8), ws.view(np.uint8)), f"{what}: scores differ bitwise"
    assert gi.dtype == wi.dtype and np.array_equal(gi, wi), f"{what}: ids differ\n{gi}\n{wi}"


@pytest.fixture(scope="module")
def lib_file(tmp_path_factory):
    import pyarrow.parquet as pq

    from molphenix.retrieval import Index

    x, _, _ = _data()
    path = tmp_path_factory.mktemp("shards") / "lib.parquet"
    Index(x, _ids("str")).save(path)
    table = pq.read_table(path)
    pq.write_table(table, path, row_group_size=10)  # several row groups, metadata kept
    assert pq.ParquetFile(path).metadata.num_row_groups == 5
    return path


@pytest.fixture(scope="module")
def cli_root(tmp_path_factory):
    """A tiny trained run, its dataset, a molecules CSV and an embedded library."""
    import pyarrow.csv as pcsv

    from molphenix.cli.main import main
    from molphenix.data import simulate
    from molphenix.train import TrainConfig, fit

    root = tmp_path_factory.mktemp("cli_launch")
    ds = simulate(root / "data", n_molecules=30, seed=5, embedding_dim=16, progress=False)
    fit(TrainConfig(data=str(root / "data"), out=str(root / "run"), steps=6, batch_size=16,
                    threads=1, progress=False, eval_every=6,
                    model_overrides=dict(phenomic_hidden=32, molecular_hidden=32, embed_dim=16,
                                         phenomic_blocks=1),
                    featurizer_kwargs=dict(n_bits=256)), log=lambda m: None)
    mols = ds.molecules.select(["molecule_id", "smiles"])
    pcsv.write_csv(mols.slice(0, 9), root / "mols.csv")
    pcsv.write_csv(mols.slice(5, 20), root / "lib.csv")
    assert main(["embed-library", "--run", str(root / "run"), "--molecules",
                 str(root / "lib.csv"), "--out", str(root / "lib.parquet")]) == 0
    return root


def _two_rank_body(lib_path: str, root: str):
    return _index_body(lib_path), _cli_body(root)


@pytest.fixture(scope="module")
def two_ranks(lib_file, cli_root):
    """One 2-rank spawn for the index cases and the CLI (process start dominates the cost)."""
    return run_ranks(_two_rank_body, 2, args=(str(lib_file), str(cli_root)), timeout_s=200)


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_index_equals_index(world, lib_file, request):
    from molphenix.eval import evaluate_embeddings
    from molphenix.retrieval import Index

    if world == 2:
        results = [r[0] for r in request.getfixturevalue("two_ranks")]
    else:
        results = run_ranks(_index_body, world, args=(str(lib_file),), timeout_s=150)
    for case_i, case in enumerate(_cases()):
        x, q, t = _data(dtype=np.dtype(case["dtype"]))
        want = _single(case, x, q, t)
        for r, res in enumerate(results):
            got = res["cases"][case_i]
            what = f"world {world} rank {r} {case}"
            assert got["len"] == N
            for s, g, w in zip(SEARCHES, got["searches"], want["searches"]):
                _assert_same_search(g, w, f"{what} {s}")
            assert np.array_equal(got["rank"], want["rank"]), what
            assert got["rank_torch"].dtype.is_floating_point is False
            assert np.array_equal(got["rank_torch"].numpy(), want["rank"]), what
    x, q, t = _data()
    from molphenix import ops

    mol = [f"mol{i // 2}" for i in range(N)]
    conc = [float(1 + i % 2) for i in range(N)]
    qm, qc, act = [mol[i] for i in t], [conc[i] for i in t], np.arange(Q) % 3 == 0
    want_m, want_r = evaluate_embeddings(q, qm, qc, act, x, mol, conc, n_bootstrap=50, seed=3,
                                         return_ranks=True)
    lib = Index.load(lib_file)
    want_load = (lib.search(q, 9), lib.rank(q, [f"m{i:03d}" for i in t]))
    want_ref = {m: Index(x, metric=m).search(q, 6, backend="reference") for m in METRICS}
    want_chunked = [Index(x, _ids("str")).search(q, 6),
                    Index(x, metric="arctan_l2").search(q, fraction=0.2)]
    offsets = []
    for res in results:
        for g, w in zip(res["chunked"], want_chunked):
            _assert_same_search(g, w, "chunked merge")
        for m in METRICS:  # torch products: equal up to the last bits of a score, same order here
            (gs, gi), (ws, wi) = res["reference"][m], want_ref[m]
            assert_close(gs, ws, dtype=torch.float32)
            assert np.array_equal(gi, wi), m
        for m in METRICS:
            assert np.array_equal(res["sharded_ranks"][m], ops.retrieval_ranks(q, x, t, metric=m)), m
        for key in ("eval_full", "eval_block"):
            got_m, got_r = res[key]
            assert json.dumps(got_m, sort_keys=True) == json.dumps(want_m, sort_keys=True), key
            assert np.array_equal(got_r["rank"], want_r["rank"]), key
        off, n, srch, rk = res["load"]
        offsets.append(off)
        assert n == N
        _assert_same_search(srch, want_load[0], "load")
        assert np.array_equal(rk, want_load[1])
        errs = res["errors"]
        assert "'nope' is not in the index" in errs["missing"]
        assert errs["k"].startswith("ValueError: k:")
        assert "queries (number of rows)" in errs["queries"]
        assert errs["nan"] is not None and errs["nan"].startswith("ValueError")
        assert "metric: every rank must pass the same value" in errs["metric"]
        assert f"'a' is on {world} ranks" in errs["duplicate_id"]
        r = res["rank"]
        assert ("queries" in errs["nan_query_one_rank"]) if r == 1 else \
            ("rank 1 rejected its input" in errs["nan_query_one_rank"])
        assert errs["k_one_rank"].startswith("ValueError: k:") if r == 0 else \
            ("rank 0 rejected its input" in errs["k_one_rank"])
        assert ("ids are str" in errs["id_kind_one_rank"]) if r == world - 1 else \
            (f"rank {world - 1} rejected" in errs["id_kind_one_rank"])
    assert offsets == sorted(offsets) and offsets[0] == 0 and len(set(offsets)) == world


# ---------------------------------------------------------------------------------------------
# the CLI under a 2-process launch
# ---------------------------------------------------------------------------------------------


def _cli_body(root: str):
    """Distributed evaluate / retrieve (library and molecules), then -- the group destroyed,
    WORLD_SIZE=1 -- the same commands as one process on rank 0 (same threads, same process)."""
    import torch.distributed as dist

    from molphenix.cli.main import main

    r = Path(root)
    rank = dist.get_rank()
    common_ev = ["evaluate", "--run", str(r / "run"), "--bootstrap", "30"]
    common_lib = ["retrieve", "--run", str(r / "run"), "--wells", str(r / "data"), "--library",
                  str(r / "lib.parquet"), "--k", "7"]
    common_mol = ["retrieve", "--run", str(r / "run"), "--wells", str(r / "data"), "--molecules",
                  str(r / "mols.csv"), "--top-fraction", "0.1"]
    codes = [main(common_ev + ["--out", str(r / "dist" / "metrics.json")]),
             main(common_lib + ["--out", str(r / "dist" / "lib.parquet")]),
             main(common_mol + ["--out", str(r / "dist" / "mol.csv")])]
    dist.barrier()
    dist.destroy_process_group()
    os.environ["WORLD_SIZE"] = "1"
    if rank == 0:
        codes += [main(common_ev + ["--out", str(r / "one" / "metrics.json")]),
                  main(common_lib + ["--out", str(r / "one" / "lib.parquet")]),
                  main(common_mol + ["--out", str(r / "one" / "mol.csv")])]
    return codes


def test_cli_evaluate_and_retrieve_under_a_launch(two_ranks, cli_root):
    import pyarrow.parquet as pq

    root = cli_root
    codes = [r[1] for r in two_ranks]
    assert codes[0] == [0] * 6 and codes[1] == [0] * 3
    one = json.loads((root / "one" / "metrics.json").read_text())
    got = json.loads((root / "dist" / "metrics.json").read_text())
    assert got == one
    assert pq.read_table(root / "dist" / "ranks.parquet").equals(
        pq.read_table(root / "one" / "ranks.parquet"))
    assert pq.read_table(root / "dist" / "lib.parquet").equals(
        pq.read_table(root / "one" / "lib.parquet"))
    assert (root / "dist" / "mol.csv").read_bytes() == (root / "one" / "mol.csv").read_bytes()


# ---------------------------------------------------------------------------------------------
# in-process: one rank, the block reader, the block split
# ---------------------------------------------------------------------------------------------


def test_shard_range_blocks():
    from molphenix.distributed import shard_range

    for n in (0, 1, 2, 7, 41):
        for w in (1, 2, 3, 5):
            blocks = [shard_range(n, r, w) for r in range(w)]
            assert blocks[0][0] == 0 and blocks[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
            sizes = [b - a for a, b in blocks]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    assert shard_range(5) == (0, 5)  # no process group: one rank
    with pytest.raises(ValueError, match="rank"):
        shard_range(5, 3, 3)


def test_read_block_reads_only_its_row_groups(lib_file):
    from molphenix.retrieval.storage import _read_parquet_block as _read_block

    x, _, _ = _data()
    for (a, b), want_groups in (((12, 27), [1, 2]), ((0, 10), [0]), ((40, 41), [4]),
                                ((9, 11), [0, 1]), ((5, 5), [])):
        emb, ids, groups = _read_block(lib_file, a, b, dim=D)
        assert groups == want_groups
        assert ids.tolist() == _ids("str")[a:b]
        from molphenix.retrieval import Index

        assert emb.dtype == np.float32 and np.array_equal(emb, Index(x).embeddings.numpy()[a:b])
        emb2, none, _ = _read_block(lib_file, a, b, dim=D, read_ids=False)
        assert none is None and np.array_equal(emb2, emb)


def test_one_process_is_index(lib_file):
    """Without a process group ShardedIndex / sharded_ranks / distributed=True are one process."""
    from molphenix import ops
    from molphenix.distributed import ShardedIndex, sharded_ranks
    from molphenix.eval import evaluate_embeddings
    from molphenix.retrieval import Index

    x, q, t = _data()
    for metric in METRICS:
        idx, sh = Index(x, _ids("str"), metric=metric), ShardedIndex.from_full(x, _ids("str"), metric=metric)
        assert len(sh) == N and sh.offset == 0 and list(sh.sizes) == [N]
        _assert_same_search(sh.search(q, 5), idx.search(q, 5), metric)
        tid = [_ids("str")[i] for i in t]
        assert np.array_equal(sh.rank(q, tid), idx.rank(q, tid))
        assert np.array_equal(sharded_ranks(q, x, t, metric=metric), ops.retrieval_ranks(q, x, t, metric=metric))
    lib = ShardedIndex.load(lib_file)
    _assert_same_search(lib.search(q, 4), Index.load(lib_file).search(q, 4), "load")
    mol = [f"mol{i}" for i in range(N)]
    a = evaluate_embeddings(q, [mol[i] for i in t], np.ones(Q), np.ones(Q, bool), x, mol, match="molecule",
                            n_bootstrap=10, distributed=True)
    b = evaluate_embeddings(q, [mol[i] for i in t], np.ones(Q), np.ones(Q, bool), x, mol, match="molecule",
                            n_bootstrap=10)
    assert a == b
