"""molphenix.retrieval.Index: the ops' results with ids, Parquet round trip, input errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from molphenix import ops
from molphenix.retrieval import Index
from tests._utils import cuda_available

METRICS = ("cosine", "dot", "arctan_l2")


def data(n=300, q=17, d=12, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(n, d)).astype(dtype)
    c[5] = c[3]  # an exact duplicate row: a tie broken by the lower index
    qs = rng.normal(size=(q, d)).astype(dtype)
    qs[0] = c[3]
    return qs, c


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_search_equals_topk_retrieve_with_ids(metric, dtype):
    q, c = data(dtype=dtype)
    ids = np.array([f"mol-{i:04d}" for i in range(len(c))])
    ix = Index(c, ids, metric=metric)
    for kw in ({"k": 7}, {"fraction": 0.05}):
        scores, got = ix.search(q, **kw)
        want_s, want_i = ops.topk_retrieve(q, c, metric=metric, **kw)
        assert isinstance(scores, np.ndarray) and scores.dtype == want_s.dtype
        np.testing.assert_array_equal(scores, want_s)
        assert got.dtype == object
        np.testing.assert_array_equal(got, ids[want_i])
    assert ix.search(q, k=2)[1][0].tolist() == ["mol-0003", "mol-0005"]


@pytest.mark.parametrize("metric", METRICS)
def test_rank_equals_retrieval_ranks(metric):
    q, c = data()
    ids = list(range(1000, 1000 + len(c)))  # int ids that are not row positions
    rng = np.random.default_rng(1)
    pos = rng.integers(0, len(c), size=len(q))
    pos[0] = 5  # the duplicate of row 3: the tie counts against the query
    ix = Index(torch.from_numpy(c), ids, metric=metric)
    got = ix.rank(torch.from_numpy(q), [ids[p] for p in pos])
    want = ops.retrieval_ranks(q, c, pos, metric=metric)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.int64
    np.testing.assert_array_equal(got.numpy(), want)
    _, found = ix.search(q, k=3)
    assert found.dtype == np.int64 and found[0, 0] in (1003, 1005)


def test_default_ids_are_row_positions_and_torch_in_torch_out():
    q, c = data()
    ix = Index(torch.from_numpy(c))
    s, i = ix.search(torch.from_numpy(q), k=4)
    ws, wi = ops.topk_retrieve(torch.from_numpy(q), torch.from_numpy(c), 4)
    assert isinstance(s, torch.Tensor) and torch.equal(s, ws)
    assert i.dtype == np.int64 and np.array_equal(i, wi.numpy())
    np.testing.assert_array_equal(ix.positions([3, 0]), [3, 0])
    np.testing.assert_array_equal(ix.rank(q, np.arange(len(q))),
                                  ops.retrieval_ranks(q, c, np.arange(len(q))))


def test_queries_cast_to_index_dtype():
    q, c = data()
    ix = Index(c)
    s64, i64 = ix.search(q.astype(np.float64), k=3)
    s32, i32 = ix.search(q, k=3)
    np.testing.assert_array_equal(i64, i32)
    np.testing.assert_array_equal(s64, s32)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("ids_kind", ["default", "str", "int"])
def test_save_load_round_trip_exact(tmp_path, metric, ids_kind):
    q, c = data()
    ids = {"default": None, "str": [f"s{i}" for i in range(len(c))],
           "int": np.arange(len(c))[::-1] * 3}[ids_kind]
    ix = Index(c, ids, metric=metric)
    path = ix.save(tmp_path / "sub" / "lib.parquet")
    assert [p.name for p in path.parent.iterdir()] == ["lib.parquet"]
    back = Index.load(path)
    assert repr(back) == repr(ix) and len(back) == len(c) and back.dim == c.shape[1]
    assert back.metric == metric and back.dtype == ix.dtype
    assert torch.equal(back.embeddings, ix.embeddings)
    np.testing.assert_array_equal(back.ids, ix.ids)
    assert back.ids.dtype == ix.ids.dtype
    for a, b in zip(ix.search(q, k=9), back.search(q, k=9)):
        np.testing.assert_array_equal(a, b)
    schema = pq.read_schema(path)
    assert pa.types.is_fixed_size_list(schema.field("embedding").type)
    assert schema.field("embedding").type.value_type == pa.float32()
    assert b"molphenix.index" in schema.metadata


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_save_load_keeps_dtype(tmp_path, dtype):
    _, c = data()
    ix = Index(torch.from_numpy(c).to(dtype))
    back = Index.load(ix.save(tmp_path / "i.parquet"))
    assert back.dtype == dtype and torch.equal(back.embeddings, ix.embeddings)


def test_pyarrow_ids():
    c = data()[1][:4]
    names = ["a", "b", "c", "d"]
    for ids in (pa.array(names), pa.chunked_array([names[:2], names[2:]]),
                pa.table({"id": names, "other": [1, 2, 3, 4]}), pa.table({"x": names})):
        ix = Index(c, ids)
        assert ix.ids.tolist() == names
        assert ix.positions(["d", "a"]).tolist() == [3, 0]


def test_errors():
    q, c = data()
    with pytest.raises(ValueError, match="duplicate id 'x'"):
        Index(c[:3], ["x", "y", "x"])
    with pytest.raises(ValueError, match="ids: expected 300"):
        Index(c, ["a", "b"])
    with pytest.raises(TypeError, match="ids"):
        Index(c[:2], ["a", 1])
    with pytest.raises(ValueError, match="embeddings"):
        Index(c[0])
    with pytest.raises(ValueError, match="embeddings"):
        Index(c[:0])
    bad = c.copy()
    bad[7, 2] = np.nan
    with pytest.raises(ValueError, match="embeddings.*NaN"):
        Index(bad)
    zero = c.copy()
    zero[4] = 0
    with pytest.raises(ValueError, match="embeddings: row 4 has zero norm"):
        Index(zero)
    Index(zero, metric="dot")  # fine without normalisation
    with pytest.raises(TypeError, match="embeddings"):
        Index(c.astype(np.int32))
    with pytest.raises(ValueError, match="metric"):
        Index(c, metric="l1")
    ix = Index(c, [f"m{i}" for i in range(len(c))])
    with pytest.raises(ValueError, match="k: expected 1 <= k <= N = 300"):
        ix.search(q, k=301)
    with pytest.raises(ValueError, match="exactly one"):
        ix.search(q)
    with pytest.raises(ValueError, match="exactly one"):
        ix.search(q, k=3, fraction=0.1)
    with pytest.raises(ValueError, match="fraction"):
        ix.search(q, fraction=1.5)
    with pytest.raises(ValueError, match="queries: expected 12 columns"):
        ix.search(q[:, :5], k=1)
    with pytest.raises(ValueError, match="queries: expected a 2-D"):
        ix.search(q[0], k=1)
    qn = q.copy()
    qn[1, 1] = np.inf
    with pytest.raises(ValueError, match="queries.*NaN"):
        ix.search(qn, k=1)
    with pytest.raises(ValueError, match="queries: row 0 has zero norm"):
        ix.search(np.zeros_like(q), k=1)
    with pytest.raises(ValueError, match="id 'nope' is not in the index"):
        ix.rank(q[:2], ["m1", "nope"])
    with pytest.raises(ValueError, match="target_ids: expected 17"):
        ix.rank(q, ["m1"])
    with pytest.raises(ValueError, match="not in the index"):
        Index(c).rank(q[:1], [300])


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        Index.load(tmp_path / "missing.parquet")
    pq.write_table(pa.table({"a": [1]}), tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="not a molphenix index"):
        Index.load(tmp_path / "other.parquet")


def test_large_candidate_set_streams():
    # 200k candidates x 64: a Q x N float64 score matrix would need 1.6 GB for Q = 1000; the ops
    # stream, so this runs in small memory (a smoke test; 1M is in benches/).
    g = torch.Generator().manual_seed(0)
    c = torch.randn(200_000, 64, generator=g)
    ix = Index(c)
    q = c[[10, 199_999]] + 0.01 * torch.randn(2, 64, generator=g)
    _, ids = ix.search(q, k=1)
    assert ids[:, 0].tolist() == [10, 199_999]
    assert ix.rank(q, [10, 199_999]).tolist() == [0, 0]


@pytest.mark.requires_cuda
@pytest.mark.skipif(not cuda_available(), reason="needs CUDA")
def test_cuda_index_matches_cpu():
    q, c = data()
    ids = [f"m{i}" for i in range(len(c))]
    cpu = Index(c, ids)
    gpu = Index(torch.from_numpy(c).cuda(), ids)
    assert gpu.device.type == "cuda"
    s, i = gpu.search(torch.from_numpy(q).cuda(), k=5)
    assert s.device.type == "cuda"
    sc, ic = cpu.search(q, k=5)
    np.testing.assert_array_equal(i, ic)
    np.testing.assert_allclose(s.cpu().numpy(), sc, rtol=1e-5, atol=1e-6)
    s2, i2 = gpu.search(q, k=5)  # numpy queries against a CUDA index: numpy back
    assert isinstance(s2, np.ndarray)
    np.testing.assert_array_equal(i2, ic)


def test_zero_queries():
    q, c = data()
    ix = Index(c, [f"m{i}" for i in range(len(c))])
    s, i = ix.search(q[:0], k=3)
    assert s.shape == (0, 3) and i.shape == (0, 3)
    assert ix.rank(q[:0], []).shape == (0,)
