"""JUMP Cell Painting (cpg0016-style) profiles -> molphenix dataset: a preset of
:func:`molphenix.data.load_profiles`' machinery (:func:`~molphenix.data.loaders.profiles.build_from_table`).

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
constant; ``batch`` = ``Metadata_Source/Metadata_Batch`` (profiles or plate table; else the
plate); ``plate`` = ``Metadata_Plate``; ``molecule_id`` = ``Metadata_JCP2022`` (two JCP ids of one
structure are merged, with a warning); SMILES from ``Metadata_SMILES`` (profiles or compound
table); ``is_control`` = JCP2022 id is a ``negcon``; ``concentration_um`` from a column
(``concentration_column``) or one nominal dose (``concentration_um``, default 10 µM — set it to
your plate map's dose); ``phenomic`` = the columns of the default feature rule
(:data:`~molphenix.data.loaders.profiles.DEFAULT_FEATURE_RULE`: CellProfiler compartments or
``X_1``-style names), or ``feature_columns``; feature columns with any NaN/Inf are dropped and
counted. Wells whose perturbation has no SMILES (ORF, CRISPR, unknown) are skipped and counted.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import pyarrow as pa

from ..io import Dataset
from ..schema import SchemaError
from ._common import as_str, read_table, report_drops, require
from .profiles import _Origin, build_from_table

__all__ = ["load_jump", "JUMP_DMSO", "JUMP_PROFILE_KEYS"]

#: JCP2022 id of DMSO, the JUMP negative control.
JUMP_DMSO = "JCP2022_033924"
#: Metadata columns every JUMP profile table carries.
JUMP_PROFILE_KEYS = ("Metadata_Source", "Metadata_Plate", "Metadata_Well", "Metadata_JCP2022")
_BATCH = "__molphenix_batch"


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
        feature_columns: Feature columns (default: the default feature rule of
            :func:`~molphenix.data.load_profiles`).
        drop_nonfinite_features: Drop feature columns with any NaN/Inf (counted and warned);
            otherwise validation raises, naming the row.
        check_smiles: Parse SMILES (invalid ones are skipped and reported).

    Returns:
        The dataset; ``meta["loader_report"]`` counts every skipped row and feature.

    Raises:
        SchemaError: missing columns, one JCP id with two structures, non-numeric features,
            validation failures.
        FileNotFoundError: missing files.
    """
    prof = read_table(profiles, name="jump profiles",
                      string_columns=list(JUMP_PROFILE_KEYS) + ["Metadata_Batch", "Metadata_SMILES"])
    require(prof, "jump profiles", JUMP_PROFILE_KEYS)
    plate = as_str(prof.column("Metadata_Plate"))
    source = as_str(prof.column("Metadata_Source"))

    # ---- batch (per source)
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
    prof = prof.append_column(_BATCH, pa.array([f"{s}/{b}" for s, b in zip(source, batch)], pa.string()))

    # ---- SMILES
    if "Metadata_SMILES" not in prof.column_names:
        if compounds is None:
            raise SchemaError("jump profiles", "Metadata_SMILES", None, "no Metadata_SMILES column and no compounds table given")
        ct = read_table(compounds, name="jump compounds", string_columns=["Metadata_JCP2022", "Metadata_InChIKey", "Metadata_InChI", "Metadata_SMILES"])
        require(ct, "jump compounds", ["Metadata_JCP2022", "Metadata_SMILES"])
        cs = dict(zip(as_str(ct.column("Metadata_JCP2022")), as_str(ct.column("Metadata_SMILES"))))
        prof = prof.append_column("Metadata_SMILES", pa.array([cs.get(j) for j in as_str(prof.column("Metadata_JCP2022"))], pa.string()))

    # ---- controls
    neg = set(negcon_ids)
    if controls is not None:
        pc_t = read_table(controls, name="jump perturbation_control", string_columns=["Metadata_JCP2022", "Metadata_pert_type", "Metadata_Name"])
        require(pc_t, "jump perturbation_control", ["Metadata_JCP2022", "Metadata_pert_type"])
        for j, t in zip(as_str(pc_t.column("Metadata_JCP2022")), as_str(pc_t.column("Metadata_pert_type"))):
            if t == "negcon":
                neg.add(j)

    # ---- dose
    if concentration_column is None and not (np.isfinite(concentration_um) and concentration_um > 0):
        raise ValueError(f"concentration_um must be finite and > 0, got {concentration_um}")
    res = build_from_table(
        prof,
        origin=_Origin(["jump profiles"], np.zeros(prof.num_rows, np.int64), np.arange(prof.num_rows)),
        smiles_column="Metadata_SMILES",
        control_column="Metadata_JCP2022",
        control_values=sorted(neg),
        dose_column=concentration_column,
        dose=concentration_um,
        molecule_column="Metadata_JCP2022",
        plate_column="Metadata_Plate",
        well_id_columns=("Metadata_Source", "Metadata_Plate", "Metadata_Well"),
        batch_column=_BATCH,
        batch_per_dataset=False,
        dataset_column=None if dataset is not None else "Metadata_Source",
        dataset=dataset,
        features=list(feature_columns) if feature_columns is not None else None,
        nonfinite="drop" if drop_nonfinite_features else "keep",
        extra_columns={"address": "Metadata_Well"},
        check_smiles=check_smiles,
        meta={
            "name": dataset or "jump",
            "loader": "jump",
            "column_mapping": {
                "well_id": "Metadata_Source/Metadata_Plate/Metadata_Well",
                "dataset": "Metadata_Source" if dataset is None else f"constant {dataset!r}",
                "batch": "Metadata_Source/Metadata_Batch (or the plate)",
                "plate": "Metadata_Plate",
                "molecule_id": "Metadata_JCP2022",
                "smiles": "Metadata_SMILES",
                "concentration_um": concentration_column or f"constant {concentration_um}",
                "is_control": f"Metadata_JCP2022 in {sorted(neg)}",
                "phenomic": "feature columns (see feature_columns)",
            },
        },
    )
    r = res.report
    report = {
        "rows": r["rows"],
        "without_smiles_or_concentration": r["treated_without_smiles"] + r["treated_without_dose"],
        "nonfinite_feature_columns": r["nonfinite_feature_columns"],
    }
    res.dataset.meta["loader_report"] = report | {k: v for k, v in r.items() if k not in report}
    report_drops(report, "load_jump")
    return res.dataset
