"""Per-split retrieval queries for models that are not contrastive runs (the ridge anchor).

The queries are :func:`molphenix.eval.queries.split_queries`, the recipe of a trained run's
evaluation (DESIGN.md section 5), on wells centered with :func:`centered_wells` (float64
arithmetic, computed once for every split).
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

__all__ = ["centered_wells", "evaluate_split_embeddings"]


def centered_wells(dataset) -> np.ndarray:
    """Every well's phenomic embedding minus its batch's control mean.

    Args:
        dataset: A :class:`molphenix.data.Dataset`.

    Returns:
        float32 [n_wells, E].

    Raises:
        ValueError: a batch without control wells.
    """
    from molphenix.data import center_by_controls

    return center_by_controls(dataset.phenomic_matrix(), dataset.column("batch"), dataset.control_mask())


def evaluate_split_embeddings(query_emb: Any, cand_emb: Any, q: Dict[str, np.ndarray], *,
                              n_bootstrap: int = 1000, seed: int = 0) -> Dict[str, Any]:
    """:func:`molphenix.eval.evaluate_embeddings` with the candidates being the queries' own
    (molecule, concentration) keys, in the same order (``match="pair"``).

    Shapes:
        query_emb, cand_emb: [G, D]; the arrays of ``q``: [G]
    """
    from molphenix.eval.metrics import evaluate_embeddings

    return evaluate_embeddings(query_emb, q["molecule"], q["concentration"], q["active"],
                               cand_emb, q["molecule"], q["concentration"], match="pair",
                               n_bootstrap=n_bootstrap, seed=seed)
