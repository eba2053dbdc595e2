"""``molphenix import-profiles``: any well-level profile table -> a molphenix dataset directory.

The command line of :func:`molphenix.data.loaders.profiles.import_profiles`; docs/data_formats.md
("Importing a profile table") documents every flag. Errors follow :mod:`molphenix.cli._errors`:
one line, exit 2 for wrong flags (including columns the files do not have), 1 for bad data.
Nothing is written when the import fails.
"""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path
from typing import List, Optional

import typer

from molphenix.cli._errors import data_error, describe_os_error, usage_error

__all__ = ["import_profiles_command", "register", "OPTION_FLAGS"]

#: load_profiles parameter -> the flag a user types.
OPTION_FLAGS = {
    "files": "FILE",
    "smiles_column": "--smiles-column",
    "control_column": "--control-column",
    "control_values": "--control-value",
    "dose_column": "--dose-column",
    "dose_unit": "--dose-unit",
    "molecule_column": "--molecule-column",
    "plate_column": "--plate-column",
    "well_column": "--well-column",
    "batch_column": "--batch-column",
    "dataset_column": "--dataset-column",
    "where": "--where",
    "features": "--features",
    "normalize": "--normalize",
    "nonfinite": "--nonfinite",
    "dataset": "--dataset",
}


def import_profiles_command(
    files: List[Path] = typer.Argument(..., metavar="FILE", help="Profile tables: CSV, CSV.gz, TSV or Parquet, one row per well (several are joined by column name)."),
    out: Path = typer.Option(..., "--out", help="Output dataset directory (written atomically)."),
    smiles_column: str = typer.Option(..., "--smiles-column", help="Column with the SMILES of treated wells."),
    control_column: str = typer.Option(..., "--control-column", help="Column that marks negative-control wells."),
    control_value: Optional[List[str]] = typer.Option(None, "--control-value", help="Value of --control-column meaning control (repeatable; compared as text; true/false/1/0 match booleans in any case)."),
    dose_column: Optional[str] = typer.Option(None, "--dose-column", help="Column with the dose (default: every treated well gets 1 --dose-unit)."),
    dose_unit: str = typer.Option("uM", "--dose-unit", help="Unit of --dose-column: uM, nM, mM or M (stored as uM)."),
    molecule_column: Optional[str] = typer.Option(None, "--molecule-column", help="Column with molecule ids (default: the RDKit InChIKey of the SMILES)."),
    plate_column: Optional[str] = typer.Option(None, "--plate-column", help="Column with the plate (default: one plate per input file)."),
    well_column: Optional[str] = typer.Option(None, "--well-column", help="Column with the well position (well id = plate/well)."),
    batch_column: Optional[str] = typer.Option(None, "--batch-column", help="Column with the experimental batch (default: the plate)."),
    dataset_column: Optional[str] = typer.Option(None, "--dataset-column", help="Column whose every value is its own dataset (e.g. treatment time)."),
    where: Optional[List[str]] = typer.Option(None, "--where", metavar="COL=VALUE", help="Keep rows where COL equals VALUE (repeatable: values of one column are alternatives, different columns must all match)."),
    features: Optional[str] = typer.Option(None, "--features", metavar="REGEX", help="Regular expression choosing the feature columns (default: names starting Cells_, Cytoplasm_ or Nuclei_, or embedding names like emb_12)."),
    normalize: str = typer.Option("none", "--normalize", help="Per-plate normalization against the plate's controls: none, center, robust-z or tvn."),
    nonfinite: str = typer.Option("drop", "--nonfinite", help="Feature columns with NaN/Inf: drop (counted) or fail."),
    dataset: Optional[str] = typer.Option(None, "--dataset", metavar="NAME", help="Dataset name (default: profiles); with --dataset-column, the prefix of each dataset."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing dataset in --out."),
) -> None:
    """Import well-level profile tables (CellProfiler, pycytominer, embeddings) into a dataset directory."""
    from molphenix.data.loaders.profiles import (
        DOSE_UNITS,
        ProfileImportError,
        check_output_dir,
        import_profiles,
        summary_lines,
    )
    from molphenix.data.normalize import NORMALIZATIONS

    if not control_value:
        usage_error("--control-value", "missing required option (give at least one control value)")
    if dose_unit not in DOSE_UNITS:
        usage_error("--dose-unit", f"must be uM, nM, mM or M, got {dose_unit!r}")
    if normalize not in NORMALIZATIONS:
        usage_error("--normalize", f"must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")
    if nonfinite not in ("drop", "fail"):
        usage_error("--nonfinite", f"must be drop or fail, got {nonfinite!r}")
    if features is not None:
        try:
            re.compile(features)
        except re.error as exc:
            usage_error("--features", f"not a valid regular expression ({exc})")
    where_pairs = []
    for item in where or ():
        col, sep, value = item.partition("=")
        if not sep or not col:
            usage_error("--where", f"expected COL=VALUE, got {item!r}")
        where_pairs.append((col, value))
    for f in files:
        if not f.exists():
            usage_error("FILE", f"{f}: file not found")
        if f.is_dir():
            usage_error("FILE", f"{f}: is a directory, not a profile file")
    try:
        check_output_dir(out, overwrite)
    except (FileExistsError, NotADirectoryError) as exc:
        usage_error("--out", str(exc))

    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds, path = import_profiles(
                files, out, overwrite=overwrite, smiles_column=smiles_column, control_column=control_column,
                control_values=list(control_value), dose_column=dose_column, dose_unit=dose_unit,
                molecule_column=molecule_column, plate_column=plate_column, well_column=well_column,
                batch_column=batch_column, dataset_column=dataset_column, where=where_pairs or None,
                features=features, normalize=normalize, nonfinite=nonfinite, dataset=dataset)
        except ProfileImportError as exc:
            if exc.missing:
                listed = ", ".join(f"{c!r} ({OPTION_FLAGS.get(r, r)})" for c, r in exc.missing)
                have = exc.template.split("; ", 1)[1] if "; " in exc.template else ""
                usage_error(None, f"missing column{'s' if len(exc.missing) > 1 else ''} {listed}; {have}")
            flag = OPTION_FLAGS.get(exc.option) if exc.option and not exc.located else None
            text = exc.message(OPTION_FLAGS, location=exc.located)
            (usage_error if exc.usage else data_error)(flag, text)
        except (FileExistsError, NotADirectoryError) as exc:
            usage_error("--out", str(exc))
        except PermissionError as exc:
            data_error("--out", f"cannot write the dataset: {describe_os_error(exc)}")
    for w in caught:
        typer.echo(f"warning: {w.message}", err=True)
    for line in summary_lines(ds):
        typer.echo(line)
    typer.echo(f"wrote {path} ({time.perf_counter() - t0:.1f} s)")


def register(app: typer.Typer) -> None:
    """Add ``import-profiles`` to ``app``."""
    app.command("import-profiles", help="Import well-level profile tables (CSV, CSV.gz, Parquet) into a dataset directory.")(
        import_profiles_command)
