"""Dataset directories: round trip, zero-copy embeddings, calls, errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from molphenix.data import (
    DataFileError,
    Dataset,
    SchemaError,
    load_calls,
    load_dataset,
    save_calls,
    save_dataset,
)
from molphenix.data.io import read_wells


def test_load_exposes_tables_and_helpers(tiny):
    assert isinstance(tiny, Dataset)
    assert tiny.embedding_dim == 16
    assert tiny.datasets == ["lib_a", "lib_b"]
    assert tiny.truth is not None and tiny.calls is None
    x = tiny.phenomic_matrix()
    assert x.dtype == np.float32 and x.shape == (tiny.n_wells, 16)
    assert tiny.meta["simulator_version"]
    keys = tiny.sample_keys()
    assert keys.num_rows == len(set(zip(keys.column("molecule_id").to_pylist(), keys.column("concentration_um").to_pylist())))


def test_phenomic_matrix_is_zero_copy(tiny):
    x = tiny.phenomic_matrix()
    col = tiny.wells.column("phenomic")
    assert col.num_chunks == 1
    buf = col.chunk(0).values.buffers()[1]
    assert x.ctypes.data == buf.address  # a view on the Arrow buffer, not a copy
    assert not x.flags.owndata


def test_read_wells_streams_multiple_row_groups(tmp_path, tiny):
    # small row groups force several record batches; the result is still one contiguous chunk
    pq.write_table(tiny.wells, tmp_path / "w.parquet", row_group_size=37)
    t = read_wells(tmp_path / "w.parquet", batch_size=50)
    assert t.column("phenomic").num_chunks == 1
    np.testing.assert_array_equal(
        t.column("phenomic").chunk(0).flatten().to_numpy(), tiny.phenomic_matrix().reshape(-1)
    )


def test_round_trip(tmp_path, tiny):
    out = save_dataset(tiny, tmp_path / "copy")
    back = load_dataset(out)
    assert back.wells.equals(tiny.wells)
    assert back.molecules.equals(tiny.molecules)
    assert back.truth.equals(tiny.truth)
    assert back.meta["seed"] == tiny.meta["seed"]
    with pytest.raises(FileExistsError):
        save_dataset(tiny, out)
    save_dataset(tiny, out, overwrite=True)


def test_calls_round_trip_and_user_calls(tmp_path, tiny):
    keys = tiny.sample_keys()
    n = keys.num_rows
    calls = pa.table(
        {
            "molecule_id": keys.column("molecule_id"),
            "concentration_um": keys.column("concentration_um"),
            "p_value": np.linspace(0, 1, n),
            "active": np.linspace(0, 1, n) < 0.1,
        }
    )
    ds = tiny.with_calls(calls)
    out = save_dataset(ds, tmp_path / "with_calls")
    assert load_dataset(out).calls.select(["p_value"]).equals(calls.select(["p_value"]))
    # a user's own CSV of calls
    csv = tmp_path / "my_calls.csv"
    rows = ["molecule_id,concentration_um,p_value,active"] + [
        f"{m},{c},{p},{str(a).lower()}"
        for m, c, p, a in zip(*(calls.column(k).to_pylist() for k in ("molecule_id", "concentration_um", "p_value", "active")))
    ]
    csv.write_text("\n".join(rows) + "\n")
    mine = load_calls(csv)
    assert mine.num_rows == n
    p = save_calls(mine, tmp_path)
    assert p.name == "calls.parquet"


def test_missing_files_and_bad_files(tmp_path, tiny_sim_dir):
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "nope")
    d = tmp_path / "broken"
    shutil.copytree(tiny_sim_dir, d)
    (d / "molecules.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="molecules.parquet"):
        load_dataset(d)
    # meta.json says another width -> a SchemaError naming phenomic
    d2 = tmp_path / "width"
    shutil.copytree(tiny_sim_dir, d2)
    meta = json.loads((d2 / "meta.json").read_text())
    meta["embedding_dim"] = 17
    (d2 / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SchemaError, match="phenomic"):
        load_dataset(d2)


@pytest.mark.parametrize(
    "name, content",
    [
        ("wells.parquet", b"this is not parquet" * 20),
        ("molecules.parquet", b"PAR1garbagePAR1"),
        ("meta.json", b"\x80\x81 not utf-8 {"),
        ("meta.json", b'{"embedding_dim": 16,'),
        ("meta.json", b"[1, 2]"),
    ],
)
def test_corrupt_file_is_named(tmp_path, tiny_sim_dir, name, content):
    d = tmp_path / "corrupt"
    shutil.copytree(tiny_sim_dir, d)
    (d / name).write_bytes(content)
    with pytest.raises(DataFileError) as ei:
        load_dataset(d)
    assert isinstance(ei.value, SchemaError) and isinstance(ei.value, ValueError)
    assert str(d / name) in str(ei.value)
    assert ei.value.path == d / name


def test_truncated_parquet_is_named(tmp_path, tiny_sim_dir):
    d = tmp_path / "truncated"
    shutil.copytree(tiny_sim_dir, d)
    raw = (d / "wells.parquet").read_bytes()
    (d / "wells.parquet").write_bytes(raw[: len(raw) // 3] + raw[-64:])  # keeps the magic bytes
    with pytest.raises(DataFileError, match="wells.parquet"):
        load_dataset(d)


def test_corrupt_calls_file_is_named(tmp_path, tiny):
    bad = tmp_path / "calls.parquet"
    bad.write_bytes(b"nope" * 10)
    with pytest.raises(DataFileError, match="calls.parquet"):
        load_calls(bad)


def test_wells_referencing_unknown_molecule(tmp_path, tiny_sim_dir):
    d = tmp_path / "orphan"
    shutil.copytree(tiny_sim_dir, d)
    mols = pq.read_table(d / "molecules.parquet")
    gone = mols.column("molecule_id")[0].as_py()
    pq.write_table(mols.slice(1), d / "molecules.parquet")
    with pytest.raises(SchemaError) as ei:
        load_dataset(d)
    assert ei.value.column == "molecule_id" and ei.value.row is not None and gone in str(ei.value)


def test_phenomic_matrix_of_a_chunked_table(tiny):
    # an in-memory table made of several chunks: phenomic_matrix falls back to one copy
    half = tiny.n_wells // 2
    chunked = pa.concat_tables([tiny.wells.slice(0, half), tiny.wells.slice(half)])
    assert chunked.column("phenomic").num_chunks == 2
    ds = Dataset(wells=chunked, molecules=tiny.molecules)
    np.testing.assert_array_equal(ds.phenomic_matrix(), tiny.phenomic_matrix())
