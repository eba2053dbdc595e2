"""Validation during training: the MRR (all queries) and the top-``eval_fraction`` recall of the
``val`` split.

Queries are the split's control-centered, replicate-averaged wells
(:func:`molphenix.eval.queries.split_queries`, the recipe of ``evaluate_run``); candidates are
the split's own (molecule, concentration) pairs; the MRR is over all queries, the recall over
the active queries (all queries when the split has no actives). In a data-parallel run rank 0 computes it and every rank
receives the same value, so every rank takes the same best-checkpoint decision.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

__all__ = ["Validator"]


class Validator:
    """The validation metrics of one run.

    Args:
        dataset: The run's dataset.
        splits: Its :class:`~molphenix.data.Splits`.
        calls: Its activity calls.
        cfg: The run's :class:`~molphenix.train.TrainConfig` (``normalize``, ``p_cutoff``,
            ``eval_fraction``).
        ranks: The run's ``Ranks`` (rank 0 builds the queries and computes the recall).
    """

    def __init__(self, dataset: Any, splits: Any, calls: Any, cfg: Any, ranks: Any):
        self.cfg, self.ranks = cfg, ranks
        self.queries = None
        if ranks.main:
            from molphenix.eval.queries import split_queries

            self.queries = split_queries(dataset, splits.indices("val"), calls, normalize=cfg.normalize,
                                         p_cutoff=cfg.p_cutoff)

    def __call__(self, tr: Any) -> Optional[Dict[str, float]]:
        """``{"mrr": ..., "recall": ...}`` of the trainer ``tr``'s current model (None without a
        validation split); the model is left in eval mode."""
        if not self.ranks.active:
            return self._recall(tr)
        err, val = None, None
        if self.ranks.main:
            try:
                val = self._recall(tr)
            except Exception as exc:  # noqa: BLE001 - re-raised on every rank by agree()
                err = exc
        self.ranks.agree(err, "validation")
        return self.ranks.broadcast(val, "validation")

    def _recall(self, tr: Any) -> Optional[Dict[str, float]]:
        if self.queries is None:
            return None
        import torch

        from molphenix.eval import evaluate_embeddings, fraction_key

        from .embed import embed_molecule_rows, embed_wells_prepared

        v = self.queries
        tr.model.eval()
        with torch.no_grad():
            p = embed_wells_prepared(tr.model, v["x"], tr.input_scale, tr.device)
            rows = np.asarray([tr.mol_row[m] for m in v["molecule"]], dtype=np.int64)
            q = embed_molecule_rows(tr.model, tr.mols, rows, v["concentration"], tr.device)
        m = evaluate_embeddings(p.float().cpu(), v["molecule"], v["concentration"], v["active"],
                                q.float().cpu(), v["molecule"], v["concentration"],
                                fractions=(self.cfg.eval_fraction,), n_bootstrap=0)
        key = fraction_key(self.cfg.eval_fraction)
        grp = m["active"] if m["active"]["n_queries"] else m["all"]
        mrr = m["all"].get("mrr")
        return {"recall": float(grp[key]), "mrr": float(mrr) if mrr is not None else float("nan")}
