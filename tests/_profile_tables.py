"""Small well-level profile tables in the formats users bring (made by the tests, not checked in).

``pycytominer_plate`` writes the layout of a pycytominer-annotated plate: ``Metadata_*`` columns
(plate, well, broad sample, dose in mmol/L, SMILES, cell count) then CellProfiler features
(``Cells_*``, ``Cytoplasm_*``, ``Nuclei_*``), plus an extra numeric label (``injury_code``) that
must never become a feature.
"""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

#: Twelve marketed drugs of different scaffolds (name, SMILES).
DRUGS = [
    ("BRD-aspirin", "CC(=O)OC1=CC=CC=C1C(O)=O"),
    ("BRD-caffeine", "CN1C=NC2=C1C(=O)N(C)C(=O)N2C"),
    ("BRD-ibuprofen", "CC(C)CC1=CC=C(C=C1)C(C)C(O)=O"),
    ("BRD-paracetamol", "CC(=O)NC1=CC=C(O)C=C1"),
    ("BRD-nicotine", "CN1CCCC1C1=CN=CC=C1"),
    ("BRD-diazepam", "CN1C(=O)CN=C(C2=CC=CC=C2)C2=CC(Cl)=CC=C12"),
    ("BRD-metformin", "CN(C)C(=N)NC(N)=N"),
    ("BRD-lidocaine", "CCN(CC)CC(=O)NC1=C(C)C=CC=C1C"),
    ("BRD-warfarin", "CC(=O)CC(C1=CC=CC=C1)C1=C(O)C2=CC=CC=C2OC1=O"),
    ("BRD-quinine", "COC1=CC2=C(C=CN=C2C=C1)C(O)C1CC2CCN1CC2C=C"),
    ("BRD-atenolol", "CC(C)NCC(O)COC1=CC=C(CC(N)=O)C=C1"),
    ("BRD-theophylline", "CN1C2=C(NC=N2)C(=O)N(C)C1=O"),
]
DMSO_SMILES = "CS(C)=O"
FEATURES = [
    "Cells_AreaShape_Area",
    "Cells_Intensity_MeanIntensity_DNA",
    "Cells_Granularity_1_Mito",
    "Cytoplasm_Texture_Contrast_ER_3_00_256",
    "Cytoplasm_Intensity_MeanIntensity_RNA",
    "Nuclei_AreaShape_Eccentricity",
    "Nuclei_Intensity_IntegratedIntensity_DNA",
    "Nuclei_Texture_Variance_AGP_5_00_256",
]


def pycytominer_plate(plate: str = "SQ00014812", *, drugs=DRUGS, doses_mm=(0.001, 0.01), n_controls: int = 6,
                      seed: int = 0) -> pa.Table:
    """One plate: every drug at every dose (one well each) plus ``n_controls`` DMSO wells.

    Treated wells' features carry a drug-specific shift (so there is something to learn);
    ``Metadata_Count_Cells`` and ``injury_code`` are numeric non-features.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for name, smi in drugs:
        for d in doses_mm:
            rows.append((name, smi, d))
    rows += [("DMSO", DMSO_SMILES, None)] * n_controls
    n = len(rows)
    wells = [f"{'ABCDEFGHIJKLMNOP'[k % 16]}{k // 16 + 1:02d}" for k in range(n)]
    shift = {name: np.random.default_rng(zlib.crc32(name.encode())).standard_normal(len(FEATURES)) for name, _ in drugs}
    x = rng.standard_normal((n, len(FEATURES)))
    for i, (name, _smi, d) in enumerate(rows):
        if d is not None:
            x[i] += shift[name] * (1.0 + d * 100)
    cols = {
        "Metadata_Plate": [plate] * n,
        "Metadata_Well": wells,
        "Metadata_broad_sample": [r[0] for r in rows],
        "Metadata_mmoles_per_liter": [r[2] for r in rows],
        "Metadata_SMILES": [r[1] for r in rows],
        "Metadata_Count_Cells": rng.integers(800, 2000, n).tolist(),
        "injury_code": rng.integers(0, 14, n).tolist(),
    }
    t = pa.table(cols)
    for j, f in enumerate(FEATURES):
        t = t.append_column(f, pa.array(x[:, j]))
    return t


def write(table: pa.Table, path: Path) -> Path:
    """Write ``table`` as CSV, CSV.gz or Parquet, by ``path``'s suffix."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".parquet"):
        pq.write_table(table, path)
    elif name.endswith(".csv.gz"):
        buf = io.BytesIO()
        pacsv.write_csv(table, buf)
        path.write_bytes(gzip.compress(buf.getvalue(), mtime=0))
    elif name.endswith(".csv"):
        pacsv.write_csv(table, path)
    else:
        raise ValueError(path)
    return path


def replace_column(table: pa.Table, name: str, values) -> pa.Table:
    """``table`` with column ``name`` replaced (or appended)."""
    arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, arr)
    return table.append_column(name, arr)


#: The import-profiles flags for :func:`pycytominer_plate` tables.
PYCYTO_FLAGS = dict(smiles_column="Metadata_SMILES", control_column="Metadata_broad_sample",
                    control_values=["DMSO"], dose_column="Metadata_mmoles_per_liter", dose_unit="mM",
                    plate_column="Metadata_Plate", well_column="Metadata_Well")
PYCYTO_ARGV = ["--smiles-column", "Metadata_SMILES", "--control-column", "Metadata_broad_sample",
               "--control-value", "DMSO", "--dose-column", "Metadata_mmoles_per_liter", "--dose-unit", "mM",
               "--plate-column", "Metadata_Plate", "--well-column", "Metadata_Well"]
