"""Lazy access to the compiled module ``molphenix._C``.

``import molphenix`` never fails for lack of the extension or of a GPU: the module is imported on
first use, and the reason it could not be imported is kept for :mod:`molphenix.info` and for the
error an explicit ``backend="cpu"`` / ``"cuda"`` raises.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any, Callable, Dict, List, Optional

_import_error: Optional[str] = None
_load_hooks: List[Callable[[ModuleType], None]] = []
_loaded: Optional[ModuleType] = None


@functools.lru_cache(maxsize=None)
def load() -> Optional[ModuleType]:
    """The compiled module, or None when it cannot be imported (see :func:`import_error`)."""
    global _import_error, _loaded
    try:
        from molphenix import _C  # type: ignore[attr-defined]
    except ImportError as exc:  # missing, or built for another Python / platform
        _import_error = f"{type(exc).__name__}: {exc}"
        return None
    for hook in _load_hooks:  # e.g. molphenix._options hands the kernels their run-time settings
        hook(_C)
    _loaded = _C
    return _C


def on_load(hook: Callable[[ModuleType], None]) -> None:
    """Call ``hook(module)`` when the compiled module is loaded (at once if it already is).

    :mod:`molphenix._options` registers the hook that passes the kernels' run-time settings
    down, so this module needs to know nothing about settings (the two import one way).
    """
    _load_hooks.append(hook)
    if _loaded is not None:
        hook(_loaded)


def import_error() -> Optional[str]:
    """Why ``molphenix._C`` could not be imported, or None."""
    load()
    return _import_error


def has_extension() -> bool:
    """True when the compiled CPU kernels are importable."""
    return load() is not None


def extension_has_cuda() -> bool:
    """True when the compiled module contains CUDA kernels (whether or not a GPU is present)."""
    ext = load()
    return bool(ext is not None and ext.build_info().get("cuda", False))


def has_cuda() -> bool:
    """True when the CUDA kernels are compiled in *and* torch sees a CUDA device."""
    if not extension_has_cuda():
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover - a broken CUDA runtime must not break import
        return False


def build_info() -> Dict[str, Any]:
    """What this installation contains.

    Returns a dict with ``version``, ``extension`` (bool), ``extension_error``, and, when the
    extension is present, the compiled ``ops``, ``simd_compiled`` / ``simd_level``, ``openmp``,
    ``compiler``, ``cuda`` (bool), ``cuda_reason`` (why the build has / lacks the CUDA kernels:
    the MOLPHENIX_WITH_CUDA decision), ``cuda_archs`` and ``cuda_runtime_version``.
    """
    from molphenix._version import __version__

    info: Dict[str, Any] = {"version": __version__, "extension": False}
    ext = load()
    if ext is None:
        info["extension_error"] = import_error()
        info["ops"] = ()
        info["cuda"] = False
        return info
    info.update(ext.build_info())
    info["extension"] = True
    info["extension_error"] = None
    info["extension_path"] = getattr(ext, "__file__", None)
    return info
