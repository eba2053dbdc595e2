"""Train / evaluation splits at the well level.

Every well gets exactly one label:

* ``control`` — control wells: in no split; every split uses them for normalisation.
* ``unseen_dataset`` — treated wells of every dataset other than the primary one (the second
  library, measured in other batches). Absent when the dataset has a single ``dataset`` value.
* ``unseen_molecules`` — treated primary-dataset wells of molecules whose Bemis-Murcko scaffold
  was drawn for the test set: no scaffold occurs in both train and test.
* ``val`` — like ``unseen_molecules``, a disjoint set of scaffolds (for model selection).
* ``unseen_wells`` — held-out replicate wells of *training* molecules: for each training
  (molecule, concentration) with >= 2 wells, each well except one kept well is held out with
  probability ``unseen_wells_fraction``.
* ``train`` — the rest.

Assignment is deterministic for a seed and independent of row order (wells are processed in
``well_id`` order, scaffold groups in sorted order before the seeded shuffle).

**Grouped k-fold** (``make_splits(..., folds=K, fold=k)``): the primary dataset's scaffold groups
are dealt into K folds of near-equal molecule counts (:func:`fold_assignment`); fold ``k`` is the
``unseen_molecules`` split, so the K test sets partition the molecules and every molecule is
tested exactly once over the K folds. ``val`` is drawn (whole scaffold groups, ``val_fraction`` of
all primary molecules, never exceeded) from the other K - 1 folds with a stream of
``(seed, fold)``; ``unseen_wells`` and ``unseen_dataset`` are formed as above; the rest trains.
``seed`` fixes the partition: every fold of one cross-validation uses the same seed, another
seed gives another partition.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

__all__ = ["SPLIT_NAMES", "Splits", "fold_assignment", "make_splits", "scaffold_of", "scaffolds"]

SPLIT_NAMES = ("train", "val", "unseen_wells", "unseen_molecules", "unseen_dataset", "control")


def scaffold_of(smiles: str) -> str:
    """Bemis-Murcko scaffold SMILES of a molecule.

    A molecule without rings is its own scaffold (its canonical SMILES), so acyclic molecules
    do not all collapse into one group.

    Args:
        smiles: A valid SMILES.

    Returns:
        Canonical scaffold SMILES.

    Raises:
        ValueError: invalid SMILES.
    """
    from rdkit import Chem
    from rdkit.Chem.Scaffolds import MurckoScaffold

    mol = Chem.MolFromSmiles(smiles) if smiles else None
    if mol is None:
        raise ValueError(f"invalid SMILES {smiles!r}")
    scaf = MurckoScaffold.MurckoScaffoldSmiles(mol=mol)
    return scaf if scaf else Chem.MolToSmiles(mol)


def scaffolds(smiles: list[str]) -> list[str]:
    """:func:`scaffold_of` for a list.

    Args:
        smiles: SMILES [N].

    Returns:
        Scaffold SMILES [N].
    """
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")
    try:
        return [scaffold_of(s) for s in smiles]
    finally:
        RDLogger.EnableLog("rdApp.*")


@dataclass
class Splits:
    """A well-level split assignment.

    Attributes:
        well_id: Well ids [N] (the dataset's row order).
        split: Split label per well [N] (values in :data:`SPLIT_NAMES`).
        scaffold: molecule_id -> scaffold SMILES for the molecules of the primary dataset.
        meta: Settings (seed, fractions, primary dataset) and counts.
    """

    well_id: np.ndarray
    split: np.ndarray
    scaffold: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def mask(self, name: str) -> np.ndarray:
        """Bool [N]: wells in split ``name``.

        Raises:
            ValueError: unknown split name.
        """
        if name not in SPLIT_NAMES:
            raise ValueError(f"unknown split {name!r}; choose from {SPLIT_NAMES}")
        return self.split == name

    def indices(self, name: str) -> np.ndarray:
        """Row indices (int64) of the wells in split ``name``."""
        return np.flatnonzero(self.mask(name))

    def counts(self) -> dict[str, int]:
        """Number of wells per split."""
        return {n: int((self.split == n).sum()) for n in SPLIT_NAMES}

    @property
    def available(self) -> list[str]:
        """Splits that hold at least one well (``unseen_dataset`` is absent for one dataset)."""
        return [n for n, c in self.counts().items() if c]

    def to_table(self) -> pa.Table:
        """Table ``well_id``, ``split`` (settings as JSON schema metadata)."""
        t = pa.table({"well_id": pa.array(self.well_id, pa.string()), "split": pa.array(self.split, pa.string())})
        return t.replace_schema_metadata({"molphenix_split": json.dumps(self.meta, sort_keys=True)})

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``split.parquet`` (a run saves its split so evaluation reuses it).

        Args:
            path: File path, or a directory (then ``<dir>/split.parquet``).

        Returns:
            The file written.
        """
        p = Path(path)
        if p.is_dir():
            p = p / "split.parquet"
        tmp = p.with_name(p.name + ".tmp")
        pq.write_table(self.to_table(), tmp)
        os.replace(tmp, p)
        return p

    @classmethod
    def load(cls, path: str | os.PathLike, dataset=None) -> "Splits":
        """Read a saved split; with ``dataset``, reorder it to the dataset's wells.

        Args:
            path: ``split.parquet`` or its directory.
            dataset: Optional :class:`~molphenix.data.Dataset` to align with.

        Returns:
            The :class:`Splits`.

        Raises:
            ValueError: the split does not cover exactly the dataset's wells.
        """
        p = Path(path)
        if p.is_dir():
            p = p / "split.parquet"
        t = pq.read_table(p)
        md = t.schema.metadata or {}
        meta = json.loads(md.get(b"molphenix_split", b"{}"))
        wid = np.asarray(t.column("well_id").to_pylist(), dtype=object)
        sp = np.asarray(t.column("split").to_pylist(), dtype=object)
        if dataset is not None:
            ds_ids = np.asarray(dataset.wells.column("well_id").to_pylist(), dtype=object)
            pos = {w: i for i, w in enumerate(wid)}
            missing = [w for w in ds_ids if w not in pos]
            if missing or len(ds_ids) != len(wid):
                raise ValueError(
                    f"split {p} does not match the dataset ({len(wid)} vs {len(ds_ids)} wells; "
                    f"e.g. missing {missing[:3]})"
                )
            sp = sp[[pos[w] for w in ds_ids]]
            wid = ds_ids
        return cls(well_id=wid, split=sp, meta=meta)


def _primary(dataset, primary_dataset: str | None):
    """(primary dataset, dataset names, their well counts): ``primary_dataset`` checked, or the
    default (``meta["primary_dataset"]``, else the dataset with most wells; ties by name)."""
    ds_col = np.asarray(dataset.wells.column("dataset").to_pylist(), dtype=object)
    names, counts = np.unique(ds_col.astype(str), return_counts=True)
    if primary_dataset is None:
        primary_dataset = dataset.meta.get("primary_dataset") if isinstance(dataset.meta, dict) else None
        if primary_dataset not in names:
            primary_dataset = str(names[np.lexsort((names, -counts))[0]])
    elif primary_dataset not in names:
        raise ValueError(f"primary_dataset {primary_dataset!r} not in datasets {list(names)}")
    return primary_dataset, names, counts


def _scaffold_groups(dataset, prim_mols: list[str]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(molecule -> scaffold, scaffold -> its molecules in sorted order)."""
    smiles_of = dataset.smiles_of()
    scaf = dict(zip(prim_mols, scaffolds([smiles_of[m] for m in prim_mols])))
    groups: dict[str, list[str]] = {}
    for m in prim_mols:
        groups.setdefault(scaf[m], []).append(m)
    return scaf, groups


def _deal_folds(groups: dict[str, list[str]], folds: int, seed: int) -> dict[str, int]:
    """Scaffold -> fold: the groups in a seeded random order, then largest first (a stable sort,
    so groups of equal size keep the random order), each to the fold with the fewest molecules
    so far (ties: the lowest fold). Fold sizes differ by at most the largest group."""
    if folds > len(groups):
        n_mol = sum(len(g) for g in groups.values())
        raise ValueError(f"folds: {folds} folds need at least {folds} scaffold groups; the primary "
                         f"dataset has {len(groups)} ({n_mol} molecules)")
    keys = sorted(groups)
    order = np.random.default_rng([seed, 21]).permutation(len(keys))
    sizes = np.array([len(groups[keys[i]]) for i in order], dtype=np.int64)
    order = order[np.argsort(-sizes, kind="stable")]
    load = np.zeros(folds, dtype=np.int64)
    out: dict[str, int] = {}
    for gi in order:
        f = int(np.argmin(load))
        out[keys[gi]] = f
        load[f] += len(groups[keys[gi]])
    return out


def _check_folds(folds, fold) -> None:
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ValueError(f"folds: expected an integer >= 2, got {folds!r}")
    if fold is not None and (isinstance(fold, bool) or not isinstance(fold, (int, np.integer))
                             or not 0 <= fold < folds):
        raise ValueError(f"fold: expected an integer in [0, {folds}), got {fold!r}")


def fold_assignment(dataset, folds: int, *, seed: int = 0,
                    primary_dataset: str | None = None) -> dict[str, int]:
    """The grouped k-fold partition of :func:`make_splits`: primary molecule -> fold.

    Molecules that share a Bemis-Murcko scaffold (:func:`scaffold_of`) always share a fold; fold
    sizes (in molecules) differ by at most the largest scaffold group. Deterministic for a seed
    and independent of row order; ``make_splits(dataset, seed=seed, folds=folds, fold=k)``
    tests exactly the molecules mapped to ``k`` here.

    Args:
        dataset: A :class:`~molphenix.data.Dataset`.
        folds: K >= 2, at most the number of scaffold groups.
        seed: Seed of the partition (a run's ``split_seed``).
        primary_dataset: As for :func:`make_splits`.

    Returns:
        ``{molecule_id: fold}`` for every treated molecule of the primary dataset.

    Raises:
        ValueError: ``folds`` < 2, or more folds than scaffold groups (the counts are named).
    """
    _check_folds(folds, None)
    primary, _, _ = _primary(dataset, primary_dataset)
    w = dataset.wells
    ds_col = np.asarray(w.column("dataset").to_pylist(), dtype=object)
    is_control = w.column("is_control").to_numpy(zero_copy_only=False).astype(bool)
    mol = np.asarray(w.column("molecule_id").to_pylist(), dtype=object)
    prim_mols = sorted(set(mol[(~is_control) & (ds_col == primary)].tolist()))
    scaf, groups = _scaffold_groups(dataset, prim_mols)
    of_group = _deal_folds(groups, int(folds), int(seed))
    return {m: of_group[scaf[m]] for m in prim_mols}


def make_splits(
    dataset,
    *,
    seed: int = 0,
    unseen_molecules_fraction: float = 0.2,
    val_fraction: float = 0.1,
    unseen_wells_fraction: float = 0.2,
    primary_dataset: str | None = None,
    folds: int | None = None,
    fold: int | None = None,
) -> Splits:
    """Assign every well to a split (see the module docstring).

    Args:
        dataset: A :class:`~molphenix.data.Dataset`.
        seed: Seed; the same seed gives the same assignment.
        unseen_molecules_fraction: Target fraction of primary-dataset molecules whose scaffolds
            go to ``unseen_molecules`` (never exceeded; scaffold groups are whole).
        val_fraction: Target fraction for ``val`` (disjoint scaffolds, never exceeded).
        unseen_wells_fraction: Probability that a replicate well of a training sample (beyond
            one kept well) is held out.
        primary_dataset: The training dataset (default: ``meta["primary_dataset"]`` or the
            dataset with most wells; ties by name).
        folds: Grouped k-fold (module docstring): the number of folds K >= 2; the test set is
            then fold ``fold`` of :func:`fold_assignment` and ``unseen_molecules_fraction`` is
            not used.
        fold: The fold tested, ``0 <= fold < folds`` (given with ``folds``).

    Returns:
        :class:`Splits` aligned with ``dataset.wells``.

    Raises:
        ValueError: fractions outside [0, 1) or summing to >= 1; unknown primary dataset;
            ``folds`` / ``fold`` given alone or out of range, or more folds than scaffold groups.
    """
    for n, f in (("unseen_molecules_fraction", unseen_molecules_fraction), ("val_fraction", val_fraction), ("unseen_wells_fraction", unseen_wells_fraction)):
        if not 0 <= f < 1:
            raise ValueError(f"{n} must lie in [0, 1), got {f}")
    if (folds is None) != (fold is None):
        raise ValueError("folds: give folds and fold together (grouped k-fold), or neither")
    if folds is not None:
        _check_folds(folds, fold)
    elif unseen_molecules_fraction + val_fraction >= 1:
        raise ValueError("unseen_molecules_fraction + val_fraction must be < 1")
    wells = dataset.wells
    n = wells.num_rows
    well_id = np.asarray(wells.column("well_id").to_pylist(), dtype=object)
    ds_col = np.asarray(wells.column("dataset").to_pylist(), dtype=object)
    is_control = wells.column("is_control").to_numpy(zero_copy_only=False).astype(bool)
    mol = np.asarray(wells.column("molecule_id").to_pylist(), dtype=object)
    conc = wells.column("concentration_um").to_numpy(zero_copy_only=False)

    primary_dataset, names, counts = _primary(dataset, primary_dataset)

    split = np.full(n, "train", dtype=object)
    split[is_control] = "control"
    other = (~is_control) & (ds_col != primary_dataset)
    split[other] = "unseen_dataset"
    prim = (~is_control) & (ds_col == primary_dataset)

    # ---- scaffold split over the primary dataset's molecules
    prim_mols = sorted(set(mol[prim].tolist()))
    scaf, groups = _scaffold_groups(dataset, prim_mols)
    keys = sorted(groups)
    if folds is None:
        rng = np.random.default_rng([seed, 11])
        order = rng.permutation(len(keys))
        test_of = None
    else:  # the test fold is fixed; val is drawn from the other folds' groups
        of_group = _deal_folds(groups, int(folds), int(seed))
        order = np.random.default_rng([seed, 22, int(fold)]).permutation(len(keys))
        test_of = {k: of_group[k] == fold for k in keys}
    n_mol = len(prim_mols)
    target_test = int(np.floor(unseen_molecules_fraction * n_mol))
    target_val = int(np.floor(val_fraction * n_mol))
    mol_split: dict[str, str] = {}
    n_test = n_val = 0
    for gi in order:
        g = groups[keys[gi]]
        if test_of is not None and test_of[keys[gi]]:
            label, n_test = "unseen_molecules", n_test + len(g)
        elif test_of is None and n_test + len(g) <= target_test:
            label, n_test = "unseen_molecules", n_test + len(g)
        elif n_val + len(g) <= target_val:
            label, n_val = "val", n_val + len(g)
        else:
            label = "train"
        for m in g:
            mol_split[m] = label
    prim_idx = np.flatnonzero(prim)
    split[prim_idx] = [mol_split[m] for m in mol[prim_idx]]

    # ---- unseen wells: replicate wells of training samples
    tr = np.flatnonzero(split == "train")
    if tr.size and unseen_wells_fraction > 0:
        ordr = tr[np.argsort(well_id[tr].astype(str), kind="stable")]
        keys_s = np.array([f"{m}\x00{c!r}" for m, c in zip(mol[ordr], conc[ordr])], dtype=object)
        codes = np.unique(keys_s.astype(str), return_inverse=True)[1]
        u = np.random.default_rng([seed, 12]).random(len(ordr))
        # rank the wells of each sample by a random key; rank 0 always stays in train
        perm = np.lexsort((u, codes))
        c_sorted = codes[perm]
        first = np.r_[0, np.flatnonzero(c_sorted[1:] != c_sorted[:-1]) + 1]
        rank = np.arange(len(perm)) - np.repeat(first, np.diff(np.r_[first, len(perm)]))
        hold_u = np.random.default_rng([seed, 13]).random(len(perm))
        hold = (rank > 0) & (hold_u < unseen_wells_fraction)
        split[ordr[perm[hold]]] = "unseen_wells"

    meta = {
        "seed": seed,
        "unseen_molecules_fraction": unseen_molecules_fraction,
        "val_fraction": val_fraction,
        "unseen_wells_fraction": unseen_wells_fraction,
        "primary_dataset": primary_dataset,
        "datasets": [str(x) for x in names],
        "n_scaffolds": len(keys),
        **({"folds": int(folds), "fold": int(fold)} if folds is not None else {}),
        "n_primary_molecules": n_mol,
        "counts": {k: int((split == k).sum()) for k in SPLIT_NAMES},
    }
    return Splits(well_id=well_id, split=split, scaffold=scaf, meta=meta)
