"""molphenix.data.molecule_stream: chunked reading of every format, the pre-pass, featurizing."""

from __future__ import annotations

import gzip

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from molphenix.data import featurize as fz
from molphenix.data import molecule_stream as MS

SMILES = ["CCO", "c1ccccc1", "CC(=O)O", "C1CC", "CCN", "", "CCO", "O=C=O", "CN(C)(C)(C)C", "CCCl"]
IDS = ["a", "b", "c", "d", "e", "f", None, "h", "i", "a"]


def _write_all(tmp_path):
    t = pa.table({"SMILES": SMILES, "Molecule_ID": IDS, "other": list(range(10))})
    paths = {}
    pq.write_table(t, tmp_path / "m.parquet", row_group_size=3)
    pcsv.write_csv(t, tmp_path / "m.csv")
    with gzip.open(tmp_path / "m.csv.gz", "wb") as f:
        f.write((tmp_path / "m.csv").read_bytes())
    lines = ["# header comment"] + [f"{s} {i}" if i else s for s, i in zip(SMILES, IDS) if s]
    (tmp_path / "m.smi").write_text("\n".join(lines) + "\n\n")
    for name in ("m.parquet", "m.csv", "m.csv.gz", "m.smi"):
        paths[name] = tmp_path / name
    return paths


def test_every_format_reads_in_an_exact_chunk_grid(tmp_path):
    paths = _write_all(tmp_path)
    for name, path in paths.items():
        chunks = list(MS.iter_molecule_chunks(path, 4))
        n = 9 if name == "m.smi" else 10  # the .smi file has no line for the empty SMILES
        assert [c for c, _, _ in chunks] == list(range((n + 3) // 4))
        assert [r for _, r, _ in chunks] == [0, 4, 8][:len(chunks)]
        assert [t.num_rows for _, _, t in chunks] == [4, 4, n - 8]
        got = [s for _, _, t in chunks for s in t.column("smiles").to_pylist()]
        want = [s for s in SMILES if s] if name == "m.smi" else [s or None for s in SMILES]
        if name == "m.parquet":
            want = SMILES
        assert got == want, name
        picked = list(MS.iter_molecule_chunks(path, 4, chunks=[1]))
        assert [(c, r) for c, r, _ in picked] == [(1, 4)]
        assert picked[0][2].equals(chunks[1][2])


def test_scan_counts_rows_and_finds_repeated_ids(tmp_path):
    paths = _write_all(tmp_path)
    scan = MS.scan_molecules(paths["m.csv"])
    assert scan.rows == 10 and scan.columns == ("smiles", "molecule_id")
    # row 6 has no id: its key is its SMILES "CCO" (no earlier row has id "CCO"); row 9 repeats "a"
    assert scan.duplicates == {9: 0}
    assert len(scan.sha256) == 64
    t = pa.table({"smiles": ["C", "C", "CC", "C"], "concentration_um": [1.0, 2.0, 1.0, 1.0]})
    pq.write_table(t, tmp_path / "c.parquet")
    assert MS.scan_molecules(tmp_path / "c.parquet").duplicates == {3: 0}


def test_bad_files(tmp_path):
    (tmp_path / "e.csv").write_text("")
    (tmp_path / "h.csv").write_text("smiles\n")
    (tmp_path / "n.csv").write_text("x,y\n1,2\n")
    (tmp_path / "e.smi").write_text("")
    (tmp_path / "c.smi").write_text("# only a comment\n")
    (tmp_path / "x.sdf").write_text("")
    (tmp_path / "bad.parquet").write_text("not parquet")
    cases = {"e.csv": "empty file", "h.csv": "no molecules", "n.csv": "no 'smiles' column",
             "e.smi": "empty file", "c.smi": "no molecules", "x.sdf": "unknown molecules file type",
             "bad.parquet": "cannot read Parquet", "missing.csv": "file not found"}
    for name, msg in cases.items():
        with pytest.raises(MS.MoleculeFileError, match=msg):
            MS.scan_molecules(tmp_path / name)


def test_featurize_chunk_parses_once_and_matches_the_featurizer():
    f = fz.MorganCounts(n_bits=512)
    fc = MS.featurize_chunk(f, SMILES, skip={9: "duplicate of row 0"})
    assert fc.valid.tolist() == [0, 1, 2, 4, 6, 7]
    assert set(fc.rejected) == {3, 5, 8, 9}
    assert fc.rejected[3].startswith("SMILES Parse Error: unclosed ring")
    assert fc.rejected[5] == "missing SMILES" and "valence" in fc.rejected[8]
    assert fc.kind == "csr"  # fingerprints are sparse: sent compressed, exactly
    np.testing.assert_array_equal(fc.features(), f([SMILES[i] for i in fc.valid]))
    # a featurizer that only takes SMILES (the generic batch API) plugs in too
    calls = []

    def plain(smiles):
        calls.append(list(smiles))
        return np.ones((len(smiles), 3), dtype=np.float32)

    fc2 = MS.featurize_chunk(plain, SMILES)
    assert calls == [[SMILES[i] for i in fc2.valid]] and fc2.kind == "dense"
    assert MS.featurize_chunk(None, SMILES).features().shape == (7, 0)
    with pytest.raises(ValueError, match="returned 1 rows"):
        MS.featurize_chunk(lambda s: np.zeros((1, 2), np.float32), SMILES)


@pytest.mark.parametrize("name", ["morgan", "maccs", "rdkit2d"])
def test_compute_mols_equals_smiles_path(name):
    from rdkit import Chem

    f = fz.get_featurizer(name)
    if name == "rdkit2d":
        f.fit(["CCO", "c1ccccc1", "CC(=O)O", "CCN"])
    good = ["CCO", "c1ccccc1", "CC(=O)O", "CCN", "O=C=O"]
    np.testing.assert_array_equal(f.compute_mols([Chem.MolFromSmiles(s) for s in good]), f(good))
    back = fz.featurizer_from_state({"mol_input": name, "kwargs": {},
                                     **({"mean": f.mean_.tolist(), "std": f.std_.tolist()}
                                        if name == "rdkit2d" else {})})
    np.testing.assert_array_equal(back(good), f(good))
    g = fz.GraphFeaturizer()
    got = g.compute_mols([Chem.MolFromSmiles("CCO")])[0]
    np.testing.assert_array_equal(got.x, g(["CCO"])[0].x)


def test_sparse_chunks_take_rows_exactly_and_slices_concatenate(monkeypatch):
    monkeypatch.setattr(MS, "_SLICE", 2)  # several slices per chunk
    f = fz.MorganCounts(n_bits=256)
    fc = MS.featurize_chunk(f, SMILES)
    want = f([SMILES[i] for i in fc.valid])
    assert fc.kind == "csr"
    np.testing.assert_array_equal(fc.features(), want)
    idx = np.array([3, 0, 0, 5, 2])
    np.testing.assert_array_equal(fc.take(idx), want[idx])
    np.testing.assert_array_equal(fc.take(np.zeros(0, np.int64)), want[:0])
    dense = MS.featurize_chunk(lambda s: np.arange(len(s) * 2, dtype=np.float32).reshape(-1, 2) + 1, SMILES)
    assert dense.kind == "dense" and dense.features().shape == (7, 2)
    np.testing.assert_array_equal(dense.take(np.array([1])), dense.features()[[1]])
