"""molphenix.ops.prepared: the kernels on validated inputs, and candidates packed once.

Every result must equal the public op's bit for bit: packed or not, packed in one piece or in
blocks that do not line up with the kernels' panels, under every SIMD level.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import molphenix
from molphenix import ops
from molphenix.ops import prepared as P

pytestmark = pytest.mark.requires_extension


def _pack(c: torch.Tensor, metric: str, cuts=()) -> P.PackedCandidates:
    blocks, row = [], 0
    for cut in list(cuts) + [c.shape[0]]:
        blocks.append(c[row:cut])
        row = cut
    return P.PackedCandidates.from_blocks(blocks, c.shape[0], c.shape[1], c.dtype,
                                          with_norms=metric == "arctan_l2", num_threads=2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("metric", ["dot", "arctan_l2"])
@pytest.mark.parametrize("n,d", [(1, 3), (7, 5), (129, 37), (1000, 257)])
def test_packed_equals_public_ops(dtype, metric, n, d):
    g = torch.Generator().manual_seed(n * d)
    c = torch.randn(n, d, generator=g, dtype=dtype)
    if n > 6:
        c[6] = c[2]  # an exact tie: broken by the lower index, counted against the query
    q = torch.randn(11, d, generator=g, dtype=dtype)
    q[0] = c[min(2, n - 1)]
    cuts = [i for i in (1, 5, 40, 333) if i < n]  # blocks that straddle panels
    packed = _pack(c, metric, cuts)
    assert packed.is_current() and packed.nbytes >= n * d * c.element_size()
    for k in sorted({1, min(4, n), n}):
        want = ops.topk_retrieve(q, c, k, metric=metric, backend="cpu", num_threads=2)
        got = P.topk(q, None, k, metric=metric, which="cpu", num_threads=2, packed=packed)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        keys, idx = P.topk_keys(q, None, k, metric=metric, which="cpu", num_threads=2, packed=packed)
        assert torch.equal(idx, want[1])
        assert torch.equal(P.scores_from_keys(keys, metric, "cpu", dtype), want[0])
    targets = torch.randint(0, n, (11,), generator=g)
    targets[0] = 2 if n > 6 else 0
    want_r, want_k = ops.retrieval_ranks(q, c, targets, metric=metric, backend="cpu",
                                         return_target_scores=True)
    got_r, got_k = P.ranks(q, None, targets, metric=metric, which="cpu", num_threads=2,
                           packed=packed)
    assert torch.equal(got_r, want_r) and torch.equal(got_k, want_k)
    # targets in another shard (-1, with their keys given)
    miss = torch.full((11,), -1, dtype=torch.int64)
    want_m = ops.retrieval_ranks(q, c, miss, target_scores=want_k, metric=metric, backend="cpu")
    got_m, _ = P.ranks(q, None, miss, target_scores=want_k, metric=metric, which="cpu",
                       num_threads=2, packed=packed)
    assert torch.equal(got_m, want_m)


def test_unpacked_and_reference_paths_match_the_ops():
    g = torch.Generator().manual_seed(0)
    c, q = torch.randn(50, 8, generator=g), torch.randn(4, 8, generator=g)
    for which in ("cpu", "reference"):
        for metric in ("cosine", "dot", "arctan_l2"):
            want = ops.topk_retrieve(q, c, 5, metric=metric, backend=which)
            got = P.topk(q, c, 5, metric=metric, which=which, num_threads=1)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    with pytest.raises(ValueError, match="candidates: required"):
        P.topk(q, None, 5, metric="dot", which="cpu", num_threads=1)


def test_normalize_rows_is_the_ops_cosine():
    g = torch.Generator().manual_seed(1)
    c, q = torch.randn(40, 6, generator=g), torch.randn(3, 6, generator=g)
    want = ops.topk_retrieve(q, c, 7, metric="cosine")
    got = P.topk(P.normalize_rows(q), P.normalize_rows(c), 7, metric="dot", which="cpu", num_threads=1)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    with pytest.raises(ValueError, match="x: row 2 has zero norm"):
        P.check_zero_norm(torch.cat([c[:2], torch.zeros(1, 6)]), "x")


def test_a_changed_simd_level_repacks_never_misreads():
    if molphenix.build_info().get("simd_best") == "scalar":
        pytest.skip("one SIMD level only: nothing to change")  # pragma: no cover
    g = torch.Generator().manual_seed(2)
    c, q = torch.randn(300, 16, generator=g), torch.randn(5, 16, generator=g)
    packed = _pack(c, "dot")
    old = molphenix.set_options(simd="scalar")
    try:
        assert not packed.is_current()
        # a stale handle is ignored (the unpacked path runs), never read with the wrong layout
        want = ops.topk_retrieve(q, c, 3, metric="dot", backend="cpu")
        got = P.topk(q, c, 3, metric="dot", which="cpu", num_threads=1, packed=packed)
        assert torch.equal(got[1], want[1])
        from molphenix import _ext

        with pytest.raises(ValueError, match="packed for SIMD level"):
            _ext.load().topk_retrieve_packed(q, packed._handle, 3, torch.empty(5, 3),
                                             torch.empty(5, 3, dtype=torch.int64), metric=0,
                                             num_threads=1)
    finally:
        molphenix.set_options(**old)
    assert packed.is_current()


def test_packed_errors():
    with pytest.raises(TypeError, match="float32 or float64"):
        P.PackedCandidates(3, 2, torch.float16, with_norms=False)
    with pytest.raises(ValueError, match="empty"):
        P.PackedCandidates(0, 2, torch.float32, with_norms=False)
    p = P.PackedCandidates(3, 2, torch.float32, with_norms=False)
    with pytest.raises(ValueError, match=r"rows \[2, 4\) out of \[0, 3\)"):
        p.fill(torch.zeros(2, 2), 2)
    with pytest.raises((TypeError, ValueError), match="dtype"):
        p.fill(torch.zeros(1, 2, dtype=torch.float64), 0)
    with pytest.raises(ValueError, match="columns"):
        p.fill(torch.zeros(1, 3), 0)
    with pytest.raises(ValueError, match="rows"):
        P.PackedCandidates.from_blocks([torch.zeros(2, 2)], 3, 2, torch.float32, with_norms=False)
    assert "PackedCandidates(n=3, dim=2" in repr(p)
    np.testing.assert_equal(p.n, 3)


# ------------------------------------------------------------------------------------------------
# the losses on validated inputs


def _loss_and_grads(fn, p, q, t, b, *args, **kw):
    leaves = [x.detach().clone().requires_grad_() for x in (p, q, t, b)]
    loss = fn(*leaves, *args, **kw)
    loss.backward()
    return [loss.detach()] + [x.grad for x in leaves]


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("case", ["u", "blocks", "hard", "no-threshold", "no-u"])
def test_s2l_loss_on_validated_inputs_equals_the_public_op(backend, case):
    from molphenix import ops
    from molphenix.ops import prepared

    g = torch.Generator().manual_seed(3)
    p = torch.nn.functional.normalize(torch.randn(37, 24, generator=g), dim=1)
    q = torch.nn.functional.normalize(torch.randn(29 if case == "blocks" else 37, 24, generator=g), dim=1)
    u = torch.randn(37, 11, generator=g)
    t, b = torch.tensor(9.5), torch.tensor(-8.25)
    kw = dict(c=0.3, threshold=0.75, gamma=1.75, delta=0.75, diagonal="soft", backend=backend)
    args = (u,)
    if case == "blocks":
        kw.update(u_cols=torch.randn(29, 11, generator=g), diag_offset=-5, normalizer=64.0)
    elif case == "hard":
        kw["diagonal"] = "hard"
    elif case == "no-threshold":
        kw["threshold"] = None
    elif case == "no-u":
        args = ()
    want = _loss_and_grads(ops.s2l_loss, p, q, t, b, *args, **kw)
    got = _loss_and_grads(prepared.s2l_loss, p, q, t, b, *args, **kw)
    for name, w, x in zip(("loss", "dp", "dq", "dt", "db"), want, got):
        assert torch.equal(w, x), name


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_siglip_loss_on_validated_inputs_equals_the_public_op(backend):
    from molphenix import ops
    from molphenix.ops import prepared

    g = torch.Generator().manual_seed(4)
    p = torch.nn.functional.normalize(torch.randn(33, 16, generator=g), dim=1)
    q = torch.nn.functional.normalize(torch.randn(33, 16, generator=g), dim=1)
    t, b = torch.tensor(10.0), torch.tensor(-10.0)
    want = _loss_and_grads(ops.siglip_loss, p, q, t, b, backend=backend, diag_offset=2)
    got = _loss_and_grads(prepared.siglip_loss, p, q, t, b, backend=backend, diag_offset=2)
    for name, w, x in zip(("loss", "dp", "dq", "dt", "db"), want, got):
        assert torch.equal(w, x), name


def test_the_losses_on_validated_inputs_do_not_check():
    """What the public op rejects, the prepared entry computes (the caller's guarantee): a NaN
    input gives a NaN loss, not a host read and an error."""
    from molphenix import ops
    from molphenix.ops import prepared

    p = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
    p[3, 1] = float("nan")
    with pytest.raises(ValueError, match="p: contains NaN"):
        ops.siglip_loss(p, p, 10.0, -10.0, backend="cpu")
    assert torch.isnan(prepared.siglip_loss(p, p, 10.0, -10.0, backend="cpu"))
