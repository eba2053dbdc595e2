"""What training, evaluation and :func:`~molphenix.train.load_run` share: the molecular
featurizer of a run and the dataset fingerprint.

The phenomic contract (the same for every consumer of a run):

1. **Center** every well on the mean of the control wells of its own batch, optionally
   TVN-whiten (:func:`molphenix.data.normalize_wells`, the arithmetic of
   :class:`~molphenix.data.ReplicateSampler`; ``TrainConfig.normalize``).
2. **Average** replicate wells per (molecule, concentration) (training: random subsets; queries
   at evaluation: all replicates).
3. **Scale**: the model sees ``x / input_scale`` (the RMS per dimension of the sampled training
   inputs, a constant of the run); the similarity inputs of S2L/CWCL are ``u = x / sigma``
   (``sigma``, the run's similarity scale, is stored as ``run.json``'s ``sigma``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

__all__ = [
    "MolFeatures",
    "MolTable",
    "dataset_fingerprint",
    "FINGERPRINT_METHOD",
]


# --------------------------------------------------------------------------- molecules


class MolFeatures:
    """The molecular featurizer of a run (``TrainConfig.mol_input``), with its fitted state.

    Args:
        mol_input: ``"morgan"``, ``"rdkit2d"``, ``"maccs"``, ``"minimol"``, ``"graph"`` or
            ``"column:<name>"``.
        kwargs: Featurizer arguments.
        cache_dir: Parquet feature cache directory (``None``: no cache). ``"minimol"`` uses
            the machine-wide embedding cache instead (``$MOLPHENIX_CACHE_DIR``).
        state: What :meth:`state` returned at training time (RDKit descriptor statistics, the
            MiniMol model version).

    Raises:
        ValueError: unknown ``mol_input``.
    """

    def __init__(self, mol_input: str, kwargs: Optional[Dict[str, Any]] = None, *,
                 cache_dir: Any = None, state: Optional[Dict[str, Any]] = None):
        from molphenix.data import featurize as fz

        self.mol_input = mol_input
        self.kwargs = dict(kwargs or {})
        self.cache_dir = cache_dir
        self._featurizer = None
        if mol_input == "graph":
            self.kind = "graph"
        elif mol_input.startswith("column:"):
            self.kind = "column"
            self.column = mol_input[len("column:"):]
        elif mol_input in ("morgan", "rdkit2d", "maccs", "minimol"):
            self.kind = "matrix"
            try:
                self._featurizer = fz.get_featurizer(mol_input, **self.kwargs)
            except TypeError as exc:  # an argument this featurizer does not take
                raise ValueError(f"featurizer_kwargs: {exc} (mol_input {mol_input!r})") from None
            if state and mol_input == "rdkit2d" and state.get("mean") is not None:
                self._featurizer.mean_ = np.asarray(state["mean"], dtype=np.float64)
                self._featurizer.std_ = np.asarray(state["std"], dtype=np.float64)
            if state and mol_input == "minimol":
                self._featurizer.expected_version = state.get("model_version")
        else:
            raise ValueError(f"mol_input: expected 'morgan', 'rdkit2d', 'maccs', 'minimol', 'graph' or "
                             f"'column:<name>', got {mol_input!r}")

    @property
    def is_graph(self) -> bool:
        """True for the message-passing input (graphs instead of a matrix)."""
        return self.kind == "graph"

    def fit(self, smiles: Sequence[str]) -> "MolFeatures":
        """Fit what the featurizer learns from data (RDKit descriptor standardisation)."""
        if self.mol_input == "rdkit2d":
            self._featurizer.fit(raw=self._featurizer.compute(list(smiles), on_invalid="zero"))
        return self

    def state(self) -> Dict[str, Any]:
        """JSON-serialisable fitted state (stored in the run)."""
        st: Dict[str, Any] = {"mol_input": self.mol_input, "kwargs": self.kwargs}
        if self.mol_input == "rdkit2d" and self._featurizer.mean_ is not None:
            st["mean"] = self._featurizer.mean_.tolist()
            st["std"] = self._featurizer.std_.tolist()
        if self.mol_input == "minimol":
            st["model_version"] = self._featurizer.model_version
        return st

    def summary(self) -> Optional[str]:
        """One line on the latest featurization of a cached pretrained encoder (``"minimol"``):
        molecules, cached before, computed, seconds, the cache directory; None otherwise."""
        st = getattr(self._featurizer, "last_stats", None)
        if not st:
            return None
        load = f"; model load {st['model_load_seconds']:.1f} s" if st.get("model_load_seconds") else ""
        return (f"{self.mol_input}: {st['molecules']} molecules ({st['distinct']} distinct structures): "
                f"{st['cached']} cached, {st['computed']} computed in {st['seconds']:.1f} s "
                f"(cache: {st['cache_dir']}{load})")

    def dim(self, molecules: Any = None) -> int:
        """Feature width F (0 for graphs)."""
        if self.kind == "graph":
            return 0
        if self.kind == "column":
            if molecules is None:
                raise ValueError(f"molecules: mol_input {self.mol_input!r} needs the molecules table")
            from molphenix.data.featurize import EmbeddingColumn

            return EmbeddingColumn(molecules, self.column).dim
        return int(self._featurizer.dim)

    def matrix(self, smiles: Sequence[str], molecules: Any = None) -> np.ndarray:
        """Features of SMILES.

        Args:
            smiles: SMILES [N].
            molecules: The molecules table holding the embedding column (``column:`` inputs).

        Returns:
            float32 [N, F].

        Raises:
            ValueError: invalid SMILES (index named); a graph featurizer.
        """
        from molphenix.data import featurize as fz

        if self.kind == "graph":
            raise ValueError("mol_input 'graph' has no feature matrix; use graphs()")
        if self.kind == "column":
            if molecules is None:
                raise ValueError(f"molecules: mol_input {self.mol_input!r} needs the molecules table "
                                 f"with the {self.column!r} column")
            try:
                return fz.EmbeddingColumn(molecules, self.column).compute(list(smiles))
            except KeyError as exc:
                raise ValueError(str(exc).strip("'\"")) from None
        return fz.featurize(list(smiles), self._featurizer, cache_dir=self.cache_dir)

    def graphs(self, smiles: Sequence[str]) -> List[Any]:
        """Molecular graphs of SMILES (``mol_input="graph"``)."""
        from molphenix.data import featurize as fz

        return fz.featurize_graphs(list(smiles), cache_dir=self.cache_dir)


class MolTable:
    """Featurized molecules addressable by row: ``batch(rows)`` gives the model's molecular input.

    Args:
        features: The run's :class:`MolFeatures`.
        smiles: SMILES [M], one per row.
        molecules: The molecules table (``column:`` inputs).
    """

    def __init__(self, features: MolFeatures, smiles: Sequence[str], molecules: Any = None):
        import torch

        self.features = features
        self.n = len(smiles)
        if features.is_graph:
            self._graphs = features.graphs(smiles)
            self._mat = None
        else:
            self._graphs = None
            self._mat = torch.from_numpy(np.ascontiguousarray(features.matrix(smiles, molecules)))

    def batch(self, rows: np.ndarray, device: Any = "cpu") -> Any:
        """Model input for the given rows: a float32 tensor [B, F] or a GraphBatch of B graphs."""
        import torch

        if self._mat is not None:
            return self._mat[torch.as_tensor(np.asarray(rows, dtype=np.int64))].to(device)
        from molphenix.data.featurize import collate_graphs

        return collate_graphs([self._graphs[int(r)] for r in rows]).to(device)


# --------------------------------------------------------------------------- fingerprint

#: How :func:`dataset_fingerprint` hashes a dataset (recorded beside the hash).
FINGERPRINT_METHOD = "sha256/v1: wells (ids, dataset, batch, plate, molecule, concentration, control, phenomic bytes), molecules (id, smiles), calls (id, concentration, p_value)"


def dataset_fingerprint(dataset: Any) -> Dict[str, Any]:
    """A content hash of a dataset: what a resumed run and an evaluation check against.

    It hashes, in the dataset's row order, the wells' ``well_id``, ``dataset``, ``batch``,
    ``plate``, ``molecule_id``, ``concentration_um``, ``is_control`` and the raw bytes of the
    float32 phenomic matrix; the molecules' ``molecule_id`` and ``smiles``; and, when present,
    the activity calls' keys and p-values. Extra columns, file names, modification times,
    Parquet compression and row-group layout do not change it; any changed value does. Cost:
    one pass over the phenomic matrix (sha256 runs at several hundred MB/s).

    Args:
        dataset: A :class:`molphenix.data.Dataset`.

    Returns:
        dict ``sha256`` (hex), ``n_wells``, ``n_molecules``, ``embedding_dim``, ``method``.
    """
    h = hashlib.sha256()

    def add_col(table: Any, name: str) -> None:
        if name not in table.column_names:
            h.update(f"<no {name}>".encode())
            return
        h.update(name.encode() + b"\x00")
        vals = table.column(name).to_pylist()
        h.update(json.dumps(vals, default=str).encode())

    w = dataset.wells
    for c in ("well_id", "dataset", "batch", "plate", "molecule_id", "concentration_um", "is_control"):
        add_col(w, c)
    x = np.ascontiguousarray(dataset.phenomic_matrix(), dtype=np.float32)
    step = 1 << 16
    for s in range(0, x.shape[0], step):
        h.update(memoryview(x[s : s + step]).cast("B"))
    for c in ("molecule_id", "smiles"):
        add_col(dataset.molecules, c)
    if dataset.calls is not None:
        for c in ("molecule_id", "concentration_um", "p_value"):
            add_col(dataset.calls, c)
    return {
        "sha256": h.hexdigest(),
        "n_wells": int(dataset.n_wells),
        "n_molecules": int(dataset.molecules.num_rows),
        "embedding_dim": int(dataset.embedding_dim),
        "method": FINGERPRINT_METHOD,
    }
