"""molphenix.eval — zero-shot retrieval evaluation (DESIGN.md section 5).

Model-agnostic: everything here works on embeddings plus metadata.

- :func:`evaluate_embeddings`: top-1% / top-5% recall (all and active queries, per
  concentration), bootstrap 95% intervals, chance levels, mean rank and MRR; ``match="pair"`` or
  ``"molecule"``; optional per-query ranks.
- :func:`metrics_from_ranks`: the same metrics from precomputed ranks.
- :func:`average_queries`: replicate-averaged queries per (molecule, concentration).
- :func:`write_metrics` / :func:`read_metrics` (atomic ``metrics.json``),
  :func:`write_query_ranks` / :func:`read_query_ranks`.
- :mod:`molphenix.eval.plots`: the figures of the report (matplotlib, imported lazily).
- ``molphenix.eval.run.evaluate_run``: embeds a trained run's splits and calls the above.
"""

from molphenix.eval.io import (
    SCHEMA_VERSION,
    read_metrics,
    read_query_ranks,
    write_metrics,
    write_query_ranks,
)
from molphenix.eval.metrics import (
    MATCHES,
    QueryRanks,
    average_queries,
    concentration_key,
    evaluate_embeddings,
    fraction_key,
    metrics_from_ranks,
    query_targets,
)

__all__ = [
    "MATCHES",
    "QueryRanks",
    "SCHEMA_VERSION",
    "average_queries",
    "concentration_key",
    "evaluate_embeddings",
    "fraction_key",
    "metrics_from_ranks",
    "query_targets",
    "read_metrics",
    "read_query_ranks",
    "write_metrics",
    "write_query_ranks",
]


def __getattr__(name):
    # evaluate_run lives in molphenix.eval.run (it imports the training stack); load it on use.
    if name == "evaluate_run":
        from molphenix.eval.run import evaluate_run

        return evaluate_run
    if name == "plots":
        import importlib

        return importlib.import_module("molphenix.eval.plots")
    raise AttributeError(f"module 'molphenix.eval' has no attribute {name!r}")
