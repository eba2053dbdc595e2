"""molphenix.ops.arctan_l2_similarity: kernel vs reference, gradients, gradcheck, opcheck."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from _utils import (
    assert_close,
    kernel_device_params,
    kernel_grid_params,
    quantized_clusters,
    randn,
    with_layout,
)
from molphenix.ops import _reference, arctan_l2_similarity

# (N, M, E): rows 1/7/129/1000/4099 (4099 only against few columns), widths 1/3/64/257
SHAPES = [(1, 1, 1), (1, 7, 3), (7, 7, 1), (7, 129, 3), (129, 7, 64), (7, 7, 257),
          (129, 129, 257), (1000, 129, 64), (1000, 1000, 3), (4099, 7, 3), (7, 4099, 1),
          (0, 5, 3), (5, 0, 3)]
ALL_BACKENDS = [pytest.param("reference", id="reference")] + kernel_device_params()
GRID = kernel_grid_params() + [pytest.param("reference", torch.float32, id="reference-float32")]


def device_of(backend):
    return "cuda" if backend == "cuda" else "cpu"


def make_ab(n, m, e, *, dtype, device, seed, kind):
    """'random': unit-ish gaussian rows (d2 ~ 2, continuous); 'clusters': exact d2 = k/64 around
    the threshold window (safe for thresholds: no pair near the boundary)."""
    if kind == "random":
        a = randn((n, e), seed=seed, dtype=dtype, device=device) / math.sqrt(max(e, 1))
        b = randn((m, e), seed=seed + 1, dtype=dtype, device=device) / math.sqrt(max(e, 1))
        if n and m:  # a few near neighbours so the arctan window is exercised
            k = min(n, m, 3)
            b[:k] = a[:k] + 0.05 * randn((k, e), seed=seed + 2, dtype=dtype, device=device)
        return a, b
    both = quantized_clusters(n + m, e, seed=seed, dtype=dtype, device=device)
    return both[:n].contiguous(), both[n:].contiguous()


def ref64(a, b, **kw):
    a64 = a.detach().cpu().double().requires_grad_(True)
    b64 = b.detach().cpu().double().requires_grad_(True)
    s = _reference.arctan_l2_similarity(a64, b64, **kw)
    return s, a64, b64


@pytest.mark.parametrize("device,dtype", GRID)
@pytest.mark.parametrize("n,m,e", SHAPES)
@pytest.mark.parametrize("contiguous,threshold", [(True, None), (False, 0.75), (False, None)],
                         ids=["contig-thr_none", "strided-thr_0.75", "strided-thr_none"])
def test_kernel_matches_reference(device, dtype, n, m, e, contiguous, threshold):
    dev = device_of(device)
    kind = "random" if threshold is None else "clusters"
    a, b = make_ab(n, m, e, dtype=dtype, device=dev, seed=n * 7 + m + e, kind=kind)
    a, b = with_layout(a, contiguous), with_layout(b, contiguous)
    at, bt = a.detach().requires_grad_(True), b.detach().requires_grad_(True)
    out = arctan_l2_similarity(at, bt, threshold=threshold, backend=device)
    assert out.shape == (n, m) and out.dtype == dtype and out.device.type == dev
    s, a64, b64 = ref64(a, b, threshold=threshold)
    assert_close(out, s, dtype=dtype, msg="similarity")
    if n and m:
        assert float(out.detach().max()) <= 1.0 and float(out.detach().min()) > -1.0
    w = randn((n, m), seed=3, dtype=torch.float64)  # a generic upstream gradient
    (out.double() * w.to(dev)).sum().backward()
    (s * w).sum().backward()
    assert_close(at.grad, a64.grad, dtype=dtype, kind="grad", msg="grad a")
    assert_close(bt.grad, b64.grad, dtype=dtype, kind="grad", msg="grad b")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("c", [0.3, 0.05, 2.0])
@pytest.mark.parametrize("threshold", [None, -1.0, 0.0, 0.5, 0.75, 1.0])
def test_c_and_threshold(backend, c, threshold):
    a, b = make_ab(40, 30, 5, dtype=torch.float64, device=device_of(backend), seed=1,
                   kind="clusters")
    out = arctan_l2_similarity(a, b, c=c, threshold=threshold, backend=backend)
    # independent direct formula
    A, B = a.cpu().numpy(), b.cpu().numpy()
    d2 = ((A[:, None, :] - B[None, :, :]) ** 2).sum(-1)
    s = 1.0 - 4.0 / math.pi * np.arctan(d2 / c)
    if threshold is not None:
        s = np.where(s >= threshold, s, 0.0)
    assert_close(out, torch.from_numpy(s), dtype=torch.float64)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_self_similarity_is_one_and_symmetric(backend):
    a = randn((50, 9), seed=4, device=device_of(backend))
    s = arctan_l2_similarity(a, a, backend=backend)
    assert_close(torch.diagonal(s), torch.ones(50, dtype=torch.float64), dtype=torch.float64)
    assert_close(s, s.T, dtype=torch.float64)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("shape", [(3, 4, 2), (5, 5, 3), (1, 6, 4)])
def test_gradcheck(backend, shape):
    n, m, e = shape
    dev = device_of(backend)
    a = (randn((n, e), seed=n + m, device=dev) * 0.3).requires_grad_(True)
    b = (randn((m, e), seed=n + m + 1, device=dev) * 0.3).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x, y: arctan_l2_similarity(x, y, threshold=None, backend=backend), (a, b),
        eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("device", kernel_device_params())
@pytest.mark.parametrize("threshold", [None, 0.75])
def test_opcheck(device, threshold):
    a = (randn((5, 3), seed=1, device=device) * 0.2).requires_grad_(True)
    b = (randn((4, 3), seed=2, device=device) * 0.2).requires_grad_(True)
    has, thr = threshold is not None, 0.0 if threshold is None else threshold
    torch.library.opcheck(torch.ops.molphenix.arctan_l2_similarity.default,
                          (a, b, 0.3, has, thr, 1))
    g = randn((5, 4), seed=3, device=device)
    torch.library.opcheck(torch.ops.molphenix.arctan_l2_similarity_backward.default,
                          (g, a.detach(), b.detach(), 0.3, has, thr, 1))


@pytest.mark.requires_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_thread_count_independent(dtype):
    a, b = make_ab(300, 257, 33, dtype=dtype, device="cpu", seed=5, kind="random")
    outs = []
    for nt in (1, 2):
        at, bt = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
        s = arctan_l2_similarity(at, bt, backend="cpu", num_threads=nt)
        s.sum().backward()
        outs.append((s.detach(), at.grad, bt.grad))
    for x, y in zip(*outs):
        assert torch.equal(x, y)


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=pytest.mark.requires_extension)])
@pytest.mark.parametrize("np_dtype", [np.float32, np.float64])
def test_numpy_in_numpy_out(backend, np_dtype):
    a, b = make_ab(11, 13, 4, dtype=torch.float64, device="cpu", seed=2, kind="random")
    out = arctan_l2_similarity(a.numpy().astype(np_dtype), b.numpy().astype(np_dtype),
                               backend=backend)
    assert isinstance(out, np.ndarray) and out.shape == (11, 13) and out.dtype == np_dtype
    dt = torch.float32 if np_dtype == np.float32 else torch.float64
    assert_close(out, ref64(a.to(dt), b.to(dt))[0], dtype=dt)


@pytest.mark.parametrize("device", kernel_device_params())
def test_empty_sides_keep_autograd(device):
    a = randn((0, 3), seed=1, device=device).requires_grad_(True)
    b = randn((4, 3), seed=2, device=device).requires_grad_(True)
    out = arctan_l2_similarity(a, b, backend=device)
    assert out.shape == (0, 4)
    out.sum().backward()
    assert b.grad is not None and bool((b.grad == 0).all())
