"""molphenix.ops.s2l_loss: fused kernel vs the pure-torch reference, gradients, identities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from _utils import (
    assert_close,
    kernel_device_params,
    kernel_grid_params,
    make_noncontiguous,
    quantized_clusters,
    unit_rows,
    with_layout,
)
from molphenix.ops import _reference, s2l_loss, siglip_loss

SCALE, BIAS = 10.0, -10.0

# (rows, dim): rows not multiples of any tile; dims 1, 3, 64, 257. 4099 rows only with a small
# dim (its float64 reference is evaluated in row blocks).
SHAPES = [(1, 1), (1, 3), (7, 1), (7, 3), (7, 64), (7, 257), (129, 1), (129, 3), (129, 64),
          (129, 257), (1000, 3), (1000, 64), (4099, 3)]


def backend_of(device: str) -> str:
    return device


def device_of(backend: str) -> str:
    return "cuda" if backend == "cuda" else "cpu"


def make_case(b1, b2, d, e, *, dtype, device, seed, with_u=True):
    p = unit_rows(b1, d, seed=seed, dtype=dtype, device=device)
    q = unit_rows(b2, d, seed=seed + 1, dtype=dtype, device=device)
    if not with_u:
        return p, q, None, None
    # u and u_cols share clusters so that soft labels exist between rows and columns
    u_all = quantized_clusters(b1 + b2, e, seed=seed + 2, dtype=dtype, device=device)
    perm = torch.randperm(b1 + b2, generator=torch.Generator().manual_seed(seed + 3))
    u_all = u_all[perm.to(u_all.device)]
    if b1 == b2:
        return p, q, u_all[:b1].contiguous(), None
    return p, q, u_all[:b1].contiguous(), u_all[b1:].contiguous()


def reference64(p, q, scale, bias, u=None, *, grads=True, chunk=1024, **kw):
    """float64 reference (loss, dp, dq, dscale, dbias) on the kernel's (rounded) inputs,
    evaluated in row blocks (diag_offset + normalizer) so large batches stay small in memory."""
    u_cols = kw.pop("u_cols", None)
    diag_offset = kw.pop("diag_offset", 0)
    normalizer = kw.pop("normalizer", None)
    b1 = p.shape[0]
    norm = float(b1) if normalizer is None else float(normalizer)
    p64 = p.detach().cpu().double().requires_grad_(grads)
    q64 = q.detach().cpu().double().requires_grad_(grads)
    s64 = torch.tensor(float(scale), dtype=torch.float64, requires_grad=grads)
    bb64 = torch.tensor(float(bias), dtype=torch.float64, requires_grad=grads)
    u64 = None if u is None else u.detach().cpu().double()
    uc64 = None if u_cols is None else u_cols.detach().cpu().double()
    if u64 is not None and uc64 is None:
        uc64 = u64
    total = torch.zeros((), dtype=torch.float64)
    for r0 in range(0, b1, chunk):
        r1 = min(b1, r0 + chunk)
        loss = _reference.s2l_loss(p64[r0:r1], q64, s64, bb64, None if u64 is None else u64[r0:r1],
                                   u_cols=uc64, diag_offset=diag_offset + r0, normalizer=norm, **kw)
        if grads:
            loss.backward()
        total = total + loss.detach()
    if not grads:
        return total, None, None, None, None
    return total, p64.grad, q64.grad, s64.grad, bb64.grad


def run(device, p, q, scale, bias, u=None, **kw):
    """The compiled kernel with gradients for p, q, scale and bias (0-dim tensors)."""
    p = p.detach().requires_grad_(True)
    q = q.detach().requires_grad_(True)
    st = torch.tensor(scale, dtype=torch.float64, device=p.device, requires_grad=True)
    bt = torch.tensor(bias, dtype=torch.float64, device=p.device, requires_grad=True)
    loss = s2l_loss(p, q, st, bt, u, backend=backend_of(device), **kw)
    loss.backward()
    return loss.detach(), p.grad, q.grad, st.grad, bt.grad


def check_against_reference(device, dtype, p, q, u, msg, **kw):
    got = run(device, p, q, SCALE, BIAS, u, **kw)
    exp = reference64(p, q, SCALE, BIAS, u, **kw)
    assert got[0].dtype == dtype and got[0].shape == ()
    assert got[1].dtype == dtype and got[2].dtype == dtype
    assert_close(got[0], exp[0], dtype=dtype, msg=f"{msg} loss")
    for name, a, e in zip(("dp", "dq", "dscale", "dbias"), got[1:], exp[1:]):
        assert_close(a, e, dtype=dtype, kind="grad", msg=f"{msg} {name}")


# The float32 reference against its float64 self checks that the tolerance table is attainable.
GRID = kernel_grid_params() + [pytest.param("reference", torch.float32, id="reference-float32")]


@pytest.mark.parametrize("device,dtype", GRID)
@pytest.mark.parametrize("rows,dim", SHAPES)
@pytest.mark.parametrize("contiguous", [True, False], ids=["contig", "strided"])
def test_kernel_matches_reference(device, dtype, rows, dim, contiguous):
    # 4099 rows run against 257 columns (every row tile, no 16.8M-pair float64 reference);
    # the square 4099 batch is test_large_square_batch.
    cols = 257 if rows == 4099 else rows
    p, q, u, uc = make_case(rows, cols, dim, dim, dtype=dtype, device=device_of(device),
                            seed=rows * 31 + dim)
    p, q, u, uc = (with_layout(t, contiguous) for t in (p, q, u, uc))
    check_against_reference(device, dtype, p, q, u, f"[{rows}x{cols}x{dim} {dtype} {device}]",
                            u_cols=uc)


@pytest.mark.slow
@pytest.mark.parametrize("device,dtype", kernel_grid_params(dtypes_cpu=[torch.float32],
                                                            dtypes_cuda=[torch.float32]))
def test_large_square_batch(device, dtype):
    p, q, u, _ = make_case(4099, 4099, 3, 3, dtype=dtype, device=device, seed=4099)
    check_against_reference(device, dtype, p, q, u, "[4099x4099x3]")


@pytest.mark.parametrize("device,dtype", kernel_grid_params())
@pytest.mark.parametrize("rows,dim", [(1, 3), (7, 257), (129, 64), (1000, 3)])
def test_kernel_matches_reference_identity_labels(device, dtype, rows, dim):
    p, q, _, _ = make_case(rows, rows, dim, dim, dtype=dtype, device=device, seed=rows + dim,
                           with_u=False)
    check_against_reference(device, dtype, p, q, None, "u=None")


VARIANTS = [
    dict(threshold=0.75),
    dict(threshold=None),
    dict(threshold=-1.0),
    dict(threshold=0.9, c=0.5),
    dict(diagonal="hard"),
    dict(diagonal="hard", threshold=None),
    dict(gamma=1.0, delta=1.0),
    dict(gamma=2.5, delta=0.25, threshold=0.5),
    dict(normalizer=17.5),
    dict(diag_offset=3),
    dict(diag_offset=-5),
    dict(diag_offset=1000),
    dict(diag_offset=-1000),
]


@pytest.mark.parametrize("device", kernel_device_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("with_u", [True, False], ids=["u", "no_u"])
@pytest.mark.parametrize("kw", VARIANTS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_variants(device, dtype, with_u, kw):
    p, q, u, _ = make_case(61, 61, 19, 5, dtype=dtype, device=device, seed=7, with_u=with_u)
    check_against_reference(device, dtype, p, q, u, f"variant {kw}", **kw)


@pytest.mark.parametrize("device", kernel_device_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("b1,b2", [(129, 77), (7, 300), (1, 5)])
@pytest.mark.parametrize("diag_offset", [0, 3, -4, 1000, -1000])
@pytest.mark.parametrize("contiguous", [True, False], ids=["contig", "strided"])
def test_rectangular_blocks(device, dtype, b1, b2, diag_offset, contiguous):
    p, q, u, uc = make_case(b1, b2, 33, 6, dtype=dtype, device=device, seed=b1 + b2)
    p, q, u, uc = (with_layout(t, contiguous) for t in (p, q, u, uc))
    check_against_reference(device, dtype, p, q, u, f"rect {b1}x{b2} off={diag_offset}",
                            u_cols=uc, diag_offset=diag_offset, normalizer=float(b1 + 3))


def test_reference_matches_direct_formula():
    """The oracle itself against -(1/B) sum [w+ log sig(z) + w- log sig(-z)] in numpy."""
    p, q, u, _ = make_case(9, 9, 4, 3, dtype=torch.float64, device="cpu", seed=5)
    for diagonal in ("soft", "hard"):
        for thr in (None, 0.75):
            P, Q, U = p.numpy(), q.numpy(), u.numpy()
            z = SCALE * P @ Q.T + BIAS
            d2 = ((U[:, None, :] - U[None, :, :]) ** 2).sum(-1)
            s = 1 - 4 / math.pi * np.arctan(d2 / 0.3)
            if thr is not None:
                s = np.where(s >= thr, s, 0.0)
            np.fill_diagonal(s, 1.0)
            wp, wn = s.copy(), 1.75 - 0.75 * s
            if diagonal == "hard":
                np.fill_diagonal(wp, 1.0)
                np.fill_diagonal(wn, 0.0)
            logsig = lambda x: -np.logaddexp(0.0, -x)  # noqa: E731
            direct = -(wp * logsig(z) + wn * logsig(-z)).sum() / 9
            got = _reference.s2l_loss(p, q, SCALE, BIAS, u, threshold=thr, diagonal=diagonal)
            assert_close(got, torch.tensor(direct, dtype=torch.float64), dtype=torch.float64,
                         msg=f"reference {diagonal} thr={thr}")
            got = s2l_loss(p, q, SCALE, BIAS, u, threshold=thr, diagonal=diagonal,
                           backend="reference")
            assert_close(got, torch.tensor(direct, dtype=torch.float64), dtype=torch.float64, msg="public reference")


def test_hard_minus_soft_is_the_diagonal_term():
    p, q, u, _ = make_case(12, 12, 5, 3, dtype=torch.float64, device="cpu", seed=11)
    soft = _reference.s2l_loss(p, q, SCALE, BIAS, u)
    hard = _reference.s2l_loss(p, q, SCALE, BIAS, u, diagonal="hard")
    zd = SCALE * (p * q).sum(1) + BIAS
    # soft diagonal: w+ = 1, w- = gamma - delta; hard: w+ = 1, w- = 0
    diff = ((1.75 - 0.75) * torch.nn.functional.softplus(zd)).sum() / 12
    assert_close(soft - hard, diff, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# identities
# ---------------------------------------------------------------------------------------------

ALL_BACKENDS = [pytest.param("reference", id="reference")] + kernel_device_params()


def _direct_siglip(p, q, scale, bias, diag_offset=0, normalizer=None):
    P, Q = p.detach().cpu().double().numpy(), q.detach().cpu().double().numpy()
    z = scale * P @ Q.T + bias
    y = -np.ones_like(z)
    for i in range(z.shape[0]):
        j = i + diag_offset
        if 0 <= j < z.shape[1]:
            y[i, j] = 1.0
    norm = z.shape[0] if normalizer is None else normalizer
    return float(np.logaddexp(0.0, -y * z).sum() / norm)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("b1,b2,diag_offset,normalizer",
                         [(1, 1, 0, None), (37, 37, 0, None), (200, 200, 0, None),
                          (37, 50, 5, 64.0), (50, 37, -7, None)])
def test_siglip_identity(backend, dtype, b1, b2, diag_offset, normalizer):
    device = "cuda" if backend == "cuda" else "cpu"
    p, q, _, _ = make_case(b1, b2, 16, 1, dtype=dtype, device=device, seed=b1 * b2, with_u=False)
    kw = dict(diag_offset=diag_offset, normalizer=normalizer, backend=backend)
    s2l = s2l_loss(p, q, SCALE, BIAS, None, gamma=1.0, delta=1.0, **kw)
    sig = siglip_loss(p, q, SCALE, BIAS, **kw)
    direct = torch.tensor(_direct_siglip(p, q, SCALE, BIAS, diag_offset, normalizer),
                          dtype=torch.float64)
    assert_close(s2l, sig, dtype=dtype, msg="s2l(gamma=delta=1) vs siglip")
    assert_close(s2l, direct, dtype=dtype, msg="s2l vs direct")
    assert_close(sig, direct, dtype=dtype, msg="siglip vs direct")
    # threshold and c are irrelevant without u
    s2l_thr = s2l_loss(p, q, SCALE, BIAS, None, gamma=1.0, delta=1.0, threshold=None, c=2.0, **kw)
    assert_close(s2l_thr, s2l, dtype=dtype, msg="threshold/c without u")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("with_u", [True, False], ids=["u", "no_u"])
@pytest.mark.parametrize("diagonal", ["soft", "hard"])
@pytest.mark.parametrize("b,split_r,split_c", [(129, 50, 70), (64, 32, 32), (5, 1, 4)])
def test_block_sum_identity(backend, dtype, with_u, diagonal, b, split_r, split_c):
    """Split rows and columns in two blocks each: the four block losses (normalizer=B,
    diag_offset=row_start-col_start) sum to the whole loss, and so do the gradients."""
    device = "cuda" if backend == "cuda" else "cpu"
    p, q, u, _ = make_case(b, b, 24, 4, dtype=dtype, device=device, seed=b + split_r,
                           with_u=with_u)
    kw = dict(diagonal=diagonal, backend=backend)

    def go(pp, qq, uu, ucc, **extra):
        pp = pp.detach().clone().requires_grad_(True)
        qq = qq.detach().clone().requires_grad_(True)
        st = torch.tensor(SCALE, dtype=torch.float64, device=device, requires_grad=True)
        bt = torch.tensor(BIAS, dtype=torch.float64, device=device, requires_grad=True)
        loss = s2l_loss(pp, qq, st, bt, uu, u_cols=ucc, **kw, **extra)
        loss.backward()
        return loss.detach(), pp.grad, qq.grad, st.grad, bt.grad

    whole = go(p, q, u, None)
    rows = [slice(0, split_r), slice(split_r, b)]
    cols = [slice(0, split_c), slice(split_c, b)]
    total = torch.zeros((), dtype=torch.float64, device=device)
    dp = torch.zeros_like(p, dtype=torch.float64)
    dq = torch.zeros_like(q, dtype=torch.float64)
    ds = torch.zeros((), dtype=torch.float64, device=device)
    db = torch.zeros((), dtype=torch.float64, device=device)
    for rs in rows:
        for cs in cols:
            part = go(p[rs], q[cs], None if u is None else u[rs], None if u is None else u[cs],
                      diag_offset=rs.start - cs.start, normalizer=float(b))
            total += part[0].double()
            dp[rs] += part[1].double()
            dq[cs] += part[2].double()
            ds += part[3]
            db += part[4]
    assert_close(total, whole[0], dtype=dtype, msg="block losses sum")
    assert_close(dp, whole[1], dtype=dtype, kind="grad", msg="block dp")
    assert_close(dq, whole[2], dtype=dtype, kind="grad", msg="block dq")
    assert_close(ds, whole[3], dtype=dtype, kind="grad", msg="block dscale")
    assert_close(db, whole[4], dtype=dtype, kind="grad", msg="block dbias")


# ---------------------------------------------------------------------------------------------
# gradcheck / opcheck
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("case", ["u_no_threshold", "no_u", "rect_u_hard", "rect_no_u_offset"])
def test_gradcheck(backend, case):
    device = "cuda" if backend == "cuda" else "cpu"
    rect = case.startswith("rect")
    b1, b2 = (4, 6) if rect else (5, 5)
    p, q, u, uc = make_case(b1, b2, 3, 4, dtype=torch.float64, device=device, seed=3,
                            with_u="no_u" not in case)
    kw = dict(threshold=None, backend=backend)
    if rect:
        kw.update(diag_offset=1 if "offset" in case else 0, normalizer=4.5)
    if case == "rect_u_hard":
        kw.update(diagonal="hard", u_cols=uc)
    p = p.clone().requires_grad_(True)
    q = q.clone().requires_grad_(True)
    st = torch.tensor(2.5, dtype=torch.float64, device=device, requires_grad=True)
    bt = torch.tensor(-1.5, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, s, c: s2l_loss(a, b, s, c, u, **kw),
                                    (p, q, st, bt), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("device", kernel_device_params())
@pytest.mark.parametrize("with_u", [True, False], ids=["u", "no_u"])
def test_opcheck(device, with_u):
    p, q, u, _ = make_case(6, 6, 4, 3, dtype=torch.float64, device=device, seed=2, with_u=with_u)
    p.requires_grad_(True)
    q.requires_grad_(True)
    st = torch.tensor(3.0, dtype=torch.float64, device=device, requires_grad=True)
    bt = torch.tensor(-2.0, dtype=torch.float64, device=device, requires_grad=True)
    args = (p, q, st, bt, u, u, 0.3, True, 0.75, 1.75, 0.75, False, 0, 6.0, True, True, 1)
    torch.library.opcheck(torch.ops.molphenix.s2l_loss_fwd.default, args)
    args_nograd = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args[:14]) + (
        False, True, 1)
    torch.library.opcheck(torch.ops.molphenix.s2l_loss_fwd.default, args_nograd)


# ---------------------------------------------------------------------------------------------
# kernel properties
# ---------------------------------------------------------------------------------------------


@pytest.mark.requires_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("with_u", [True, False], ids=["u", "no_u"])
def test_thread_count_independent(dtype, with_u):
    p, q, u, _ = make_case(517, 517, 40, 7, dtype=dtype, device="cpu", seed=17, with_u=with_u)
    outs = []
    for nt in (1, 2, 3):
        pp, qq = p.clone().requires_grad_(True), q.clone().requires_grad_(True)
        st = torch.tensor(SCALE, dtype=torch.float64, requires_grad=True)
        bt = torch.tensor(BIAS, dtype=torch.float64, requires_grad=True)
        loss = s2l_loss(pp, qq, st, bt, u, backend="cpu", num_threads=nt)
        loss.backward()
        outs.append((loss.detach(), pp.grad, qq.grad, st.grad, bt.grad))
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            assert torch.equal(a, b), "results depend on num_threads"


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_loss_without_grad_equals_loss_with_grad(backend):
    device = "cuda" if backend == "cuda" else "cpu"
    p, q, u, _ = make_case(70, 70, 8, 3, dtype=torch.float64, device=device, seed=4)
    with torch.no_grad():
        a = s2l_loss(p, q, SCALE, BIAS, u, backend=backend)
    b = s2l_loss(p.clone().requires_grad_(True), q, SCALE, BIAS, u, backend=backend)
    assert_close(a, b.detach(), dtype=torch.float64)
    assert not a.requires_grad and b.requires_grad


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_scale_and_bias_as_python_floats_or_tensors(backend):
    device = "cuda" if backend == "cuda" else "cpu"
    p, q, u, _ = make_case(20, 20, 8, 3, dtype=torch.float32, device=device, seed=9)
    a = s2l_loss(p, q, SCALE, BIAS, u, backend=backend)
    b = s2l_loss(p, q, torch.tensor(SCALE, device=device), torch.tensor(BIAS, device=device), u,
                 backend=backend)
    c = s2l_loss(p, q, np.float64(SCALE), np.float64(BIAS), u, backend=backend)
    assert_close(a, b, dtype=torch.float32)
    assert_close(a, c, dtype=torch.float32)
    scale32 = torch.tensor(SCALE, dtype=torch.float32, device=device, requires_grad=True)
    s2l_loss(p, q, scale32, BIAS, u, backend=backend).backward()
    assert scale32.grad is not None and scale32.grad.dtype == torch.float32


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=pytest.mark.requires_extension)])
@pytest.mark.parametrize("with_u", [True, False], ids=["u", "no_u"])
def test_numpy_in_numpy_out(backend, with_u):
    p, q, u, _ = make_case(33, 33, 5, 4, dtype=torch.float64, device="cpu", seed=21, with_u=with_u)
    un = None if u is None else u.numpy()
    got = s2l_loss(p.numpy(), q.numpy(), SCALE, BIAS, un, backend=backend)
    assert isinstance(got, np.ndarray) and got.shape == () and got.dtype == np.float64
    exp = s2l_loss(p, q, SCALE, BIAS, u, backend=backend)
    assert_close(got, exp, dtype=torch.float64)
    got32 = siglip_loss(p.float().numpy(), q.float().numpy(), SCALE, BIAS, backend=backend)
    assert isinstance(got32, np.ndarray) and got32.dtype == np.float32


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_loss_is_finite_for_extreme_logits(backend):
    device = "cuda" if backend == "cuda" else "cpu"
    p, q, u, _ = make_case(40, 40, 6, 3, dtype=torch.float32, device=device, seed=13)
    for scale, bias in ((100.0, -50.0), (100.0, 60.0), (1e-3, 0.0)):
        pp = p.clone().requires_grad_(True)
        loss = s2l_loss(pp, q, scale, bias, u, backend=backend)
        loss.backward()
        assert bool(torch.isfinite(loss)) and bool(torch.isfinite(pp.grad).all())
        exp = reference64(p, q, scale, bias, u)
        assert_close(loss.detach(), exp[0], dtype=torch.float32, msg=f"scale={scale} bias={bias}")
        assert_close(pp.grad, exp[1], dtype=torch.float32, kind="grad", msg=f"dp scale={scale}")


def test_noncontiguous_helper_really_is_noncontiguous():
    t = torch.arange(12.0).reshape(3, 4)
    nc = make_noncontiguous(t)
    assert not nc.is_contiguous() and torch.equal(nc, t)
