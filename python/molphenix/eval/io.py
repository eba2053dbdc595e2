"""Reading and writing evaluation results: ``metrics.json`` and the per-query ranks file.

Writes are atomic (a temporary file in the same directory, then ``os.replace``), so a reader
never sees a half-written file and a crash leaves the previous version in place.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np

from molphenix._atomic import atomic_write, atomic_write_bytes  # re-exported (public since 0.1)

__all__ = [
    "atomic_write",
    "SCHEMA_VERSION",
    "atomic_write_bytes",
    "read_metrics",
    "read_query_ranks",
    "write_metrics",
    "write_query_ranks",
]

#: Version of the ``metrics.json`` layout (top-level key ``"schema_version"``).
SCHEMA_VERSION = 1

PathLike = Union[str, "os.PathLike[str]"]


def _jsonable(obj: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays to Python, non-finite floats to None."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    return obj


def write_metrics(path: PathLike, metrics_by_split: Mapping[str, Any]) -> Path:
    """Write ``metrics.json`` atomically: ``{"schema_version": 1, "<split>": {...}, ...}``.

    Args:
        path: the file to write (parents are created).
        metrics_by_split: split name -> split dict from
            :func:`molphenix.eval.evaluate_embeddings`. A ``schema_version`` key in it is
            replaced by :data:`SCHEMA_VERSION`.

    Returns:
        The path written.

    Raises:
        TypeError: ``metrics_by_split`` is not a mapping or holds non-JSON values.
    """
    if not isinstance(metrics_by_split, Mapping):
        raise TypeError(f"metrics_by_split: expected a mapping split -> metrics, got "
                        f"{type(metrics_by_split).__name__}")
    body: Dict[str, Any] = {"schema_version": SCHEMA_VERSION}
    for k, v in metrics_by_split.items():
        if k != "schema_version":
            body[str(k)] = v
    text = json.dumps(_jsonable(body), indent=2, allow_nan=False) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))


def read_metrics(path: PathLike) -> Dict[str, Any]:
    """Read a ``metrics.json`` written by :func:`write_metrics`.

    Returns:
        The dict, ``schema_version`` included.

    Raises:
        FileNotFoundError: no such file. ValueError: not JSON, not an object, or a
            ``schema_version`` newer than this molphenix reads (the message says which).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a valid metrics JSON file ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    version = data.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version {version!r} is newer than this molphenix "
                         f"reads ({SCHEMA_VERSION}); upgrade molphenix")
    return data


def write_query_ranks(path: PathLike, ranks: Mapping[str, Any], *,
                      split: Optional[str] = None) -> Path:
    """Write per-query ranks atomically as Parquet (``.parquet``) or CSV (any other suffix).

    Args:
        path: output file.
        ranks: a :class:`molphenix.eval.QueryRanks` (or any mapping of equal-length columns,
            e.g. ``molecule``, ``concentration``, ``active``, ``rank``).
        split: when given, a leading ``split`` column with this value (so the splits of a run
            can share one file after concatenation).

    Returns:
        The path written.

    Raises:
        ValueError: columns of different lengths.
    """
    import pyarrow as pa

    cols: Dict[str, Any] = {}
    n = None
    for name, col in ranks.items():
        arr = np.asarray(col)
        if n is None:
            n = len(arr)
        elif len(arr) != n:
            raise ValueError(f"ranks: column {name!r} has {len(arr)} rows, expected {n}")
        cols[name] = arr.tolist() if arr.dtype == object else arr
    if split is not None:
        cols = {"split": [split] * (n or 0), **cols}
    table = pa.table(cols)
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        return atomic_write_bytes(path, sink.getvalue().to_pybytes())
    import pyarrow.csv as pcsv

    sink = pa.BufferOutputStream()
    pcsv.write_csv(table, sink)
    return atomic_write_bytes(path, sink.getvalue().to_pybytes())


def read_query_ranks(path: PathLike) -> Dict[str, np.ndarray]:
    """Read a file written by :func:`write_query_ranks` into numpy columns."""
    import pyarrow as pa

    path = Path(path)
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    else:
        import pyarrow.csv as pcsv

        table = pcsv.read_csv(path)
    out: Dict[str, np.ndarray] = {}
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            out[name] = np.asarray(col.to_pylist(), dtype=object)
        else:
            out[name] = col.to_numpy()
    return out
