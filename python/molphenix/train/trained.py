"""``load_run(path) -> TrainedModel``: a trained run as a model for embedding and retrieval."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .checkpoint import load_checkpoint
from .config import TrainConfig
from .embed import embed_molecule_rows, embed_wells_prepared
from .inputs import MolFeatures

__all__ = ["TrainedModel", "load_run"]

_CHECKPOINTS = ("best", "last")


def load_run(path: str | os.PathLike, checkpoint: str = "best", *, device: str | None = None) -> "TrainedModel":
    """Load a trained run (``molphenix train --out RUN``) as a :class:`TrainedModel`.

    Args:
        path: The run directory.
        checkpoint: ``"best"`` (highest validation recall; the default; ``last.pt`` with a
            warning while no validation has run yet) or ``"last"``, or a path to a ``.pt``
            checkpoint of this run.
        device: Where to put the model (default: ``"cpu"``).

    Returns:
        The model in eval mode.

    Raises:
        FileNotFoundError: not a run directory, or the checkpoint is missing.
        ValueError: unknown ``checkpoint`` name; an unreadable checkpoint.
    """
    run = Path(path)
    if not (run / "run.json").is_file() or not (run / "config.json").is_file():
        raise FileNotFoundError(f"run: {run} is not a molphenix run directory (run.json and config.json missing)")
    if checkpoint in _CHECKPOINTS:
        ck = run / "checkpoints" / f"{checkpoint}.pt"
    elif str(checkpoint).endswith(".pt"):
        ck = Path(checkpoint)
    else:
        raise ValueError(f"checkpoint: expected 'best', 'last' or a .pt path, got {checkpoint!r}")
    if checkpoint == "best" and not ck.is_file() and (run / "checkpoints" / "last.pt").is_file():
        import warnings

        from molphenix._warnings import external_stacklevel

        warnings.warn(f"{ck} does not exist yet (no validation has run); loading last.pt",
                      stacklevel=external_stacklevel())
        ck = run / "checkpoints" / "last.pt"
    if not ck.is_file():
        raise FileNotFoundError(f"checkpoint: {ck} not found (has the run saved a checkpoint yet?)")
    meta = json.loads((run / "run.json").read_text())
    config = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    state = load_checkpoint(ck)
    tm = TrainedModel(meta, config, run_dir=run)
    tm.model.load_state_dict(state["model"])
    tm.step = int(state.get("step", 0))
    tm.checkpoint = str(ck)
    tm.eval()
    if device is not None:
        tm.to(device)
    return tm


class TrainedModel(nn.Module):
    """A trained MolPhenix model with the preprocessing of its run.

    The phenomic contract (``embed_wells``): raw well embeddings are centered per batch on the
    mean of that batch's control wells (``normalize="center"``; ``"tvn"`` also whitens with a
    TVN fitted on those controls), exactly as in training, then divided by the run's
    ``input_scale`` and embedded. Pass ``preprocessed=True`` for rows that are already centered
    (e.g. replicate averages of centered wells, as evaluation queries are).

    The molecular contract (``embed_molecules``): SMILES are featurized with the run's
    featurizer (``run.json``'s ``features``) and embedded at the given concentrations (µM).

    A run of the ridge baseline (``loss="ridge"``, ``run.json`` ``kind: "ridge"``) loads the same
    way: ``model`` is then a :class:`molphenix.nn.ridge.RidgeModel` (the query side is the
    centered phenotype itself, the candidate side the predicted phenotype), with the same
    ``embed_wells`` / ``embed_molecules`` / ``retrieve`` contract.

    Attributes:
        model: The :class:`~molphenix.nn.MolPhenixModel` (or the ridge baseline's model).
        config: The run's :class:`~molphenix.train.TrainConfig`.
        meta: The run's ``run.json`` (model config, featurizer state, scales, doses).
        run_dir: The run directory (None when built in memory).
        step: Training step of the loaded checkpoint.
    """

    def __init__(self, meta: Dict[str, Any], config: TrainConfig, *, run_dir: Optional[Path] = None):
        super().__init__()
        from molphenix.nn import ModelConfig, MolPhenixModel

        self.meta = meta
        self.config = config
        self.run_dir = run_dir
        if meta.get("kind") == "ridge":  # the ridge baseline's run (loss "ridge"): same interface
            from molphenix.nn.ridge import RidgeModel

            self.model = RidgeModel.from_run_meta(meta["ridge"])
        else:
            self.model = MolPhenixModel(ModelConfig.from_dict(meta["model_config"]))
        self.input_scale = float(meta["input_scale"])
        self.normalize = meta.get("normalize", "center")
        cache = (run_dir / "cache") if run_dir is not None else None
        fstate = meta.get("features") or {}
        self.features = MolFeatures(fstate.get("mol_input") or config.mol_input or self.model.config.mol_input,
                                    fstate.get("kwargs", config.featurizer_kwargs), cache_dir=cache,
                                    state=fstate)
        self.step = 0
        self.checkpoint: Optional[str] = None

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters (or buffers: the ridge baseline has no parameters)."""
        import itertools

        return next(itertools.chain(self.model.parameters(), self.model.buffers())).device

    @property
    def embed_dim(self) -> int:
        """D, the embedding width."""
        return int(self.model.config.embed_dim)

    @property
    def doses(self) -> list:
        """The dose set (µM) of the training data."""
        return list(self.meta.get("doses") or [])

    def forward(self, x: torch.Tensor, mol: Any, conc_um: torch.Tensor):
        """The underlying model on prepared inputs: centered ``x`` [B, E] (not yet scaled),
        molecular features [B, F] (or a GraphBatch) and concentrations [B] -> (p, q) [B, D]."""
        return self.model(x / self.input_scale, mol, conc_um)

    # ------------------------------------------------------------------ wells
    @torch.no_grad()
    def embed_wells(self, wells: Any, batches: Any = None, is_control: Any = None, *,
                    preprocessed: bool = False, batch_size: int = 8192) -> torch.Tensor:
        """Embed phenomic wells.

        Args:
            wells: Raw phenomic embeddings [N, E] (numpy or torch), or a
                :class:`molphenix.data.Dataset` (its batches and control mask are used).
            batches: Batch label per row [N] (required unless ``preprocessed`` or a Dataset).
            is_control: bool [N], the control wells that define each batch's center (required
                unless ``preprocessed`` or a Dataset). Every batch present needs controls.
            preprocessed: The rows are already centered (and averaged): skip the centering.
            batch_size: Rows per forward pass.

        Returns:
            float32 tensor [N, D] on the model's device, unit-norm rows (controls included).

        Shapes:
            wells: [N, E] -> [N, D]

        Raises:
            ValueError: wrong width; missing batches/is_control; a batch without controls
                (named); NaN/Inf inputs.
        """
        if hasattr(wells, "phenomic_matrix") and hasattr(wells, "wells"):
            x = wells.phenomic_matrix()
            batches, is_control = wells.column("batch"), wells.control_mask()
        else:
            x = wells.detach().cpu().numpy() if isinstance(wells, torch.Tensor) else np.asarray(wells)
        if x.ndim != 2:
            raise ValueError(f"wells: expected [N, E], got shape {x.shape}")
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"wells: expected floating embeddings, got dtype {x.dtype}")
        if not np.isfinite(x).all():
            raise ValueError(f"wells: row {int(np.flatnonzero(~np.isfinite(x).all(1))[0])} holds NaN/Inf")
        if not preprocessed:
            from molphenix.data import normalize_wells

            x = normalize_wells(x, batches, is_control, normalize=self.normalize)
        if x.shape[1] != self.model.config.phenomic_dim:
            raise ValueError(f"wells: expected {self.model.config.phenomic_dim} columns (the run's "
                             f"phenomic width), got {x.shape[1]}")
        return embed_wells_prepared(self.model, np.asarray(x, dtype=np.float32), self.input_scale,
                                    self.device, chunk=batch_size)

    # ------------------------------------------------------------------ molecules
    @torch.no_grad()
    def embed_molecules(self, molecules: Any, concentrations: Any = None, *,
                        batch_size: int = 8192) -> torch.Tensor:
        """Embed (molecule, concentration) pairs.

        Args:
            molecules: SMILES (a str or a sequence [N]), or a table (pyarrow Table or pandas
                DataFrame) with a ``smiles`` column (and ``concentration_um`` when
                ``concentrations`` is None; for ``column:`` inputs, the embedding column).
            concentrations: One concentration in µM for all, or [N] values.
            batch_size: Rows per forward pass.

        Returns:
            float32 tensor [N, D] on the model's device, unit-norm rows.

        Shapes:
            molecules: [N], concentrations: [N] or scalar -> [N, D]

        Raises:
            ValueError: invalid SMILES (index named); no concentrations; length mismatch.
        """
        smiles, conc, table = _molecule_inputs(molecules, concentrations)
        return self._embed_pairs(smiles, conc, table, batch_size=batch_size)

    def _embed_pairs(self, smiles: Sequence[str], conc: np.ndarray, table: Any, batch_size: int = 8192) -> torch.Tensor:
        from .inputs import MolTable

        mt = MolTable(self.features, smiles, table)
        return embed_molecule_rows(self.model, mt, np.arange(len(smiles)), conc, self.device, chunk=batch_size)

    # ------------------------------------------------------------------ retrieval
    @torch.no_grad()
    def retrieve(self, wells: Any, batches: Any = None, is_control: Any = None, *,
                 candidates: Any = None, molecules: Any = None, concentrations: Any = None,
                 ids: Any = None, k: Optional[int] = None, fraction: Optional[float] = None,
                 preprocessed: bool = False) -> Any:
        """Rank candidate (molecule, concentration) pairs for phenomic queries.

        Candidates are either a prebuilt :class:`molphenix.retrieval.Index` (``candidates``;
        e.g. ``Index.load(LIB.parquet)``) or molecules embedded here: ``molecules`` (SMILES or
        a table with ``smiles`` and optional ``molecule_id`` / ``concentration_um``) at
        ``concentrations`` (a scalar, [N] values, or ``None``: every molecule at every dose of
        the run's dose set, unless the table has ``concentration_um``).

        Args:
            wells: Query wells as for :meth:`embed_wells` (raw, or ``preprocessed``).
            batches, is_control: As for :meth:`embed_wells`.
            candidates: A :class:`molphenix.retrieval.Index` of molecule embeddings.
            molecules, concentrations: Candidates to embed (see above).
            ids: Candidate ids when embedding here (default: ``molecule_id`` + ``@`` + dose, or
                SMILES + ``@`` + dose).
            k: Results per query; or
            fraction: A fraction of the candidates (k = max(1, ceil(f N))).
            preprocessed: See :meth:`embed_wells`.

        Returns:
            pyarrow Table, one row per (query, result) in rank order: ``query`` (int64 row of
            ``wells``), ``rank`` (0 = best), ``id`` (candidate id), ``score`` (cosine) and, when
            the candidates were embedded here, ``molecule_id``, ``smiles``, ``concentration_um``.

        Raises:
            ValueError: neither or both of ``candidates``/``molecules``; neither or both of
                ``k``/``fraction``; anything :meth:`embed_wells` / :meth:`embed_molecules` raise.
        """
        import pyarrow as pa

        from molphenix.retrieval import Index

        if (candidates is None) == (molecules is None):
            raise ValueError("candidates/molecules: give exactly one (an Index, or molecules to embed)")
        info = None
        if molecules is not None:
            smiles, conc, table, mol_ids = _candidate_rows(molecules, concentrations, self.doses)
            emb = self._embed_pairs(smiles, conc, table)
            if ids is None:
                ids = [f"{m}@{c:g}" for m, c in zip(mol_ids, conc)]
            candidates = Index(emb.cpu(), ids)
            info = (mol_ids, smiles, conc)
        if not isinstance(candidates, Index):
            raise ValueError(f"candidates: expected a molphenix.retrieval.Index, got {type(candidates).__name__}")
        qemb = self.embed_wells(wells, batches, is_control, preprocessed=preprocessed).cpu()
        scores, rid = candidates.search(qemb, k, fraction=fraction)
        scores = np.asarray(scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else scores)
        nq, kk = scores.shape
        cols: Dict[str, Any] = {
            "query": pa.array(np.repeat(np.arange(nq, dtype=np.int64), kk)),
            "rank": pa.array(np.tile(np.arange(kk, dtype=np.int64), nq)),
            "id": pa.array(np.asarray(rid).reshape(-1).tolist()),
            "score": pa.array(scores.reshape(-1).astype(np.float32)),
        }
        if info is not None:
            pos = candidates.positions(np.asarray(rid).reshape(-1))
            mol_ids, smiles, conc = info
            cols["molecule_id"] = pa.array([mol_ids[i] for i in pos], pa.string())
            cols["smiles"] = pa.array([smiles[i] for i in pos], pa.string())
            cols["concentration_um"] = pa.array(np.asarray(conc, dtype=np.float64)[pos])
        return pa.table(cols)

    def extra_repr(self) -> str:
        return (f"run={str(self.run_dir)!r}, step={self.step}, mol_input={self.features.mol_input!r}, "
                f"normalize={self.normalize!r}")


def _to_arrow(molecules: Any) -> Any:
    import pyarrow as pa

    if isinstance(molecules, pa.Table):
        return molecules
    if type(molecules).__module__.split(".")[0] == "pandas":
        return pa.Table.from_pandas(molecules, preserve_index=False)
    return None


def _molecule_inputs(molecules: Any, concentrations: Any):
    table = _to_arrow(molecules)
    if table is not None:
        if "smiles" not in table.column_names:
            raise ValueError("molecules: the table needs a 'smiles' column")
        smiles = table.column("smiles").to_pylist()
        if concentrations is None and "concentration_um" in table.column_names:
            concentrations = table.column("concentration_um").to_numpy(zero_copy_only=False)
    elif isinstance(molecules, str):
        smiles = [molecules]
    else:
        smiles = list(molecules)
    for i, s in enumerate(smiles):
        if not isinstance(s, str):
            raise ValueError(f"molecules: entry {i} is not a SMILES string ({s!r})")
    if concentrations is None:
        raise ValueError("concentrations: required (µM; one value or one per molecule)")
    conc = np.asarray(concentrations, dtype=np.float64)
    if conc.ndim == 0:
        conc = np.full(len(smiles), float(conc))
    if conc.shape != (len(smiles),):
        raise ValueError(f"concentrations: expected one value or {len(smiles)} (one per molecule), "
                         f"got shape {conc.shape}")
    if not np.isfinite(conc).all() or (conc <= 0).any():
        raise ValueError("concentrations: every concentration must be a finite number > 0 µM")
    return smiles, conc, table


def _candidate_rows(molecules: Any, concentrations: Any, doses: Sequence[float]):
    table = _to_arrow(molecules)
    if table is not None:
        if "smiles" not in table.column_names:
            raise ValueError("molecules: the table needs a 'smiles' column")
        smiles = table.column("smiles").to_pylist()
        ids = table.column("molecule_id").to_pylist() if "molecule_id" in table.column_names else list(smiles)
        if concentrations is None and "concentration_um" in table.column_names:
            conc = table.column("concentration_um").to_numpy(zero_copy_only=False).astype(np.float64)
            return smiles, conc, table, ids
    else:
        smiles = [molecules] if isinstance(molecules, str) else list(molecules)
        ids = list(smiles)
    if concentrations is None:
        if not doses:
            raise ValueError("concentrations: required (the run has no dose set)")
        concentrations = list(doses)
        rep = len(concentrations)
        smiles = [s for s in smiles for _ in range(rep)]
        ids = [m for m in ids for _ in range(rep)]
        conc = np.tile(np.asarray(concentrations, dtype=np.float64), len(smiles) // rep)
        return smiles, conc, table, ids
    conc = np.asarray(concentrations, dtype=np.float64)
    if conc.ndim == 0:
        conc = np.full(len(smiles), float(conc))
    if conc.shape != (len(smiles),):
        raise ValueError(f"concentrations: expected one value or {len(smiles)} (one per molecule), "
                         f"got shape {conc.shape}")
    return smiles, conc, table, ids
