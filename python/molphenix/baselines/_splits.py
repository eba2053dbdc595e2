"""Per-split retrieval queries for models that are not contrastive runs (the ridge anchor).

The same recipe as a trained run's evaluation (issue 7, DESIGN.md section 5): every well is
centred on its batch's control mean, the treated wells of a split are averaged per
(molecule, concentration) into queries, a query is active when its (molecule, concentration)
has an activity call ``p < cutoff``, and the candidates are every (molecule, concentration) of
the split.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import numpy as np

__all__ = ["centred_wells", "split_queries", "activity_lookup", "evaluate_split_embeddings"]


def centred_wells(dataset) -> np.ndarray:
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


def activity_lookup(calls, p_cutoff: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A function (molecule [n], concentration [n]) -> bool [n]: ``p_value < p_cutoff``.

    Keys without a call are inactive. Concentrations are compared by
    :func:`molphenix.eval.metrics.concentration_key`.
    """
    from molphenix.eval.metrics import concentration_key

    mols = calls.column("molecule_id").to_pylist()
    conc = calls.column("concentration_um").to_numpy(zero_copy_only=False)
    pv = calls.column("p_value").to_numpy(zero_copy_only=False)
    table = {(m, concentration_key(c)): float(p) < p_cutoff for m, c, p in zip(mols, conc, pv)}

    def lookup(molecule: np.ndarray, concentration: np.ndarray) -> np.ndarray:
        return np.array([table.get((m, concentration_key(c)), False)
                         for m, c in zip(molecule, concentration)], dtype=bool)

    return lookup


def split_queries(dataset, splits, name: str, calls, *, p_cutoff: float = 0.1,
                  centred: Optional[np.ndarray] = None) -> Optional[Dict[str, np.ndarray]]:
    """Replicate-averaged, control-centred queries of one split.

    Args:
        dataset: The dataset the split assignment belongs to.
        splits: A :class:`molphenix.data.Splits` aligned with ``dataset.wells``.
        name: Split name (``"val"``, ``"unseen_wells"``, ...).
        calls: Activity-call table (``molecule_id``, ``concentration_um``, ``p_value``).
        p_cutoff: Active means ``p_value < p_cutoff``.
        centred: Precomputed :func:`centred_wells` (saves recomputing it per split).

    Returns:
        ``None`` when the split holds no wells, else the dict of
        :func:`molphenix.eval.metrics.average_queries` (``x`` [G, E], ``molecule``,
        ``concentration``, ``n_wells``) plus ``active`` bool [G].
    """
    from molphenix.eval import average_queries

    rows = splits.indices(name)
    if rows.size == 0:
        return None
    x = centred if centred is not None else centred_wells(dataset)
    mol = np.asarray(dataset.column("molecule_id"), dtype=object)[rows]
    conc = np.asarray(dataset.column("concentration_um"), dtype=np.float64)[rows]
    q = average_queries(x[rows], mol, conc)
    q["active"] = activity_lookup(calls, p_cutoff)(q["molecule"], q["concentration"])
    return q


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
