"""load_profiles / import_profiles: any well-level profile table -> a dataset (small tables made here)."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _profile_tables import DMSO_SMILES, DRUGS, FEATURES, PYCYTO_FLAGS, pycytominer_plate, replace_column, write
from _utils import assert_close

from molphenix.data import ProfileImportError, SchemaError, import_profiles, load_dataset, load_profiles
from molphenix.data.loaders.profiles import DEFAULT_FEATURE_RULE, match_values
from molphenix.data.normalize import normalize_by_plate

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _load(files, **kw):
    opts = dict(PYCYTO_FLAGS)
    opts.update(kw)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ds = load_profiles(files, **opts)
    return ds, [str(w.message) for w in rec]


# --------------------------------------------------------------------------- formats and joining


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet"])
def test_formats_give_the_same_dataset(tmp_path, suffix):
    t = pycytominer_plate()
    ref, _ = _load(write(t, tmp_path / "ref.parquet"))
    ds, _ = _load(write(t, tmp_path / f"plate{suffix}"))
    assert ds.wells.column("well_id").to_pylist() == ref.wells.column("well_id").to_pylist()
    assert_close(ds.phenomic_matrix(), ref.phenomic_matrix())
    assert ds.smiles_of() == ref.smiles_of()
    n_treated = len(DRUGS) * 2
    assert ds.n_wells == n_treated + 6 and int(ds.control_mask().sum()) == 6
    assert ds.molecules.num_rows == len(DRUGS)
    # well ids are plate/well; the well position is kept as `address`
    assert ds.wells.column("well_id")[0].as_py() == "SQ00014812/A01"
    assert ds.wells.column("address")[0].as_py() == "A01"
    # dose: mmol/L -> uM
    assert sorted(set(ds.wells.column("concentration_um").drop_null().to_pylist())) == [1.0, 10.0]


def test_several_files_join_by_name_with_promoted_types(tmp_path):
    a = pycytominer_plate("P1", seed=1)
    b = pycytominer_plate("P2", seed=2)
    # file A: integer cell counts and a comment column that is all null; file B: float counts,
    # text comments, the columns in another order, one extra column
    a = replace_column(a, "Metadata_note", pa.nulls(a.num_rows, pa.null()))
    b = replace_column(b, "Metadata_Count_Cells", pa.array(np.linspace(1, 2, b.num_rows)))
    b = replace_column(b, "Metadata_note", ["ok"] * b.num_rows)
    b = replace_column(b, "Metadata_extra", list(range(b.num_rows)))
    b = b.select(list(reversed(b.column_names)))
    ds, _ = _load([write(a, tmp_path / "a.parquet"), write(b, tmp_path / "b.csv")])
    assert ds.n_wells == a.num_rows + b.num_rows
    assert sorted(set(ds.wells.column("plate").to_pylist())) == ["P1", "P2"]
    assert ds.meta["feature_columns"] == FEATURES  # table order of the first file
    assert set(ds.meta["left_out_numeric_columns"]) == {"Metadata_Count_Cells", "injury_code", "Metadata_extra"}
    assert [s["file"] for s in ds.meta["sources"]] == ["a.parquet", "b.csv"]
    assert all(len(s["sha256"]) == 64 for s in ds.meta["sources"])
    # the same plate well from B lands in its own rows, with B's values
    x = ds.phenomic_matrix()
    j = ds.wells.column("well_id").to_pylist().index("P2/A01")
    assert_close(x[j], np.array([b.column(f)[0].as_py() for f in FEATURES], np.float32))


def test_a_plate_id_that_is_a_number_in_one_file_and_text_in_another(tmp_path):
    a = replace_column(pycytominer_plate("x", seed=1), "Metadata_Plate", [1001] * 30)
    b = replace_column(pycytominer_plate("x", seed=2), "Metadata_Plate", ["B1002"] * 30)
    ds, _ = _load([write(a, tmp_path / "a.parquet"), write(b, tmp_path / "b.parquet")])
    assert sorted(set(ds.wells.column("plate").to_pylist())) == ["1001", "B1002"]


# --------------------------------------------------------------------------- features


def test_default_feature_rule():
    rx = __import__("re").compile(DEFAULT_FEATURE_RULE)
    takes = ["Cells_AreaShape_Area", "Cytoplasm_X", "Nuclei_Y_3", "emb_12", "X_3", "feature_0", "7"]
    leaves = ["Metadata_Count_Cells", "Metadata_12", "injury_code", "Image_Count_Cells", "cells_area",
              "emb12", "X_3b", "Count_Cells", "Cells"]
    assert [c for c in takes if rx.search(c)] == takes
    assert [c for c in leaves if rx.search(c)] == []


def test_no_numeric_column_is_taken_silently(tmp_path):
    t = pycytominer_plate()
    t = replace_column(t, "emb_3", np.arange(t.num_rows, dtype=float))
    t = replace_column(t, "Image_Granularity", np.ones(t.num_rows))
    ds, _ = _load(write(t, tmp_path / "p.parquet"))
    assert ds.meta["feature_columns"] == FEATURES + ["emb_3"]
    assert ds.meta["left_out_numeric_columns"] == ["Metadata_Count_Cells", "injury_code", "Image_Granularity"]
    assert ds.embedding_dim == len(FEATURES) + 1


def test_features_regex(tmp_path):
    t = pycytominer_plate()
    p = write(replace_column(t, "Metadata_pert_iname", ["x"] * t.num_rows), tmp_path / "p.parquet")
    ds, _ = _load(p, features=r"^Nuclei_")
    assert ds.meta["feature_columns"] == [f for f in FEATURES if f.startswith("Nuclei_")]
    assert "Cells_AreaShape_Area" in ds.meta["left_out_numeric_columns"]
    # a regex may pick numeric metadata on purpose; it never picks a column with a role (the dose)
    ds, _ = _load(p, features=r"Count_Cells|mmoles")
    assert ds.meta["feature_columns"] == ["Metadata_Count_Cells"]
    with pytest.raises(ProfileImportError, match="no column matches") as ei:
        _load(p, features="^Zzz")
    assert ei.value.option == "features" and ei.value.usage
    with pytest.raises(ProfileImportError, match="not numeric") as ei:
        _load(p, features="pert_iname|Area")
    with pytest.raises(ProfileImportError, match="regular expression"):
        _load(p, features="(")


def test_text_feature_column_under_the_default_rule_is_an_error(tmp_path):
    t = replace_column(pycytominer_plate(), "Cells_Location", ["a"] * 30)
    with pytest.raises(ProfileImportError, match="Cells_Location"):
        _load(write(t, tmp_path / "p.parquet"))


def test_nonfinite_features_dropped_and_counted_or_fail(tmp_path):
    t = pycytominer_plate()
    v = t.column("Cells_Granularity_1_Mito").to_numpy().copy()
    v[3] = np.nan
    w = t.column("Nuclei_AreaShape_Eccentricity").to_numpy().copy()
    w[-1] = np.inf  # a control well
    t = replace_column(replace_column(t, "Cells_Granularity_1_Mito", v), "Nuclei_AreaShape_Eccentricity", w)
    p = write(t, tmp_path / "p.parquet")
    ds, msgs = _load(p)
    assert ds.meta["loader_report"]["nonfinite_feature_columns"] == 2
    assert set(ds.meta["dropped_feature_columns"]) == {"Cells_Granularity_1_Mito", "Nuclei_AreaShape_Eccentricity"}
    assert ds.embedding_dim == len(FEATURES) - 2
    assert any("nonfinite_feature_columns" in m for m in msgs)
    with pytest.raises(ProfileImportError) as ei:
        _load(p, nonfinite="fail")
    e = ei.value
    assert (e.table, e.column, e.row) == ("p.parquet", "Cells_Granularity_1_Mito", 3)
    assert "2 feature column(s)" in str(e)
    # NaN only in a skipped (SMILES-less) row does not cost the feature
    t2 = replace_column(t, "Metadata_SMILES", [None if i == 3 else s for i, s in enumerate(t.column("Metadata_SMILES").to_pylist())])
    ds2, _ = _load(write(t2, tmp_path / "q.parquet"))
    assert list(ds2.meta["dropped_feature_columns"]) == ["Nuclei_AreaShape_Eccentricity"]
    assert ds2.meta["loader_report"]["treated_without_smiles"] == 1


# --------------------------------------------------------------------------- controls, doses, molecules


def test_control_values_compare_as_text_and_booleans_any_case():
    cells = ["DMSO", "dmso", " DMSO ", "TRUE", "true", "1", "0", "False", None, "EMPTY"]
    assert match_values(cells, ["DMSO"]).tolist() == [True, False, True] + [False] * 7
    assert match_values(cells, ["True"]).tolist() == [False] * 3 + [True, True, True] + [False] * 4
    assert match_values(cells, ["0"]).tolist() == [False] * 6 + [True, True, False, False]
    assert match_values(cells, ["DMSO", "EMPTY"]).tolist() == [True, False, True] + [False] * 6 + [True]


@pytest.mark.parametrize("fmt", [".parquet", ".csv"])
@pytest.mark.parametrize("value", ["true", "TRUE", "1"])
def test_boolean_control_column(tmp_path, fmt, value):
    t = pycytominer_plate()
    ctrl = [s == "DMSO" for s in t.column("Metadata_broad_sample").to_pylist()]
    t = replace_column(t, "Metadata_is_control", pa.array(ctrl, pa.bool_()))
    ds, _ = _load(write(t, tmp_path / f"p{fmt}"), control_column="Metadata_is_control", control_values=[value])
    assert int(ds.control_mask().sum()) == 6


def test_controls_have_no_molecule_even_with_dmso_smiles(tmp_path):
    ds, _ = _load(write(pycytominer_plate(), tmp_path / "p.parquet"))
    ctrl = ds.control_mask()
    assert all(m is None for m, c in zip(ds.wells.column("molecule_id").to_pylist(), ctrl) if c)
    assert all(c is None for c, k in zip(ds.wells.column("concentration_um").to_pylist(), ctrl) if k)
    assert DMSO_SMILES not in ds.smiles_of().values()


def test_several_control_values(tmp_path):
    t = pycytominer_plate()
    names = t.column("Metadata_broad_sample").to_pylist()
    names[-1] = "EMPTY"
    ds, _ = _load(write(replace_column(t, "Metadata_broad_sample", names), tmp_path / "p.parquet"),
                  control_values=["DMSO", "EMPTY"])
    assert int(ds.control_mask().sum()) == 6


@pytest.mark.parametrize("unit,factor", [("uM", 1.0), ("nM", 1e-3), ("mM", 1e3), ("M", 1e6)])
def test_dose_units(tmp_path, unit, factor):
    ds, _ = _load(write(pycytominer_plate(doses_mm=(0.5, 2.0)), tmp_path / "p.parquet"), dose_unit=unit)
    assert sorted(set(ds.wells.column("concentration_um").drop_null().to_pylist())) == [0.5 * factor, 2.0 * factor]


def test_default_dose_unit_is_um_and_no_dose_column_means_one_dose(tmp_path):
    p = write(pycytominer_plate(doses_mm=(0.5,)), tmp_path / "p.parquet")
    opts = {k: v for k, v in PYCYTO_FLAGS.items() if k != "dose_unit"}
    ds = load_profiles(p, **opts)
    assert set(ds.wells.column("concentration_um").drop_null().to_pylist()) == {0.5}
    opts.pop("dose_column")
    ds = load_profiles(p, **opts)
    assert set(ds.wells.column("concentration_um").drop_null().to_pylist()) == {1.0}


def test_molecules_are_grouped_by_structure_inchikey(tmp_path):
    from rdkit import Chem

    t = pycytominer_plate()
    smi = t.column("Metadata_SMILES").to_pylist()
    # the same aspirin written another way in one well
    smi[1] = "OC(=O)C1=CC=CC=C1OC(C)=O"
    t = replace_column(t, "Metadata_SMILES", smi)
    ds, _ = _load(write(t, tmp_path / "p.parquet"))
    key = Chem.MolToInchiKey(Chem.MolFromSmiles(DRUGS[0][1]))
    assert ds.molecules.num_rows == len(DRUGS)
    mols = ds.wells.column("molecule_id").to_pylist()
    assert mols[0] == mols[1] == key


def test_two_ids_for_one_structure_are_merged_with_a_warning(tmp_path):
    t = pycytominer_plate()
    names = t.column("Metadata_broad_sample").to_pylist()
    names[1] = "BRD-aspirin-batch2"  # aspirin under a second id
    t = replace_column(t, "Metadata_broad_sample", names)
    t = replace_column(t, "Metadata_id", names)
    ds, msgs = _load(write(t, tmp_path / "p.parquet"), molecule_column="Metadata_id")
    assert ds.meta["merged_molecule_ids"] == {"BRD-aspirin": ["BRD-aspirin", "BRD-aspirin-batch2"]}
    assert any("BRD-aspirin, BRD-aspirin-batch2 -> BRD-aspirin" in m for m in msgs)
    assert ds.molecules.num_rows == len(DRUGS)
    assert ds.wells.column("molecule_id").to_pylist()[:2] == ["BRD-aspirin", "BRD-aspirin"]


def test_one_id_with_two_structures_is_an_error_with_row_and_hint(tmp_path):
    t = pycytominer_plate()
    smi = t.column("Metadata_SMILES").to_pylist()
    smi[1] = DRUGS[1][1]  # row 1 says BRD-aspirin but carries caffeine
    t = replace_column(t, "Metadata_SMILES", smi)
    with pytest.raises(ProfileImportError) as ei:
        _load(write(t, tmp_path / "p.csv"), molecule_column="Metadata_broad_sample")
    e = ei.value
    assert (e.table, e.column, e.row) == ("p.csv", "Metadata_broad_sample", 1)
    assert "two structures" in str(e) and "row 0" in str(e) and "hint" in str(e)


def test_treated_wells_without_usable_smiles_or_dose_are_skipped_and_counted(tmp_path):
    t = pycytominer_plate()
    smi = t.column("Metadata_SMILES").to_pylist()
    dose = t.column("Metadata_mmoles_per_liter").to_pylist()
    smi[0], smi[1], smi[2] = None, "", "C1CC(("  # missing, empty, unparsable
    smi[3] = "  "  # blank
    dose[4], dose[5] = None, -1.0  # no dose, a dose that is not > 0
    t = replace_column(replace_column(t, "Metadata_SMILES", smi), "Metadata_mmoles_per_liter", dose)
    ds, msgs = _load(write(t, tmp_path / "p.csv"))
    rep = ds.meta["loader_report"]
    assert rep["treated_without_smiles"] == 3
    assert rep["treated_invalid_smiles"] == 1
    assert rep["treated_without_dose"] == 2
    assert ds.n_wells == t.num_rows - 6
    assert ds.invalid_smiles.smiles == ["C1CC(("] and ds.invalid_smiles.dropped_wells == 1
    assert any("treated_without_smiles" in m for m in msgs)
    # control wells need neither SMILES nor dose
    smi = t.column("Metadata_SMILES").to_pylist()
    smi[-1] = None
    ds, _ = _load(write(replace_column(t, "Metadata_SMILES", smi), tmp_path / "q.csv"))
    assert int(ds.control_mask().sum()) == 6


def test_text_doses_are_parsed_and_unparsable_ones_skipped(tmp_path):
    t = pycytominer_plate()
    dose = [None if d is None else str(d) for d in t.column("Metadata_mmoles_per_liter").to_pylist()]
    dose[0] = "ten"
    t = replace_column(t, "Metadata_mmoles_per_liter", pa.array(dose, pa.string()))
    ds, _ = _load(write(t, tmp_path / "p.parquet"))
    assert ds.meta["loader_report"]["treated_without_dose"] == 1


# --------------------------------------------------------------------------- conditions, filters


def test_dataset_column_makes_each_condition_its_own_dataset(tmp_path):
    a = replace_column(pycytominer_plate("P1", seed=1), "Metadata_time_h", [24] * 30)
    b = replace_column(pycytominer_plate("P2", seed=2), "Metadata_time_h", [48] * 30)
    a = replace_column(a, "Metadata_Batch", ["B1"] * 30)
    b = replace_column(b, "Metadata_Batch", ["B1"] * 30)
    ds, _ = _load([write(a, tmp_path / "a.csv"), write(b, tmp_path / "b.csv")],
                  dataset_column="Metadata_time_h", batch_column="Metadata_Batch", dataset="screen")
    assert ds.datasets == ["screen/24", "screen/48"]
    # one batch id in two conditions: two batches, so training never centres them together
    assert ds.batches == ["screen/24/B1", "screen/48/B1"]
    assert "Metadata_time_h" not in ds.meta["left_out_numeric_columns"]
    assert ds.meta["primary_dataset"] in ds.datasets
    ds2, _ = _load([write(a, tmp_path / "a.csv"), write(b, tmp_path / "b.csv")], dataset_column="Metadata_time_h")
    assert ds2.datasets == ["24", "48"]


def test_where_keeps_matching_rows(tmp_path):
    a = replace_column(pycytominer_plate("P1", seed=1), "Metadata_cell_line", ["U2OS"] * 30)
    b = replace_column(pycytominer_plate("P2", seed=2), "Metadata_cell_line", ["A549"] * 30)
    c = replace_column(pycytominer_plate("P3", seed=3), "Metadata_cell_line", ["HeLa"] * 30)
    files = [write(t, tmp_path / f"{k}.parquet") for k, t in zip("abc", (a, b, c))]
    ds, _ = _load(files, where={"Metadata_cell_line": "U2OS"})
    assert set(ds.wells.column("plate").to_pylist()) == {"P1"}
    assert ds.meta["loader_report"]["not_matching_where"] == 60
    # values of one column are alternatives; different columns must all match
    ds, _ = _load(files, where=[("Metadata_cell_line", "U2OS"), ("Metadata_cell_line", "HeLa"),
                                ("Metadata_Plate", "P3")])
    assert set(ds.wells.column("plate").to_pylist()) == {"P3"}


# --------------------------------------------------------------------------- bad input


def test_one_message_names_every_missing_column(tmp_path):
    p = write(pycytominer_plate(), tmp_path / "p.csv")
    with pytest.raises(ProfileImportError) as ei:
        _load(p, smiles_column="SMILES", dose_column="Dose", plate_column="Metadata_Plate", batch_column="Batch",
              where={"Cell line": "U2OS"})
    e = ei.value
    assert [c for c, _ in e.missing] == ["SMILES", "Dose", "Batch", "Cell line"]
    msg = str(e)
    assert "\n" not in msg
    for c in ("'SMILES' (smiles_column)", "'Dose' (dose_column)", "'Batch' (batch_column)", "'Cell line' (where)"):
        assert c in msg


def test_duplicate_well_ids_are_an_error_with_the_row_and_a_hint(tmp_path):
    a = pycytominer_plate("P1", seed=1)
    b = pycytominer_plate("P1", seed=2)  # the same plate again: e.g. two time points stacked
    with pytest.raises(ProfileImportError) as ei:
        _load([write(a, tmp_path / "a.csv"), write(b, tmp_path / "b.csv")])
    e = ei.value
    assert (e.table, e.column, e.row) == ("b.csv", "Metadata_Well", 0)
    assert "'P1/A01'" in str(e) and "a.csv row 0" in str(e) and "dataset_column" in str(e)


def test_plates_without_controls_are_named(tmp_path):
    a = pycytominer_plate("P1", seed=1)
    b = pycytominer_plate("P2", seed=2, n_controls=0)
    c = pycytominer_plate("P3", seed=3, n_controls=0)
    files = [write(t, tmp_path / f"{k}.parquet") for k, t in zip("abc", (a, b, c))]
    ds, _ = _load(files)  # no normalization: fine
    for method in ("center", "robust-z", "tvn"):
        with pytest.raises(ProfileImportError, match="P2, P3") as ei:
            _load(files, normalize=method)
        assert ei.value.option == "normalize" and not ei.value.usage
    d = pycytominer_plate("P4", seed=4, n_controls=1)
    with pytest.raises(ProfileImportError, match="fewer than 2 control wells: P4"):
        _load([files[0], write(d, tmp_path / "d.parquet")], normalize="robust-z")


def test_bad_options(tmp_path):
    p = write(pycytominer_plate(), tmp_path / "p.parquet")
    for kw, opt in ((dict(normalize="zscore"), "normalize"), (dict(nonfinite="ignore"), "nonfinite"),
                    (dict(dose_unit="ug/ml"), "dose_unit"), (dict(control_values=[]), "control_values")):
        with pytest.raises(ProfileImportError) as ei:
            _load(p, **kw)
        assert ei.value.option == opt and ei.value.usage
    with pytest.raises(FileNotFoundError):
        _load(tmp_path / "missing.csv")


def test_nothing_left_is_an_error(tmp_path):
    p = write(pycytominer_plate(), tmp_path / "p.parquet")
    with pytest.raises(ProfileImportError, match="no wells left"):
        _load(p, where={"Metadata_Plate": "nope"})


# --------------------------------------------------------------------------- normalization


def _pycytominer_fixture():
    d = FIXTURES / "robust_z"
    with open(d / "expected_robust_z.csv") as fh:
        rows = list(csv.DictReader(fh))
    return d / "plates.csv", rows


def test_robust_z_matches_pycytominer_mad_robustize(tmp_path):
    """Against values computed once with pycytominer 1.7.1 (tests/fixtures/robust_z)."""
    plates, expected = _pycytominer_fixture()
    ds, _ = _load(plates, control_column="Metadata_control_type", control_values=["negcon"], normalize="robust-z")
    feats = ds.meta["feature_columns"]
    assert len(feats) == 5 and ds.n_wells == len(expected) == 35
    want = np.array([[float(r[f]) for f in feats] for r in expected])
    ids = [f"{r['Metadata_Plate']}/{r['Metadata_Well']}" for r in expected]
    order = [ds.wells.column("well_id").to_pylist().index(i) for i in ids]
    assert_close(ds.phenomic_matrix()[order], want.astype(np.float32))
    assert ds.meta["normalization"]["epsilon"] == 1e-18
    assert ds.meta["normalization"]["controls_per_plate"] == {"P1": 8, "P2": 7}


def test_robust_z_formula_and_zero_mad_features(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 3))
    x[:, 2] = 5.0  # constant: MAD 0 on both plates
    plates = ["A"] * 6 + ["B"] * 6
    ctrl = np.array([1, 1, 1, 0, 0, 0] * 2, bool)
    res = normalize_by_plate(x, plates, ctrl, "robust-z")
    for p0 in (0, 6):
        c = x[p0:p0 + 3][ctrl[p0:p0 + 3]]
        med = np.median(c, 0)
        mad = 1.4826 * np.median(np.abs(c - med), 0)
        assert_close(res.x[p0:p0 + 6, :2], ((x[p0:p0 + 6] - med) / (mad + 1e-18))[:, :2].astype(np.float32))
    assert res.zero_mad.tolist() == [False, False, True]
    # through the importer: the zero-MAD feature is dropped and counted, or the import fails
    t = pycytominer_plate()
    t = replace_column(t, "Cells_Constant_1", np.full(t.num_rows, 3.0))
    p = write(t, tmp_path / "p.parquet")
    ds, _ = _load(p, normalize="robust-z")
    assert "Cells_Constant_1" in ds.meta["dropped_feature_columns"]
    assert ds.meta["loader_report"]["zero_mad_feature_columns"] == 1
    with pytest.raises(ProfileImportError, match="Cells_Constant_1"):
        _load(p, normalize="robust-z", nonfinite="fail")


def test_center_and_tvn(tmp_path):
    a = pycytominer_plate("P1", seed=1)
    b = pycytominer_plate("P2", seed=2, n_controls=8)
    files = [write(a, tmp_path / "a.parquet"), write(b, tmp_path / "b.parquet")]
    raw, _ = _load(files)
    cen, _ = _load(files, normalize="center")
    x, y = raw.phenomic_matrix().astype(np.float64), cen.phenomic_matrix()
    ctrl, plate = raw.control_mask(), np.array(raw.wells.column("plate").to_pylist())
    for p in ("P1", "P2"):
        m = plate == p
        assert_close(y[m], (x[m] - x[m & ctrl].mean(0)).astype(np.float32))
        assert_close(y[m & ctrl].mean(0), np.zeros(x.shape[1], np.float32))
    tvn, _ = _load(files, normalize="tvn")
    z = tvn.phenomic_matrix().astype(np.float64)
    k = min(len(FEATURES), int(ctrl.sum()) - 1)
    assert z.shape == (raw.n_wells, k) and tvn.meta["normalization"]["components"] == k
    # the pooled controls are whitened: their covariance is (close to) diagonal
    cov = np.cov(z[ctrl], rowvar=False)
    off = cov - np.diag(np.diag(cov))
    assert np.abs(off).max() < 1e-6 * np.abs(np.diag(cov)).max()
    assert "TVN components" in tvn.meta["phenomic_columns"]


# --------------------------------------------------------------------------- writing


def test_import_profiles_writes_the_documented_directory_atomically(tmp_path):
    p = write(pycytominer_plate(), tmp_path / "p.csv.gz")
    out = tmp_path / "ds"
    ds, path = import_profiles([p], out, **PYCYTO_FLAGS)
    assert path == out and sorted(f.name for f in out.iterdir()) == ["meta.json", "molecules.parquet", "wells.parquet"]
    back = load_dataset(out)
    assert back.n_wells == ds.n_wells and back.meta["command"].startswith("molphenix import-profiles p.csv.gz --out ds ")
    assert json.loads((out / "meta.json").read_text())["feature_columns"] == FEATURES
    # an existing dataset is kept unless overwrite
    with pytest.raises(FileExistsError, match="overwrite"):
        import_profiles([p], out, **PYCYTO_FLAGS)
    # a failing import leaves the existing dataset as it was, and no temporary directory
    before = (out / "wells.parquet").read_bytes()
    with pytest.raises(ProfileImportError):
        import_profiles([p], out, overwrite=True, **{**PYCYTO_FLAGS, "smiles_column": "nope"})
    assert (out / "wells.parquet").read_bytes() == before
    assert sorted(f.name for f in tmp_path.iterdir()) == ["ds", "p.csv.gz"]
    # a failing import into a new directory writes nothing at all
    with pytest.raises(ProfileImportError):
        import_profiles([p], tmp_path / "new", normalize="robust-z", **{**PYCYTO_FLAGS, "control_values": ["none"]})
    assert not (tmp_path / "new").exists()
    # a directory with other files in it is never replaced
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        import_profiles([p], tmp_path / "other", overwrite=True, **PYCYTO_FLAGS)
    ds2, _ = import_profiles([p], out, overwrite=True, **PYCYTO_FLAGS)
    assert load_dataset(out).n_wells == ds2.n_wells


def test_meta_records_an_equivalent_command(tmp_path):
    from molphenix.cli.main import main

    p = write(pycytominer_plate(), tmp_path / "p.parquet")
    ds, _ = import_profiles([p], tmp_path / "a", where={"Metadata_Plate": "SQ00014812"}, features="^(Cells|Nuclei)_",
                            normalize="center", **PYCYTO_FLAGS)
    import shlex

    argv = shlex.split(ds.meta["command"])[1:]
    argv[argv.index("p.parquet")] = str(p)
    argv[argv.index("--out") + 1] = str(tmp_path / "b")
    assert main(argv) == 0
    b = load_dataset(tmp_path / "b")
    assert b.meta["command"].replace("--out b", "--out a") == ds.meta["command"]
    assert_close(b.phenomic_matrix(), ds.phenomic_matrix())


def test_loader_presets_share_the_machinery(fixtures_dir):
    from molphenix.data import load_jump

    d = fixtures_dir / "jump"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = load_jump(d / "profiles.parquet", compounds=d / "compound.csv", plates=d / "plate.csv")
    # the JUMP preset reports what the shared builder reports, under its documented keys
    assert ds.meta["feature_columns"] and "left_out_numeric_columns" in ds.meta
    assert "treated_invalid_smiles" in ds.meta["loader_report"]


def test_schema_error_is_a_schema_error():
    assert issubclass(ProfileImportError, SchemaError)


# --------------------------------------------------------------------------- invariants

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_SMILES_POOL = [s for _, s in DRUGS[:4]] + ["OC(=O)C1=CC=CC=C1OC(C)=O", "", None, "C1CC((", "xyz"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.booleans(), st.sampled_from(_SMILES_POOL),
                          st.sampled_from([None, -1.0, 0.0, 0.5, 2.0, float("nan")])), min_size=2, max_size=40))
def test_every_row_is_imported_or_counted(rows):
    rows = [(True, DMSO_SMILES, None)] + rows  # at least one control: a dataset is never empty
    n = len(rows)
    t = pa.table({
        "Metadata_Plate": ["P"] * n,
        "Metadata_Well": [f"W{i}" for i in range(n)],
        "ctrl": pa.array([r[0] for r in rows], pa.bool_()),
        "Metadata_SMILES": [r[1] for r in rows],
        "dose": pa.array([r[2] for r in rows], pa.float64()),
        "Cells_A": np.arange(n, dtype=np.float64),
    })
    usable = [not c and s in _SMILES_POOL[:5] and d is not None and d > 0 for c, s, d in rows]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opts = dict(smiles_column="Metadata_SMILES", control_column="ctrl", control_values=["true"],
                    dose_column="dose", plate_column="Metadata_Plate", well_column="Metadata_Well")
        if not any(usable):  # only controls left: nothing to learn from, a clear error
            with pytest.raises(ProfileImportError, match="no treated wells left"):
                load_profiles(t, **opts)
            return
        ds = load_profiles(t, **opts)
    assert ds.n_wells - int(ds.control_mask().sum()) == sum(usable)
    rep = ds.meta["loader_report"]
    skipped = rep["treated_without_smiles"] + rep["treated_invalid_smiles"] + rep["treated_without_dose"]
    assert ds.n_wells + skipped == n
    assert rep["control_wells"] == sum(r[0] for r in rows) == int(ds.control_mask().sum())
    mols = ds.wells.column("molecule_id").to_pylist()
    assert all((m is None) == c for m, c in zip(mols, ds.control_mask()))
    # two spellings of aspirin are one molecule
    assert ds.molecules.num_rows == len({m for m in mols if m is not None}) <= 4
