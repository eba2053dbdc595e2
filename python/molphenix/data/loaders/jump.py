"""JUMP Cell Painting (cpg0016-style) profiles -> molphenix dataset.

Published layout (jump-cellpainting/datasets ``metadata/``; see docs/data_formats.md):

* profiles (Parquet/CSV): ``Metadata_Source, Metadata_Plate, Metadata_Well, Metadata_JCP2022``
  (+ optional further ``Metadata_*`` columns) and one numeric column per feature (CellProfiler
  names such as ``Cells_AreaShape_Area`` or transformed names such as ``X_1``).
* ``compound.csv.gz``: ``Metadata_JCP2022, Metadata_InChIKey, Metadata_InChI, Metadata_SMILES``.
* ``plate.csv.gz``: ``Metadata_Source, Metadata_Batch, Metadata_Plate, Metadata_PlateType``.
* ``perturbation_control.csv``: ``Metadata_JCP2022, Metadata_pert_type, Metadata_Name``
  (``negcon`` = negative control, e.g. DMSO = ``JCP2022_033924``).

Mapping: ``well_id`` = ``Source/Plate/Well``; ``dataset`` = ``Metadata_Source`` (default; each
data-generating centre is its own dataset, so a held-out source is the unseen dataset) or a
constant; ``batch`` = ``Metadata_Batch`` (profiles or plate table; else the plate);
``plate`` = ``Metadata_Plate``; ``molecule_id`` = ``Metadata_JCP2022``; SMILES from
``Metadata_SMILES`` (profiles or compound table); ``is_control`` = JCP2022 id is a ``negcon``;
``concentration_um`` from a column (``concentration_column``) or one nominal dose
(``concentration_um``, default 10 µM — set it to your plate map's dose); ``phenomic`` = all
non-``Metadata_`` numeric columns (feature columns with any NaN/Inf are dropped and counted).
Wells whose perturbation has no SMILES (ORF, CRISPR, unknown) are skipped and counted.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..io import Dataset, from_tables
from ..schema import SchemaError
from ._common import as_str, embedding_array, feature_matrix, read_table, report_drops, require

__all__ = ["load_jump", "JUMP_DMSO", "JUMP_PROFILE_KEYS"]

#: JCP2022 id of DMSO, the JUMP negative control.
JUMP_DMSO = "JCP2022_033924"
#: Metadata columns every JUMP profile table carries.
JUMP_PROFILE_KEYS = ("Metadata_Source", "Metadata_Plate", "Metadata_Well", "Metadata_JCP2022")


def load_jump(
    profiles: str | os.PathLike | pa.Table,
    *,
    compounds: str | os.PathLike | pa.Table | None = None,
    plates: str | os.PathLike | pa.Table | None = None,
    controls: str | os.PathLike | pa.Table | None = None,
    negcon_ids: Sequence[str] = (JUMP_DMSO,),
    concentration_um: float = 10.0,
    concentration_column: str | None = None,
    dataset: str | None = None,
    feature_columns: Sequence[str] | None = None,
    drop_nonfinite_features: bool = True,
    check_smiles: bool = True,
) -> Dataset:
    """Load JUMP-CP style profiles as a :class:`~molphenix.data.Dataset`.

    Args:
        profiles: Profile table/path (``Metadata_*`` + feature columns).
        compounds: ``compound.csv.gz``-style table mapping ``Metadata_JCP2022`` to
            ``Metadata_SMILES`` (not needed if the profiles carry ``Metadata_SMILES``).
        plates: ``plate.csv.gz``-style table giving ``Metadata_Batch`` per ``Metadata_Plate``.
        controls: ``perturbation_control.csv``-style table; its ``negcon`` ids are controls
            (added to ``negcon_ids``).
        negcon_ids: JCP2022 ids of negative-control wells (default DMSO).
        concentration_um: Nominal dose for every treated well (when no column is given).
        concentration_column: Column with the dose in µM (overrides ``concentration_um``).
        dataset: Constant ``dataset`` value; ``None`` uses ``Metadata_Source``.
        feature_columns: Feature columns (default: every non-``Metadata_`` numeric column).
        drop_nonfinite_features: Drop feature columns with any NaN/Inf (counted and warned);
            otherwise validation raises, naming the row.
        check_smiles: Parse SMILES (invalid ones are skipped and reported).

    Returns:
        The dataset; ``meta["loader_report"]`` counts every skipped row and feature.

    Raises:
        SchemaError: missing columns, conflicting SMILES, non-numeric features, validation
            failures.
        FileNotFoundError: missing files.
    """
    prof = read_table(profiles, name="jump profiles", string_columns=list(JUMP_PROFILE_KEYS) + ["Metadata_Batch", "Metadata_SMILES"])
    require(prof, "jump profiles", JUMP_PROFILE_KEYS)
    report: dict[str, int] = {"rows": prof.num_rows}
    n = prof.num_rows
    source = as_str(prof.column("Metadata_Source"))
    plate = as_str(prof.column("Metadata_Plate"))
    well = as_str(prof.column("Metadata_Well"))
    jcp = as_str(prof.column("Metadata_JCP2022"))

    # ---- batch
    if "Metadata_Batch" in prof.column_names:
        batch = as_str(prof.column("Metadata_Batch"))
    elif plates is not None:
        pt = read_table(plates, name="jump plates", string_columns=["Metadata_Source", "Metadata_Batch", "Metadata_Plate", "Metadata_PlateType"])
        require(pt, "jump plates", ["Metadata_Plate", "Metadata_Batch"])
        pb = dict(zip(as_str(pt.column("Metadata_Plate")), as_str(pt.column("Metadata_Batch"))))
        batch = [pb.get(p) for p in plate]
        missing = [i for i, b in enumerate(batch) if b is None]
        if missing:
            raise SchemaError("jump profiles", "Metadata_Plate", missing[0], f"plate {plate[missing[0]]!r} not in the plate table")
    else:
        batch = list(plate)
    batch = [f"{s}/{b}" for s, b in zip(source, batch)]  # batch names are per source

    # ---- SMILES
    smiles: list[str | None]
    if "Metadata_SMILES" in prof.column_names:
        smiles = as_str(prof.column("Metadata_SMILES"))
    elif compounds is not None:
        ct = read_table(compounds, name="jump compounds", string_columns=["Metadata_JCP2022", "Metadata_InChIKey", "Metadata_InChI", "Metadata_SMILES"])
        require(ct, "jump compounds", ["Metadata_JCP2022", "Metadata_SMILES"])
        cs = dict(zip(as_str(ct.column("Metadata_JCP2022")), as_str(ct.column("Metadata_SMILES"))))
        smiles = [cs.get(j) for j in jcp]
    else:
        raise SchemaError("jump profiles", "Metadata_SMILES", None, "no Metadata_SMILES column and no compounds table given")

    # ---- controls
    neg = set(negcon_ids)
    if controls is not None:
        pc_t = read_table(controls, name="jump perturbation_control", string_columns=["Metadata_JCP2022", "Metadata_pert_type", "Metadata_Name"])
        require(pc_t, "jump perturbation_control", ["Metadata_JCP2022", "Metadata_pert_type"])
        for j, t in zip(as_str(pc_t.column("Metadata_JCP2022")), as_str(pc_t.column("Metadata_pert_type"))):
            if t == "negcon":
                neg.add(j)
    is_control = np.array([j in neg for j in jcp], dtype=bool)

    # ---- concentration
    if concentration_column is not None:
        require(prof, "jump profiles", [concentration_column])
        conc = prof.column(concentration_column).cast(pa.float64()).to_numpy(zero_copy_only=False)
    else:
        if not (np.isfinite(concentration_um) and concentration_um > 0):
            raise ValueError(f"concentration_um must be finite and > 0, got {concentration_um}")
        conc = np.full(n, float(concentration_um))

    treated_ok = np.array([s is not None and s != "" for s in smiles]) & np.isfinite(conc)
    usable = is_control | treated_ok
    report["without_smiles_or_concentration"] = int((~usable).sum())

    # ---- features
    if feature_columns is None:
        feature_columns = [
            c
            for c in prof.column_names
            if not c.startswith("Metadata_")
            and c != concentration_column
            and (pa.types.is_floating(prof.schema.field(c).type) or pa.types.is_integer(prof.schema.field(c).type))
        ]
    feature_columns = list(feature_columns)
    if not feature_columns:
        raise SchemaError("jump profiles", None, None, "no numeric feature columns")
    mat = feature_matrix(prof, feature_columns, name="jump profiles")
    keep = np.flatnonzero(usable)
    if drop_nonfinite_features:
        good = np.isfinite(mat[keep]).all(0)
        report["nonfinite_feature_columns"] = int((~good).sum())
        if not good.any():
            raise SchemaError("jump profiles", feature_columns[0], None, "every feature column has NaN/Inf values")
        mat = mat[:, good]
        feature_columns = [c for c, g in zip(feature_columns, good) if g]

    mol_smiles: dict[str, str] = {}
    for i in keep:
        if is_control[i]:
            continue
        old = mol_smiles.setdefault(jcp[i], smiles[i])
        if old != smiles[i]:
            raise SchemaError("jump profiles", "Metadata_SMILES", int(i), f"{jcp[i]!r} has two SMILES: {old!r} and {smiles[i]!r}")
    ds_col = [dataset] * n if dataset is not None else source
    wells = pa.table(
        {
            "well_id": pa.array([f"{source[i]}/{plate[i]}/{well[i]}" for i in keep], pa.string()),
            "dataset": pa.array([ds_col[i] for i in keep], pa.string()),
            "batch": pa.array([batch[i] for i in keep], pa.string()),
            "plate": pa.array([plate[i] for i in keep], pa.string()),
            "molecule_id": pa.array([None if is_control[i] else jcp[i] for i in keep], pa.string()),
            "concentration_um": pa.array([None if is_control[i] else float(conc[i]) for i in keep], pa.float64()),
            "is_control": pa.array(is_control[keep]),
            "phenomic": embedding_array(mat[keep]),
            "address": pa.array([well[i] for i in keep], pa.string()),
        }
    )
    ids = sorted(mol_smiles)
    molecules = pa.table({"molecule_id": pa.array(ids, pa.string()), "smiles": pa.array([mol_smiles[k] for k in ids], pa.string())})
    report_drops(report, "load_jump")
    counts = pc.value_counts(wells.column("dataset")).to_pylist()
    primary = max(counts, key=lambda d: (d["counts"], d["values"]))["values"] if counts else None
    meta = {
        "name": dataset or "jump",
        "loader": "jump",
        "loader_report": report,
        "feature_columns": feature_columns,
        "primary_dataset": primary,
        "column_mapping": {
            "well_id": "Metadata_Source/Metadata_Plate/Metadata_Well",
            "dataset": "Metadata_Source" if dataset is None else f"constant {dataset!r}",
            "batch": "Metadata_Source/Metadata_Batch (or the plate)",
            "plate": "Metadata_Plate",
            "molecule_id": "Metadata_JCP2022",
            "smiles": "Metadata_SMILES",
            "concentration_um": concentration_column or f"constant {concentration_um}",
            "is_control": f"Metadata_JCP2022 in {sorted(neg)}",
            "phenomic": f"{len(feature_columns)} feature columns",
        },
    }
    return from_tables(wells, molecules, meta=meta, check_smiles=check_smiles)
