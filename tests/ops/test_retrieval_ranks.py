"""molphenix.ops.retrieval_ranks: exact ranks vs reference, ties, shards, target scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _utils import (
    assert_close,
    kernel_device_params,
    kernel_grid_params,
    randn,
    retrieval_keys64,
    separated_retrieval_case,
    with_layout,
)
from molphenix.ops import _reference, retrieval_ranks

METRICS = ["cosine", "dot", "arctan_l2"]
ALL_BACKENDS = [pytest.param("reference", id="reference")] + kernel_device_params()
# (Q, N, D): sizes that are not multiples of any tile; 4099 candidates only with a small width
SHAPES = [(1, 1, 1), (1, 7, 3), (7, 7, 1), (7, 129, 257), (129, 129, 3), (129, 1000, 64),
          (1000, 129, 3), (129, 4099, 3), (7, 4099, 1)]


def device_of(backend):
    return "cuda" if backend == "cuda" else "cpu"


def truth_ranks(queries, candidates, targets, metric):
    """#{j != t: key_j >= key_t} in float64 from the arrays the kernel sees."""
    keys = retrieval_keys64(queries, candidates, metric)
    t = targets.cpu().long()
    tk = keys.gather(1, t.unsqueeze(1))
    ge = keys >= tk
    ge[torch.arange(keys.shape[0]), t] = False
    return ge.sum(1)


@pytest.mark.parametrize("device,dtype", kernel_grid_params())
@pytest.mark.parametrize("q,n,d", SHAPES)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("contiguous", [True, False], ids=["contig", "strided"])
def test_kernel_matches_reference(device, dtype, q, n, d, metric, contiguous):
    queries, cands, targets = separated_retrieval_case(q, n, d, dtype=dtype, metric=metric,
                                                       seed=q * 13 + n + d, device=device)
    queries, cands, targets = (with_layout(t, contiguous) for t in (queries, cands, targets))
    got = retrieval_ranks(queries, cands, targets, metric=metric, backend=device)
    assert got.dtype == torch.int64 and got.shape == (q,) and got.device.type == device
    ref = _reference.retrieval_ranks(queries.cpu(), cands.cpu(), targets.cpu(), metric=metric)
    assert_close(got, ref, msg=f"ranks vs reference ({metric})")
    assert_close(got, truth_ranks(queries, cands, targets, metric), msg="ranks vs float64 truth")
    assert bool((got >= 0).all()) and bool((got <= n - 1).all())


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_exact_ties_count_against_the_query(backend, metric, dtype):
    """Each query is identical to its target; copies of the target row are scattered among the
    candidates (before and after the target's index). Every copy ties and counts."""
    dev = device_of(backend)
    g = torch.Generator().manual_seed(0)
    n, d, nq = 300, 17, 40
    cands = randn((n, d), seed=1, dtype=dtype)
    targets = torch.randperm(n, generator=g)[:nq]
    expected = torch.zeros(nq, dtype=torch.int64)
    free = [j for j in range(n) if j not in set(targets.tolist())]
    perm = torch.randperm(len(free), generator=g).tolist()
    pos = 0
    for i in range(nq):
        copies = i % 4  # 0..3 duplicates of this query's target
        for _ in range(copies):
            j = free[perm[pos]]
            pos += 1
            cands[j] = cands[targets[i]]
        expected[i] = copies
    queries = cands[targets].clone()
    got = retrieval_ranks(queries.to(dev), cands.to(dev), targets.to(dev), metric=metric,
                          backend=backend)
    # (the query equals its target: nothing else can be strictly better for cosine / arctan_l2)
    if metric != "dot":
        assert_close(got, expected, msg="rank == number of exact duplicates")
    assert_close(got, truth_ranks(queries, cands, targets, metric), msg="vs float64 truth")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_parallel_rows_tie_under_cosine(backend):
    dev = device_of(backend)
    c = randn((20, 6), seed=3, dtype=torch.float32)
    c[5] = 2.0 * c[9]      # parallel, exact after normalisation (power-of-two scaling)
    c[15] = 4.0 * c[9]
    c[2] = 0.5 * c[9]
    q = c[9:10] + 0.0
    t = torch.tensor([9])
    cos = retrieval_ranks(q.to(dev), c.to(dev), t.to(dev), metric="cosine", backend=backend)
    assert int(cos[0]) == 3
    dot = retrieval_ranks(q.to(dev), c.to(dev), t.to(dev), metric="dot", backend=backend)
    assert int(dot[0]) == int(truth_ranks(q, c, t, "dot")[0])
    l2 = retrieval_ranks(q.to(dev), c.to(dev), t.to(dev), metric="arctan_l2", backend=backend)
    assert int(l2[0]) == 0


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_sharded_ranks_sum_to_whole(backend, metric, dtype):
    dev = device_of(backend)
    queries, cands, targets = separated_retrieval_case(97, 700, 24, dtype=dtype, metric=metric,
                                                       seed=5, device=dev)
    whole, whole_keys = retrieval_ranks(queries, cands, targets, metric=metric, backend=backend,
                                        return_target_scores=True)
    assert whole_keys.dtype == torch.float64 and whole_keys.shape == (97,)
    bounds = [0, 1, 250, 251, 600, 700]  # shards of 1, 249, 1, 349, 100 candidates
    shards = list(zip(bounds[:-1], bounds[1:]))
    owner_keys = torch.zeros(97, dtype=torch.float64, device=dev)
    for lo, hi in shards:  # pass 1: the owning shard reports the target's key
        inside = (targets >= lo) & (targets < hi)
        local = torch.where(inside, targets - lo, torch.full_like(targets, -1))
        if bool(inside.any()):
            _, keys = retrieval_ranks(queries, cands[lo:hi], local, metric=metric,
                                      backend=backend, target_scores=torch.zeros(97, dtype=torch.float64, device=dev),
                                      return_target_scores=True)
            owner_keys[inside] = keys[inside]
    assert_close(owner_keys, whole_keys, dtype=dtype, msg="target keys from the owning shard")
    total = torch.zeros(97, dtype=torch.int64, device=dev)
    for lo, hi in shards:  # pass 2: every shard counts against the owner's key
        inside = (targets >= lo) & (targets < hi)
        local = torch.where(inside, targets - lo, torch.full_like(targets, -1))
        total += retrieval_ranks(queries, cands[lo:hi], local, target_scores=owner_keys,
                                 metric=metric, backend=backend)
    assert_close(total, whole, msg="sum of shard ranks")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("metric", METRICS)
def test_target_scores_are_the_metric_keys(backend, metric):
    dev = device_of(backend)
    queries, cands, targets = separated_retrieval_case(30, 80, 7, dtype=torch.float64,
                                                       metric=metric, seed=8, device=dev)
    _, keys = retrieval_ranks(queries, cands, targets, metric=metric, backend=backend,
                              return_target_scores=True)
    k64 = retrieval_keys64(queries, cands, metric).gather(1, targets.cpu().unsqueeze(1)).squeeze(1)
    if metric == "arctan_l2":
        k64 = -k64  # squared distance, not its negation
    assert_close(keys, k64, dtype=torch.float64)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_target_scores_ignored_where_target_present(backend):
    dev = device_of(backend)
    queries, cands, targets = separated_retrieval_case(10, 50, 5, dtype=torch.float64,
                                                       metric="cosine", seed=2, device=dev)
    plain = retrieval_ranks(queries, cands, targets, backend=backend)
    junk = torch.full((10,), 1e9, dtype=torch.float64, device=dev)
    assert_close(retrieval_ranks(queries, cands, targets, target_scores=junk, backend=backend), plain)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_missing_targets_use_given_scores(backend):
    dev = device_of(backend)
    queries = randn((3, 4), seed=1, device=dev)
    cands = randn((50, 4), seed=2, device=dev)
    targets = torch.full((3,), -1, dtype=torch.int64, device=dev)
    keys = retrieval_keys64(queries, cands, "dot")
    # score above everything -> 0; below everything -> N; equal to one candidate's key -> counts it
    scores = torch.stack([keys[0].max() + 1, keys[1].min() - 1, keys[2, 7]]).to(dev)
    got = retrieval_ranks(queries, cands, targets, target_scores=scores, metric="dot", backend=backend)
    exp = torch.tensor([0, 50, int((keys[2] >= keys[2, 7]).sum())])
    assert_close(got, exp)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("metric", METRICS)
def test_zero_queries_give_empty_result(backend, metric):
    dev = device_of(backend)
    q = torch.zeros((0, 5), dtype=torch.float32, device=dev)
    c = randn((9, 5), seed=1, dtype=torch.float32, device=dev)
    t = torch.zeros(0, dtype=torch.int64, device=dev)
    r = retrieval_ranks(q, c, t, metric=metric, backend=backend)
    assert r.shape == (0,) and r.dtype == torch.int64
    r, k = retrieval_ranks(q, c, t, metric=metric, backend=backend, return_target_scores=True)
    assert r.shape == (0,) and k.shape == (0,)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("where", ["queries", "candidates"])
def test_zero_norm_row_under_cosine(backend, where):
    dev = device_of(backend)
    q = randn((4, 3), seed=1, device=dev)
    c = randn((6, 3), seed=2, device=dev)
    (q if where == "queries" else c)[2] = 0.0
    t = torch.tensor([0, 1, 2, 3], device=dev)
    with pytest.raises(ValueError, match=where):
        retrieval_ranks(q, c, t, metric="cosine", backend=backend)
    for metric in ("dot", "arctan_l2"):  # only cosine needs a norm
        r = retrieval_ranks(q, c, t, metric=metric, backend=backend)
        assert_close(r, truth_ranks(q, c, t, metric))


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=pytest.mark.requires_extension)])
def test_numpy_in_numpy_out(backend):
    queries, cands, targets = separated_retrieval_case(20, 60, 5, dtype=torch.float32,
                                                       metric="cosine", seed=4)
    r = retrieval_ranks(queries.numpy(), cands.numpy(), targets.numpy(), backend=backend)
    assert isinstance(r, np.ndarray) and r.dtype == np.int64 and r.shape == (20,)
    r2, k = retrieval_ranks(queries.numpy(), cands.numpy(), targets.numpy().astype(np.int32),
                            backend=backend, return_target_scores=True)
    assert isinstance(k, np.ndarray) and k.dtype == np.float64
    assert_close(r, retrieval_ranks(queries, cands, targets, backend=backend))
    assert_close(r2, r)


@pytest.mark.requires_extension
@pytest.mark.parametrize("metric", METRICS)
def test_thread_count_independent(metric):
    queries, cands, targets = separated_retrieval_case(300, 1000, 16, dtype=torch.float32,
                                                       metric=metric, seed=6)
    a = retrieval_ranks(queries, cands, targets, metric=metric, backend="cpu", num_threads=1,
                        return_target_scores=True)
    b = retrieval_ranks(queries, cands, targets, metric=metric, backend="cpu", num_threads=2,
                        return_target_scores=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("device", kernel_device_params())
@pytest.mark.parametrize("metric_code", [0, 1])
def test_opcheck(device, metric_code):
    q = randn((5, 3), seed=1, device=device)
    c = randn((8, 3), seed=2, device=device)
    t = torch.tensor([0, 7, -1, 3, -1], device=device)
    s = torch.tensor([0.0, 0.0, 0.5, 0.0, -0.5], dtype=torch.float64, device=device)
    torch.library.opcheck(torch.ops.molphenix.retrieval_ranks.default, (q, c, t, s, metric_code, 1))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_duplicate_rows_tie_for_any_query(backend, metric, dtype):
    """Candidates are 7 distinct rows repeated in a shuffled order; queries are unrelated. Every
    copy of the target row ties with it (the same arithmetic gives the same score), so the rank
    is #(rows scoring strictly better) x their multiplicity + (copies of the target row - 1)."""
    dev = device_of(backend)
    base = randn((7, 6), seed=21, dtype=dtype)
    which = torch.randint(0, 7, (400,), generator=torch.Generator().manual_seed(4))
    cands = base[which].clone()
    queries = randn((25, 6), seed=22, dtype=dtype)
    targets = torch.randint(0, 400, (25,), generator=torch.Generator().manual_seed(5))
    base_keys = retrieval_keys64(queries, base, metric)            # [Q, 7], distinct per row
    keys = base_keys[:, which]                                      # bitwise-equal for copies
    tk = keys.gather(1, targets.unsqueeze(1))
    expected = (keys >= tk).sum(1) - 1
    got = retrieval_ranks(queries.to(dev), cands.to(dev), targets.to(dev), metric=metric,
                          backend=backend)
    assert_close(got, expected, msg="duplicates of the target count against the query")
