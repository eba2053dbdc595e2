"""molphenix.ops.topk_retrieve: exact, sorted top-k with ties broken by the lower index."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from _utils import (
    assert_close,
    kernel_device_params,
    kernel_grid_params,
    randn,
    retrieval_keys64,
    retrieval_margin,
    topk_ambiguous,
    with_layout,
)
from molphenix.ops import _reference, topk_retrieve

METRICS = ["cosine", "dot", "arctan_l2"]
ALL_BACKENDS = [pytest.param("reference", id="reference")] + kernel_device_params()
# (Q, N, D, k)
SHAPES = [(1, 1, 1, 1), (1, 7, 3, 7), (7, 7, 1, 3), (7, 129, 257, 10), (129, 1000, 64, 1),
          (129, 1000, 3, 50), (1000, 129, 3, 129), (129, 4099, 3, 41), (7, 4099, 1, 5)]


def device_of(backend):
    return "cuda" if backend == "cuda" else "cpu"


def to_similarity(keys64, metric):
    if metric == "arctan_l2":
        return 1.0 - (4.0 / math.pi) * torch.atan(-keys64 / 0.3)
    return keys64


def check_topk(scores, idx, queries, cands, k, metric, dtype):
    """Kernel output vs float64 truth: indices exact wherever rounding cannot reorder."""
    nq = queries.shape[0]
    assert scores.shape == (nq, k) and idx.shape == (nq, k)
    assert idx.dtype == torch.int64
    out_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    assert scores.dtype == out_dtype
    idx, scores = idx.cpu(), scores.cpu()
    keys = retrieval_keys64(queries, cands, metric)
    order = torch.sort(keys, dim=1, descending=True, stable=True).indices[:, :k]
    amb = topk_ambiguous(keys, k, retrieval_margin(queries, cands, metric))
    # sorted (non-increasing); arctan saturation may only merge, never invert
    assert bool((scores[:, 1:] <= scores[:, :-1]).all()), "scores not sorted"
    # each row lists distinct valid candidates
    assert bool(((idx >= 0) & (idx < cands.shape[0])).all())
    for row in idx.tolist():
        assert len(set(row)) == len(row), "duplicate candidate in a row"
    # exact indices where unambiguous; everywhere the key sequence matches
    mism = (idx != order) & ~amb
    assert not bool(mism.any()), f"indices differ at {mism.nonzero()[:5].tolist()}"
    got_keys = keys.gather(1, idx)
    exp_keys = keys.gather(1, order)
    assert_close(to_similarity(got_keys, metric), to_similarity(exp_keys, metric), dtype=out_dtype,
                 msg="keys of the listed candidates")
    # scores are the scores of the listed candidates
    assert_close(scores, to_similarity(got_keys, metric), dtype=out_dtype, msg="scores")
    return amb


@pytest.mark.parametrize("device,dtype", kernel_grid_params())
@pytest.mark.parametrize("q,n,d,k", SHAPES)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("contiguous", [True, False], ids=["contig", "strided"])
def test_kernel_matches_reference(device, dtype, q, n, d, k, metric, contiguous):
    dev = device_of(device)
    queries = with_layout(randn((q, d), seed=q + n, dtype=dtype, device=dev), contiguous)
    cands = with_layout(randn((n, d), seed=q + n + d, dtype=dtype, device=dev), contiguous)
    scores, idx = topk_retrieve(queries, cands, k, metric=metric, backend=device)
    assert scores.device.type == dev
    amb = check_topk(scores, idx, queries, cands, k, metric, dtype)
    r_scores, r_idx = _reference.topk_retrieve(queries.cpu(), cands.cpu(), k, metric=metric)
    assert not bool(((idx.cpu() != r_idx) & ~amb).any()), "indices differ from the reference"
    out_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    assert_close(scores, r_scores, dtype=out_dtype, msg="scores vs reference")


def _digit_case(nq, m, n):
    """Tie-free by construction: candidates are distinct digit triples (base m), each query
    weighs the digits by a permutation of (m^2, m, 1), so every dot score is a distinct integer
    (exact in float32)."""
    triples = torch.tensor(list(itertools.product(range(m), repeat=3))[:n], dtype=torch.float64)
    triples = triples[torch.randperm(n, generator=torch.Generator().manual_seed(n))]
    perms = list(itertools.permutations([m * m, m, 1]))
    queries = torch.tensor([perms[i % 6] for i in range(nq)], dtype=torch.float64)
    return queries, triples


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("k", [1, 17, 512])
def test_exact_on_tie_free_data(backend, dtype, k):
    dev = device_of(backend)
    queries, cands = _digit_case(12, 9, 700)
    queries, cands = queries.to(dev, dtype), cands.to(dev, dtype)
    scores, idx = topk_retrieve(queries, cands, k, metric="dot", backend=backend)
    keys = queries.double().cpu() @ cands.double().cpu().T
    exp_idx = torch.argsort(keys, dim=1, descending=True)[:, :k]
    assert_close(idx, exp_idx, msg="indices on tie-free data")
    assert_close(scores, keys.gather(1, exp_idx), dtype=dtype, msg="scores")
    r_scores, r_idx = _reference.topk_retrieve(queries.cpu(), cands.cpu(), k, metric="dot")
    assert_close(idx, r_idx, msg="indices vs reference")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_ties_broken_by_lower_index(backend, metric, dtype):
    """A few distinct rows repeated many times in a shuffled order: every score is tied with
    many others; the listing must take the lowest indices of each tied group, in order."""
    dev = device_of(backend)
    base = randn((6, 5), seed=11, dtype=dtype)
    g = torch.Generator().manual_seed(3)
    which = torch.randint(0, 6, (333,), generator=g)
    cands = base[which].clone()
    queries = randn((9, 5), seed=12, dtype=dtype)
    for k in (1, 40, 333):
        scores, idx = topk_retrieve(queries.to(dev), cands.to(dev), k, metric=metric,
                                    backend=backend)
        # keys of the 6 distinct rows, expanded: identical rows get bitwise identical keys
        keys = retrieval_keys64(queries, base, metric)[:, which]
        exp = torch.sort(keys, dim=1, descending=True, stable=True).indices[:, :k]
        assert_close(idx, exp, msg=f"tie order, k={k}")
        assert bool((scores.cpu()[:, 1:] <= scores.cpu()[:, :-1]).all())


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("fraction,n,k", [(0.07, 100, 7), (0.14, 100, 14), (0.29, 100, 29),
                                          (0.57, 100, 57), (0.01, 4099, 41), (0.05, 4099, 205),
                                          (1e-9, 50, 1), (1.0, 37, 37), (0.5, 3, 2)])
def test_fraction_gives_exact_k(backend, fraction, n, k):
    dev = device_of(backend)
    queries = randn((3, 2), seed=1, device=dev)
    cands = randn((n, 2), seed=2, device=dev)
    scores, idx = topk_retrieve(queries, cands, fraction=fraction, backend=backend)
    assert scores.shape == (3, k) and idx.shape == (3, k)
    s2, i2 = topk_retrieve(queries, cands, k, backend=backend)
    assert torch.equal(idx, i2) and torch.equal(scores, s2)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("metric", METRICS)
def test_zero_queries(backend, metric):
    dev = device_of(backend)
    q = torch.zeros((0, 4), device=dev)
    c = randn((10, 4), seed=1, dtype=torch.float32, device=dev)
    s, i = topk_retrieve(q, c, 3, metric=metric, backend=backend)
    assert s.shape == (0, 3) and i.shape == (0, 3) and i.dtype == torch.int64
    assert s.dtype == torch.float32


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_arctan_scores_are_similarities(backend):
    dev = device_of(backend)
    q = randn((4, 3), seed=1, device=dev) * 0.1
    c = torch.cat([q, randn((20, 3), seed=2, device=dev) * 3.0])  # exact matches at 0..3
    s, i = topk_retrieve(q, c, 5, metric="arctan_l2", backend=backend)
    assert_close(i[:, 0], torch.arange(4), msg="the query itself first")
    assert_close(s[:, 0], torch.ones(4, dtype=torch.float64), dtype=torch.float64)
    assert bool((s <= 1).all()) and bool((s > -1).all())


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_k_equal_n_is_a_full_sort(backend):
    dev = device_of(backend)
    q = randn((5, 8), seed=1, dtype=torch.float64, device=dev)
    c = randn((64, 8), seed=2, dtype=torch.float64, device=dev)
    s, i = topk_retrieve(q, c, 64, metric="dot", backend=backend)
    assert_close(torch.sort(i, dim=1).values, torch.arange(64).expand(5, 64))


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=pytest.mark.requires_extension)])
def test_numpy_in_numpy_out(backend):
    q = randn((6, 4), seed=1, dtype=torch.float32)
    c = randn((30, 4), seed=2, dtype=torch.float32)
    s, i = topk_retrieve(q.numpy(), c.numpy(), 4, backend=backend)
    assert isinstance(s, np.ndarray) and isinstance(i, np.ndarray)
    assert s.dtype == np.float32 and i.dtype == np.int64 and s.shape == (6, 4)
    s2, i2 = topk_retrieve(q, c, 4, backend=backend)
    assert_close(i, i2)
    assert_close(s, s2, dtype=torch.float32)


@pytest.mark.requires_extension
@pytest.mark.parametrize("metric", METRICS)
def test_thread_count_independent(metric):
    q = randn((200, 16), seed=1, dtype=torch.float32)
    c = randn((1500, 16), seed=2, dtype=torch.float32)
    a = topk_retrieve(q, c, 20, metric=metric, backend="cpu", num_threads=1)
    b = topk_retrieve(q, c, 20, metric=metric, backend="cpu", num_threads=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("device", kernel_device_params())
@pytest.mark.parametrize("metric_code", [0, 1])
def test_opcheck(device, metric_code):
    q = randn((5, 3), seed=1, device=device)
    c = randn((8, 3), seed=2, device=device)
    torch.library.opcheck(torch.ops.molphenix.topk_retrieve.default, (q, c, 3, metric_code, 1))


@pytest.mark.requires_extension
@pytest.mark.parametrize("metric", ["dot", "arctan_l2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("fraction", [0.01, 0.05])
def test_large_n_sampled_threshold_path_is_exact(metric, dtype, fraction):
    """N large enough for the CPU kernel's sampled starting threshold, on integer-valued data
    (exact scores, many ties): indices equal the stable-sort reference exactly, for 1 and 2
    threads (bitwise equal to each other), and with few queries (candidates split across
    threads)."""
    g = torch.Generator().manual_seed(20)
    n, d = 20_000, 8
    cand = torch.randint(-3, 4, (n, d), generator=g).to(dtype)
    for nq in (64, 3):
        q = torch.randint(-3, 4, (nq, d), generator=g).to(dtype)
        want_s, want_i = _reference.topk_retrieve(q, cand, fraction=fraction, metric=metric)
        outs = [topk_retrieve(q, cand, fraction=fraction, metric=metric, backend="cpu", num_threads=t)
                for t in (1, 2)]
        assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
        for s, i in outs:
            assert torch.equal(i, want_i)
            if metric == "dot":  # exact integer scores
                assert torch.equal(s, want_s.to(s.dtype))
            else:  # the similarity is computed from d2 by different float code paths
                assert_close(s, want_s, dtype=dtype, msg="arctan_l2 scores")
