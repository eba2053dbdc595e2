"""Contracts that must not break silently (issue 8): double backward, constant u, top-k scores
without grad, float32 fractions, binding-level validation, working-memory bounds, settings."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from _utils import assert_close, kernel_device_params
from molphenix.ops import (
    arctan_l2_similarity,
    k_for_fraction,
    recall_at_fraction,
    s2l_loss,
    siglip_loss,
    topk_retrieve,
)

ALL = ["reference"] + kernel_device_params()


def _dev(backend):
    return "cuda" if backend == "cuda" else "cpu"


def _case(device, b=6, d=4, e=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(b, d, generator=g, dtype=torch.float64).to(device)
    q = torch.randn(b, d, generator=g, dtype=torch.float64).to(device)
    u = (0.2 * torch.randn(b, e, generator=g, dtype=torch.float64)).to(device)
    return p, q, u


# ---------------------------------------------------------------------------------------------
# 1. second-order gradients: the reference computes them, the compiled ops raise
# ---------------------------------------------------------------------------------------------

COMPILED = kernel_device_params()


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("op", ["s2l_loss", "siglip_loss"])
def test_double_backward_raises_on_compiled_losses(backend, op):
    p, q, u = _case(_dev(backend))
    p.requires_grad_(True)
    fn = (lambda x: s2l_loss(x, q, 2.0, -1.0, u, backend=backend)) if op == "s2l_loss" else (
        lambda x: siglip_loss(x, q, 2.0, -1.0, backend=backend))
    (g,) = torch.autograd.grad(fn(p), p, create_graph=True)
    with pytest.raises(ValueError, match=rf"{op}: second-order gradients .*backend='reference'") as ei:
        torch.autograd.grad(g.sum(), p)
    assert not isinstance(ei.value, RuntimeError)
    assert "torch" not in str(ei.value) and "once_differentiable" not in str(ei.value)
    # the Hessian helper must not return zeros either
    with pytest.raises(ValueError, match=op):
        torch.autograd.functional.hessian(fn, p.detach())


@pytest.mark.parametrize("backend", COMPILED)
def test_double_backward_raises_on_compiled_similarity(backend):
    p, q, _ = _case(_dev(backend))
    p.requires_grad_(True)
    (g,) = torch.autograd.grad(arctan_l2_similarity(p, q, backend=backend).sum(), p,
                               create_graph=True)
    with pytest.raises(ValueError, match=r"arctan_l2_similarity: second-order gradients") as ei:
        torch.autograd.grad(g.sum(), p)
    assert "torch" not in str(ei.value)


@pytest.mark.parametrize("backend", COMPILED)
def test_first_order_under_create_graph_and_retain_graph(backend):
    """create_graph=True alone is fine (same first-order result); a retained graph can be
    backpropagated twice with identical gradients (the fused op recomputes)."""
    p, q, u = _case(_dev(backend))
    p.requires_grad_(True)
    st = torch.tensor(2.0, dtype=torch.float64, device=p.device, requires_grad=True)
    loss = s2l_loss(p, q, st, -1.0, u, backend=backend)
    g1, s1 = torch.autograd.grad(loss, (p, st), retain_graph=True)
    g2, s2 = torch.autograd.grad(loss, (p, st), create_graph=True)
    assert torch.equal(g1, g2.detach()) and torch.equal(s1, s2.detach())
    loss = s2l_loss(p, q, st, -1.0, u, backend=backend)
    loss.backward(retain_graph=True)
    first = p.grad.clone()
    p.grad = None
    (2 * loss).backward()
    assert torch.equal(p.grad, 2 * first)


def test_reference_second_order_is_nonzero():
    p, q, u = _case("cpu")
    p.requires_grad_(True)
    (g,) = torch.autograd.grad(s2l_loss(p, q, 2.0, -1.0, u, backend="reference"), p,
                               create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), p)
    assert float(h.abs().sum()) > 0


# ---------------------------------------------------------------------------------------------
# 2. u is a constant on every backend
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("rect", [False, True], ids=["square", "u_cols"])
def test_u_requiring_grad_is_a_constant(backend, rect):
    p, q, u = _case(_dev(backend), b=7)
    p.requires_grad_(True)
    kw = {}
    if rect:
        uc = u.flip(0).clone().requires_grad_(True)
        kw["u_cols"] = uc
    ug = u.clone().requires_grad_(True)
    loss = s2l_loss(p, q, 2.0, -1.0, ug, backend=backend, **kw)
    ref = s2l_loss(p, q, 2.0, -1.0, u, backend=backend,
                   **({"u_cols": kw["u_cols"].detach()} if rect else {}))
    assert_close(loss.detach(), ref.detach(), dtype=torch.float64)
    loss.backward()
    assert ug.grad is None
    if rect:
        assert kw["u_cols"].grad is None
    assert p.grad is not None


def test_reference_twin_detaches_u():
    from molphenix.ops import _reference

    p, q, u = _case("cpu")
    u.requires_grad_(True)
    loss = _reference.s2l_loss(p.requires_grad_(True), q, 2.0, -1.0, u)
    loss.backward()
    assert u.grad is None


# ---------------------------------------------------------------------------------------------
# 3. top-k scores never require grad
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("metric", ["cosine", "dot", "arctan_l2"])
def test_topk_scores_never_require_grad(backend, metric):
    p, q, _ = _case(_dev(backend))
    scores, idx = topk_retrieve(p.requires_grad_(True), q.requires_grad_(True), 3, metric=metric,
                                backend=backend)
    assert not scores.requires_grad and not idx.requires_grad


def test_reference_topk_scores_never_require_grad():
    from molphenix.ops import _reference

    p, q, _ = _case("cpu")
    scores, _ = _reference.topk_retrieve(p.requires_grad_(True), q, 2)
    assert not scores.requires_grad


# ---------------------------------------------------------------------------------------------
# 4. float32 fractions
# ---------------------------------------------------------------------------------------------

F32_FRACTIONS = [np.float32(0.07), torch.tensor(0.07), torch.tensor(0.07, dtype=torch.float32),
                 np.array(0.07, dtype=np.float32), np.float16(0.07)]


@pytest.mark.parametrize("fraction", F32_FRACTIONS, ids=lambda f: f"{type(f).__name__}")
def test_float32_fraction_reads_as_its_shortest_decimal(fraction):
    assert k_for_fraction(fraction, 100) == 7
    out = recall_at_fraction(np.arange(100), 100, (fraction,))
    assert list(out) == [0.07] and type(next(iter(out))) is float
    assert out[0.07] == 0.07


def test_float32_fraction_in_topk_and_as_scalar():
    q = torch.randn(2, 3)
    c = torch.randn(100, 3)
    s, i = topk_retrieve(q, c, fraction=np.float32(0.07), backend="reference")
    assert s.shape == (2, 7)
    assert list(recall_at_fraction(np.arange(100), 100, np.float32(0.05))) == [0.05]
    assert list(recall_at_fraction(np.arange(100), 100,
                                   np.array([0.01, 0.07], dtype=np.float32))) == [0.01, 0.07]


@pytest.mark.parametrize("value,n,k", [(0.01, 100, 1), (0.05, 1000, 50), (0.29, 100, 29),
                                       (0.57, 100, 57), (1.0, 3, 3), (1e-7, 10, 1)])
def test_float32_fractions_match_python_floats(value, n, k):
    assert k_for_fraction(value, n) == k
    assert k_for_fraction(np.float32(value), n) == k
    assert k_for_fraction(torch.tensor(value, dtype=torch.float32), n) == k


# ---------------------------------------------------------------------------------------------
# 6. working memory
# ---------------------------------------------------------------------------------------------

_S2L_MEMORY_SCRIPT = textwrap.dedent("""
    import ctypes, gc, resource, sys
    import psutil, torch
    torch.set_num_threads(2)
    from molphenix import ops
    B, D, E = 16384, 256, 384
    g = torch.Generator().manual_seed(0)
    p = torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=1).requires_grad_()
    q = torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=1).requires_grad_()
    u = torch.randn(B, E, generator=g) * 0.05
    ops.s2l_loss(p[:64], q[:64], 10.0, -10.0, u[:64], backend="cpu").backward()  # warm up
    p.grad = q.grad = None
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed memory goes back: RSS growth = new pages
    def status_kb(key):
        with open("/proc/self/status") as fh:
            return next(int(l.split()[1]) for l in fh if l.startswith(key + ":"))
    # The high-water mark of THIS process from here on: ru_maxrss would also hold the parent's
    # RSS (it survives fork + exec), so a large pytest parent inflated it. Writing 5 to
    # clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    base = status_kb("VmRSS") * 1024
    loss = ops.s2l_loss(p, q, 10.0, -10.0, u, backend="cpu")
    loss.backward()
    peak = status_kb("VmHWM") * 1024
    assert p.grad is not None and q.grad is not None
    print(peak - base)
""")


@pytest.mark.requires_extension
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS via getrusage + glibc")
def test_s2l_working_memory_at_b16384():
    """s2l_loss at B = 16384 (D = 256, E = 384), loss and backward on the CPU kernel: the peak
    resident memory above the inputs stays within the gradients (2 B D float32 = 32 MiB) plus
    64 MB. Measured in a fresh process (VmHWM after a reset, minus RSS after malloc_trim):
    conservative, since the peak can only be overstated."""
    pytest.importorskip("psutil")
    out = subprocess.run([sys.executable, "-c", _S2L_MEMORY_SCRIPT], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert out.returncode == 0, out.stderr
    delta = int(out.stdout.strip().splitlines()[-1])
    grads = 2 * 16384 * 256 * 4
    assert delta - grads <= 64 * 10**6, f"working memory {(delta - grads) / 1e6:.1f} MB > 64 MB"


def _ext():
    from molphenix import _ext as e

    mod = e.load()
    if mod is None:
        pytest.skip("compiled extension not importable")
    return mod


@pytest.mark.requires_extension
def test_s2l_cpu_workspace_is_bounded_by_rows_not_tiles():
    """The CPU S2L keeps 3 doubles per row sweep (unit), not per tile: its counted workspace is
    the documented bound (u norms + per-thread tile buffers + 24 bytes per unit)."""
    ext = _ext()
    b, d, e, nt = 12288, 8, 4, 2
    g = torch.Generator().manual_seed(1)
    p = torch.randn(b, d, generator=g)
    q = torch.randn(b, d, generator=g)
    u = torch.randn(b, e, generator=g)
    for tile in (64, 256):
        import molphenix

        old = molphenix.set_options(s2l_tile=tile)
        try:
            ext.cpu_workspace_reset_peak()
            base = ext.cpu_workspace_stats()[0]
            with torch.no_grad():
                s2l_loss(p, q, 10.0, -10.0, u, backend="cpu", num_threads=nt)
            peak = ext.cpu_workspace_stats()[1] - base
        finally:
            molphenix.set_options(**old)
        units = -(-b // tile) * 16
        bound = 4 * 2 * b + 2 * tile * tile * 4 * nt + 24 * units + 4096
        tiles_bytes = 24 * (-(-b // tile)) ** 2  # what per-tile sums alone would need
        assert 0 < peak <= bound, (tile, peak, bound)
        if tile == 64:
            assert peak < tiles_bytes, (peak, tiles_bytes)


@pytest.mark.requires_extension
@pytest.mark.parametrize("metric", ["dot", "arctan_l2"])
def test_topk_few_queries_workspace_is_linear_in_threads(metric):
    """One query, candidates split across threads: the merge keeps one 2k buffer per thread, so
    the workspace grows linearly with the thread count (it grew as threads^2 x k)."""
    ext = _ext()
    n, d, k = 40000, 8, 8000
    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, d, generator=g)
    c = torch.randn(n, d, generator=g)
    peaks, results = {}, {}
    for nt in (1, 2, 8):  # 1 thread: the many-queries path, the exact same scores
        ext.cpu_workspace_reset_peak()
        base = ext.cpu_workspace_stats()[0]
        results[nt] = topk_retrieve(q, c, k, metric=metric, backend="cpu", num_threads=nt)
        peaks[nt] = ext.cpu_workspace_stats()[1] - base
    packed = n * d * 4 + n * 4 + 4096  # packed candidates and their norms, padded
    for nt in (2, 8):
        bound = packed + nt * (2 * 1 + 5) * k * 16 + 96 * 64 * 32 * 8 + 65536
        assert peaks[nt] <= bound, (nt, peaks[nt], bound)
    for nt in (2, 8):
        assert torch.equal(results[1][1], results[nt][1])
        assert torch.equal(results[1][0], results[nt][0])


# ---------------------------------------------------------------------------------------------
# 5. the binding validates what its kernels index (molphenix._C called directly)
# ---------------------------------------------------------------------------------------------


@pytest.mark.requires_extension
@pytest.mark.parametrize("bad", [5, 1000, -2, -(2**40), 2**40])
def test_binding_range_checks_targets(bad):
    ext = _ext()
    q = torch.randn(3, 4)
    c = torch.randn(5, 4)
    t = torch.tensor([0, bad, 1], dtype=torch.int64)
    s = torch.zeros(3, dtype=torch.float64)
    r = torch.empty(3, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"targets: entry 1 is"):
        ext.retrieval_ranks(q, c, t, s, r, None, metric=0, num_threads=1, stream=0)


@pytest.mark.requires_extension
def test_binding_accepts_valid_targets_and_clamps_diag_offset():
    ext = _ext()
    q = torch.randn(3, 4)
    c = torch.randn(5, 4)
    t = torch.tensor([0, -1, 4], dtype=torch.int64)
    s = torch.zeros(3, dtype=torch.float64)
    r = torch.empty(3, dtype=torch.int64)
    ext.retrieval_ranks(q, c, t, s, r, None, metric=0, num_threads=1, stream=0)
    p, qq, _ = _case("cpu", b=5)
    for off in (2**62, -(2**62), 2**63 - 1):
        far = s2l_loss(p, qq, 2.0, -1.0, diag_offset=off, backend="cpu")
        edge = s2l_loss(p, qq, 2.0, -1.0, diag_offset=5 if off > 0 else -5, backend="cpu")
        assert torch.equal(far, edge)
        assert torch.equal(far, s2l_loss(p, qq, 2.0, -1.0, diag_offset=off, backend="reference")) or \
            abs(float(far) - float(edge)) == 0.0


@pytest.mark.requires_extension
def test_binding_rejects_zero_width_retrieval():
    ext = _ext()
    q = torch.empty(2, 0)
    c = torch.empty(3, 0)
    with pytest.raises(ValueError, match="width"):
        ext.topk_retrieve(q, c, 1, torch.empty(2, 1), torch.empty(2, 1, dtype=torch.int64), None,
                          metric=0, num_threads=1, stream=0)
    with pytest.raises(ValueError, match="width"):
        ext.retrieval_ranks(q, c, torch.zeros(2, dtype=torch.int64),
                            torch.zeros(2, dtype=torch.float64),
                            torch.empty(2, dtype=torch.int64), None, metric=0, num_threads=1,
                            stream=0)


# ---------------------------------------------------------------------------------------------
# 8. run-time settings: Python-level, passed down through the binding; no getenv in C++
# ---------------------------------------------------------------------------------------------


def test_set_options_validates_and_restores():
    import molphenix

    before = molphenix.options()
    assert set(before) == {"simd", "s2l_tile", "cuda_mainloop", "s2l_blocks_per_sm", "s2l_u_simt",
                           "topk_prefilter"}
    for kw in ({"simd": "sse"}, {"s2l_tile": 100}, {"cuda_mainloop": "x"},
               {"s2l_blocks_per_sm": 3}, {"topk_prefilter": "maybe"}, {"nope": 1}):
        with pytest.raises(ValueError):
            molphenix.set_options(**kw)
    with pytest.raises(TypeError):
        molphenix.set_options(s2l_u_simt="1")
    assert molphenix.options() == before
    old = molphenix.set_options(s2l_tile=128, topk_prefilter="off")
    try:
        assert molphenix.options()["s2l_tile"] == 128
    finally:
        molphenix.set_options(**old)
    assert molphenix.options() == before


@pytest.mark.requires_extension
def test_options_reach_the_kernels():
    import molphenix

    ext = _ext()
    old = molphenix.set_options(simd="scalar", s2l_tile=64)
    try:
        assert ext.get_options()["simd"] == 0 and ext.get_options()["s2l_tile"] == 64
        assert molphenix.build_info()["simd_level"] == "scalar"
    finally:
        molphenix.set_options(**old)
    assert molphenix.build_info()["simd_level"] == molphenix.build_info()["simd_best"] or \
        molphenix.options()["simd"] != "auto"


@pytest.mark.requires_extension
def test_s2l_tile_setting_keeps_thread_independence():
    import molphenix

    p, q, u = _case("cpu", b=300, d=16, e=5)
    p, q, u = p.float(), q.float(), u.float()
    old = molphenix.set_options(s2l_tile=64)
    try:
        a = s2l_loss(p, q, 10.0, -10.0, u, backend="cpu", num_threads=1)
        b = s2l_loss(p, q, 10.0, -10.0, u, backend="cpu", num_threads=3)
    finally:
        molphenix.set_options(**old)
    assert torch.equal(a, b)


def test_environment_gives_initial_values():
    code = ("import molphenix, json; o = molphenix.options(); "
            "print(json.dumps([o['simd'], o['s2l_tile'], o['s2l_u_simt'], o['topk_prefilter'], "
            "molphenix.build_info().get('simd_level')]))")
    env = {**os.environ, "MOLPHENIX_SIMD": "scalar", "MOLPHENIX_S2L_TILE": "128",
           "MOLPHENIX_S2L_U_SIMT": "1", "MOLPHENIX_TOPK_PREFILTER": "fallback"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    import json

    simd, tile, simt, pre, level = json.loads(out.stdout.strip().splitlines()[-1])
    assert (simd, tile, simt, pre) == ("scalar", 128, True, "fallback")
    assert level in ("scalar", None)  # None: no extension


def test_cpp_core_reads_no_environment():
    root = os.path.join(os.path.dirname(__file__), "..", "..", "csrc")
    if not os.path.isdir(root):
        pytest.skip("no source checkout")
    hits = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.endswith((".cpp", ".h", ".cu", ".cuh")):
                path = os.path.join(dirpath, f)
                with open(path, encoding="utf-8") as fh:
                    for no, line in enumerate(fh, 1):
                        if "getenv(" in line and not line.lstrip().startswith("//"):
                            hits.append(f"{os.path.relpath(path, root)}:{no}")
    assert not hits, f"the C++ core reads the environment at: {hits}"
