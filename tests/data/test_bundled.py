"""The bundled cell-injury dataset: its schema and counts, its attribution, its size, and that it
is what scripts/build_cell_injury.py makes from the source files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import molphenix.datasets as bundled
from molphenix.data import load_dataset

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ds():
    return bundled.load("cell-injury")


def test_counts_and_schema(ds):
    # SOURCE.md of the source files: 3,199 wells, 1,752 treated of 111 structures, 1,447 DMSO
    assert ds.n_wells == 3199
    assert int(ds.control_mask().sum()) == 1447
    assert ds.n_wells - int(ds.control_mask().sum()) == 1752
    assert ds.molecules.num_rows == 111
    assert ds.embedding_dim == 352
    assert ds.datasets == ["cell-injury/24", "cell-injury/48"]
    assert ds.batches == ["cell-injury/24/1", "cell-injury/24/2", "cell-injury/48/1"]
    assert len(set(ds.wells.column("plate").to_pylist())) == 84
    conc = np.array(ds.wells.column("concentration_um").drop_null().to_pylist())
    assert conc.min() == pytest.approx(0.02) and conc.max() == pytest.approx(20.0)
    assert np.isfinite(ds.phenomic_matrix()).all()
    assert ds.invalid_smiles.count == 0
    meta = ds.meta
    assert meta["feature_columns"][0] == "Cells_AreaShape_Area" and len(meta["feature_columns"]) == 352
    # the class label and the per-well statistics were listed as left out, never taken
    assert {"injury_code", "Mahalanobis distance", "Relative well cellcount"} <= set(meta["left_out_numeric_columns"])
    assert meta["normalization"] == {"method": "none"}
    assert meta["command"].startswith("molphenix import-profiles fs_plate_holdout.csv.gz fs_well_holdout.csv.gz "
                                      "fs_treatment_holdout.csv.gz --out cell_injury ")


def test_molecule_ids_are_the_inchikeys_of_their_smiles(ds):
    from rdkit import Chem

    for mid, smi in ds.smiles_of().items():
        assert Chem.MolToInchiKey(Chem.MolFromSmiles(smi)) == mid


def test_name_resolution_and_paths(ds):
    assert bundled.names() == ["cell-injury"]
    p = bundled.cell_injury_path()
    assert p == bundled.path("cell_injury") and (p.parent.name, p.name) == ("datasets", "cell_injury")
    assert p.parent.parent == Path(bundled.__file__).resolve().parent.parent  # inside the installed package
    assert load_dataset("cell-injury").n_wells == ds.n_wells
    with pytest.raises(ValueError, match="bundled: cell-injury"):
        bundled.path("rxrx3")
    with pytest.raises(FileNotFoundError):
        load_dataset("no-such-dataset")


def test_size_and_attribution():
    p = bundled.cell_injury_path()
    size = sum(f.stat().st_size for f in p.iterdir() if f.is_file())
    assert size < 5_000_000, size
    notice = (p / "NOTICE").read_text()
    for needed in ("CC BY 4.0", "creativecommons.org/licenses/by/4.0", "axiomcura/predicting-cell-injury-compounds",
                   "Dahlin", "Changes made"):
        assert needed in notice
    assert "cell_injury" in (ROOT / "NOTICE").read_text()
    # wheel.packages ships the whole python/molphenix tree (data files included)
    assert 'wheel.packages = ["python/molphenix"]' in (ROOT / "pyproject.toml").read_text()


def _build_script():
    spec = importlib.util.spec_from_file_location("build_cell_injury", ROOT / "scripts" / "build_cell_injury.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bundled_copy_is_what_the_build_script_makes(tmp_path, ds, capsys):
    script = _build_script()
    source = script.find_source()
    if source is None:
        pytest.skip("the cell-injury source files (shared/data/cell-injury-u2os) are not on this machine; "
                    "set MOLPHENIX_CELL_INJURY_SRC to check the rebuild")
    assert script.build(source, tmp_path / "cell_injury") == 0
    capsys.readouterr()
    new = load_dataset(tmp_path / "cell_injury")
    assert new.wells.equals(ds.wells)
    assert new.molecules.equals(ds.molecules)
    a, b = (json.loads((d / "meta.json").read_text()) for d in (tmp_path / "cell_injury", bundled.cell_injury_path()))
    a.pop("molphenix_version"), b.pop("molphenix_version")
    assert a == b
