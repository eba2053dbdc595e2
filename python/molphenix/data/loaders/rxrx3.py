"""RxRx3-core: metadata CSV + OpenPhenom embedding Parquet -> molphenix dataset.

Published layout (Recursion, ``recursionpharma/rxrx3-core`` on Hugging Face; see
docs/data_formats.md for sources):

* ``metadata_rxrx3_core.csv``: ``well_id, experiment_name, plate, address, gene, treatment,
  SMILES, concentration, perturbation_type, cell_type`` (later releases may add columns; they are
  ignored). ``perturbation_type`` is ``CRISPR`` or ``COMPOUND``; ``concentration`` is in µM;
  ``SMILES`` may carry a CXSMILES extension (`` |...|``), which is stripped.
* ``OpenPhenom_rxrx3_core_embeddings.parquet``: ``well_id`` plus one float column per
  embedding dimension (``feature_0`` ... ``feature_383``), or a single list column.

Mapping: ``well_id`` -> ``well_id``; ``experiment_name`` -> ``batch``;
``experiment_name + "_" + plate`` -> ``plate``; ``treatment`` -> ``molecule_id``;
``SMILES`` -> ``molecules.smiles``; ``concentration`` -> ``concentration_um``;
``treatment in control_treatments`` (default ``EMPTY_control``) -> ``is_control``;
``dataset`` = ``dataset_name``. Rows of other perturbation types, treated rows without SMILES
or concentration (e.g. ``CRISPR_control`` wells in compound plates) and wells without an
embedding are skipped and counted in ``meta["loader_report"]`` (and a warning).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..io import Dataset, from_tables
from ..schema import SchemaError
from ._common import (
    as_str,
    embedding_array,
    feature_matrix,
    read_table,
    report_drops,
    require,
    sort_feature_columns,
    strip_cxsmiles,
)

__all__ = ["load_rxrx3_core", "RXRX3_METADATA_COLUMNS"]

#: Columns of the published RxRx3-core metadata file.
RXRX3_METADATA_COLUMNS = (
    "well_id",
    "experiment_name",
    "plate",
    "address",
    "gene",
    "treatment",
    "SMILES",
    "concentration",
    "perturbation_type",
    "cell_type",
)
_REQUIRED = ("well_id", "experiment_name", "plate", "treatment", "SMILES", "concentration", "perturbation_type")


def load_rxrx3_core(
    metadata: str | os.PathLike | pa.Table,
    embeddings: str | os.PathLike | pa.Table,
    *,
    dataset_name: str = "rxrx3_core",
    perturbation_type: str | None = "COMPOUND",
    control_treatments: Sequence[str] = ("EMPTY_control",),
    check_smiles: bool = True,
) -> Dataset:
    """Load RxRx3-core style metadata and embeddings as a :class:`~molphenix.data.Dataset`.

    Args:
        metadata: Metadata CSV path (or table) with the RxRx3-core columns.
        embeddings: Embedding Parquet path (or table): ``well_id`` + ``feature_*`` columns or a
            list column.
        dataset_name: Value of the ``dataset`` column.
        perturbation_type: Keep only rows of this ``perturbation_type`` (``None``: keep all).
        control_treatments: ``treatment`` values that mark negative-control wells.
        check_smiles: Parse SMILES (invalid ones are skipped and reported).

    Returns:
        The dataset; ``meta["loader_report"]`` counts every skipped row.

    Raises:
        SchemaError: missing columns, a treatment with two different SMILES, non-numeric
            features, or any wells/molecules validation error.
        FileNotFoundError: missing files.
    """
    meta_t = read_table(metadata, name="rxrx3 metadata", string_columns=[c for c in RXRX3_METADATA_COLUMNS if c != "concentration"])
    require(meta_t, "rxrx3 metadata", _REQUIRED)
    emb_t = read_table(embeddings, name="rxrx3 embeddings", string_columns=["well_id"])
    require(emb_t, "rxrx3 embeddings", ["well_id"])
    report: dict[str, int] = {"rows": meta_t.num_rows}

    if perturbation_type is not None:
        keep = pc.equal(meta_t.column("perturbation_type"), perturbation_type).fill_null(False)
        report["other_perturbation_type"] = meta_t.num_rows - int(pc.sum(keep).as_py() or 0)
        meta_t = meta_t.filter(keep)

    well_id = as_str(meta_t.column("well_id"))
    exp = as_str(meta_t.column("experiment_name"))
    plate = as_str(meta_t.column("plate"))
    treatment = as_str(meta_t.column("treatment"))
    smiles = [strip_cxsmiles(s) for s in as_str(meta_t.column("SMILES"))]
    conc = meta_t.column("concentration").cast(pa.float64()).to_numpy(zero_copy_only=False)
    controls = set(control_treatments)
    is_control = np.array([t in controls for t in treatment], dtype=bool)
    usable = is_control | np.array(
        [(s is not None and s != "" and t is not None and np.isfinite(c)) for s, t, c in zip(smiles, treatment, conc)]
    )
    report["treated_without_smiles_or_concentration"] = int((~usable).sum())

    # ---- embeddings, joined on well_id
    if "well_id" in emb_t.column_names and emb_t.num_columns == 2 and (
        pa.types.is_list(emb_t.schema.field(1).type) or pa.types.is_fixed_size_list(emb_t.schema.field(1).type)
    ):
        col = emb_t.column(1).combine_chunks()
        width = col.type.list_size if pa.types.is_fixed_size_list(col.type) else len(col[0].as_py())
        mat = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, width)
    else:
        feats = sort_feature_columns([c for c in emb_t.column_names if c != "well_id"])
        if not feats:
            raise SchemaError("rxrx3 embeddings", None, None, "no feature columns")
        mat = feature_matrix(emb_t, feats, name="rxrx3 embeddings")
    emb_ids = as_str(emb_t.column("well_id"))
    pos = {w: i for i, w in enumerate(emb_ids)}
    if len(pos) != len(emb_ids):
        seen: set = set()
        for i, w in enumerate(emb_ids):
            if w in seen:
                raise SchemaError("rxrx3 embeddings", "well_id", i, f"duplicate well_id {w!r}")
            seen.add(w)
    has_emb = np.array([w in pos for w in well_id], dtype=bool)
    report["missing_embedding"] = int((usable & ~has_emb).sum())
    keep = np.flatnonzero(usable & has_emb)
    report["embeddings_without_metadata"] = len(emb_ids) - len(set(well_id) & set(pos))

    address = (
        as_str(meta_t.column("address")) if "address" in meta_t.column_names else [None] * meta_t.num_rows
    )

    # ---- molecules: treatment -> SMILES (must be unique per treatment)
    mol_smiles: dict[str, str] = {}
    for i in keep:
        if is_control[i]:
            continue
        t, s = treatment[i], smiles[i]
        old = mol_smiles.setdefault(t, s)
        if old != s:
            raise SchemaError("rxrx3 metadata", "SMILES", int(i), f"treatment {t!r} has two SMILES: {old!r} and {s!r}")
    wells = pa.table(
        {
            "well_id": pa.array([well_id[i] for i in keep], pa.string()),
            "dataset": pa.array([dataset_name] * len(keep), pa.string()),
            "batch": pa.array([exp[i] for i in keep], pa.string()),
            "plate": pa.array([f"{exp[i]}_{plate[i]}" for i in keep], pa.string()),
            "molecule_id": pa.array([None if is_control[i] else treatment[i] for i in keep], pa.string()),
            "concentration_um": pa.array(
                [None if is_control[i] else float(conc[i]) for i in keep], pa.float64()
            ),
            "is_control": pa.array(is_control[keep]),
            "phenomic": embedding_array(mat[[pos[well_id[i]] for i in keep]]),
            "address": pa.array([address[i] for i in keep], pa.string()),
        }
    )
    ids = sorted(mol_smiles)
    molecules = pa.table({"molecule_id": pa.array(ids, pa.string()), "smiles": pa.array([mol_smiles[k] for k in ids], pa.string())})
    report_drops(report, "load_rxrx3_core")
    meta = {
        "name": dataset_name,
        "loader": "rxrx3_core",
        "loader_report": report,
        "primary_dataset": dataset_name,
        "column_mapping": {
            "well_id": "well_id",
            "batch": "experiment_name",
            "plate": "experiment_name + '_' + plate",
            "molecule_id": "treatment",
            "smiles": "SMILES (CXSMILES extension stripped)",
            "concentration_um": "concentration",
            "is_control": f"treatment in {sorted(controls)}",
            "phenomic": "embedding feature columns in numeric order",
        },
    }
    return from_tables(wells, molecules, meta=meta, check_smiles=check_smiles)
