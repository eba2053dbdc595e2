"""molphenix.eval — zero-shot retrieval evaluation (DESIGN.md section 5).

Model-agnostic: everything here works on embeddings plus metadata, and nothing here imports the
training stack (``molphenix.train`` imports this package, for validation, never the reverse).

- :func:`evaluate_embeddings`: top-1% / top-5% recall (all and active queries, per
  concentration), bootstrap 95% intervals, chance levels, mean rank and MRR; ``match="pair"`` or
  ``"molecule"``; optional per-query ranks.
- :func:`metrics_from_ranks`: the same metrics from precomputed ranks.
- :func:`average_queries`: replicate-averaged queries per (molecule, concentration).
- :func:`split_queries` (:mod:`molphenix.eval.queries`): the queries of a dataset's split, the
  recipe shared by validation, ``evaluate_run`` and the baselines.
- :func:`write_metrics` / :func:`read_metrics` (atomic ``metrics.json``),
  :func:`write_query_ranks` / :func:`read_query_ranks`.
- :func:`summarize` / :func:`paired_compare` (:mod:`molphenix.eval.compare`): metrics pooled over
  queries whose candidate counts differ (e.g. cross-validation folds) and paired comparisons of two
  methods, with 95% intervals from a cluster bootstrap over molecules.
- :mod:`molphenix.eval.plots`: the figures of the report (matplotlib, imported lazily).
- Evaluating a trained run (it loads the run, so it sits above this package):
  :func:`molphenix.train.evaluate_run`.
"""

from molphenix.eval.compare import cluster_bootstrap_means, paired_compare, query_stats, summarize
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
from molphenix.eval.queries import activity_lookup, split_queries

__all__ = [
    "MATCHES",
    "QueryRanks",
    "activity_lookup",
    "SCHEMA_VERSION",
    "average_queries",
    "cluster_bootstrap_means",
    "concentration_key",
    "evaluate_embeddings",
    "fraction_key",
    "metrics_from_ranks",
    "paired_compare",
    "query_stats",
    "query_targets",
    "read_metrics",
    "read_query_ranks",
    "split_queries",
    "summarize",
    "write_metrics",
    "write_query_ranks",
]


def __getattr__(name):
    if name == "evaluate_run":  # it loads trained runs: it moved above eval, into train
        raise AttributeError("molphenix.eval.evaluate_run moved to molphenix.train.evaluate_run "
                             "(molphenix.eval is model-agnostic and imports nothing of molphenix.train)")
    if name == "plots":
        import importlib

        return importlib.import_module("molphenix.eval.plots")
    raise AttributeError(f"module 'molphenix.eval' has no attribute {name!r}")
