"""``molphenix import-profiles``: a pycytominer-style plate nobody has seen trains and evaluates
through the CLI; bad input gives one line and the documented exit code, and writes nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _profile_tables import FEATURES, PYCYTO_ARGV, pycytominer_plate, replace_column, write

from molphenix.cli.main import main

TINY_TRAIN = ["--samples", "16", "--batch-size", "4", "--no-progress", "--threads", "1"]


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    lines = [ln for ln in err if ln.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture()
def plates(tmp_path):
    """Three pycytominer-style plates: two CSV.gz, one Parquet."""
    files = [write(pycytominer_plate(f"SQ0001481{k}", seed=k), tmp_path / f"SQ0001481{k}_normalized.csv.gz")
             for k in range(2)]
    files.append(write(pycytominer_plate("SQ00014812", seed=2), tmp_path / "SQ00014812_normalized.parquet"))
    return files


def test_unseen_pycytominer_plate_imports_trains_and_evaluates(plates, tmp_path, capsys):
    ds_dir = tmp_path / "ds"
    argv = ["import-profiles", *map(str, plates), "--out", str(ds_dir), *PYCYTO_ARGV, "--normalize", "robust-z"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    # the features are printed as a count with the first and last names
    assert f"features: {len(FEATURES)} (default rule): {FEATURES[0]} ... {FEATURES[-1]}" in out
    # the extra numeric columns are listed as left out, not taken
    assert "numeric columns not used as features (2): Metadata_Count_Cells, injury_code" in out
    assert "wells: 90 (18 control, 72 treated); molecules: 12; doses: 2" in out
    meta = json.loads((ds_dir / "meta.json").read_text())
    assert meta["feature_columns"] == FEATURES and meta["embedding_dim"] == len(FEATURES)
    assert meta["left_out_numeric_columns"] == ["Metadata_Count_Cells", "injury_code"]
    assert meta["normalization"]["method"] == "robust-z"
    assert meta["command"].startswith("molphenix import-profiles SQ00014810_normalized.csv.gz")

    run = tmp_path / "run"
    assert main(["train", "--data", str(ds_dir), "--out", str(run), *TINY_TRAIN]) == 0
    assert main(["evaluate", "--run", str(run), "--data", str(ds_dir), "--bootstrap", "0"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert "unseen_molecules" in metrics


def test_missing_columns_one_line_names_every_one(plates, tmp_path, capsys):
    out = tmp_path / "ds"
    argv = ["import-profiles", str(plates[0]), "--out", str(out), *PYCYTO_ARGV,
            "--batch-column", "Metadata_Batch", "--dataset-column", "Metadata_timepoint", "--where", "Metadata_cell_line=U2OS"]
    argv[argv.index("Metadata_SMILES")] = "SMILES"
    assert main(argv) == 2
    line = _err_line(capsys)
    for part in ("'SMILES' (--smiles-column)", "'Metadata_Batch' (--batch-column)",
                 "'Metadata_timepoint' (--dataset-column)", "'Metadata_cell_line' (--where)"):
        assert part in line
    assert line.startswith("error: missing columns ")
    assert not out.exists()


@pytest.mark.parametrize("case,code,expect", [
    ("duplicate", 1, "duplicate well id 'SQ00014810/A01'"),
    ("no_controls", 1, "--normalize: normalization 'center' needs control wells on every plate; 1 plate(s) have no control wells: P9"),
    ("nonfinite", 1, "column 'Cells_AreaShape_Area', row 2: non-finite feature value nan"),
    ("conflict", 1, "molecule id 'BRD-aspirin' has two structures"),
    ("features", 2, "--features: no column matches '^Zzz'"),
    ("bad_regex", 2, "--features: not a valid regular expression"),
    ("where", 2, "--where: expected COL=VALUE, got 'Metadata_Plate'"),
    ("unit", 2, "--dose-unit: must be uM, nM, mM or M, got 'ug'"),
    ("normalize", 2, "--normalize: must be one of none, center, robust-z, tvn, got 'z'"),
    ("nonfinite_flag", 2, "--nonfinite: must be drop or fail, got 'keep'"),
    ("no_control_value", 2, "--control-value: missing required option"),
    ("missing_file", 2, "FILE: "),
])
def test_bad_input_is_one_line_and_writes_nothing(plates, tmp_path, capsys, case, code, expect):
    out = tmp_path / "ds"
    files = [str(plates[0])]
    extra: list = []
    argv_flags = list(PYCYTO_ARGV)
    if case == "duplicate":
        files.append(str(write(pycytominer_plate("SQ00014810", seed=5), tmp_path / "again.csv")))
    elif case == "no_controls":
        files.append(str(write(pycytominer_plate("P9", seed=5, n_controls=0), tmp_path / "p9.csv")))
        extra = ["--normalize", "center"]
    elif case == "nonfinite":
        t = pycytominer_plate("P8", seed=5)
        v = t.column("Cells_AreaShape_Area").to_numpy().copy()
        v[2] = np.nan
        files = [str(write(replace_column(t, "Cells_AreaShape_Area", v), tmp_path / "p8.parquet"))]
        extra = ["--nonfinite", "fail"]
    elif case == "conflict":
        t = pycytominer_plate("P7", seed=5)
        smi = t.column("Metadata_SMILES").to_pylist()
        smi[1] = "CCO"
        files = [str(write(replace_column(t, "Metadata_SMILES", smi), tmp_path / "p7.csv"))]
        extra = ["--molecule-column", "Metadata_broad_sample"]
    elif case == "features":
        extra = ["--features", "^Zzz"]
    elif case == "bad_regex":
        extra = ["--features", "("]
    elif case == "where":
        extra = ["--where", "Metadata_Plate"]
    elif case == "unit":
        argv_flags[argv_flags.index("mM")] = "ug"
    elif case == "normalize":
        extra = ["--normalize", "z"]
    elif case == "nonfinite_flag":
        extra = ["--nonfinite", "keep"]
    elif case == "no_control_value":
        i = argv_flags.index("--control-value")
        del argv_flags[i:i + 2]
    elif case == "missing_file":
        files.append(str(tmp_path / "nope.csv"))
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["import-profiles", *files, "--out", str(out), *argv_flags, *extra]) == code
    line = _err_line(capsys)
    assert expect in line, line
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary directory left


def test_existing_output_needs_overwrite(plates, tmp_path, capsys):
    out = tmp_path / "ds"
    argv = ["import-profiles", str(plates[0]), "--out", str(out), *PYCYTO_ARGV]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2
    line = _err_line(capsys)
    assert line.startswith("error: --out: ") and "pass --overwrite" in line
    assert main(argv + ["--overwrite"]) == 0
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    capsys.readouterr()
    assert main(["import-profiles", str(plates[0]), "--out", str(tmp_path / "notes"), *PYCYTO_ARGV, "--overwrite"]) == 2
    assert "holds no dataset" in _err_line(capsys)


def test_merge_warning_and_skips_are_printed(tmp_path, capsys):
    t = pycytominer_plate("P1")
    names = t.column("Metadata_broad_sample").to_pylist()
    names[1] = "BRD-aspirin-2"
    smi = t.column("Metadata_SMILES").to_pylist()
    smi[2] = "not a smiles"
    t = replace_column(replace_column(t, "Metadata_broad_sample", names), "Metadata_SMILES", smi)
    p = write(t, tmp_path / "p.csv")
    assert main(["import-profiles", str(p), "--out", str(tmp_path / "ds"), *PYCYTO_ARGV,
                 "--molecule-column", "Metadata_broad_sample"]) == 0
    cap = capsys.readouterr()
    assert "warning: " in cap.err and "BRD-aspirin, BRD-aspirin-2 -> BRD-aspirin" in cap.err
    assert "skipped treated wells: 1 invalid smiles" in cap.out
    assert "merged molecule ids (one structure): BRD-aspirin, BRD-aspirin-2 -> BRD-aspirin" in cap.out
