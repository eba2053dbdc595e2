"""Backend selection: explicit / auto / env override, the one-time fallback warning, running
without the extension, and build_info."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

import molphenix
from molphenix import _ext
from molphenix.ops import (
    _common,
    arctan_l2_similarity,
    recall_at_fraction,
    retrieval_ranks,
    s2l_loss,
    siglip_loss,
    topk_retrieve,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _data(dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(0)
    p = torch.nn.functional.normalize(torch.randn(6, 4, generator=g, dtype=torch.float64), dim=1)
    q = torch.nn.functional.normalize(torch.randn(6, 4, generator=g, dtype=torch.float64), dim=1)
    return p.to(device, dtype), q.to(device, dtype)


def _calls(p, q, backend):
    """One call per op (name, thunk)."""
    t = torch.arange(p.shape[0], device=p.device)
    return [
        ("s2l_loss", lambda: s2l_loss(p, q, 10.0, -10.0, p, backend=backend)),
        ("siglip_loss", lambda: siglip_loss(p, q, 10.0, -10.0, backend=backend)),
        ("arctan_l2_similarity", lambda: arctan_l2_similarity(p, q, backend=backend)),
        ("retrieval_ranks", lambda: retrieval_ranks(p, q, t, backend=backend)),
        ("topk_retrieve", lambda: topk_retrieve(p, q, 2, backend=backend)),
    ]


OPS = [name for name, _ in _calls(*_data(), "auto")]


@pytest.fixture
def no_extension(monkeypatch):
    """Simulate a machine where molphenix._C cannot be imported."""
    monkeypatch.setattr(_ext, "load", lambda: None)
    monkeypatch.setattr(_ext, "_import_error", "ImportError: simulated missing extension")
    monkeypatch.delenv("MOLPHENIX_BACKEND", raising=False)
    _common._warned.clear()
    yield
    _common._warned.clear()


@pytest.mark.parametrize("op", OPS)
def test_explicit_cpu_without_extension_raises_and_says_why(no_extension, op):
    p, q = _data()
    fn = dict(_calls(p, q, "cpu"))[op]
    with pytest.raises(ValueError) as info:
        fn()
    msg = str(info.value)
    assert "backend='cpu'" in msg and "simulated missing extension" in msg and op in msg


@pytest.mark.parametrize("op", OPS)
def test_auto_without_extension_falls_back_with_one_warning(no_extension, op):
    p, q = _data()
    fn = dict(_calls(p, q, "auto"))[op]
    ref = dict(_calls(p, q, "reference"))[op]
    with pytest.warns(RuntimeWarning, match="reference") as rec:
        got = fn()
    assert len([w for w in rec if issubclass(w.category, RuntimeWarning)]) == 1
    assert op in str(rec[0].message) and "simulated missing extension" in str(rec[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call is silent
        again = fn()
    exp = ref()
    if isinstance(got, tuple):
        for a, b in zip(got, exp):
            assert torch.equal(a, b)
        assert torch.equal(again[1], exp[1])
    else:
        assert torch.equal(got, exp) and torch.equal(again, exp)


def test_reference_backend_never_warns(no_extension):
    p, q = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _, fn in _calls(p, q, "reference"):
            fn()


@pytest.mark.parametrize("op", OPS)
def test_env_overrides_auto_but_not_explicit(monkeypatch, op):
    p, q = _data(torch.float64)
    monkeypatch.setenv("MOLPHENIX_BACKEND", "reference")
    auto = dict(_calls(p, q, "auto"))[op]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the env choice is deliberate: no fallback warning
        auto()
    # the env forces the reference even where the extension is missing: no error
    monkeypatch.setattr(_ext, "load", lambda: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        auto()
    # ... but an explicit backend wins over the env (and here cannot run)
    with pytest.raises(ValueError, match="backend='cpu'"):
        dict(_calls(p, q, "cpu"))[op]()


def test_env_reference_really_runs_the_reference(monkeypatch):
    """With MOLPHENIX_BACKEND=reference, auto must not touch the compiled module."""
    p, q = _data(torch.float64)

    class Boom:
        def __getattr__(self, name):
            raise AssertionError(f"compiled module used: {name}")

        def build_info(self):
            return {"cuda": False}

    monkeypatch.setattr(_ext, "load", lambda: Boom())
    monkeypatch.setenv("MOLPHENIX_BACKEND", "reference")
    for _, fn in _calls(p, q, "auto"):
        fn()


@pytest.mark.requires_extension
def test_env_cpu_selects_the_kernel(monkeypatch):
    p, q = _data(torch.float64)
    monkeypatch.setenv("MOLPHENIX_BACKEND", "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name, fn in _calls(p, q, "auto"):
            fn()
    assert _common.resolve_backend("s2l_loss", "auto", torch.device("cpu"), torch.float64) == "cpu"


@pytest.mark.parametrize("value", ["gpu", "Reference", "auto-ish", "CPU"])
def test_bad_env_value(monkeypatch, value):
    p, q = _data()
    monkeypatch.setenv("MOLPHENIX_BACKEND", value)
    with pytest.raises(ValueError, match="MOLPHENIX_BACKEND"):
        s2l_loss(p, q, 10.0, -10.0)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", ["gpu", "", None, "Auto", 0])
def test_unknown_backend(op, backend):
    p, q = _data()
    with pytest.raises(ValueError, match="backend"):
        dict(_calls(p, q, backend))[op]()


@pytest.mark.parametrize("op", OPS)
def test_cuda_backend_with_cpu_tensors(op):
    p, q = _data()
    with pytest.raises(ValueError, match="backend='cuda'"):
        dict(_calls(p, q, "cuda"))[op]()


@pytest.mark.requires_cuda
@pytest.mark.parametrize("op", OPS)
def test_cpu_backend_with_cuda_tensors(op):
    p, q = _data(device="cuda")
    with pytest.raises(ValueError, match="backend='cpu'"):
        dict(_calls(p, q, "cpu"))[op]()


@pytest.mark.requires_extension
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_kernel_rejects_low_precision_but_auto_falls_back(no_backend_env, dtype):
    p, q = _data(dtype)
    with pytest.raises(ValueError, match="float32 and float64"):
        arctan_l2_similarity(p, q, backend="cpu")
    with pytest.warns(RuntimeWarning, match="reference"):
        out = arctan_l2_similarity(p, q)
    assert out.dtype == dtype


@pytest.mark.requires_extension
def test_auto_uses_the_kernel_silently_when_it_can(no_backend_env):
    p, q = _data(torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _, fn in _calls(p, q, "auto"):
            fn()
    for dt in (torch.float32, torch.float64):
        assert _common.resolve_backend("x", "auto", torch.device("cpu"), dt) == "cpu"


def test_warning_fixture_resets_between_tests_part1(no_extension):
    p, q = _data()
    with pytest.warns(RuntimeWarning):
        siglip_loss(p, q, 1.0, 0.0)


def test_warning_fixture_resets_between_tests_part2(no_extension):
    p, q = _data()
    with pytest.warns(RuntimeWarning):  # warned again: the set was cleared
        siglip_loss(p, q, 1.0, 0.0)


def test_recall_needs_no_backend(no_extension):
    assert recall_at_fraction(np.array([0, 1]), 10, fractions=[0.1]) == {0.1: 0.5}


# ---------------------------------------------------------------------------------------------
# build_info / has_extension / has_cuda
# ---------------------------------------------------------------------------------------------


def test_build_info_keys():
    info = molphenix.build_info()
    for key in ("version", "extension", "extension_error", "ops", "cuda"):
        assert key in info, key
    assert info["version"] == molphenix.__version__
    assert info["extension"] is molphenix.has_extension()
    if info["extension"]:
        assert info["extension_error"] is None
        for key in ("simd_compiled", "simd_level", "openmp", "compiler", "cuda_archs",
                    "cuda_runtime_version", "extension_path"):
            assert key in info, key
        assert set(info["ops"]) >= {"arctan_l2_similarity", "s2l_loss", "siglip_loss",
                                    "retrieval_ranks", "topk_retrieve"}
        assert isinstance(info["cuda"], bool)
    else:
        assert isinstance(info["extension_error"], str) and info["extension_error"]
        assert tuple(info["ops"]) == () and info["cuda"] is False


def test_build_info_without_extension(no_extension):
    info = molphenix.build_info()
    assert info["extension"] is False and info["cuda"] is False
    assert "simulated" in info["extension_error"]
    assert molphenix.has_extension() is False and molphenix.has_cuda() is False


def test_has_cuda_consistent():
    assert molphenix.has_cuda() == (_ext.extension_has_cuda() and torch.cuda.is_available())
    if not torch.cuda.is_available():
        assert molphenix.has_cuda() is False


def test_import_and_ops_without_extension_subprocess():
    """A fresh interpreter where ``molphenix._C`` cannot be imported: import works, build_info
    says why, auto falls back with one warning, explicit cpu raises ValueError."""
    code = textwrap.dedent("""
        import sys, warnings
        sys.modules["molphenix._C"] = None  # make `from molphenix import _C` fail
        import molphenix
        assert not molphenix.has_extension(), "extension should be missing"
        info = molphenix.build_info()
        assert info["extension"] is False and info["extension_error"], info
        import torch
        from molphenix.ops import s2l_loss
        p = torch.nn.functional.normalize(torch.randn(5, 3), dim=1)
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            s2l_loss(p, p, 10.0, -10.0)
            s2l_loss(p, p, 10.0, -10.0)
        n = sum(issubclass(w.category, RuntimeWarning) for w in rec)
        assert n == 1, [str(w.message) for w in rec]
        try:
            s2l_loss(p, p, 10.0, -10.0, backend="cpu")
        except ValueError as exc:
            assert "not importable" in str(exc), exc
        else:
            raise AssertionError("backend='cpu' did not raise")
        print("OK")
    """)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(REPO, "python") + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("MOLPHENIX_BACKEND", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr


@pytest.mark.requires_extension
def test_no_cuda_kernels_reason_quotes_the_build_decision(monkeypatch):
    """A CUDA call on a build without CUDA kernels says why the build lacks them (the recorded
    MOLPHENIX_WITH_CUDA decision of build_info) and how to get them."""
    from molphenix.ops import _common

    monkeypatch.setattr(_ext, "extension_has_cuda", lambda: False)
    monkeypatch.setattr(_ext, "build_info", lambda: {"cuda_reason": "MOLPHENIX_WITH_CUDA=OFF (test)"})
    why = _common._why_no_kernel(torch.device("cuda"), torch.float32)
    assert "MOLPHENIX_WITH_CUDA=OFF (test)" in why and "MOLPHENIX_WITH_CUDA=ON" in why
