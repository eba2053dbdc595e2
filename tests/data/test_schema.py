"""Schema validation: every bad case raises a ValueError naming the column and the row."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from molphenix.data import SchemaError, from_tables
from molphenix.data.schema import (
    validate_calls,
    validate_molecules,
    validate_truth,
    validate_wells,
)

E = 4


def make_tables(n_treated: int = 6, n_controls: int = 2, e: int = E):
    rng = np.random.default_rng(0)
    n = n_treated + n_controls
    is_control = [False] * n_treated + [True] * n_controls
    mol = [f"m{i % 3}" for i in range(n_treated)] + [None] * n_controls
    conc = [1.0 + (i % 2) for i in range(n_treated)] + [None] * n_controls
    emb = rng.standard_normal((n, e)).astype(np.float32)
    wells = pa.table(
        {
            "well_id": [f"w{i}" for i in range(n)],
            "dataset": ["d"] * n,
            "batch": ["b0" if i % 2 else "b1" for i in range(n)],
            "plate": ["p"] * n,
            "molecule_id": pa.array(mol, pa.string()),
            "concentration_um": pa.array(conc, pa.float64()),
            "is_control": is_control,
            "phenomic": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), e),
            "extra": list(range(n)),
        }
    )
    molecules = pa.table({"molecule_id": ["m0", "m1", "m2"], "smiles": ["CCO", "c1ccccc1O", "CC(=O)N"]})
    return wells, molecules


def replace(table: pa.Table, name: str, values, type_=None) -> pa.Table:
    arr = pa.array(values, type_) if type_ is not None else pa.array(values)
    return table.set_column(table.column_names.index(name), name, arr)


def assert_names(exc: SchemaError, column: str | None, row: int | None) -> None:
    assert isinstance(exc, ValueError)
    assert exc.column == column
    assert exc.row == row
    if column is not None:
        assert repr(column) in str(exc)
    if row is not None:
        assert f"row {row}" in str(exc)


def test_valid_tables_pass_and_extra_columns_are_kept():
    wells, molecules = make_tables()
    out = validate_wells(wells)
    assert "extra" in out.column_names
    assert out.schema.field("phenomic").type == pa.list_(pa.float32(), E)
    ds = from_tables(wells, molecules)
    assert ds.n_wells == wells.num_rows and ds.embedding_dim == E


@pytest.mark.parametrize("column", ["well_id", "dataset", "batch", "plate", "molecule_id", "concentration_um", "is_control", "phenomic"])
def test_missing_column(column):
    wells, _ = make_tables()
    with pytest.raises(SchemaError) as ei:
        validate_wells(wells.drop_columns([column]))
    assert_names(ei.value, column, None)


@pytest.mark.parametrize(
    "column,values,type_",
    [
        ("well_id", list(range(8)), pa.int64()),
        ("concentration_um", ["1"] * 8, pa.string()),
        ("is_control", [0] * 8, pa.int8()),
        ("phenomic", [1.0] * 8, pa.float32()),
    ],
)
def test_wrong_type(column, values, type_):
    wells, _ = make_tables()
    with pytest.raises(SchemaError) as ei:
        validate_wells(replace(wells, column, values, type_))
    assert_names(ei.value, column, None)


def test_duplicate_well_id_names_row():
    wells, _ = make_tables()
    ids = [f"w{i}" for i in range(8)]
    ids[5] = "w2"
    with pytest.raises(SchemaError) as ei:
        validate_wells(replace(wells, "well_id", ids))
    assert_names(ei.value, "well_id", 5)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_bad_concentration_names_row(bad):
    wells, _ = make_tables()
    conc = wells.column("concentration_um").to_pylist()
    conc[3] = bad
    with pytest.raises(SchemaError) as ei:
        validate_wells(replace(wells, "concentration_um", conc, pa.float64()))
    assert_names(ei.value, "concentration_um", 3)


def test_treated_well_without_molecule_or_concentration():
    wells, _ = make_tables()
    mol = wells.column("molecule_id").to_pylist()
    mol[4] = None
    with pytest.raises(SchemaError) as ei:
        validate_wells(replace(wells, "molecule_id", mol, pa.string()))
    assert_names(ei.value, "molecule_id", 4)
    conc = wells.column("concentration_um").to_pylist()
    conc[1] = None
    with pytest.raises(SchemaError) as ei:
        validate_wells(replace(wells, "concentration_um", conc, pa.float64()))
    assert_names(ei.value, "concentration_um", 1)


def test_control_well_with_molecule_id_is_rejected():
    # the schema says molecule_id is null for controls (rows 6 and 7 are the controls)
    wells, _ = make_tables()
    mol = wells.column("molecule_id").to_pylist()
    mol[7] = "DMSO"
    with pytest.raises(SchemaError) as ei:
        validate_wells(replace(wells, "molecule_id", mol, pa.string()))
    assert_names(ei.value, "molecule_id", 7)
    assert "control" in str(ei.value) and "'DMSO'" in str(ei.value)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nonfinite_embedding_names_row(bad):
    wells, _ = make_tables()
    emb = np.asarray(wells.column("phenomic").combine_chunks().flatten().to_numpy()).copy()
    emb[6 * E + 2] = bad
    col = pa.FixedSizeListArray.from_arrays(pa.array(emb), E)
    with pytest.raises(SchemaError) as ei:
        validate_wells(wells.set_column(7, "phenomic", col))
    assert_names(ei.value, "phenomic", 6)


def test_wrong_embedding_width():
    wells, _ = make_tables()
    with pytest.raises(SchemaError) as ei:
        validate_wells(wells, embedding_dim=E + 1)
    assert_names(ei.value, "phenomic", None)
    # variable-length lists: the first row of another length is named
    rows = [[0.0] * E for _ in range(8)]
    rows[5] = [0.0] * (E - 1)
    with pytest.raises(SchemaError) as ei:
        validate_wells(replace(wells, "phenomic", rows, pa.list_(pa.float32())))
    assert_names(ei.value, "phenomic", 5)


def test_variable_length_lists_are_normalised():
    wells, _ = make_tables()
    rows = wells.column("phenomic").to_pylist()
    out = validate_wells(replace(wells, "phenomic", rows, pa.list_(pa.float64())))
    assert out.schema.field("phenomic").type == pa.list_(pa.float32(), E)


def test_empty_tables():
    wells, molecules = make_tables()
    with pytest.raises(SchemaError) as ei:
        validate_wells(wells.slice(0, 0))
    assert "empty" in str(ei.value)
    with pytest.raises(SchemaError):
        validate_molecules(molecules.slice(0, 0))


def test_unknown_molecule_reference_names_row():
    wells, molecules = make_tables()
    mol = wells.column("molecule_id").to_pylist()
    mol[2] = "nope"
    with pytest.raises(SchemaError) as ei:
        from_tables(replace(wells, "molecule_id", mol, pa.string()), molecules)
    assert_names(ei.value, "molecule_id", 2)
    assert "nope" in str(ei.value)


def test_duplicate_molecule_id():
    _, molecules = make_tables()
    bad = pa.table({"molecule_id": ["a", "b", "a"], "smiles": ["C", "CC", "CCC"]})
    with pytest.raises(SchemaError) as ei:
        validate_molecules(bad)
    assert_names(ei.value, "molecule_id", 2)


def test_invalid_smiles_counted_reported_and_skipped():
    wells, molecules = make_tables()
    molecules = replace(molecules, "smiles", ["CCO", "not-a-smiles", "CC(=O)N"])
    with pytest.warns(UserWarning, match="1 invalid SMILES"):
        ds = from_tables(wells, molecules)
    rep = ds.invalid_smiles
    assert rep.count == 1 and rep.molecule_ids == ["m1"] and rep.rows == [1]
    # every well of m1 was dropped, and counted
    n_m1 = sum(1 for m in wells.column("molecule_id").to_pylist() if m == "m1")
    assert rep.dropped_wells == n_m1 and ds.n_wells == wells.num_rows - n_m1
    assert "m1" not in ds.molecules.column("molecule_id").to_pylist()


def test_truth_and_calls_validation():
    t = pa.table({"molecule_id": ["a", "a"], "concentration_um": [1.0, 1.0], "active": [True, False]})
    with pytest.raises(SchemaError) as ei:
        validate_truth(t)
    assert_names(ei.value, "molecule_id", 1)
    c = pa.table({"molecule_id": ["a", "b"], "concentration_um": [1.0, 2.0], "p_value": [0.5, 1.5], "active": [False, False]})
    with pytest.raises(SchemaError) as ei:
        validate_calls(c)
    assert_names(ei.value, "p_value", 1)
    with pytest.raises(SchemaError) as ei:
        validate_calls(c.drop_columns(["active"]))
    assert_names(ei.value, "active", None)


@settings(max_examples=40, deadline=None)
@given(
    row=st.integers(0, 7),
    value=st.sampled_from([0.0, -0.5, -1e9, math.nan, math.inf, -math.inf]),
)
def test_property_any_bad_concentration_row_is_named(row, value):
    wells, _ = make_tables()
    conc = wells.column("concentration_um").to_pylist()
    if conc[row] is None:  # a control: a bad non-null value is still an error
        pass
    conc[row] = value
    with pytest.raises(SchemaError) as ei:
        validate_wells(replace(wells, "concentration_um", conc, pa.float64()))
    assert ei.value.column == "concentration_um" and ei.value.row == row


@settings(max_examples=40, deadline=None)
@given(row=st.integers(0, 7), pos=st.integers(0, E - 1), value=st.sampled_from([math.nan, math.inf, -math.inf]))
def test_property_any_nonfinite_embedding_is_named(row, pos, value):
    wells, _ = make_tables()
    emb = np.asarray(wells.column("phenomic").combine_chunks().flatten().to_numpy()).copy()
    emb[row * E + pos] = value
    col = pa.FixedSizeListArray.from_arrays(pa.array(emb), E)
    with pytest.raises(SchemaError) as ei:
        validate_wells(wells.set_column(7, "phenomic", col))
    assert ei.value.column == "phenomic" and ei.value.row == row


@settings(max_examples=30, deadline=None)
@given(dup_from=st.integers(0, 7), dup_to=st.integers(0, 7))
def test_property_duplicate_ids_report_later_row(dup_from, dup_to):
    if dup_from == dup_to:
        return
    wells, _ = make_tables()
    ids = [f"w{i}" for i in range(8)]
    ids[dup_to] = ids[dup_from]
    with pytest.raises(SchemaError) as ei:
        validate_wells(replace(wells, "well_id", ids))
    assert ei.value.column == "well_id" and ei.value.row == max(dup_from, dup_to)
