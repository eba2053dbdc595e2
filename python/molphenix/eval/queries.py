"""Retrieval queries from a dataset's wells: the one recipe that validation during training, the
evaluation of a run and the non-contrastive baselines share (DESIGN.md section 5).

Every treated well of a split is control-centered per batch, the wells are averaged over all
replicates per (molecule, concentration), and a query is active when the activity call of its
(molecule, concentration) has ``p_value < p_cutoff`` (a query without a call is inactive).
Concentrations are matched by :func:`~molphenix.eval.metrics.concentration_key`.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import numpy as np

from molphenix.eval.metrics import average_queries, concentration_key

__all__ = ["activity_lookup", "split_queries"]

#: Activity cutoff when none is given (``active = p_value < 0.1``, DESIGN.md section 4).
DEFAULT_P_CUTOFF = 0.1


def activity_lookup(calls: Any, p_cutoff: float = DEFAULT_P_CUTOFF) -> Callable[[Any, Any], np.ndarray]:
    """A function ``(molecule [G], concentration [G]) -> bool [G]``: ``p_value < p_cutoff``.

    Args:
        calls: Activity calls (``molecule_id``, ``concentration_um``, ``p_value``), or None
            (every query is then inactive).
        p_cutoff: Active means ``p_value < p_cutoff``.

    Returns:
        The lookup; a (molecule, concentration) without a call is inactive.
    """
    if calls is None:
        return lambda molecule, concentration: np.zeros(len(molecule), dtype=bool)
    mols = calls.column("molecule_id").to_pylist()
    conc = calls.column("concentration_um").to_numpy(zero_copy_only=False)
    pv = calls.column("p_value").to_numpy(zero_copy_only=False)
    table = {(m, concentration_key(c)): float(p) < p_cutoff for m, c, p in zip(mols, conc, pv)}

    def lookup(molecule: Any, concentration: Any) -> np.ndarray:
        return np.asarray([table.get((m, concentration_key(c)), False)
                           for m, c in zip(molecule, concentration)], dtype=bool)

    return lookup


def split_queries(dataset: Any, rows: np.ndarray, calls: Any, *, p_cutoff: float = DEFAULT_P_CUTOFF,
                  normalize: str = "center", centered: Optional[np.ndarray] = None
                  ) -> Optional[Dict[str, np.ndarray]]:
    """Replicate-averaged, control-centered queries per (molecule, concentration) of some wells.

    Args:
        dataset: A :class:`molphenix.data.Dataset`.
        rows: Treated well rows (e.g. ``splits.indices("val")``).
        calls: Activity calls (None: every query inactive).
        p_cutoff: ``active = p_value < p_cutoff``.
        normalize: The phenomic preprocessing of the wells
            (:func:`molphenix.data.normalize_wells`: ``"center"``, ``"tvn"`` or ``"none"``);
            ignored when ``centered`` is given.
        centered: Precomputed preprocessed embeddings of *every* well [n_wells, E] (a caller
            that builds several splits computes them once).

    Returns:
        None when ``rows`` is empty, else a dict ``x`` float32 [G, E], ``molecule`` object [G],
        ``concentration`` float64 [G], ``n_wells`` int64 [G] and ``active`` bool [G], sorted by
        (molecule, concentration) (:func:`~molphenix.eval.metrics.average_queries`).

    Raises:
        ValueError: a batch of the wells without control wells (named); unknown ``normalize``.
    """
    rows = np.asarray(rows)
    if rows.size == 0:
        return None
    if centered is None:
        from molphenix.data import normalize_wells

        x = normalize_wells(dataset.phenomic_matrix(), dataset.column("batch"), dataset.control_mask(),
                            rows, normalize=normalize)
    else:
        x = centered[rows]
    mol = dataset.wells.column("molecule_id").take(rows).to_pylist()
    conc = dataset.wells.column("concentration_um").take(rows).to_numpy(zero_copy_only=False)
    q = average_queries(x, mol, conc)
    q["active"] = activity_lookup(calls, p_cutoff)(q["molecule"], q["concentration"])
    return q
