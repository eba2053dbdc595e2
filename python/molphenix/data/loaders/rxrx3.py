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

from ..io import Dataset
from ..schema import SchemaError
from ._common import as_str, feature_matrix, read_table, report_drops, require, sort_feature_columns
from .profiles import _Origin, build_from_table

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
_PLATE, _FEAT = "__molphenix_plate", "__molphenix_feature__"
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

    # ---- embeddings: feature columns in numeric order (a single list column is expanded)
    if emb_t.num_columns == 2 and (
        pa.types.is_list(emb_t.schema.field(1).type) or pa.types.is_fixed_size_list(emb_t.schema.field(1).type)
    ):
        col = emb_t.column(1).combine_chunks()
        width = col.type.list_size if pa.types.is_fixed_size_list(col.type) else len(col[0].as_py())
        mat = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, width)
        feats = [f"feature_{j}" for j in range(width)]
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

    # ---- join on well_id; wells without an embedding are counted, then left out
    well_id = as_str(meta_t.column("well_id"))
    has_emb = np.array([w in pos for w in well_id], dtype=bool)
    n_unmatched_emb = len(emb_ids) - len(set(well_id) & set(pos))
    exp = as_str(meta_t.column("experiment_name"))
    plate = as_str(meta_t.column("plate"))
    table = meta_t.append_column(_PLATE, pa.array([f"{e}_{p}" for e, p in zip(exp, plate)], pa.string()))
    idx = np.array([pos.get(w, 0) for w in well_id], dtype=np.int64)
    joined = mat[idx] if len(emb_ids) else np.zeros((meta_t.num_rows, len(feats)), np.float32)
    joined[~has_emb] = np.nan  # never read: these wells are skipped (`available` below)
    for j, f in enumerate(feats):
        table = table.append_column(_FEAT + f, pa.array(joined[:, j]))
    where = {"perturbation_type": [perturbation_type]} if perturbation_type is not None else {}

    res = build_from_table(
        table,
        origin=_Origin(["rxrx3 metadata"], np.zeros(table.num_rows, np.int64), np.arange(table.num_rows)),
        smiles_column="SMILES",
        control_column="treatment",
        control_values=list(control_treatments),
        dose_column="concentration",
        molecule_column="treatment",
        plate_column=_PLATE,
        well_id_columns=("well_id",),
        batch_column="experiment_name",
        dataset=dataset_name,
        where=where,
        features=[_FEAT + f for f in feats],
        nonfinite="keep",
        available=(has_emb, "missing_embedding"),
        extra_columns={"address": "address"} if "address" in meta_t.column_names else None,
        check_smiles=check_smiles,
        meta={
            "name": dataset_name,
            "loader": "rxrx3_core",
            "column_mapping": {
                "well_id": "well_id",
                "batch": "experiment_name",
                "plate": "experiment_name + '_' + plate",
                "molecule_id": "treatment",
                "smiles": "SMILES (CXSMILES extension stripped)",
                "concentration_um": "concentration",
                "is_control": f"treatment in {sorted(set(control_treatments))}",
                "phenomic": "embedding feature columns in numeric order",
            },
        },
    )
    r = res.report
    report = {"rows": meta_t.num_rows}
    if perturbation_type is not None:
        report["other_perturbation_type"] = r["not_matching_where"]
    report["treated_without_smiles_or_concentration"] = (
        r["treated_without_smiles"] + r["treated_without_dose"] + r.get("treated_without_molecule_id", 0))
    report["missing_embedding"] = r["missing_embedding"]
    report["embeddings_without_metadata"] = n_unmatched_emb
    meta = res.dataset.meta
    meta["feature_columns"] = feats
    meta["loader_report"] = report | {k: v for k, v in r.items() if k not in ("rows", "not_matching_where")}
    report_drops(report, "load_rxrx3_core")
    return res.dataset
