"""The package surface: import, version, build_info, py.typed, ``python -m molphenix.info``."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest

import molphenix

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(REPO, "python") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_import_and_version():
    assert isinstance(molphenix.__version__, str)
    assert re.match(r"^\d+\.\d+\.\d+", molphenix.__version__), molphenix.__version__
    from molphenix._version import __version__

    assert __version__ == molphenix.__version__


def test_public_names():
    for name in ("__version__", "build_info", "has_cuda", "has_extension", "ops", "data"):
        assert name in molphenix.__all__
    import molphenix.ops as ops

    for name in ("arctan_l2_similarity", "s2l_loss", "siglip_loss", "retrieval_ranks",
                 "topk_retrieve", "recall_at_fraction", "k_for_fraction"):
        assert callable(getattr(ops, name)), name
        assert getattr(ops, name).__doc__, f"{name} has no docstring"
    assert molphenix.ops is ops
    with pytest.raises(AttributeError):
        molphenix.no_such_thing  # noqa: B018


def test_import_is_light():
    """`import molphenix` neither loads the extension nor imports the ops."""
    code = ("import sys, molphenix; "
            "print('molphenix._C' in sys.modules, 'molphenix.ops' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(),
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"], out.stdout


def test_build_info_and_flags():
    info = molphenix.build_info()
    assert isinstance(info, dict)
    for key in ("version", "extension", "extension_error", "ops", "cuda"):
        assert key in info
    assert isinstance(molphenix.has_extension(), bool)
    assert isinstance(molphenix.has_cuda(), bool)
    assert info["extension"] == molphenix.has_extension()
    if molphenix.has_cuda():
        assert info["cuda"] is True


def test_py_typed_present():
    pkg_dir = os.path.dirname(molphenix.__file__)
    assert os.path.isfile(os.path.join(pkg_dir, "py.typed"))


def test_python_m_molphenix_info():
    if importlib.util.find_spec("molphenix.info") is None:
        pytest.skip("molphenix/info.py not written yet")
    out = subprocess.run([sys.executable, "-m", "molphenix.info"], capture_output=True, text=True,
                         env=_env(), timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert molphenix.__version__ in text
    for op in ("s2l_loss", "arctan_l2_similarity", "retrieval_ranks", "topk_retrieve"):
        assert op in text, f"{op} missing from python -m molphenix.info"


def test_python_m_molphenix_info_without_extension():
    if importlib.util.find_spec("molphenix.info") is None:
        pytest.skip("molphenix/info.py not written yet")
    code = ("import sys, runpy; sys.modules['molphenix._C'] = None; "
            "runpy.run_module('molphenix.info', run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(),
                         timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "reference" in out.stdout


# ---------------------------------------------------------------------------------------------
# the test-suite guard in tests/conftest.py: on a GPU machine requires_cuda tests never skip
# ---------------------------------------------------------------------------------------------

_FAKE_GPU_PLUGIN = '''
import torch, molphenix
torch.cuda.is_available = lambda: {fake_gpu}
molphenix.has_extension = lambda: True
molphenix.has_cuda = lambda: {has_cuda}
'''


def _run_guard(tmp_path, test_body, *, fake_gpu, has_cuda):
    import shutil

    tdir = tmp_path / "tests"
    tdir.mkdir()
    shutil.copy(os.path.join(REPO, "tests", "conftest.py"), tdir / "conftest.py")
    shutil.copy(os.path.join(REPO, "tests", "_utils.py"), tdir / "_utils.py")
    (tdir / "test_guard.py").write_text("import pytest\n\n" + test_body)
    (tmp_path / "fakegpu.py").write_text(_FAKE_GPU_PLUGIN.format(fake_gpu=fake_gpu,
                                                                 has_cuda=has_cuda))
    env = _env()
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env["PYTHONPATH"]
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
            "-p", "fakegpu", "-rA", str(tdir)]
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)


_CUDA_TEST = '''
@pytest.mark.requires_cuda
def test_needs_gpu():
    pass


def test_plain():
    pass
'''


def test_guard_skips_cuda_tests_without_gpu(tmp_path):
    out = _run_guard(tmp_path, _CUDA_TEST, fake_gpu=False, has_cuda=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed, 1 skipped" in out.stdout


def test_guard_fails_cuda_tests_when_build_lacks_cuda(tmp_path):
    out = _run_guard(tmp_path, _CUDA_TEST, fake_gpu=True, has_cuda=False)
    assert out.returncode != 0, out.stdout
    assert "no CUDA kernels" in out.stdout, out.stdout
    assert "skipped" not in out.stdout.splitlines()[-1], out.stdout


def test_guard_fails_session_when_a_cuda_test_skips_on_gpu(tmp_path):
    body = '''
@pytest.mark.requires_cuda
def test_needs_gpu():
    pytest.skip("pretend something was missing")
'''
    out = _run_guard(tmp_path, body, fake_gpu=True, has_cuda=True)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "requires_cuda tests skipped on a GPU machine" in out.stdout, out.stdout
