"""Loaders that map public phenomics formats onto the molphenix schema.

* :func:`load_rxrx3_core` — RxRx3-core metadata CSV + OpenPhenom embedding Parquet.
* :func:`load_jump` — JUMP-CP profile tables (``Metadata_*`` columns + feature columns).
* :func:`load_profiles` — any well-level profile table (the machinery the two above are presets
  of); :func:`import_profiles` also writes the dataset directory.

The column mappings are documented in ``docs/data_formats.md``.
"""

from .jump import load_jump
from .profiles import DEFAULT_FEATURE_RULE, ProfileImportError, import_profiles, load_profiles
from .rxrx3 import load_rxrx3_core

__all__ = ["DEFAULT_FEATURE_RULE", "ProfileImportError", "import_profiles", "load_jump", "load_profiles",
           "load_rxrx3_core"]
