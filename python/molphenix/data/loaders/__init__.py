"""Loaders that map public phenomics formats onto the molphenix schema.

* :func:`load_rxrx3_core` — RxRx3-core metadata CSV + OpenPhenom embedding Parquet.
* :func:`load_jump` — JUMP-CP profile tables (``Metadata_*`` columns + feature columns).

The column mappings are documented in ``docs/data_formats.md``.
"""

from .jump import load_jump
from .rxrx3 import load_rxrx3_core

__all__ = ["load_jump", "load_rxrx3_core"]
