"""molphenix.retrieval — exact retrieval over candidate embeddings with ids.

:class:`Index` wraps :func:`molphenix.ops.topk_retrieve` and :func:`molphenix.ops.retrieval_ranks`
(streamed, no ``Q x N`` matrix) with id mapping and Parquet persistence.
"""

from molphenix.retrieval.index import INDEX_FORMAT_VERSION, Index

__all__ = ["INDEX_FORMAT_VERSION", "Index"]
