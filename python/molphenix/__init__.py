"""molphenix: fast contrastive phenomolecular retrieval.

The compiled core (``molphenix._C``: C++/OpenMP and CUDA kernels) is loaded lazily, so
``import molphenix`` works on machines without a GPU, a CUDA runtime or even the extension.

Public entry points:
    molphenix.ops        fused S2L / SigLIP losses, arctan-L2 similarity, retrieval ranks, top-k
    molphenix.data       datasets, simulator, featurizers, splits, loaders
    molphenix.build_info(), has_extension(), has_cuda(); ``python -m molphenix.info``
    molphenix.options(), set_options(...)   run-time settings of the kernels (SIMD cap, tiles)
"""

from molphenix._ext import build_info, has_cuda, has_extension
from molphenix._options import options, set_options
from molphenix._version import __version__

__all__ = ["__version__", "build_info", "has_cuda", "has_extension", "options", "set_options", "ops", "data", "nn", "losses",
           "list_models", "create_model", "load_run"]


def __getattr__(name: str):  # lazy subpackages: keep `import molphenix` light
    if name in ("ops", "data", "nn", "losses"):
        import importlib

        return importlib.import_module(f"molphenix.{name}")
    if name in ("list_models", "create_model"):  # molphenix.nn factory (imports torch on first use)
        from molphenix import nn as _nn

        return getattr(_nn, name)
    if name == "load_run":  # molphenix.train.load_run (imports torch on first use)
        from molphenix.train import load_run

        return load_run
    raise AttributeError(f"module 'molphenix' has no attribute {name!r}")
