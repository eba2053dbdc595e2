"""``evaluate_run``: zero-shot retrieval metrics of a trained run, on the splits saved with it.

For every evaluation split present in the run's ``split.parquet`` (``val``, ``unseen_wells``,
``unseen_molecules``, ``unseen_dataset``; a split without wells is omitted):

* queries: the split's treated wells, control-centered per batch exactly as in training, averaged
  over all replicates per (molecule, concentration), embedded by the phenomic head;
* candidates (``match="pair"``): every (molecule, concentration) of the split, embedded by the
  molecular head at that concentration; (``match="molecule"``): one row per molecule of the
  split, the L2-normalised mean of its embeddings at the split's concentrations of it;
* active queries: the activity calls saved at training time (the dataset's ``calls.parquet``,
  or the run's when it computed them), ``p < p_cutoff`` of the run.

Metrics come from :func:`molphenix.eval.evaluate_embeddings` (ranks by
:func:`molphenix.ops.retrieval_ranks`; ties count against the query). This lives in
``molphenix.train`` because it loads a trained run; :mod:`molphenix.eval` itself is
model-agnostic (embeddings plus metadata) and imports nothing of the training stack.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np

__all__ = ["evaluate_run", "EVAL_SPLITS"]

#: Splits evaluated, in report order (``train`` is never evaluated).
EVAL_SPLITS = ("val", "unseen_wells", "unseen_molecules", "unseen_dataset")


def evaluate_run(
    run: str | os.PathLike,
    data: str | os.PathLike | None = None,
    *,
    out: str | os.PathLike | None = None,
    ranks_out: str | os.PathLike | None | bool = None,
    match: str = "pair",
    checkpoint: str = "best",
    splits: Optional[Sequence[str]] = None,
    fractions: Sequence[float] = (0.01, 0.05),
    n_bootstrap: int = 1000,
    seed: int = 0,
    device: str | None = None,
    distributed: Any = False,
) -> Dict[str, Any]:
    """Evaluate a trained run and write ``metrics.json`` and the per-query ranks.

    Args:
        run: The run directory (``molphenix train --out RUN``).
        data: The dataset directory (default: the one in the run's config). Its fingerprint
            must match the one the run was trained on.
        out: Metrics file (default ``RUN/metrics.json``).
        ranks_out: Per-query ranks file (Parquet for ``.parquet``, else CSV; default
            ``ranks.parquet`` beside ``out``; ``False`` skips it). Columns: ``split``,
            ``molecule``, ``concentration``, ``active``, ``target``, ``rank``.
        match: ``"pair"`` (default) or ``"molecule"``.
        checkpoint: ``"best"`` or ``"last"`` (see :func:`molphenix.train.load_run`).
        splits: Splits to evaluate (default: every one of :data:`EVAL_SPLITS` present).
        fractions: Top-K% fractions (default top-1% and top-5%).
        n_bootstrap: Bootstrap resamples of the 95% intervals (0: none).
        seed: Bootstrap seed.
        device: Device for the model (default CPU).
        distributed: ``False`` (default): one process. ``True`` (the default process group, as
            ``torchrun`` makes it) or a process group: every rank embeds the queries and
            candidates, the candidates are sharded across the ranks for the rank counting
            (:func:`molphenix.eval.evaluate_embeddings` with ``distributed``), every rank returns the
            same metrics and only rank 0 writes the files. Without an initialised group it is
            one process.

    Returns:
        ``{"schema_version": 1, "<split>": {"n_candidates": N, "all": {...}, "active": {...},
        "per_concentration": {...}}, ...}`` (the layout of :mod:`molphenix.eval.metrics`), also
        written to ``out``.

    Raises:
        FileNotFoundError: the run or the dataset is missing.
        ValueError: the dataset differs from the run's (fingerprint); unknown split or match.
    """
    import torch

    from molphenix.data import Splits, load_dataset
    from molphenix.data.io import load_calls
    from molphenix.eval import MATCHES, SCHEMA_VERSION, evaluate_embeddings, write_metrics, write_query_ranks
    from molphenix.eval.queries import split_queries

    from .embed import embed_molecule_rows, embed_wells_prepared
    from .inputs import MolTable, dataset_fingerprint
    from .trained import load_run

    if match not in MATCHES:
        raise ValueError(f"match: expected one of {list(MATCHES)}, got {match!r}")
    run = Path(run)
    tm = load_run(run, checkpoint, device=device)
    cfg = tm.config
    data_dir = Path(data) if data is not None else (Path(cfg.data) if cfg.data else None)
    if data_dir is None:
        raise ValueError("data: the dataset directory is required (the run's config names none)")
    ds = load_dataset(data_dir)
    fp_file = run / "dataset.json"
    if fp_file.is_file():
        want = json.loads(fp_file.read_text()).get("sha256")
        got = dataset_fingerprint(ds)["sha256"]
        if want != got:
            raise ValueError(f"data: {data_dir} is not the dataset run {run} was trained on "
                             f"(fingerprint {got[:12]} vs {want[:12]})")
    calls = ds.calls
    if calls is None and (run / "calls.parquet").is_file():
        calls = load_calls(run / "calls.parquet")
    sp = Splits.load(run / "split.parquet", ds)
    names = list(splits) if splits is not None else [s for s in EVAL_SPLITS if sp.counts().get(s, 0)]
    for s in names:
        if s not in EVAL_SPLITS:
            raise ValueError(f"splits: unknown evaluation split {s!r}; expected some of {list(EVAL_SPLITS)}")

    mol_ids = ds.molecules.column("molecule_id").to_pylist()
    mol_row = {m: i for i, m in enumerate(mol_ids)}
    mols = MolTable(tm.features, ds.molecules.column("smiles").to_pylist(), ds.molecules)
    dev = tm.device
    result: Dict[str, Any] = {"schema_version": SCHEMA_VERSION}
    all_ranks = []
    for name in names:
        rows = sp.indices(name)
        if rows.size == 0:
            continue
        q = split_queries(ds, rows, calls, normalize=tm.normalize, p_cutoff=cfg.p_cutoff)
        with torch.no_grad():
            p = embed_wells_prepared(tm.model, q["x"], tm.input_scale, dev).cpu()
            rows_m = np.asarray([mol_row[m] for m in q["molecule"]], dtype=np.int64)
            qm = embed_molecule_rows(tm.model, mols, rows_m, q["concentration"], dev).cpu()
        if match == "pair":
            cand, cand_mol, cand_conc = qm, q["molecule"], q["concentration"]
        else:
            uniq, inv = np.unique(q["molecule"].astype(str), return_inverse=True)
            acc = torch.zeros(len(uniq), qm.shape[1], dtype=torch.float64)
            acc.index_add_(0, torch.from_numpy(inv.astype(np.int64)), qm.double())
            cand = torch.nn.functional.normalize(acc, dim=1).float()
            cand_mol, cand_conc = np.asarray(uniq, dtype=object), None
        metrics, ranks = evaluate_embeddings(
            p, q["molecule"], q["concentration"], q["active"], cand, cand_mol, cand_conc,
            match=match, fractions=fractions, n_bootstrap=n_bootstrap, seed=seed, return_ranks=True,
            distributed=distributed)
        metrics["n_wells"] = int(rows.size)
        result[name] = metrics
        all_ranks.append((name, ranks))
    out_path = Path(out) if out is not None else run / "metrics.json"
    if distributed is not False and distributed is not None:
        from molphenix.distributed import get_rank, is_initialized

        if is_initialized() and get_rank(None if distributed is True else distributed) != 0:
            return result  # rank 0 writes the files, once
    write_metrics(out_path, result)
    if ranks_out is not False:
        rpath = Path(ranks_out) if ranks_out not in (None, True) else out_path.with_name(
            "ranks.parquet" if out_path.name == "metrics.json" else out_path.stem + ".ranks.parquet")
        _write_ranks(rpath, all_ranks, write_query_ranks)
    return result


def _write_ranks(path: Path, all_ranks: list, writer: Any) -> None:
    cols: Dict[str, list] = {}
    for name, r in all_ranks:
        n = len(r["rank"])
        cols.setdefault("split", []).extend([name] * n)
        for k, v in r.items():
            cols.setdefault(k, []).extend(np.asarray(v).tolist())
    if not cols:
        cols = {"split": [], "molecule": [], "concentration": [], "active": [], "target": [], "rank": []}
    writer(path, {k: np.asarray(v, dtype=object if k in ("split", "molecule") else None) for k, v in cols.items()})
