"""molphenix.retrieval — exact retrieval over candidate embeddings with ids.

:class:`Index` runs the retrieval kernels (:mod:`molphenix.ops`: streamed, no ``Q x N`` matrix)
over rows validated once, with id mapping and persistence: a Parquet file, or a library directory
that opens without reading its rows (:mod:`molphenix.retrieval.storage`, shared with
``molphenix.distributed.ShardedIndex``).
"""

from molphenix.retrieval.index import INDEX_FORMAT_VERSION, Index
from molphenix.retrieval.storage import LIBRARY_VERSION, STORAGE_DTYPES, verify_library

__all__ = ["INDEX_FORMAT_VERSION", "LIBRARY_VERSION", "STORAGE_DTYPES", "Index", "verify_library"]
