"""Run-time settings of the compiled kernels: ``molphenix.set_options`` / ``molphenix.options``.

The C++ core never reads the environment. These settings live here, are validated here, and are
passed down through the binding (``molphenix._C.set_options``) whenever they change and when the
extension is first loaded. Each setting's initial value comes from a ``MOLPHENIX_*`` environment
variable, read once when this module is imported (for the CLI and CI); after that, only
``set_options`` changes them. Torch-free (``build_info()`` must work without torch).

=====================  =============================  ===========================================
setting                initial value from             values (default first)
=====================  =============================  ===========================================
simd                   MOLPHENIX_SIMD                 "auto" | "avx512" | "avx2" | "scalar"
s2l_tile               MOLPHENIX_S2L_TILE             None (automatic) | 64 | 128 | 256 | 512
cuda_mainloop          MOLPHENIX_CUDA_MAINLOOP        "fast" | "simple"
s2l_blocks_per_sm      MOLPHENIX_S2L_BLOCKS_PER_SM    2 | 1
s2l_u_simt             MOLPHENIX_S2L_U_SIMT           False | True ("1")
topk_prefilter         MOLPHENIX_TOPK_PREFILTER       "on" | "off" ("0") | "fallback"
=====================  =============================  ===========================================
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Dict, Optional

from molphenix import _ext

__all__ = ["options", "set_options", "settings_from_env", "OPTION_DOCS", "ENV_VARS"]

_SIMD = {"auto": -1, "scalar": 0, "avx2": 1, "avx512": 2}
_TILES = (None, 64, 128, 256, 512)
_MAINLOOP = {"fast": 0, "simple": 1}
_PREFILTER = {"on": 1, "off": 0, "fallback": 2}

DEFAULTS: Dict[str, Any] = {
    "simd": "auto",
    "s2l_tile": None,
    "cuda_mainloop": "fast",
    "s2l_blocks_per_sm": 2,
    "s2l_u_simt": False,
    "topk_prefilter": "on",
}

ENV_VARS: Dict[str, str] = {
    "simd": "MOLPHENIX_SIMD",
    "s2l_tile": "MOLPHENIX_S2L_TILE",
    "cuda_mainloop": "MOLPHENIX_CUDA_MAINLOOP",
    "s2l_blocks_per_sm": "MOLPHENIX_S2L_BLOCKS_PER_SM",
    "s2l_u_simt": "MOLPHENIX_S2L_U_SIMT",
    "topk_prefilter": "MOLPHENIX_TOPK_PREFILTER",
}

#: One line per setting: what it does (shown by ``python -m molphenix.info`` and in the README).
OPTION_DOCS: Dict[str, str] = {
    "simd": "CPU SIMD level cap (lowers, never raises, the detected level); results differ "
            "between levels by rounding",
    "s2l_tile": "CPU S2L tile edge (None: automatic 64-256 by size); changes the rounding of the "
                "loss and gradients (not their thread-count independence)",
    "cuda_mainloop": "CUDA bf16/f16 GEMM mainloop: 'fast' or the validated 'simple' 64x64 WMMA one",
    "s2l_blocks_per_sm": "CUDA S2L fast path occupancy (blocks per SM)",
    "s2l_u_simt": "CUDA S2L with bf16/f16: u.v^T on fp32 SIMT instead of 3xTF32 tensor cores",
    "topk_prefilter": "CUDA top-k sampled-threshold prefilter: 'on', 'off', or 'fallback' (every "
                      "query takes the exact fallback; a test setting)",
}


def _check(name: str, value: Any) -> Any:
    if name == "simd":
        if value not in _SIMD:
            raise ValueError(f"simd: expected one of {tuple(_SIMD)}, got {value!r}")
    elif name == "s2l_tile":
        if isinstance(value, bool) or value not in _TILES:
            raise ValueError(f"s2l_tile: expected None (automatic), 64, 128, 256 or 512, got {value!r}")
        value = None if value is None else int(value)
    elif name == "cuda_mainloop":
        if value not in _MAINLOOP:
            raise ValueError(f"cuda_mainloop: expected 'fast' or 'simple', got {value!r}")
    elif name == "s2l_blocks_per_sm":
        if isinstance(value, bool) or value not in (1, 2):
            raise ValueError(f"s2l_blocks_per_sm: expected 1 or 2, got {value!r}")
        value = int(value)
    elif name == "s2l_u_simt":
        if not isinstance(value, bool):
            raise TypeError(f"s2l_u_simt: expected a bool, got {type(value).__name__}")
    elif name == "topk_prefilter":
        if value not in _PREFILTER:
            raise ValueError(f"topk_prefilter: expected 'on', 'off' or 'fallback', got {value!r}")
    else:
        raise ValueError(f"{name}: unknown setting; expected one of {tuple(DEFAULTS)}")
    return value


def _from_env(name: str, text: str) -> Any:
    """An environment variable's text as a setting value (the forms the C++ core once read)."""
    text = text.strip()
    if name == "simd":
        return text.lower() if text else "auto"
    if name == "s2l_tile":
        return None if text in ("", "0", "auto") else int(text)
    if name == "cuda_mainloop":
        return "simple" if text == "simple" else "fast"
    if name == "s2l_blocks_per_sm":
        return 1 if text.startswith("1") else 2
    if name == "s2l_u_simt":
        return text.startswith("1")
    if name == "topk_prefilter":
        if text == "fallback":
            return "fallback"
        return "off" if text.startswith("0") else "on"
    raise AssertionError(name)


def settings_from_env(env: Dict[str, str]) -> Dict[str, Any]:
    """The settings that a mapping of ``MOLPHENIX_*`` variables (e.g. ``os.environ`` or a
    benchmark variant's ``{"MOLPHENIX_S2L_U_SIMT": "1"}``) stands for, as ``set_options``
    keywords; other keys are ignored. Raises ValueError / TypeError for a bad value."""
    out: Dict[str, Any] = {}
    for name, var in ENV_VARS.items():
        if var in env:
            out[name] = _check(name, _from_env(name, env[var]))
    return out


def _initial() -> Dict[str, Any]:
    cur = dict(DEFAULTS)
    for name, var in ENV_VARS.items():
        text = os.environ.get(var)
        if text is None:
            continue
        try:
            cur[name] = _check(name, _from_env(name, text))
        except (TypeError, ValueError) as exc:
            from molphenix._warnings import external_stacklevel

            warnings.warn(f"{var}={text!r} ignored: {exc}", RuntimeWarning, stacklevel=external_stacklevel())
    return cur


_current: Dict[str, Any] = _initial()


def options() -> Dict[str, Any]:
    """The current run-time settings of the compiled kernels, as a dict (a copy).

    See the module docstring for each setting, its values and the environment variable that
    gives its initial value.
    """
    return dict(_current)


def push(ext: Any) -> None:
    """Hand the settings to the compiled module (called when it is loaded and on every change)."""
    if ext is None or not hasattr(ext, "set_options"):
        return
    o = _current
    ext.set_options(simd=_SIMD[o["simd"]], s2l_tile=o["s2l_tile"] or 0,
                    cuda_mainloop=_MAINLOOP[o["cuda_mainloop"]],
                    s2l_blocks_per_sm=o["s2l_blocks_per_sm"], s2l_u_simt=o["s2l_u_simt"],
                    topk_prefilter=_PREFILTER[o["topk_prefilter"]])


def set_options(**settings: Any) -> Dict[str, Any]:
    """Change run-time settings of the compiled kernels; returns the previous settings.

    ``old = molphenix.set_options(simd="scalar"); ...; molphenix.set_options(**old)`` restores
    them. Settings apply to kernel calls that start afterwards (process-wide).

    Args:
        simd: "auto" | "avx512" | "avx2" | "scalar": caps the CPU SIMD level.
        s2l_tile: None | 64 | 128 | 256 | 512: CPU S2L tile edge (changes the rounding).
        cuda_mainloop: "fast" | "simple".
        s2l_blocks_per_sm: 2 | 1.
        s2l_u_simt: bool.
        topk_prefilter: "on" | "off" | "fallback".

    Raises:
        ValueError / TypeError: an unknown setting or a value outside its set.
    """
    checked = {name: _check(name, value) for name, value in settings.items()}
    previous = dict(_current)
    _current.update(checked)
    try:
        push(_ext.load())
    except Exception:
        _current.clear()
        _current.update(previous)
        raise
    return previous


# the settings reach the kernels whenever the compiled module is first loaded
_ext.on_load(push)
