"""Real-format loaders on the checked-in fixtures (headers copy the published layouts)."""

from __future__ import annotations

import csv

import numpy as np
import pyarrow.parquet as pq
import pytest

from molphenix.data import SchemaError, load_jump, load_rxrx3_core, make_splits
from molphenix.data.loaders.jump import JUMP_PROFILE_KEYS
from molphenix.data.loaders.rxrx3 import RXRX3_METADATA_COLUMNS


def _rx(fixtures_dir):
    d = fixtures_dir / "rxrx3_core"
    return d / "metadata_rxrx3_core.csv", d / "OpenPhenom_rxrx3_core_embeddings.parquet"


def test_rxrx3_fixture_header_is_the_published_one(fixtures_dir):
    meta, _ = _rx(fixtures_dir)
    with open(meta) as fh:
        assert tuple(next(csv.reader(fh))) == RXRX3_METADATA_COLUMNS


def test_rxrx3_core_loader(fixtures_dir):
    meta, emb = _rx(fixtures_dir)
    with pytest.warns(UserWarning):
        ds = load_rxrx3_core(meta, emb)
    rep = ds.meta["loader_report"]
    assert rep["other_perturbation_type"] == 4  # CRISPR rows
    assert rep["treated_without_smiles_or_concentration"] == 4  # CRISPR_control wells
    assert rep["missing_embedding"] == 1
    assert ds.invalid_smiles.count == 1 and ds.invalid_smiles.molecule_ids == ["Broken"]
    assert ds.invalid_smiles.dropped_wells == 8
    assert ds.datasets == ["rxrx3_core"]
    assert ds.embedding_dim == 16
    assert set(ds.batches) == {"compound-001", "compound-002"}
    w = ds.wells
    ctrl = ds.control_mask()
    assert ctrl.sum() == 12
    assert set(w.column("plate").to_pylist()) == {"compound-001_1", "compound-001_2", "compound-002_1", "compound-002_2"}
    smiles = ds.smiles_of()
    assert "|" not in smiles["Dequalinium"]  # CXSMILES extension stripped
    assert sorted(set(w.column("concentration_um").drop_null().to_pylist())) == [0.25, 2.5]
    # embeddings joined by well_id, features in numeric order
    tab = pq.read_table(emb)
    row = tab.column("well_id").to_pylist().index(w.column("well_id")[0].as_py())
    expect = np.array([tab.column(f"feature_{j}")[row].as_py() for j in range(16)], dtype=np.float32)
    np.testing.assert_array_equal(ds.phenomic_matrix()[0], expect)
    # single dataset: valid, no unseen-dataset split
    assert "unseen_dataset" not in make_splits(ds).available


def test_rxrx3_missing_column(fixtures_dir, tmp_path):
    meta, emb = _rx(fixtures_dir)
    lines = meta.read_text().splitlines()
    bad = tmp_path / "m.csv"
    bad.write_text("\n".join([lines[0].replace("experiment_name", "experiment")] + lines[1:]) + "\n")
    with pytest.raises(SchemaError, match="experiment_name"):
        load_rxrx3_core(bad, emb)


def test_jump_loader(fixtures_dir):
    d = fixtures_dir / "jump"
    prof = pq.read_table(d / "profiles.parquet")
    assert tuple(prof.column_names[:4]) == JUMP_PROFILE_KEYS
    with pytest.warns(UserWarning, match="nonfinite_feature_columns"):
        ds = load_jump(d / "profiles.parquet", compounds=d / "compound.csv", plates=d / "plate.csv", controls=d / "perturbation_control.csv")
    rep = ds.meta["loader_report"]
    assert rep["without_smiles_or_concentration"] == 4  # ORF wells
    assert rep["nonfinite_feature_columns"] == 1
    assert ds.embedding_dim == 6
    assert ds.datasets == ["source_2", "source_3"]
    assert len(ds.batches) == 4 and all("/" in b for b in ds.batches)
    assert ds.control_mask().sum() == 16
    assert set(ds.wells.column("concentration_um").drop_null().to_pylist()) == {10.0}
    sp = make_splits(ds)
    assert "unseen_dataset" in sp.available
    # a constant dataset name gives a single-dataset (valid) result
    ds1 = load_jump(d / "profiles.parquet", compounds=d / "compound.csv", dataset="jump", drop_nonfinite_features=True)
    assert ds1.datasets == ["jump"]
    # keeping the NaN column makes validation name the row
    with pytest.raises(SchemaError) as ei:
        load_jump(d / "profiles.parquet", compounds=d / "compound.csv", drop_nonfinite_features=False)
    assert ei.value.column == "phenomic" and ei.value.row is not None
    with pytest.raises(SchemaError, match="Metadata_SMILES"):
        load_jump(d / "profiles.parquet")
