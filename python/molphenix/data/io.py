"""Reading and writing dataset directories.

A dataset directory holds::

    wells.parquet       one row per well (schema.WELLS_COLUMNS)
    molecules.parquet   molecule_id, smiles, optional embedding columns
    truth.parquet       optional: simulated ground truth
    calls.parquet       optional: activity calls (molecule_id, concentration_um, p_value, active)
    meta.json           free-form metadata (the simulator records every parameter here)

Reads are streamed: the ``phenomic`` column is decoded one row group (or record batch) at a
time straight into a single preallocated float32 buffer, which then backs both the Arrow column
and :meth:`Dataset.phenomic_matrix` (no second copy of the embeddings).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .._warnings import external_stacklevel
from .schema import (
    DataFileError,
    InvalidSmilesReport,
    SchemaError,
    check_molecule_references,
    validate_calls,
    validate_molecules,
    validate_truth,
    validate_wells,
)

__all__ = ["Dataset", "load_dataset", "save_dataset", "read_wells", "write_table"]

WELLS_FILE = "wells.parquet"
MOLECULES_FILE = "molecules.parquet"
TRUTH_FILE = "truth.parquet"
CALLS_FILE = "calls.parquet"
META_FILE = "meta.json"


@dataclass
class Dataset:
    """A validated phenomolecular dataset.

    Attributes:
        wells: Wells table (canonical types; ``phenomic`` is ``fixed_size_list<float32>[E]``).
        molecules: Molecules table (invalid SMILES already removed).
        truth: Optional ground-truth table (simulated data).
        calls: Optional activity-call table.
        meta: Metadata dictionary (``meta.json``).
        path: Directory it was loaded from, if any.
        invalid_smiles: What was skipped because of unparseable SMILES.
    """

    wells: pa.Table
    molecules: pa.Table
    truth: pa.Table | None = None
    calls: pa.Table | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    invalid_smiles: InvalidSmilesReport = field(default_factory=InvalidSmilesReport)

    # ------------------------------------------------------------------ basic properties
    @property
    def n_wells(self) -> int:
        """Number of wells."""
        return self.wells.num_rows

    @property
    def embedding_dim(self) -> int:
        """Width E of the phenomic embedding."""
        return int(self.wells.schema.field("phenomic").type.list_size)

    @property
    def datasets(self) -> list[str]:
        """Sorted distinct values of ``wells.dataset``."""
        return sorted(pc.unique(self.wells.column("dataset")).to_pylist())

    @property
    def batches(self) -> list[str]:
        """Sorted distinct values of ``wells.batch``."""
        return sorted(pc.unique(self.wells.column("batch")).to_pylist())

    def column(self, name: str) -> np.ndarray:
        """A wells column as a numpy array (object dtype for strings).

        Args:
            name: Column name.

        Returns:
            Array [n_wells].
        """
        return self.wells.column(name).to_numpy(zero_copy_only=False)

    def control_mask(self) -> np.ndarray:
        """Bool array [n_wells], True for control wells."""
        return self.column("is_control").astype(bool)

    def phenomic_matrix(self) -> np.ndarray:
        """The phenomic embeddings as a float32 matrix.

        Returns:
            Array [n_wells, E], float32. A zero-copy view of the Arrow buffer when the column
            is a single chunk (always the case after :func:`load_dataset`); otherwise a copy.
        """
        col = self.wells.column("phenomic")
        e = self.embedding_dim
        if col.num_chunks == 1:
            chunk = col.chunk(0)
            values = chunk.values
            if chunk.offset == 0 and values.offset == 0 and len(values) == len(chunk) * e and values.null_count == 0:
                buf = values.buffers()[1]
                arr = np.frombuffer(buf, dtype=np.float32, count=len(chunk) * e)
                return arr.reshape(len(chunk), e)
        flat = np.concatenate(
            [c.flatten().to_numpy(zero_copy_only=False) for c in col.chunks]
        ) if col.num_chunks else np.zeros(0, np.float32)
        return flat.astype(np.float32, copy=False).reshape(-1, e)

    def sample_keys(self) -> pa.Table:
        """Distinct treated (molecule_id, concentration_um) pairs with their well counts.

        Returns:
            Table ``molecule_id``, ``concentration_um``, ``n_wells`` sorted by key.
        """
        treated = self.wells.filter(pc.invert(self.wells.column("is_control")))
        g = treated.group_by(["molecule_id", "concentration_um"]).aggregate(
            [("well_id", "count")]
        )
        g = g.rename_columns(["molecule_id", "concentration_um", "n_wells"])
        return g.sort_by([("molecule_id", "ascending"), ("concentration_um", "ascending")])

    def smiles_of(self) -> dict[str, str]:
        """Mapping molecule_id -> SMILES."""
        return dict(
            zip(
                self.molecules.column("molecule_id").to_pylist(),
                self.molecules.column("smiles").to_pylist(),
            )
        )

    def with_calls(self, calls: pa.Table) -> "Dataset":
        """Return a copy of this dataset with ``calls`` attached (validated).

        Args:
            calls: Activity-call table (e.g. from :func:`molphenix.data.call_activity` or a
                user's own calls).

        Returns:
            New :class:`Dataset` sharing the other tables.
        """
        return Dataset(
            wells=self.wells,
            molecules=self.molecules,
            truth=self.truth,
            calls=validate_calls(calls),
            meta=self.meta,
            path=self.path,
            invalid_smiles=self.invalid_smiles,
        )

    def __repr__(self) -> str:
        return (
            f"Dataset(n_wells={self.n_wells}, n_molecules={self.molecules.num_rows}, "
            f"E={self.embedding_dim}, datasets={self.datasets}, "
            f"truth={self.truth is not None}, calls={self.calls is not None})"
        )


# --------------------------------------------------------------------------- reading


@contextlib.contextmanager
def _reading(table: str, path: str | os.PathLike, what: str = "Parquet"):
    """Turn pyarrow's errors on an unreadable file into a :class:`DataFileError` naming it."""
    try:
        yield
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except (pa.ArrowException, OSError) as exc:
        # pyarrow sometimes prefixes "Could not open Parquet input source '<path>': "
        detail = re.sub(r"^Could not open [^:]*'[^']*': ", "", str(exc)).strip() or type(exc).__name__
        raise DataFileError(table, Path(path), f"cannot read {what} file ({detail})") from exc


def _read_parquet(table: str, path: Path) -> pa.Table:
    with _reading(table, path):
        return pq.read_table(path)


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataFileError("meta", path, f"not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise DataFileError("meta", path, f"expected a JSON object, got {type(meta).__name__}")
    return meta


def read_wells(path: str | os.PathLike, *, batch_size: int = 16384) -> pa.Table:
    """Read a wells Parquet file, streaming ``phenomic`` into one contiguous buffer.

    The non-embedding columns are read normally. The embedding column is decoded row group by
    row group (large row groups in ``batch_size`` slices) and copied into a single
    preallocated float32 array which then backs a one-chunk ``fixed_size_list<float32>[E]``
    column, so peak memory is one copy of the embeddings plus one decoded slice. The file is
    read with buffered I/O rather than memory-mapped: mapped pages would count towards the
    process's resident memory on top of the decoded copy.

    Args:
        path: Path to ``wells.parquet``.
        batch_size: Rows decoded per step inside large row groups.

    Returns:
        Wells table (not yet validated).

    Raises:
        SchemaError: the file has no ``phenomic`` column or it holds a null embedding.
        DataFileError: (a ``SchemaError``) the file is not readable Parquet; names the file.
    """
    with _reading("wells", path):
        return _read_wells(path, batch_size)


def _read_wells(path: str | os.PathLike, batch_size: int) -> pa.Table:
    pf = pq.ParquetFile(path, memory_map=False, pre_buffer=False)
    names = pf.schema_arrow.names
    if "phenomic" not in names:
        raise SchemaError("wells", "phenomic", None, "missing required column")
    other = [n for n in names if n != "phenomic"]
    meta_tab = pf.read(columns=other, use_threads=True) if other else None
    t = pf.schema_arrow.field("phenomic").type
    n = pf.metadata.num_rows
    if pa.types.is_fixed_size_list(t) and (pa.types.is_floating(t.value_type)):
        e = t.list_size
        out = np.empty((n, e), dtype=np.float32)
        row = 0

        def pieces():
            for i in range(pf.metadata.num_row_groups):
                if pf.metadata.row_group(i).num_rows <= 4 * batch_size:
                    yield from pf.read_row_group(i, columns=["phenomic"]).column(0).chunks
                else:
                    for rb in pf.iter_batches(batch_size=batch_size, row_groups=[i], columns=["phenomic"]):
                        yield rb.column(0)

        for col in pieces():
            if col.null_count:
                nulls = col.is_null().to_numpy(zero_copy_only=False)
                raise SchemaError(
                    "wells", "phenomic", row + int(np.flatnonzero(nulls)[0]), "null embedding"
                )
            vals = col.flatten().to_numpy(zero_copy_only=False)
            out[row : row + len(col)] = vals.reshape(len(col), e)
            row += len(col)
        flat = pa.array(out.reshape(-1))  # zero-copy wrap of the numpy buffer
        emb = pa.FixedSizeListArray.from_arrays(flat, e)
    else:
        # variable-length or odd types: let the validator normalise (one extra copy)
        emb = pf.read(columns=["phenomic"]).column(0)
    if meta_tab is None:
        return pa.table({"phenomic": emb})
    idx = names.index("phenomic")
    return meta_tab.add_column(idx, "phenomic", emb)


def _read_optional(table: str, path: Path) -> pa.Table | None:
    if not path.exists():
        return None
    return _read_parquet(table, path)


def load_dataset(
    path: str | os.PathLike,
    *,
    validate: bool = True,
    check_smiles: bool = True,
    embedding_dim: int | None = None,
) -> Dataset:
    """Load and validate a dataset directory.

    Args:
        path: Directory with ``wells.parquet``, ``molecules.parquet`` and optionally
            ``truth.parquet``, ``calls.parquet``, ``meta.json``; or the name of a dataset
            bundled with molphenix (``"cell-injury"``, see :mod:`molphenix.datasets`) when no
            directory of that name exists.
        validate: Run schema validation (strongly recommended; skip only for trusted data).
        check_smiles: Parse every SMILES with RDKit; invalid ones are skipped, reported in
            ``Dataset.invalid_smiles`` and with a warning, and wells that reference them are
            dropped and counted.
        embedding_dim: Expected embedding width; ``None`` reads it from the data (and checks
            ``meta.json``'s ``embedding_dim`` when present).

    Returns:
        The :class:`Dataset`.

    Raises:
        FileNotFoundError: the directory or a required file is missing.
        SchemaError: (a ``ValueError``) any validation failure; the message names the table,
            the column and the first offending row.
        DataFileError: (a ``SchemaError``) a Parquet file or ``meta.json`` cannot be read
            (corrupt, truncated, not JSON); the message names the file.
    """
    root = Path(path)
    if not root.is_dir():
        from . import bundled

        if str(path).replace("_", "-") not in bundled.names():
            raise FileNotFoundError(f"dataset directory not found: {root}")
        root = bundled.path(str(path))
    for f in (WELLS_FILE, MOLECULES_FILE):
        if not (root / f).exists():
            raise FileNotFoundError(f"{root / f} is missing")
    meta: dict[str, Any] = {}
    if (root / META_FILE).exists():
        meta = _read_meta(root / META_FILE)
    if embedding_dim is None and isinstance(meta.get("embedding_dim"), int):
        embedding_dim = meta["embedding_dim"]
    wells = read_wells(root / WELLS_FILE)
    molecules = _read_parquet("molecules", root / MOLECULES_FILE)
    truth = _read_optional("truth", root / TRUTH_FILE)
    calls = _read_optional("calls", root / CALLS_FILE)
    return from_tables(
        wells,
        molecules,
        truth=truth,
        calls=calls,
        meta=meta,
        path=root,
        validate=validate,
        check_smiles=check_smiles,
        embedding_dim=embedding_dim,
    )


def from_tables(
    wells: pa.Table,
    molecules: pa.Table,
    *,
    truth: pa.Table | None = None,
    calls: pa.Table | None = None,
    meta: dict[str, Any] | None = None,
    path: Path | None = None,
    validate: bool = True,
    check_smiles: bool = True,
    embedding_dim: int | None = None,
) -> Dataset:
    """Build a validated :class:`Dataset` from in-memory tables.

    Args:
        wells: Wells table.
        molecules: Molecules table.
        truth: Optional truth table.
        calls: Optional activity calls.
        meta: Optional metadata.
        path: Optional directory of origin.
        validate: Run schema validation.
        check_smiles: Parse SMILES (see :func:`load_dataset`).
        embedding_dim: Expected embedding width.

    Returns:
        The :class:`Dataset`.

    Raises:
        SchemaError: any validation failure.
    """
    report = InvalidSmilesReport()
    if validate:
        wells = validate_wells(wells, embedding_dim=embedding_dim)
        molecules, report = validate_molecules(molecules, check_smiles=check_smiles)
        wells, report.dropped_wells = check_molecule_references(
            wells, molecules, skipped=report.molecule_ids
        )
        if wells.num_rows == 0:
            raise SchemaError("wells", None, None, "no wells left after skipping invalid SMILES")
        if truth is not None:
            truth = validate_truth(truth)
        if calls is not None:
            calls = validate_calls(calls)
        if report.count:
            warnings.warn(f"molphenix.data: {report}", stacklevel=external_stacklevel())
    return Dataset(
        wells=wells,
        molecules=molecules,
        truth=truth,
        calls=calls,
        meta=dict(meta or {}),
        path=path,
        invalid_smiles=report,
    )


# --------------------------------------------------------------------------- writing


def write_table(table: pa.Table, path: str | os.PathLike, *, compression: str = "zstd") -> None:
    """Write a table to Parquet atomically (temporary file + rename).

    Args:
        table: Table to write.
        path: Destination file.
        compression: Parquet codec.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression=compression, row_group_size=16384)
    os.replace(tmp, path)


def save_dataset(
    dataset: Dataset, path: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Write a dataset directory.

    Args:
        dataset: The dataset (validated again before writing).
        path: Output directory (created).
        overwrite: Replace existing files; otherwise an existing ``wells.parquet`` raises.

    Returns:
        The directory path.

    Raises:
        FileExistsError: the directory already holds a dataset and ``overwrite`` is False.
        SchemaError: the tables do not validate.
    """
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    if (root / WELLS_FILE).exists() and not overwrite:
        raise FileExistsError(f"{root / WELLS_FILE} exists (pass overwrite=True)")
    wells = validate_wells(dataset.wells)
    molecules, _ = validate_molecules(dataset.molecules, check_smiles=False)
    check_molecule_references(wells, molecules)
    write_table(wells, root / WELLS_FILE)
    write_table(molecules, root / MOLECULES_FILE)
    for table, fname, validator in (
        (dataset.truth, TRUTH_FILE, validate_truth),
        (dataset.calls, CALLS_FILE, validate_calls),
    ):
        if table is not None:
            write_table(validator(table), root / fname)
        elif (root / fname).exists() and overwrite:
            (root / fname).unlink()
    meta = dict(dataset.meta)
    meta.setdefault("embedding_dim", int(wells.schema.field("phenomic").type.list_size))
    tmp = root / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, root / META_FILE)
    return root


def save_calls(calls: pa.Table, path: str | os.PathLike) -> Path:
    """Write an activity-call table next to a dataset (``<dir>/calls.parquet``) or to a file.

    Args:
        calls: Activity-call table.
        path: A dataset directory or a ``.parquet`` file path.

    Returns:
        The file written.
    """
    p = Path(path)
    if p.is_dir():
        p = p / CALLS_FILE
    write_table(validate_calls(calls), p)
    return p


def load_calls(path: str | os.PathLike) -> pa.Table:
    """Read and validate an activity-call table (Parquet or CSV).

    Args:
        path: ``calls.parquet`` / a dataset directory / a ``.csv`` with the call columns.

    Returns:
        Validated calls table.

    Raises:
        SchemaError: the table does not validate.
        DataFileError: (a ``SchemaError``) the file cannot be read; names the file.
    """
    p = Path(path)
    if p.is_dir():
        p = p / CALLS_FILE
    if p.suffix.lower() in (".csv", ".tsv"):
        from pyarrow import csv

        opts = csv.ParseOptions(delimiter="\t" if p.suffix.lower() == ".tsv" else ",")
        with _reading("calls", p, "CSV"):
            t = csv.read_csv(p, parse_options=opts)
    else:
        t = _read_parquet("calls", p)
    return validate_calls(t)
