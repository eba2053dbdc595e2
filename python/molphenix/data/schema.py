"""Table schemas and validation for molphenix datasets.

A dataset is a set of Arrow tables (DESIGN.md section 4):

* **wells**: one row per well — ``well_id`` (str), ``dataset`` (str), ``batch`` (str),
  ``plate`` (str), ``molecule_id`` (str, null for controls), ``concentration_um``
  (float, null for controls), ``is_control`` (bool), ``phenomic``
  (``fixed_size_list<float32>[E]``).
* **molecules**: ``molecule_id`` (str), ``smiles`` (str), optional precomputed embedding
  columns.
* **truth** (optional, simulated data): ``molecule_id``, ``concentration_um``, ``active`` (bool)
  plus any further columns.
* **calls** (activity calls): ``molecule_id``, ``concentration_um``, ``p_value``, ``active``.

Columns beyond the required ones are kept and ignored. Every validation error is a
:class:`SchemaError` (a ``ValueError``) that names the table, the column and, where one row is
at fault, the first offending row index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "SchemaError",
    "DataFileError",
    "InvalidSmilesReport",
    "WELLS_COLUMNS",
    "MOLECULES_COLUMNS",
    "TRUTH_COLUMNS",
    "CALLS_COLUMNS",
    "wells_schema",
    "validate_wells",
    "validate_molecules",
    "validate_truth",
    "validate_calls",
    "check_molecule_references",
    "find_invalid_smiles",
]

#: Required wells columns and their logical kinds.
WELLS_COLUMNS: dict[str, str] = {
    "well_id": "string",
    "dataset": "string",
    "batch": "string",
    "plate": "string",
    "molecule_id": "string",
    "concentration_um": "float",
    "is_control": "bool",
    "phenomic": "embedding",
}
#: Required molecules columns.
MOLECULES_COLUMNS: dict[str, str] = {"molecule_id": "string", "smiles": "string"}
#: Required truth columns (simulated data).
TRUTH_COLUMNS: dict[str, str] = {
    "molecule_id": "string",
    "concentration_um": "float",
    "active": "bool",
}
#: Required activity-call columns.
CALLS_COLUMNS: dict[str, str] = {
    "molecule_id": "string",
    "concentration_um": "float",
    "p_value": "float",
    "active": "bool",
}


class SchemaError(ValueError):
    """A table does not satisfy the molphenix schema.

    Attributes:
        table: Name of the table (``"wells"``, ``"molecules"``, ...).
        column: Offending column, or ``None`` for table-level problems.
        row: Index of the first offending row, or ``None``.
    """

    def __init__(self, table: str, column: str | None, row: int | None, message: str):
        self.table = table
        self.column = column
        self.row = row
        where = f"{table}"
        if column is not None:
            where += f", column {column!r}"
        if row is not None:
            where += f", row {row}"
        super().__init__(f"{where}: {message}")


class DataFileError(SchemaError):
    """A dataset file cannot be read at all (not Parquet, truncated, not valid JSON).

    The message starts with the table and names the file:
    ``wells: /data/run1/wells.parquet: cannot read Parquet file (...)``.

    Attributes:
        path: The file that could not be read.
    """

    def __init__(self, table: str, path: object, message: str):
        self.path = path
        super().__init__(table, None, None, f"{path}: {message}")


@dataclass
class InvalidSmilesReport:
    """SMILES that RDKit could not parse, and what was skipped because of them.

    Attributes:
        molecule_ids: ids of the skipped molecules.
        smiles: their SMILES strings.
        rows: their row indices in the molecules table as given.
        dropped_wells: number of wells skipped because they referenced a skipped molecule.
    """

    molecule_ids: list[str] = field(default_factory=list)
    smiles: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    dropped_wells: int = 0

    @property
    def count(self) -> int:
        """Number of invalid SMILES."""
        return len(self.molecule_ids)

    def __str__(self) -> str:
        if not self.count:
            return "no invalid SMILES"
        shown = ", ".join(f"{m!r} (row {r})" for m, r in zip(self.molecule_ids[:5], self.rows[:5]))
        more = "" if self.count <= 5 else f" and {self.count - 5} more"
        return (
            f"{self.count} invalid SMILES skipped: {shown}{more}; "
            f"{self.dropped_wells} wells referencing them skipped"
        )


def wells_schema(embedding_dim: int) -> pa.Schema:
    """The canonical Arrow schema of a wells table.

    Args:
        embedding_dim: Width E of the ``phenomic`` embedding.

    Returns:
        A ``pyarrow.Schema`` with the required columns in canonical order.
    """
    return pa.schema(
        [
            ("well_id", pa.string()),
            ("dataset", pa.string()),
            ("batch", pa.string()),
            ("plate", pa.string()),
            ("molecule_id", pa.string()),
            ("concentration_um", pa.float64()),
            ("is_control", pa.bool_()),
            ("phenomic", pa.list_(pa.float32(), embedding_dim)),
        ]
    )


# ----------------------------------------------------------------------------- helpers


def _first_true(mask: np.ndarray) -> int | None:
    idx = np.flatnonzero(mask)
    return int(idx[0]) if idx.size else None


def _combine(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col


def _coerce_column(table_name: str, table: pa.Table, name: str, kind: str) -> pa.ChunkedArray:
    """Return column ``name`` cast to the canonical type for ``kind`` or raise SchemaError."""
    if name not in table.column_names:
        raise SchemaError(
            table_name, name, None, f"missing required column (have {table.column_names})"
        )
    col = table.column(name)
    t = col.type
    if kind == "string":
        if pa.types.is_string(t):
            return col
        if pa.types.is_large_string(t) or pa.types.is_dictionary(t) and (
            pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type)
        ):
            return col.cast(pa.string())
        if pa.types.is_null(t):
            return col.cast(pa.string())
        raise SchemaError(table_name, name, None, f"expected a string column, got {t}")
    if kind == "float":
        if pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_null(t):
            return col.cast(pa.float64())
        raise SchemaError(table_name, name, None, f"expected a numeric column, got {t}")
    if kind == "bool":
        if pa.types.is_boolean(t):
            return col
        raise SchemaError(table_name, name, None, f"expected a bool column, got {t}")
    raise AssertionError(kind)


def _check_not_null(table_name: str, name: str, col: pa.ChunkedArray, where: np.ndarray | None = None) -> None:
    if col.null_count == 0:
        return
    nulls = _combine(col).is_null().to_numpy(zero_copy_only=False)
    if where is not None:
        nulls &= where
    row = _first_true(nulls)
    if row is not None:
        raise SchemaError(table_name, name, row, "null value not allowed")


def _check_unique(table_name: str, name: str, col: pa.ChunkedArray) -> None:
    arr = _combine(col)
    enc = pc.dictionary_encode(arr)
    if len(enc.dictionary) == len(arr):
        return
    codes = enc.indices.to_numpy(zero_copy_only=False)
    _, first = np.unique(codes, return_index=True)
    dup = np.ones(len(codes), dtype=bool)
    dup[first] = False
    row = _first_true(dup)
    raise SchemaError(
        table_name, name, row, f"duplicate value {arr[row].as_py()!r} (ids must be unique)"
    )


def _embedding_column(
    table_name: str, table: pa.Table, name: str, embedding_dim: int | None
) -> pa.ChunkedArray:
    """Validate and normalise an embedding column to fixed_size_list<float32>[E]."""
    if name not in table.column_names:
        raise SchemaError(table_name, name, None, "missing required column")
    col = table.column(name)
    t = col.type
    if pa.types.is_fixed_size_list(t):
        width = t.list_size
        vt = t.value_type
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        vt = t.value_type
        # variable-length lists: every row must have the same length
        lens = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        if lens.size == 0:
            width = embedding_dim or 0
        else:
            expect = embedding_dim if embedding_dim is not None else int(lens[0])
            row = _first_true(lens != expect)
            if row is not None:
                raise SchemaError(
                    table_name, name, row, f"embedding has length {lens[row]}, expected {expect}"
                )
            width = expect
    else:
        raise SchemaError(table_name, name, None, f"expected a list<float> column, got {t}")
    if not (pa.types.is_floating(vt) or pa.types.is_integer(vt)):
        raise SchemaError(table_name, name, None, f"embedding values must be float, got {vt}")
    if embedding_dim is not None and width != embedding_dim:
        raise SchemaError(
            table_name, name, None, f"embedding width {width} != expected {embedding_dim}"
        )
    if width <= 0:
        raise SchemaError(table_name, name, None, "embedding width must be positive")
    _check_not_null(table_name, name, col)
    target = pa.list_(pa.float32(), width)
    if t != target:
        col = col.cast(target)
    # NaN / Inf check, chunk by chunk on the flat values buffer (no copy for fixed_size_list)
    offset = 0
    step = max(1, (1 << 22) // width)  # rows per check: bounds the temporary mask to ~4 MB
    for chunk in col.chunks:
        vals = chunk.flatten().to_numpy(zero_copy_only=False)
        for r0 in range(0, len(chunk), step):
            part = vals[r0 * width : (r0 + step) * width]
            if np.isfinite(part).all():
                continue
            flat = int(np.flatnonzero(~np.isfinite(part))[0])
            raise SchemaError(
                table_name,
                name,
                offset + r0 + flat // width,
                f"non-finite embedding value {part[flat]} at position {flat % width}",
            )
        offset += len(chunk)
    return col


def _replace(table: pa.Table, name: str, col: pa.ChunkedArray) -> pa.Table:
    if table.column(name).type == col.type:
        return table
    return table.set_column(table.column_names.index(name), name, col)


def _check_nonempty(table_name: str, table: pa.Table) -> None:
    if table.num_rows == 0:
        raise SchemaError(table_name, None, None, "table is empty")


# ----------------------------------------------------------------------------- validators


def validate_wells(table: pa.Table, *, embedding_dim: int | None = None) -> pa.Table:
    """Validate a wells table and cast its required columns to the canonical types.

    Args:
        table: Wells table (extra columns are kept).
        embedding_dim: Expected embedding width E; ``None`` accepts any consistent width.

    Returns:
        The table with ``well_id``/``dataset``/``batch``/``plate``/``molecule_id`` as string,
        ``concentration_um`` as float64 and ``phenomic`` as ``fixed_size_list<float32>[E]``.

    Raises:
        SchemaError: missing column or wrong type; empty table; null ids; duplicate
            ``well_id``; wrong embedding width; NaN/Inf embedding values; a treated well
            without ``molecule_id`` or ``concentration_um``; a control well with a
            ``molecule_id``; a concentration that is not finite and > 0.
    """
    name = "wells"
    if not isinstance(table, pa.Table):
        raise TypeError(f"wells must be a pyarrow.Table, got {type(table).__name__}")
    cols = {}
    for col, kind in WELLS_COLUMNS.items():
        if kind == "embedding":
            continue
        cols[col] = _coerce_column(name, table, col, kind)
    if "phenomic" not in table.column_names:
        raise SchemaError(name, "phenomic", None, "missing required column")
    _check_nonempty(name, table)
    for col in ("well_id", "dataset", "batch", "plate", "is_control"):
        _check_not_null(name, col, cols[col])
    _check_unique(name, "well_id", cols["well_id"])
    is_control = _combine(cols["is_control"]).to_numpy(zero_copy_only=False).astype(bool)
    treated = ~is_control
    _check_not_null(name, "molecule_id", cols["molecule_id"], where=treated)
    _check_not_null(name, "concentration_um", cols["concentration_um"], where=treated)
    # the schema says molecule_id is null for controls; a control that names a molecule is
    # ambiguous (a mislabelled treated well, or a vehicle id such as "DMSO") and is rejected
    mol_arr = _combine(cols["molecule_id"])
    if mol_arr.null_count < len(mol_arr) and is_control.any():
        has_mol = ~mol_arr.is_null().to_numpy(zero_copy_only=False)
        row = _first_true(is_control & has_mol)
        if row is not None:
            raise SchemaError(
                name,
                "molecule_id",
                row,
                f"control well (is_control true) has molecule_id {mol_arr[row].as_py()!r}; "
                "controls must have a null molecule_id",
            )
    conc_arr = _combine(cols["concentration_um"])
    conc = conc_arr.to_numpy(zero_copy_only=False).astype(np.float64)
    null = conc_arr.is_null().to_numpy(zero_copy_only=False)
    with np.errstate(invalid="ignore"):
        # any non-null value (controls included) must be finite and > 0; NaN is not null
        bad = ~null & ~(np.isfinite(conc) & (conc > 0))
    row = _first_true(bad)
    if row is not None:
        raise SchemaError(
            name, "concentration_um", row, f"concentration must be finite and > 0, got {conc[row]}"
        )
    emb = _embedding_column(name, table, "phenomic", embedding_dim)
    for col, arr in cols.items():
        table = _replace(table, col, arr)
    table = _replace(table, "phenomic", emb)
    return table


def find_invalid_smiles(smiles: Sequence[str | None]) -> np.ndarray:
    """Flag SMILES that RDKit cannot parse.

    Args:
        smiles: SMILES strings (``None`` or empty counts as invalid).

    Returns:
        Bool array [N], True where the SMILES is invalid.
    """
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    try:
        bad = np.zeros(len(smiles), dtype=bool)
        for i, s in enumerate(smiles):
            if not s or Chem.MolFromSmiles(s) is None:
                bad[i] = True
        return bad
    finally:
        RDLogger.EnableLog("rdApp.*")


def validate_molecules(
    table: pa.Table, *, check_smiles: bool = True
) -> tuple[pa.Table, InvalidSmilesReport]:
    """Validate a molecules table; skip (and report) molecules whose SMILES do not parse.

    Args:
        table: Molecules table with ``molecule_id`` and ``smiles`` (extra columns kept;
            list-typed extra columns are treated as precomputed embeddings and checked for
            NaN/Inf and a consistent width).
        check_smiles: Parse every SMILES with RDKit (about 10k/s); invalid ones are removed
            and listed in the report.

    Returns:
        (validated table without the invalid molecules, report of what was skipped).

    Raises:
        SchemaError: missing column or wrong type, empty table, null or duplicate
            ``molecule_id``, malformed embedding columns.
    """
    name = "molecules"
    if not isinstance(table, pa.Table):
        raise TypeError(f"molecules must be a pyarrow.Table, got {type(table).__name__}")
    cols = {c: _coerce_column(name, table, c, k) for c, k in MOLECULES_COLUMNS.items()}
    _check_nonempty(name, table)
    _check_not_null(name, "molecule_id", cols["molecule_id"])
    _check_unique(name, "molecule_id", cols["molecule_id"])
    for c, arr in cols.items():
        table = _replace(table, c, arr)
    for c in table.column_names:
        t = table.column(c).type
        if pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t):
            table = _replace(table, c, _embedding_column(name, table, c, None))
    report = InvalidSmilesReport()
    if check_smiles:
        smiles = table.column("smiles").to_pylist()
        bad = find_invalid_smiles(smiles)
        if bad.any():
            rows = np.flatnonzero(bad)
            ids = table.column("molecule_id").to_pylist()
            report.rows = [int(r) for r in rows]
            report.molecule_ids = [ids[r] for r in rows]
            report.smiles = [smiles[r] for r in rows]
            table = table.filter(pa.array(~bad))
    return table, report


def _validate_keyed(
    name: str, table: pa.Table, columns: dict[str, str], float_checks: Iterable[str] = ()
) -> pa.Table:
    if not isinstance(table, pa.Table):
        raise TypeError(f"{name} must be a pyarrow.Table, got {type(table).__name__}")
    cols = {c: _coerce_column(name, table, c, k) for c, k in columns.items()}
    _check_nonempty(name, table)
    for c, arr in cols.items():
        _check_not_null(name, c, arr)
    conc = _combine(cols["concentration_um"]).to_numpy(zero_copy_only=False)
    row = _first_true(~(np.isfinite(conc) & (conc > 0)))
    if row is not None:
        raise SchemaError(
            name, "concentration_um", row, f"concentration must be finite and > 0, got {conc[row]}"
        )
    for c in float_checks:
        v = _combine(cols[c]).to_numpy(zero_copy_only=False)
        row = _first_true(~((v >= 0) & (v <= 1)))
        if row is not None:
            raise SchemaError(name, c, row, f"must lie in [0, 1], got {v[row]}")
    keys = pa.Table.from_arrays(
        [cols["molecule_id"], cols["concentration_um"]], names=["m", "c"]
    )
    grouped = keys.group_by(["m", "c"]).aggregate([])
    if grouped.num_rows != keys.num_rows:
        m = keys.column("m").to_numpy(zero_copy_only=False)
        c = keys.column("c").to_numpy(zero_copy_only=False)
        seen: set = set()
        for i, k in enumerate(zip(m, c)):
            if k in seen:
                raise SchemaError(
                    name, "molecule_id", i, f"duplicate (molecule_id, concentration_um) {k}"
                )
            seen.add(k)
    for c, arr in cols.items():
        table = _replace(table, c, arr)
    return table


def validate_truth(table: pa.Table) -> pa.Table:
    """Validate a truth table (``molecule_id``, ``concentration_um``, ``active``; extras kept).

    Args:
        table: Truth table.

    Returns:
        The table with canonical column types.

    Raises:
        SchemaError: missing column, wrong type, nulls, bad concentration, duplicate keys,
            empty table.
    """
    return _validate_keyed("truth", table, TRUTH_COLUMNS)


def validate_calls(table: pa.Table) -> pa.Table:
    """Validate an activity-call table (``molecule_id``, ``concentration_um``, ``p_value``,
    ``active``; extras kept).

    Args:
        table: Calls table; ``p_value`` must lie in [0, 1].

    Returns:
        The table with canonical column types.

    Raises:
        SchemaError: missing column, wrong type, nulls, p-value outside [0, 1], duplicate
            keys, empty table.
    """
    return _validate_keyed("calls", table, CALLS_COLUMNS, float_checks=("p_value",))


def check_molecule_references(
    wells: pa.Table, molecules: pa.Table, *, skipped: Iterable[str] = ()
) -> tuple[pa.Table, int]:
    """Check that every treated well's ``molecule_id`` is in the molecules table.

    Args:
        wells: Validated wells table.
        molecules: Validated molecules table.
        skipped: Molecule ids that were removed for invalid SMILES; wells referencing them
            are dropped (and counted) instead of raising.

    Returns:
        (wells without the rows that reference skipped molecules, number of rows dropped).

    Raises:
        SchemaError: a well references a molecule that is neither present nor skipped.
    """
    mol_ids = molecules.column("molecule_id")
    wm = wells.column("molecule_id")
    present = pc.is_in(wm, value_set=_combine(mol_ids)).to_numpy(zero_copy_only=False)
    isnull = _combine(wm).is_null().to_numpy(zero_copy_only=False)
    control = _combine(wells.column("is_control")).to_numpy(zero_copy_only=False).astype(bool)
    missing = ~present & ~isnull & ~control
    dropped = 0
    skipped = list(skipped)
    if missing.any() and skipped:
        in_skipped = pc.is_in(wm, value_set=pa.array(skipped, pa.string())).to_numpy(
            zero_copy_only=False
        )
        drop = missing & in_skipped
        missing &= ~in_skipped
        if drop.any():
            dropped = int(drop.sum())
            wells = wells.filter(pa.array(~drop))
            missing = missing[~drop]
    row = _first_true(missing)
    if row is not None:
        raise SchemaError(
            "wells",
            "molecule_id",
            row,
            f"molecule_id {wells.column('molecule_id')[row].as_py()!r} is not in the molecules table",
        )
    return wells, dropped
