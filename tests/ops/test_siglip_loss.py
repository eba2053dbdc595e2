"""molphenix.ops.siglip_loss: fused kernel vs reference and vs an independent direct formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _utils import assert_close, kernel_device_params, kernel_grid_params, unit_rows, with_layout
from molphenix.ops import _reference, s2l_loss, siglip_loss

SCALE, BIAS = 10.0, -10.0
SHAPES = [(1, 1, 3), (7, 7, 1), (7, 7, 257), (129, 129, 64), (129, 60, 3), (60, 129, 3),
          (1000, 1000, 3), (4099, 129, 3)]
ALL_BACKENDS = [pytest.param("reference", id="reference")] + kernel_device_params()


def device_of(backend):
    return "cuda" if backend == "cuda" else "cpu"


def direct_siglip(p, q, scale, bias, diag_offset=0, normalizer=None):
    """-(1/normalizer) sum_ij log sigmoid(y_ij z_ij), y = +1 at j = i + diag_offset, in numpy."""
    P, Q = p.detach().cpu().double().numpy(), q.detach().cpu().double().numpy()
    z = scale * P @ Q.T + bias
    y = -np.ones_like(z)
    rows = np.arange(z.shape[0])
    cols = rows + diag_offset
    ok = (cols >= 0) & (cols < z.shape[1])
    y[rows[ok], cols[ok]] = 1.0
    norm = z.shape[0] if normalizer is None else normalizer
    return torch.tensor(np.logaddexp(0.0, -y * z).sum() / norm, dtype=torch.float64)


def grads64(p, q, scale, bias, **kw):
    p64 = p.detach().cpu().double().requires_grad_(True)
    q64 = q.detach().cpu().double().requires_grad_(True)
    s = torch.tensor(scale, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(bias, dtype=torch.float64, requires_grad=True)
    loss = _reference.siglip_loss(p64, q64, s, b, **kw)
    loss.backward()
    return loss.detach(), p64.grad, q64.grad, s.grad, b.grad


@pytest.mark.parametrize("device,dtype", kernel_grid_params())
@pytest.mark.parametrize("b1,b2,d", SHAPES)
@pytest.mark.parametrize("contiguous", [True, False], ids=["contig", "strided"])
def test_kernel_matches_reference(device, dtype, b1, b2, d, contiguous):
    p = with_layout(unit_rows(b1, d, seed=b1 + d, dtype=dtype, device=device), contiguous)
    q = with_layout(unit_rows(b2, d, seed=b2 + d + 1, dtype=dtype, device=device), contiguous)
    off = 0 if b1 == b2 else 3
    pp, qq = p.detach().requires_grad_(True), q.detach().requires_grad_(True)
    st = torch.tensor(SCALE, dtype=torch.float64, device=device, requires_grad=True)
    bt = torch.tensor(BIAS, dtype=torch.float64, device=device, requires_grad=True)
    loss = siglip_loss(pp, qq, st, bt, diag_offset=off, backend=device)
    loss.backward()
    exp = grads64(p, q, SCALE, BIAS, diag_offset=off)
    assert loss.dtype == dtype
    assert_close(loss.detach(), exp[0], dtype=dtype, msg="loss")
    assert_close(loss.detach(), direct_siglip(p, q, SCALE, BIAS, off), dtype=dtype, msg="direct")
    for name, a, e in zip(("dp", "dq", "dscale", "dbias"), (pp.grad, qq.grad, st.grad, bt.grad),
                          exp[1:]):
        assert_close(a, e, dtype=dtype, kind="grad", msg=name)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("diag_offset", [0, 1, -1, 10, -10, 500])
@pytest.mark.parametrize("normalizer", [None, 3.0, 1000.0])
def test_offsets_and_normalizer(backend, diag_offset, normalizer):
    device = device_of(backend)
    p = unit_rows(13, 8, seed=1, device=device)
    q = unit_rows(21, 8, seed=2, device=device)
    got = siglip_loss(p, q, SCALE, BIAS, diag_offset=diag_offset, normalizer=normalizer,
                      backend=backend)
    assert_close(got, direct_siglip(p, q, SCALE, BIAS, diag_offset, normalizer),
                 dtype=torch.float64)
    same = s2l_loss(p, q, SCALE, BIAS, gamma=1.0, delta=1.0, diag_offset=diag_offset,
                    normalizer=normalizer, backend=backend)
    assert_close(got, same, dtype=torch.float64, msg="siglip == s2l(u=None, gamma=delta=1)")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_gradcheck(backend):
    device = device_of(backend)
    p = unit_rows(4, 3, seed=5, device=device).requires_grad_(True)
    q = unit_rows(6, 3, seed=6, device=device).requires_grad_(True)
    s = torch.tensor(2.0, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.tensor(-1.0, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, bb, ss, cc: siglip_loss(a, bb, ss, cc, diag_offset=1, backend=backend),
        (p, q, s, b), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=pytest.mark.requires_extension)])
def test_numpy_in_numpy_out(backend):
    p, q = unit_rows(9, 4, seed=1), unit_rows(9, 4, seed=2)
    got = siglip_loss(p.numpy(), q.numpy(), SCALE, BIAS, backend=backend)
    assert isinstance(got, np.ndarray) and got.shape == () and got.dtype == np.float64
    assert_close(got, direct_siglip(p, q, SCALE, BIAS), dtype=torch.float64)


@pytest.mark.requires_extension
def test_thread_count_independent():
    p, q = unit_rows(700, 33, seed=1, dtype=torch.float32), unit_rows(700, 33, seed=2, dtype=torch.float32)
    a = siglip_loss(p, q, SCALE, BIAS, backend="cpu", num_threads=1)
    b = siglip_loss(p, q, SCALE, BIAS, backend="cpu", num_threads=2)
    assert torch.equal(a, b)
