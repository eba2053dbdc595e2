"""Shared helpers for the format loaders."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ..._warnings import external_stacklevel
from ..schema import SchemaError


def read_table(source: str | os.PathLike | pa.Table, *, name: str, string_columns: Sequence[str] = ()) -> pa.Table:
    """Read a CSV/TSV (optionally .gz) or Parquet file, or pass a table through.

    Args:
        source: Path or table.
        name: Table name for error messages.
        string_columns: Columns forced to string when reading CSV (ids such as plate numbers).

    Returns:
        The table.

    Raises:
        FileNotFoundError: missing file.
    """
    if isinstance(source, pa.Table):
        return source
    p = Path(source)
    if not p.exists():
        raise FileNotFoundError(f"{name}: {p} not found")
    suffixes = [s.lower() for s in p.suffixes]
    if ".parquet" in suffixes or ".pq" in suffixes:
        return pq.read_table(p, memory_map=True)
    delim = "\t" if ".tsv" in suffixes or ".txt" in suffixes else ","
    # read the header first so that requested string columns are typed as strings
    convert = pacsv.ConvertOptions(
        column_types={c: pa.string() for c in string_columns},
        strings_can_be_null=True,
        null_values=["", "NA", "NaN", "nan", "null", "None"],
    )
    return pacsv.read_csv(p, parse_options=pacsv.ParseOptions(delimiter=delim), convert_options=convert)


def require(table: pa.Table, name: str, columns: Sequence[str]) -> None:
    """Raise SchemaError naming the first missing column."""
    for c in columns:
        if c not in table.column_names:
            raise SchemaError(name, c, None, f"missing required column (have {table.column_names[:12]}...)")


def as_str(col: pa.ChunkedArray) -> list[str | None]:
    """A column as Python strings (numbers formatted without a trailing .0)."""
    vals = col.to_pylist()
    out = []
    for v in vals:
        if v is None:
            out.append(None)
        elif isinstance(v, float) and v.is_integer():
            out.append(str(int(v)))
        else:
            out.append(str(v))
    return out


_NUM_SUFFIX = re.compile(r"(\d+)$")


def feature_matrix(table: pa.Table, columns: Sequence[str], *, name: str) -> np.ndarray:
    """Stack numeric feature columns into float32 [N, F].

    Raises:
        SchemaError: a non-numeric feature column.
    """
    out = np.empty((table.num_rows, len(columns)), dtype=np.float32)
    for j, c in enumerate(columns):
        col = table.column(c)
        if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type) or pa.types.is_null(col.type)):
            raise SchemaError(name, c, None, f"feature column must be numeric, got {col.type}")
        out[:, j] = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
    return out


def sort_feature_columns(cols: list[str]) -> list[str]:
    """Sort ``feature_0..feature_N``-style names numerically (others keep their order)."""
    if cols and all(_NUM_SUFFIX.search(c) for c in cols):
        return sorted(cols, key=lambda c: (c[: _NUM_SUFFIX.search(c).start()], int(_NUM_SUFFIX.search(c).group(1))))
    return cols


def embedding_array(mat: np.ndarray) -> pa.FixedSizeListArray:
    """float32 [N, E] -> fixed_size_list<float32>[E] (zero-copy wrap)."""
    mat = np.ascontiguousarray(mat, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(mat.reshape(-1)), mat.shape[1])


def report_drops(report: dict[str, Any], loader: str) -> None:
    """Warn about every non-zero drop count (nothing is dropped silently)."""
    dropped = {k: v for k, v in report.items() if k != "rows" and isinstance(v, int) and v}
    if dropped:
        warnings.warn(f"{loader}: skipped (of {report.get('rows')} rows): {dropped}",
                      stacklevel=external_stacklevel())


def strip_cxsmiles(s: str | None) -> str | None:
    """Drop a CXSMILES extension (`` |...|``) from a SMILES string."""
    if s is None:
        return None
    s = s.strip()
    i = s.find(" |")
    return s[:i] if i >= 0 else s
