"""The demo's glue to trained runs: their split's queries, molecule embeddings, recall curves.

(Metrics come from :func:`molphenix.train.evaluate_run`; :func:`evaluate_trained` is the same
recipe in memory, for callers that do not want files written.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

__all__ = ["EVAL_SPLITS", "evaluate_trained", "recall_curve", "molecule_embeddings"]

EVAL_SPLITS = ("unseen_wells", "unseen_molecules", "unseen_dataset")


def _run_calls(run: Path, dataset) -> Any:
    from molphenix.data import load_calls

    if (run / "calls.parquet").is_file():
        return load_calls(run / "calls.parquet")
    return dataset.calls


def split_inputs(run: Path, dataset, tm, name: str) -> Optional[Dict[str, Any]]:
    """The run's queries of split ``name`` (its saved split and calls), or None if empty."""
    from molphenix.data import Splits
    from molphenix.eval.queries import split_queries

    splits = Splits.load(run / "split.parquet", dataset)
    rows = splits.indices(name)
    if rows.size == 0:
        return None
    return split_queries(dataset, rows, _run_calls(run, dataset), normalize=tm.normalize,
                         p_cutoff=tm.config.p_cutoff)


def molecule_embeddings(tm, dataset, q: Dict[str, Any]):
    """Embeddings of the queries' own (molecule, concentration) candidates [G, D]."""
    smiles_of = dataset.smiles_of()
    return tm.embed_molecules([smiles_of[m] for m in q["molecule"]], q["concentration"])


def evaluate_trained(run: str | Path, dataset, *, n_bootstrap: int = 1000, seed: int = 0
                     ) -> Tuple[Dict[str, Any], Any]:
    """Metrics of a run's best checkpoint on every evaluation split its data can form.

    Every split: queries are the split's control-centered wells averaged per (molecule,
    concentration); candidates are the split's (molecule, concentration) pairs; ``match="pair"``.

    Returns:
        ``({split: metrics}, the loaded TrainedModel)``.
    """
    from molphenix.eval import evaluate_embeddings
    from molphenix.train import load_run

    run = Path(run)
    tm = load_run(run)
    out: Dict[str, Any] = {}
    for name in EVAL_SPLITS:
        q = split_inputs(run, dataset, tm, name)
        if q is None:
            continue
        p = tm.embed_wells(q["x"], preprocessed=True)
        c = molecule_embeddings(tm, dataset, q)
        out[name] = evaluate_embeddings(p, q["molecule"], q["concentration"], q["active"],
                                        c, q["molecule"], q["concentration"], match="pair",
                                        n_bootstrap=n_bootstrap, seed=seed)
    return out, tm


def recall_curve(run: str | Path) -> list:
    """``[(samples_seen, val_recall), ...]`` from the run's ``train_log.csv`` (validation steps)."""
    import csv

    path = Path(run) / "train_log.csv"
    if not path.is_file():
        return []
    pts = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            v = row.get("val_recall")
            if v not in (None, ""):
                pts.append((float(row["samples_seen"]), float(v)))
    return pts


def chance_at(fraction: float, n: int) -> float:
    """Expected top-``fraction`` recall of a random ranking of ``n`` candidates."""
    from molphenix.ops import k_for_fraction

    return k_for_fraction(fraction, n) / n if n else float("nan")


def active_rows(q: Dict[str, Any]) -> np.ndarray:
    """bool [G] activity of the queries."""
    return np.asarray(q["active"], dtype=bool)
