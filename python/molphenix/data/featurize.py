"""Molecular featurizers (RDKit) and a Parquet feature cache.

Matrix featurizers map SMILES to a float32 matrix [N, F]:

* :class:`MorganCounts` — Morgan/ECFP count fingerprints (radius, size).
* :class:`RDKitDescriptors` — RDKit 2D descriptors; ``asinh``-compressed, standardised with
  statistics from :meth:`RDKitDescriptors.fit` (or the batch itself), NaN -> 0, clipped, finite.
* :class:`MACCSKeys` — the 167 MACCS structural keys.
* :class:`EmbeddingColumn` — precomputed embeddings stored in the molecules table.
* :class:`molphenix.data.minimol.MiniMol` — the pretrained MiniMol encoder (512-d; optional
  extra ``molphenix[minimol]``), with its own machine-wide cache (:mod:`molphenix.data.cache`).

:class:`GraphFeaturizer` turns SMILES into :class:`MolGraph` (atom/bond features, edges) for a
trainable message-passing network; :func:`collate_graphs` batches them into a
:class:`GraphBatch` of torch tensors.

:func:`featurize` computes a matrix featurizer with an optional on-disk cache: one Parquet file
per featurizer *settings* (``<name>-<sha1(settings)[:12]>.parquet``) keyed by SMILES; only
SMILES not yet cached are computed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "Featurizer",
    "MorganCounts",
    "RDKitDescriptors",
    "MACCSKeys",
    "EmbeddingColumn",
    "GraphFeaturizer",
    "MolGraph",
    "GraphBatch",
    "collate_graphs",
    "featurize",
    "featurize_graphs",
    "FeatureCache",
    "get_featurizer",
    "featurizer_from_state",
    "InvalidSmilesError",
]


class InvalidSmilesError(ValueError):
    """A SMILES string could not be parsed.

    Attributes:
        index: Position of the first invalid SMILES in the input.
        smiles: The offending string.
    """

    def __init__(self, index: int, smiles: str | None):
        self.index = index
        self.smiles = smiles
        super().__init__(f"smiles[{index}] = {smiles!r} is not a valid SMILES")


def _mols(smiles: Sequence[str], on_invalid: str = "raise") -> list[Any]:
    from rdkit import Chem, RDLogger

    if on_invalid not in ("raise", "zero"):
        raise ValueError(f"on_invalid must be 'raise' or 'zero', got {on_invalid!r}")
    RDLogger.DisableLog("rdApp.*")
    try:
        out = []
        for i, s in enumerate(smiles):
            m = Chem.MolFromSmiles(s) if s else None
            if m is None and on_invalid == "raise":
                raise InvalidSmilesError(i, s)
            out.append(m)
        return out
    finally:
        RDLogger.EnableLog("rdApp.*")


@runtime_checkable
class Featurizer(Protocol):
    """A matrix featurizer: SMILES -> float32 [N, dim]."""

    name: str

    @property
    def dim(self) -> int:  # pragma: no cover - protocol
        """Feature width."""
        ...

    def settings(self) -> dict[str, Any]:  # pragma: no cover - protocol
        """Settings that determine the output (the cache key)."""
        ...

    def compute(self, smiles: Sequence[str], *, on_invalid: str = "raise") -> np.ndarray:  # pragma: no cover
        """Raw (cacheable) features [N, dim]."""
        ...

    def finalize(self, raw: np.ndarray) -> np.ndarray:  # pragma: no cover
        """Post-processing applied after the cache (e.g. standardisation)."""
        ...


class _Base:
    name = "base"

    def finalize(self, raw: np.ndarray) -> np.ndarray:
        return raw

    def __call__(self, smiles: Sequence[str], *, on_invalid: str = "raise") -> np.ndarray:
        """Featurize without caching.

        Args:
            smiles: SMILES strings [N].
            on_invalid: ``"raise"`` (:class:`InvalidSmilesError`) or ``"zero"`` (zero rows).

        Returns:
            float32 [N, dim].
        """
        return self.finalize(self.compute(smiles, on_invalid=on_invalid))

    def compute_mols(self, mols: Sequence[Any]) -> np.ndarray:
        """Features of parsed RDKit molecules (none ``None``): exactly what ``self(smiles)``
        returns for their SMILES, without parsing them again (streamed featurization parses
        each SMILES once, to report invalid ones with RDKit's reason).

        Returns:
            float32 [N, dim].
        """
        return self.finalize(self._from_mols(list(mols)))

    def _from_mols(self, mols: Sequence[Any]) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} featurizes SMILES only")

    def cache_key(self) -> str:
        """``<name>-<sha1 of settings>``: the cache file stem."""
        blob = json.dumps({"name": self.name, **self.settings()}, sort_keys=True)
        return f"{self.name}-{hashlib.sha1(blob.encode()).hexdigest()[:12]}"


class MorganCounts(_Base):
    """Morgan (ECFP-like) count fingerprint.

    Args:
        radius: Morgan radius (2 ≈ ECFP4).
        n_bits: Folded size.
        chirality: Include chirality in the invariants.
        log_counts: Return ``log1p(count)`` instead of raw counts.
    """

    name = "morgan"

    def __init__(self, radius: int = 2, n_bits: int = 2048, *, chirality: bool = False, log_counts: bool = False):
        if radius < 0 or n_bits < 1:
            raise ValueError(f"need radius >= 0 and n_bits >= 1, got {radius}, {n_bits}")
        self.radius, self.n_bits, self.chirality, self.log_counts = radius, n_bits, chirality, log_counts

    @property
    def dim(self) -> int:
        return self.n_bits

    def settings(self) -> dict[str, Any]:
        return {"radius": self.radius, "n_bits": self.n_bits, "chirality": self.chirality, "log_counts": self.log_counts}

    def compute(self, smiles: Sequence[str], *, on_invalid: str = "raise") -> np.ndarray:
        return self._from_mols(_mols(smiles, on_invalid))

    def _from_mols(self, mols: Sequence[Any]) -> np.ndarray:
        from rdkit.Chem import rdFingerprintGenerator

        gen = rdFingerprintGenerator.GetMorganGenerator(
            radius=self.radius, fpSize=self.n_bits, includeChirality=self.chirality
        )
        out = np.zeros((len(mols), self.n_bits), dtype=np.float32)
        for i, m in enumerate(mols):
            if m is not None:
                out[i] = gen.GetCountFingerprintAsNumPy(m)
        return np.log1p(out) if self.log_counts else out


class MACCSKeys(_Base):
    """The 167 MACCS keys (bit 0 is always 0 in RDKit's implementation)."""

    name = "maccs"

    @property
    def dim(self) -> int:
        return 167

    def settings(self) -> dict[str, Any]:
        return {}

    def compute(self, smiles: Sequence[str], *, on_invalid: str = "raise") -> np.ndarray:
        return self._from_mols(_mols(smiles, on_invalid))

    def _from_mols(self, mols: Sequence[Any]) -> np.ndarray:
        from rdkit import DataStructs
        from rdkit.Chem import MACCSkeys

        out = np.zeros((len(mols), 167), dtype=np.float32)
        for i, m in enumerate(mols):
            if m is not None:
                arr = np.zeros(167, dtype=np.float64)
                DataStructs.ConvertToNumpyArray(MACCSkeys.GenMACCSKeys(m), arr)
                out[i] = arr
        return out


class RDKitDescriptors(_Base):
    """RDKit 2D descriptors, finite and standardised.

    ``compute`` returns ``asinh(raw)`` (NaN where RDKit fails or overflows; the asinh tames
    heavy-tailed descriptors such as ``Ipc``); that is what the cache stores. ``finalize``
    standardises with the mean/std from :meth:`fit` (or, if never fitted, of the batch
    itself), replaces NaN by 0 (the mean) and clips to ±``clip``.

    Args:
        names: Descriptor names (default: all of ``rdkit.Chem.Descriptors._descList``).
        clip: Clip standardised values to [-clip, clip].
    """

    name = "rdkit2d"

    def __init__(self, names: Sequence[str] | None = None, *, clip: float = 8.0):
        from rdkit.Chem import Descriptors

        table = dict(Descriptors._descList)
        self.names = list(names) if names is not None else list(table)
        unknown = [n for n in self.names if n not in table]
        if unknown:
            raise ValueError(f"unknown RDKit descriptors: {unknown[:5]}")
        self._fns = [table[n] for n in self.names]
        self.clip = float(clip)
        self.mean_: np.ndarray | None = None
        self.std_: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return len(self.names)

    def settings(self) -> dict[str, Any]:
        # the cache holds asinh(raw): clip and fitted statistics do not change it
        from rdkit import __version__

        return {"names": self.names, "rdkit": __version__}

    def compute(self, smiles: Sequence[str], *, on_invalid: str = "raise") -> np.ndarray:
        return self._from_mols(_mols(smiles, on_invalid))

    def _from_mols(self, mols: Sequence[Any]) -> np.ndarray:
        out = np.full((len(mols), self.dim), np.nan, dtype=np.float64)
        with np.errstate(all="ignore"):
            for i, m in enumerate(mols):
                if m is None:
                    continue
                for j, fn in enumerate(self._fns):
                    try:
                        out[i, j] = float(fn(m))
                    except Exception:  # noqa: BLE001 - RDKit raises assorted errors
                        pass
            out[~np.isfinite(out)] = np.nan
            return np.arcsinh(out).astype(np.float32)

    def fit(self, smiles: Sequence[str] | None = None, *, raw: np.ndarray | None = None) -> "RDKitDescriptors":
        """Fit the standardisation statistics.

        Args:
            smiles: Training SMILES (computed here), or
            raw: Precomputed ``compute`` output [N, dim].

        Returns:
            self.
        """
        if raw is None:
            if smiles is None:
                raise ValueError("fit needs smiles or raw")
            raw = self.compute(smiles, on_invalid="zero")
        self.mean_, self.std_ = self._stats(raw)
        return self

    @staticmethod
    def _stats(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = np.asarray(raw, dtype=np.float64)
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(r, axis=0) if len(r) else np.zeros(r.shape[1])
                std = np.nanstd(r, axis=0) if len(r) else np.ones(r.shape[1])
        mean = np.where(np.isfinite(mean), mean, 0.0)
        std = np.where(np.isfinite(std) & (std > 1e-8), std, 1.0)
        return mean, std

    def finalize(self, raw: np.ndarray) -> np.ndarray:
        mean, std = (self.mean_, self.std_) if self.mean_ is not None else self._stats(raw)
        z = (np.asarray(raw, dtype=np.float64) - mean) / std
        z = np.nan_to_num(z, nan=0.0, posinf=self.clip, neginf=-self.clip)
        return np.clip(z, -self.clip, self.clip).astype(np.float32)


class EmbeddingColumn(_Base):
    """Precomputed molecular embeddings from a column of the molecules table.

    Args:
        molecules: Molecules table (``smiles`` and the embedding column).
        column: Name of a ``fixed_size_list<float>`` (or uniform ``list<float>``) column.
    """

    name = "embedding"

    def __init__(self, molecules: pa.Table, column: str):
        from .schema import _embedding_column

        col = _embedding_column("molecules", molecules, column, None).combine_chunks()
        self.column = column
        self._dim = col.type.list_size
        mat = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, self._dim)
        self._index = {s: i for i, s in enumerate(molecules.column("smiles").to_pylist())}
        self._mat = mat.astype(np.float32, copy=False)

    @property
    def dim(self) -> int:
        return self._dim

    def settings(self) -> dict[str, Any]:
        return {"column": self.column, "dim": self._dim}

    def compute(self, smiles: Sequence[str], *, on_invalid: str = "raise") -> np.ndarray:
        out = np.zeros((len(smiles), self._dim), dtype=np.float32)
        for i, s in enumerate(smiles):
            j = self._index.get(s)
            if j is None:
                if on_invalid == "raise":
                    raise KeyError(f"smiles[{i}] = {s!r} has no precomputed {self.column!r} embedding")
                continue
            out[i] = self._mat[j]
        return out

    def cache_key(self) -> str:  # never cached: it already is a table
        return ""


def featurizer_from_state(state: dict[str, Any]) -> _Base:
    """The matrix featurizer a run stored (``{"mol_input", "kwargs", "mean", "std"}``, as
    ``molphenix.train.MolFeatures.state()`` returns it), with its fitted statistics.

    Raises:
        ValueError: not a matrix featurizer (graph and column inputs have none).
    """
    f = get_featurizer(state["mol_input"], **(state.get("kwargs") or {}))
    if isinstance(f, RDKitDescriptors) and state.get("mean") is not None:
        f.mean_ = np.asarray(state["mean"], dtype=np.float64)
        f.std_ = np.asarray(state["std"], dtype=np.float64)
    if state.get("model_version") is not None and hasattr(f, "expected_version"):
        f.expected_version = state["model_version"]  # a pretrained encoder must match the run's
    return f


def get_featurizer(name: str, **kwargs: Any) -> _Base:
    """Build a featurizer by name.

    Args:
        name: ``"morgan"``, ``"rdkit2d"``, ``"maccs"`` or ``"minimol"`` (the pretrained MiniMol
            encoder, :class:`molphenix.data.minimol.MiniMol`; needs the ``molphenix[minimol]``
            extra when molecules must be embedded).
        **kwargs: Constructor arguments.

    Returns:
        The featurizer.

    Raises:
        ValueError: unknown name.
    """
    from .minimol import MiniMol

    table = {"morgan": MorganCounts, "rdkit2d": RDKitDescriptors, "maccs": MACCSKeys, "minimol": MiniMol}
    if name not in table:
        raise ValueError(f"unknown featurizer {name!r}; choose from {sorted(table)}")
    return table[name](**kwargs)


# ----------------------------------------------------------------------------- cache


class FeatureCache:
    """Parquet cache of featurized molecules keyed by SMILES and featurizer settings.

    Files: ``<dir>/<featurizer.cache_key()>.parquet`` with columns ``smiles`` (str) and
    ``features`` (``fixed_size_list<float32>[dim]``), plus ``settings`` JSON in the schema
    metadata. Writes are atomic (temporary file + rename).

    Args:
        directory: Cache directory (created on first write).
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def path(self, featurizer: _Base) -> Path:
        """Cache file of a featurizer."""
        return self.directory / f"{featurizer.cache_key()}.parquet"

    def lookup(self, featurizer: _Base) -> dict[str, np.ndarray]:
        """All cached rows of a featurizer.

        Returns:
            dict SMILES -> float32 [dim].
        """
        p = self.path(featurizer)
        if not p.exists():
            return {}
        t = pq.read_table(p)
        mat = t.column("features").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        mat = mat.reshape(t.num_rows, featurizer.dim)
        return dict(zip(t.column("smiles").to_pylist(), mat))

    def store(self, featurizer: _Base, smiles: Sequence[str], raw: np.ndarray) -> None:
        """Merge rows into the cache file.

        Args:
            featurizer: The featurizer (its settings pick the file).
            smiles: SMILES [N].
            raw: float32 [N, dim] from ``featurizer.compute``.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        p = self.path(featurizer)
        old = self.lookup(featurizer)
        for s, row in zip(smiles, raw):
            old[s] = row
        keys = sorted(old)
        mat = np.stack([old[k] for k in keys]).astype(np.float32) if keys else np.zeros((0, featurizer.dim), np.float32)
        table = pa.table(
            {
                "smiles": pa.array(keys, pa.string()),
                "features": pa.FixedSizeListArray.from_arrays(pa.array(mat.reshape(-1)), featurizer.dim),
            }
        ).replace_schema_metadata(
            {"molphenix_featurizer": json.dumps({"name": featurizer.name, **featurizer.settings()}, sort_keys=True)}
        )
        tmp = p.with_name(p.name + f".tmp{os.getpid()}")
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, p)


def featurize(
    smiles: Sequence[str],
    featurizer: _Base | str = "morgan",
    *,
    cache_dir: str | os.PathLike | None = None,
    on_invalid: str = "raise",
    **kwargs: Any,
) -> np.ndarray:
    """Featurize SMILES, reusing and extending an on-disk cache.

    Args:
        smiles: SMILES strings [N].
        featurizer: A featurizer object or a name for :func:`get_featurizer`.
        cache_dir: Cache directory (``None``: no cache).
        on_invalid: ``"raise"`` or ``"zero"`` (invalid SMILES give zero rows; never cached).
        **kwargs: Featurizer arguments when ``featurizer`` is a name.

    Returns:
        float32 [N, dim], finite.

    Raises:
        InvalidSmilesError: an invalid SMILES with ``on_invalid="raise"``.
    """
    f = get_featurizer(featurizer, **kwargs) if isinstance(featurizer, str) else featurizer
    smiles = list(smiles)
    if cache_dir is None or not f.cache_key():
        return f(smiles, on_invalid=on_invalid)
    cache = FeatureCache(cache_dir)
    have = cache.lookup(f)
    missing = sorted({s for s in smiles if s not in have})
    if missing:
        raw_new = f.compute(missing, on_invalid=on_invalid)
        valid = np.array([m is not None for m in _mols(missing, "zero")]) if on_invalid == "zero" else np.ones(len(missing), bool)
        keep = [s for s, v in zip(missing, valid) if v]
        if keep:
            cache.store(f, keep, raw_new[valid])
        for s, row in zip(missing, raw_new):
            have[s] = row
    raw = np.stack([have[s] for s in smiles]).astype(np.float32) if smiles else np.zeros((0, f.dim), np.float32)
    return f.finalize(raw)


# ----------------------------------------------------------------------------- graphs

_ATOMS = ["B", "C", "N", "O", "F", "Si", "P", "S", "Cl", "Br", "I", "Se"]
_DEGREES = [0, 1, 2, 3, 4, 5]
_CHARGES = [-2, -1, 0, 1, 2]
_HS = [0, 1, 2, 3, 4]


def _one_hot(value: Any, choices: Sequence[Any]) -> list[float]:
    v = [0.0] * (len(choices) + 1)
    v[choices.index(value) if value in choices else len(choices)] = 1.0
    return v


@dataclass
class MolGraph:
    """One molecule as a graph.

    Attributes:
        x: Atom features, float32 [n_atoms, ATOM_DIM].
        edge_index: int64 [2, n_edges] (each bond in both directions).
        edge_attr: Bond features, float32 [n_edges, BOND_DIM].
    """

    x: np.ndarray
    edge_index: np.ndarray
    edge_attr: np.ndarray

    @property
    def num_atoms(self) -> int:
        """Number of atoms (nodes)."""
        return int(self.x.shape[0])


@dataclass
class GraphBatch:
    """A batch of graphs as one disconnected graph (torch tensors).

    Attributes:
        x: float32 [total_atoms, ATOM_DIM].
        edge_index: int64 [2, total_edges], offset per graph.
        edge_attr: float32 [total_edges, BOND_DIM].
        batch: int64 [total_atoms], graph index of each atom.
        num_graphs: Number of graphs B.
    """

    x: Any
    edge_index: Any
    edge_attr: Any
    batch: Any
    num_graphs: int

    def to(self, device: Any) -> "GraphBatch":
        """Move all tensors to ``device``."""
        return GraphBatch(
            self.x.to(device), self.edge_index.to(device), self.edge_attr.to(device), self.batch.to(device), self.num_graphs
        )


class GraphFeaturizer:
    """SMILES -> :class:`MolGraph` with atom and bond features.

    Atom features (``ATOM_DIM`` = 41): one-hot element (12 + other), degree (0-5 + other),
    formal charge (-2..2 + other), total H count (0-4 + other), hybridisation
    (SP, SP2, SP3, SP3D, SP3D2 + other), aromatic, in ring, mass / 100.
    Bond features (``BOND_DIM`` = 6): single, double, triple, aromatic, conjugated, in ring.
    """

    name = "graph"
    ATOM_DIM = 13 + 7 + 6 + 6 + 6 + 3
    BOND_DIM = 6

    def settings(self) -> dict[str, Any]:
        """Settings (fixed feature layout)."""
        return {"atom_dim": self.ATOM_DIM, "bond_dim": self.BOND_DIM, "version": 1}

    def atom_features(self, atom: Any) -> list[float]:
        """Feature vector of one RDKit atom (length ATOM_DIM)."""
        from rdkit import Chem

        hyb = [
            Chem.rdchem.HybridizationType.SP,
            Chem.rdchem.HybridizationType.SP2,
            Chem.rdchem.HybridizationType.SP3,
            Chem.rdchem.HybridizationType.SP3D,
            Chem.rdchem.HybridizationType.SP3D2,
        ]
        return (
            _one_hot(atom.GetSymbol(), _ATOMS)
            + _one_hot(atom.GetDegree(), _DEGREES)
            + _one_hot(atom.GetFormalCharge(), _CHARGES)
            + _one_hot(atom.GetTotalNumHs(), _HS)
            + _one_hot(atom.GetHybridization(), hyb)
            + [float(atom.GetIsAromatic()), float(atom.IsInRing()), atom.GetMass() / 100.0]
        )

    def bond_features(self, bond: Any) -> list[float]:
        """Feature vector of one RDKit bond (length BOND_DIM)."""
        from rdkit import Chem

        bt = bond.GetBondType()
        return [
            float(bt == Chem.rdchem.BondType.SINGLE),
            float(bt == Chem.rdchem.BondType.DOUBLE),
            float(bt == Chem.rdchem.BondType.TRIPLE),
            float(bt == Chem.rdchem.BondType.AROMATIC),
            float(bond.GetIsConjugated()),
            float(bond.IsInRing()),
        ]

    def graph(self, mol: Any) -> MolGraph:
        """Graph of an RDKit molecule."""
        x = np.asarray([self.atom_features(a) for a in mol.GetAtoms()], dtype=np.float32).reshape(-1, self.ATOM_DIM)
        src, dst, attr = [], [], []
        for b in mol.GetBonds():
            i, j = b.GetBeginAtomIdx(), b.GetEndAtomIdx()
            f = self.bond_features(b)
            src += [i, j]
            dst += [j, i]
            attr += [f, f]
        return MolGraph(
            x=x,
            edge_index=np.asarray([src, dst], dtype=np.int64).reshape(2, -1),
            edge_attr=np.asarray(attr, dtype=np.float32).reshape(-1, self.BOND_DIM),
        )

    def compute_mols(self, mols: Sequence[Any]) -> list[MolGraph]:
        """Graphs of parsed RDKit molecules (none ``None``), without parsing again."""
        return [self.graph(m) for m in mols]

    def __call__(self, smiles: Sequence[str], *, on_invalid: str = "raise") -> list[MolGraph | None]:
        """Graphs for a list of SMILES.

        Args:
            smiles: SMILES [N].
            on_invalid: ``"raise"`` or ``"zero"`` (``None`` entries for invalid SMILES).

        Returns:
            List [N] of :class:`MolGraph` (or ``None``).

        Raises:
            InvalidSmilesError: an invalid SMILES with ``on_invalid="raise"``.
        """
        return [None if m is None else self.graph(m) for m in _mols(smiles, on_invalid)]


def collate_graphs(graphs: Sequence[MolGraph]) -> GraphBatch:
    """Batch graphs into one disconnected graph.

    Args:
        graphs: Non-empty list of :class:`MolGraph`.

    Returns:
        :class:`GraphBatch` with torch tensors; ``edge_index`` offset by each graph's first
        atom, ``batch[a]`` = index of the graph holding atom a.

    Raises:
        ValueError: empty list or a ``None`` entry.
    """
    import torch

    if len(graphs) == 0:
        raise ValueError("graphs: cannot collate an empty list")
    for i, g in enumerate(graphs):
        if g is None:
            raise ValueError(f"graphs[{i}] is None (invalid SMILES)")
    sizes = np.array([g.num_atoms for g in graphs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    x = np.concatenate([g.x for g in graphs], axis=0)
    ei = np.concatenate([g.edge_index + o for g, o in zip(graphs, offsets)], axis=1)
    ea = np.concatenate([g.edge_attr for g in graphs], axis=0)
    batch = np.repeat(np.arange(len(graphs), dtype=np.int64), sizes)
    return GraphBatch(
        x=torch.from_numpy(x),
        edge_index=torch.from_numpy(ei),
        edge_attr=torch.from_numpy(ea),
        batch=torch.from_numpy(batch),
        num_graphs=len(graphs),
    )


def _graph_cache_path(directory: Path, g: GraphFeaturizer) -> Path:
    blob = json.dumps({"name": g.name, **g.settings()}, sort_keys=True)
    return directory / f"{g.name}-{hashlib.sha1(blob.encode()).hexdigest()[:12]}.parquet"


def featurize_graphs(
    smiles: Sequence[str],
    *,
    cache_dir: str | os.PathLike | None = None,
    on_invalid: str = "raise",
    featurizer: GraphFeaturizer | None = None,
) -> list[MolGraph | None]:
    """Graphs for SMILES with an optional Parquet cache keyed by SMILES and feature layout.

    The cache file (``graph-<sha1(settings)[:12]>.parquet``) stores per SMILES the flattened
    ``x`` (list<float32>), ``edge_index`` (list<int64>) and ``edge_attr`` (list<float32>).

    Args:
        smiles: SMILES [N].
        cache_dir: Cache directory (``None``: no cache).
        on_invalid: ``"raise"`` or ``"zero"`` (``None`` entries; never cached).
        featurizer: Graph featurizer (default :class:`GraphFeaturizer`).

    Returns:
        List [N] of :class:`MolGraph` (or ``None`` for invalid SMILES with ``on_invalid="zero"``).

    Raises:
        InvalidSmilesError: an invalid SMILES with ``on_invalid="raise"``.
    """
    g = featurizer or GraphFeaturizer()
    smiles = list(smiles)
    if cache_dir is None:
        return g(smiles, on_invalid=on_invalid)
    directory = Path(cache_dir)
    path = _graph_cache_path(directory, g)
    have: dict[str, MolGraph] = {}
    if path.exists():
        t = pq.read_table(path)
        for s_, x, ei, ea in zip(*(t.column(c).to_pylist() for c in ("smiles", "x", "edge_index", "edge_attr"))):
            have[s_] = MolGraph(
                x=np.asarray(x, dtype=np.float32).reshape(-1, g.ATOM_DIM),
                edge_index=np.asarray(ei, dtype=np.int64).reshape(2, -1),
                edge_attr=np.asarray(ea, dtype=np.float32).reshape(-1, g.BOND_DIM),
            )
    missing = sorted({s_ for s_ in smiles if s_ not in have})
    if missing:
        new = g(missing, on_invalid=on_invalid)
        for s_, gr in zip(missing, new):
            if gr is not None:
                have[s_] = gr
        keys = sorted(have)
        table = pa.table(
            {
                "smiles": pa.array(keys, pa.string()),
                "x": pa.array([have[k].x.reshape(-1) for k in keys], pa.list_(pa.float32())),
                "edge_index": pa.array([have[k].edge_index.reshape(-1) for k in keys], pa.list_(pa.int64())),
                "edge_attr": pa.array([have[k].edge_attr.reshape(-1) for k in keys], pa.list_(pa.float32())),
            }
        ).replace_schema_metadata({"molphenix_featurizer": json.dumps({"name": g.name, **g.settings()}, sort_keys=True)})
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    return [have.get(s_) for s_ in smiles]
