"""``molphenix embed-library`` / ``molphenix retrieve``: a round trip on a tiny trained run."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
import torch

from molphenix.cli.main import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from molphenix.data import simulate
    from molphenix.train import TrainConfig, fit

    root = tmp_path_factory.mktemp("retrieve")
    ds = simulate(root / "data", n_molecules=40, seed=5, progress=False)
    run = fit(TrainConfig(data=str(root / "data"), out=str(root / "run"), samples=64, batch_size=32,
                          progress=False), log=lambda m: None)
    mols = ds.molecules.select(["molecule_id", "smiles"]).slice(0, 12)
    csv = root / "mols.csv"
    pcsv.write_csv(mols, csv)
    return root, ds, run, csv


def _err(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_embed_library_then_retrieve_round_trip(trained, tmp_path):
    from molphenix.retrieval import Index
    from molphenix.train import load_run

    root, ds, run, csv = trained
    lib = tmp_path / "lib.parquet"
    assert main(["embed-library", "--run", str(run), "--molecules", str(csv), "--out", str(lib)]) == 0
    index = Index.load(lib)
    tm = load_run(run)
    assert len(index) == 12 * len(tm.doses)
    t = pq.read_table(lib)
    assert {"molecule_id", "smiles", "concentration_um"} <= set(t.column_names)

    out = tmp_path / "hits.csv"
    assert main(["retrieve", "--run", str(run), "--wells", str(root / "data"), "--library", str(lib),
                 "--k", "3", "--out", str(out)]) == 0
    hits = pcsv.read_csv(out)
    assert hits.column_names[:5] == ["query", "rank", "molecule_id", "concentration_um", "score"]
    n_treated = int((~ds.control_mask()).sum())
    assert hits.num_rows == 3 * n_treated
    # the first hit of each query is the best cosine against the library, computed directly
    q = tm.embed_wells(ds)[~torch.as_tensor(ds.control_mask())]
    best = (q @ index.embeddings.T).argmax(1)
    top = hits.filter(pa.compute.equal(hits.column("rank"), 0))
    assert top.column("id").to_pylist()[:20] == [index.ids[i] for i in best[:20].tolist()]
    s = np.asarray(hits.column("score").to_pylist()).reshape(-1, 3)
    assert (np.diff(s, axis=1) <= 1e-6).all()


def test_retrieve_from_molecules_with_a_fraction(trained, tmp_path):
    root, ds, run, csv = trained
    out = tmp_path / "hits.parquet"
    assert main(["retrieve", "--run", str(run), "--wells", str(root / "data" / "wells.parquet"),
                 "--molecules", str(csv), "--concentrations", "1,10", "--top-fraction", "0.1",
                 "--out", str(out)]) == 0
    t = pq.read_table(out)
    assert set(t.column("concentration_um").to_pylist()) <= {1.0, 10.0}
    assert t.num_rows == int((~ds.control_mask()).sum()) * 3  # ceil(0.1 * 24)


def test_embed_library_skips_invalid_smiles_with_a_count(trained, tmp_path, capsys):
    root, ds, run, _ = trained
    f = tmp_path / "m.csv"
    f.write_text("molecule_id,smiles,concentration_um\na,CCO,1.0\nb,not-a-smiles,1.0\nc,c1ccccc1,2.5\n")
    lib = tmp_path / "lib.parquet"
    assert main(["embed-library", "--run", str(run), "--molecules", str(f), "--out", str(lib)]) == 0
    assert "1 rows rejected (1 SMILES parse error" in capsys.readouterr().out
    assert pq.read_table(lib).column("id").to_pylist() == ["a@1", "c@2.5"]
    rejects = pcsv.read_csv(tmp_path / "lib.parquet.rejects.csv")
    assert rejects.column("row").to_pylist() == [1]
    assert rejects.column("reason").to_pylist()[0].startswith("SMILES Parse Error")


@pytest.mark.parametrize("args,flag", [
    (["--k", "3"], "--library"),                                   # neither library nor molecules
    (["--library", "L", "--molecules", "M", "--k", "3"], "--library"),
    (["--library", "L"], "--top-fraction"),                        # neither k nor fraction
    (["--library", "L", "--k", "2", "--top-fraction", "0.1"], "--top-fraction"),
    (["--library", "L", "--top-fraction", "1.5"], "--top-fraction"),
    (["--library", "L", "--k", "0"], "--k"),
])
def test_retrieve_usage_errors(trained, tmp_path, capsys, args, flag):
    root, _, run, _ = trained
    args = [str(tmp_path / a) if a in ("L", "M") else a for a in args]
    rc = main(["retrieve", "--run", str(run), "--wells", str(root / "data"), "--out",
               str(tmp_path / "o.csv"), *args])
    assert rc == 2
    assert _err(capsys).startswith(f"error: {flag}:")


def test_cli_input_errors(trained, tmp_path, capsys):
    root, _, run, csv = trained
    lib = tmp_path / "lib.parquet"
    assert main(["embed-library", "--run", str(tmp_path / "nope"), "--molecules", str(csv), "--out", str(lib)]) == 2
    assert _err(capsys).startswith("error: --run:")
    assert main(["embed-library", "--run", str(run), "--molecules", str(tmp_path / "x.csv"), "--out", str(lib)]) == 2
    assert _err(capsys).startswith("error: --molecules:")
    assert main(["embed-library", "--run", str(run), "--molecules", str(csv), "--concentrations", "1,x",
                 "--out", str(lib)]) == 2
    assert _err(capsys).startswith("error: --concentrations:")
    (tmp_path / "afile").write_text("")
    assert main(["embed-library", "--run", str(run), "--molecules", str(csv), "--out",
                 str(tmp_path / "afile" / "lib")]) == 2  # cannot be written
    assert _err(capsys).startswith("error: --out:")
    assert main(["embed-library", "--run", str(run), "--molecules", str(csv), "--out", str(lib)]) == 0
    capsys.readouterr()
    assert main(["embed-library", "--run", str(run), "--molecules", str(csv), "--out", str(lib)]) == 2
    assert "pass --overwrite" in _err(capsys)
    assert main(["retrieve", "--run", str(run), "--wells", str(tmp_path / "w.parquet"), "--library", str(lib),
                 "--k", "1", "--out", str(tmp_path / "o.csv")]) == 2
    assert _err(capsys).startswith("error: --wells:")
    # a wells file whose treated wells sit in a batch without controls cannot be centered
    w = pq.read_table(root / "data" / "wells.parquet")
    keep = pa.compute.invert(w.column("is_control"))
    pq.write_table(w.filter(keep), tmp_path / "noctrl.parquet")
    assert main(["retrieve", "--run", str(run), "--wells", str(tmp_path / "noctrl.parquet"), "--library",
                 str(lib), "--k", "1", "--out", str(tmp_path / "o.csv")]) == 2
    assert _err(capsys).startswith("error: --wells:")
