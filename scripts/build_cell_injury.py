"""Rebuild the bundled cell-injury dataset (python/molphenix/datasets/cell_injury/) from its source files.

    python scripts/build_cell_injury.py                 # rebuild in place
    python scripts/build_cell_injury.py --check         # rebuild to a temporary folder and compare
    python scripts/build_cell_injury.py --source DIR    # where the source files are

The source is the project's copy of the public cell-injury profiles (see its SOURCE.md: the
held-out splits of github.com/axiomcura/predicting-cell-injury-compounds at commit 848bc6f,
CC BY 4.0). The default source is $MOLPHENIX_CELL_INJURY_SRC, else ``shared/data/cell-injury-u2os``
next to (or two levels above) the repository. The dataset is made by ``molphenix import-profiles``
with exactly the arguments in IMPORT_ARGS (also recorded in the dataset's meta.json ``command``).

Reproducibility: the rebuilt tables are identical to the bundled ones (checked by --check and by
tests/data/test_bundled.py when the source is present). The Parquet bytes are identical under the
same pyarrow version (the writer records its version in the file); meta.json is identical under
the same molphenix version.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "python" / "molphenix" / "datasets" / "cell_injury"
FILES = ("fs_plate_holdout.csv.gz", "fs_well_holdout.csv.gz", "fs_treatment_holdout.csv.gz")
#: The import, as run (file paths are prepended; --out is appended).
IMPORT_ARGS = [
    "--smiles-column", "Compound SMILES",
    "--control-column", "Control Type",
    "--control-value", "Negative",
    "--dose-column", "Compound Concentration (microMolar)",
    "--dose-unit", "uM",
    "--plate-column", "Plate",
    "--well-column", "Well",
    "--batch-column", "Experimental Condition [Experimental Batch]",
    "--dataset-column", "Experimental Condition [Treatment time (h)]",
    "--normalize", "none",
    "--nonfinite", "fail",
    "--dataset", "cell-injury",
]
DATA_FILES = ("wells.parquet", "molecules.parquet", "meta.json")


def find_source(explicit: str | None = None) -> Path | None:
    """The source folder, or None when it is not on this machine."""
    cands = [explicit, os.environ.get("MOLPHENIX_CELL_INJURY_SRC"),
             ROOT.parent / "shared" / "data" / "cell-injury-u2os",
             ROOT.parent.parent / "shared" / "data" / "cell-injury-u2os"]
    for c in cands:
        if c and all((Path(c) / f).is_file() for f in FILES):
            return Path(c)
    return None


def build(source: Path, out: Path) -> int:
    """Run the import into ``out`` (a new directory named ``cell_injury``)."""
    try:
        import molphenix  # noqa: F401 - installed, or on PYTHONPATH
    except ImportError:
        sys.path.insert(0, str(ROOT / "python"))
    from molphenix.cli.main import main

    return main(["import-profiles", *[str(source / f) for f in FILES], *IMPORT_ARGS, "--out", str(out)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", help="folder with the three fs_*_holdout.csv.gz files")
    ap.add_argument("--check", action="store_true", help="compare a rebuild with the bundled copy; change nothing")
    args = ap.parse_args(argv)
    source = find_source(args.source)
    if source is None:
        print("error: --source: the cell-injury source files were not found", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cell_injury"
        rc = build(source, out)
        if rc:
            return rc
        if args.check:
            same = {f: filecmp.cmp(out / f, BUNDLED / f, shallow=False) for f in DATA_FILES}
            for f, ok in same.items():
                print(f"{f}: {'identical' if ok else 'DIFFERENT'}")
            return 0 if all(same.values()) else 1
        BUNDLED.mkdir(parents=True, exist_ok=True)
        for f in DATA_FILES:
            shutil.copyfile(out / f, BUNDLED / f)
    size = sum(p.stat().st_size for p in BUNDLED.iterdir() if p.is_file())
    print(f"wrote {BUNDLED} ({size:,} bytes with README.md and NOTICE)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
