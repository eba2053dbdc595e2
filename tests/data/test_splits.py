"""Splits: no leakage, determinism, single-dataset behaviour, persistence."""

from __future__ import annotations

import numpy as np
import pytest

from molphenix.data import SPLIT_NAMES, Splits, make_splits, scaffold_of
from molphenix.data.io import from_tables


def _cols(ds):
    w = ds.wells
    return (
        np.asarray(w.column("molecule_id").to_pylist(), dtype=object),
        np.asarray(w.column("batch").to_pylist(), dtype=object),
        np.asarray(w.column("dataset").to_pylist(), dtype=object),
        w.column("concentration_um").to_numpy(zero_copy_only=False),
    )


def test_no_leakage(sim):
    sp = make_splits(sim, seed=0)
    mol, batch, dset, conc = _cols(sim)
    smiles = sim.smiles_of()
    scaf = lambda ms: {scaffold_of(smiles[m]) for m in ms}  # noqa: E731
    train = set(mol[sp.mask("train")])
    test_m = set(mol[sp.mask("unseen_molecules")])
    val_m = set(mol[sp.mask("val")])
    assert train and test_m and val_m
    # scaffold split: no scaffold in both train and test (or val)
    assert not scaf(train) & scaf(test_m)
    assert not scaf(train) & scaf(val_m)
    assert not scaf(val_m) & scaf(test_m)
    # unseen wells: disjoint wells, shared molecules (and samples)
    uw = sp.mask("unseen_wells")
    assert uw.any() and not (uw & sp.mask("train")).any()
    assert set(mol[uw]) <= train
    train_samples = set(zip(mol[sp.mask("train")], conc[sp.mask("train")]))
    assert set(zip(mol[uw], conc[uw])) <= train_samples
    # unseen dataset: the second library, whose batches never appear in train
    ud = sp.mask("unseen_dataset")
    assert set(dset[ud]) == {"lib_b"}
    assert not set(batch[ud]) & set(batch[sp.mask("train")])
    # every well exactly once; controls in no split
    assert set(sp.split) <= set(SPLIT_NAMES)
    assert (sp.mask("control") == sim.control_mask()).all()
    frac = len(test_m) / len(set(mol[(dset == "lib_a") & ~sim.control_mask()]))
    assert 0.1 < frac <= 0.2


def test_deterministic_and_seed_dependent(sim):
    a = make_splits(sim, seed=4)
    b = make_splits(sim, seed=4)
    c = make_splits(sim, seed=5)
    assert (a.split == b.split).all()
    assert (a.split != c.split).any()


def test_row_order_does_not_matter(sim):
    a = make_splits(sim, seed=2)
    perm = np.random.default_rng(0).permutation(sim.n_wells)
    import pyarrow as pa

    ds2 = from_tables(sim.wells.take(pa.array(perm)), sim.molecules, check_smiles=False, meta=sim.meta)
    b = make_splits(ds2, seed=2)
    assert dict(zip(a.well_id, a.split)) == dict(zip(b.well_id, b.split))


def test_single_dataset_has_no_unseen_dataset_split(tiny):
    import pyarrow.compute as pc

    w = tiny.wells.filter(pc.equal(tiny.wells.column("dataset"), "lib_a"))
    ds = from_tables(w, tiny.molecules, check_smiles=False)
    sp = make_splits(ds, seed=0)
    assert "unseen_dataset" not in sp.available
    assert sp.counts()["unseen_dataset"] == 0


def test_save_load_and_align(tmp_path, sim):
    sp = make_splits(sim, seed=1)
    p = sp.save(tmp_path)
    back = Splits.load(p, dataset=sim)
    assert (back.split == sp.split).all() and back.meta["seed"] == 1
    with pytest.raises(ValueError):
        make_splits(sim, unseen_molecules_fraction=0.7, val_fraction=0.4)
    with pytest.raises(ValueError):
        make_splits(sim, primary_dataset="nope")


def test_scaffold_of():
    assert scaffold_of("CCOc1ccccc1C(=O)N") == "c1ccccc1"
    assert scaffold_of("CCO") == "CCO"  # acyclic: its own scaffold
    with pytest.raises(ValueError):
        scaffold_of("C1CC")


# ---------------------------------------------------------------------------------------------
# grouped k-fold
# ---------------------------------------------------------------------------------------------


def _primary_molecules(ds):
    mol, _, dset, _ = _cols(ds)
    prim = (dset == "lib_a") & ~ds.control_mask()
    return set(mol[prim])


def test_folds_partition_the_molecules_by_scaffold(sim):
    from molphenix.data import fold_assignment

    k = 5
    fa = fold_assignment(sim, k, seed=3)
    smiles = sim.smiles_of()
    prim = _primary_molecules(sim)
    assert set(fa) == prim
    # a scaffold never spans two folds
    fold_of_scaf = {}
    for m, f in fa.items():
        assert fold_of_scaf.setdefault(scaffold_of(smiles[m]), f) == f
    # near-equal sizes: within the largest scaffold group
    sizes = np.bincount(list(fa.values()), minlength=k)
    largest = max(np.unique(list(map(lambda m: scaffold_of(smiles[m]), prim)), return_counts=True)[1])
    assert sizes.min() > 0 and sizes.max() - sizes.min() <= largest
    mol, _, _, _ = _cols(sim)
    tested = []
    for fold in range(k):
        sp = make_splits(sim, seed=3, folds=k, fold=fold)
        test_m = set(mol[sp.mask("unseen_molecules")])
        assert test_m == {m for m, f in fa.items() if f == fold}  # the test set is the fold
        tested.append(test_m)
        train_m, val_m = set(mol[sp.mask("train")]), set(mol[sp.mask("val")])
        scaf = lambda ms: {scaffold_of(smiles[m]) for m in ms}  # noqa: E731
        assert val_m and not scaf(val_m) & scaf(test_m) and not scaf(train_m) & scaf(test_m)
        assert not scaf(train_m) & scaf(val_m)
        assert len(val_m) <= int(0.1 * len(prim))  # val_fraction of all molecules, never exceeded
        assert sp.meta["folds"] == k and sp.meta["fold"] == fold
        # unseen wells: replicate wells of training molecules, as in a one-split run
        assert set(mol[sp.mask("unseen_wells")]) <= train_m
    # every molecule tested exactly once over the folds
    assert sum(len(t) for t in tested) == len(prim) and set().union(*tested) == prim


def test_folds_deterministic_row_order_free_and_seeded(sim):
    import pyarrow as pa

    from molphenix.data import fold_assignment

    a = make_splits(sim, seed=2, folds=4, fold=1)
    assert (a.split == make_splits(sim, seed=2, folds=4, fold=1).split).all()
    perm = np.random.default_rng(0).permutation(sim.n_wells)
    ds2 = from_tables(sim.wells.take(pa.array(perm)), sim.molecules, check_smiles=False, meta=sim.meta)
    b = make_splits(ds2, seed=2, folds=4, fold=1)
    assert dict(zip(a.well_id, a.split)) == dict(zip(b.well_id, b.split))
    assert fold_assignment(sim, 4, seed=2) == fold_assignment(ds2, 4, seed=2)
    assert fold_assignment(sim, 4, seed=2) != fold_assignment(sim, 4, seed=3)


def test_fold_errors(sim, tiny):
    from molphenix.data import fold_assignment

    with pytest.raises(ValueError, match="folds"):
        make_splits(sim, folds=5)  # fold missing
    with pytest.raises(ValueError, match="fold"):
        make_splits(sim, folds=5, fold=5)
    with pytest.raises(ValueError, match="folds"):
        fold_assignment(sim, 1)
    n_groups = len({scaffold_of(tiny.smiles_of()[m]) for m in _primary_molecules(tiny)})
    with pytest.raises(ValueError, match=f"folds: {n_groups + 1} folds need at least"):
        fold_assignment(tiny, n_groups + 1)
