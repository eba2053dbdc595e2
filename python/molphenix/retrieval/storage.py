"""Candidate rows and ids, in memory and on disk: the storage that ``Index`` and ``ShardedIndex`` share.

Rows are validated (2-D, floating, finite; non-zero norms and unit-normalised for cosine) once,
when an index is built from arrays or when a library is written. After that they are trusted:
searching calls the kernels through :mod:`molphenix.ops.prepared` without re-checking them, and on
the CPU the kernels read a copy packed once (:class:`molphenix.ops.prepared.PackedCandidates`)
instead of re-packing ``N x D`` values on every call.

Two on-disk layouts:

* **Library directory** (``LIBRARY_FORMAT``, version :data:`LIBRARY_VERSION`), what
  ``molphenix embed-library`` writes and :meth:`Index.save` writes to a path that does not end in
  ``.parquet``::

      LIB/manifest.json           format, version, n, dim, metric, dtype, storage dtype, id kind,
                                  columns, the shard list with sizes and sha256, provenance, and
                                  the sha256 of the manifest itself
      LIB/shards/<name>.emb       raw little-endian float32 or float16 rows [n_shard, dim], C order
      LIB/shards/<name>.parquet   the shard's ids (column ``id``) and any extra columns

  Opening one reads only the manifest (its checksum is verified) and memory-maps the ``.emb``
  blocks after checking their sizes: no row is read, so a million rows open in milliseconds.
  Ids and extra columns are read when first needed. The block checksums are verified by
  :func:`verify_library` (``Index.load(..., verify=True)``), not on every open: the manifest is
  trusted. A directory without ``manifest.json`` is an unfinished library, never opened.

* **Parquet file** (``INDEX_FORMAT_VERSION`` 1): columns ``id`` and ``embedding``
  (``fixed_size_list``), metadata key ``molphenix.index``; row groups of :data:`ROW_GROUP_ROWS`
  so a sharded reader reads only its rows. Written and read as before.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from molphenix._atomic import atomic_write, atomic_write_bytes, fsync_dir
from molphenix.ops import prepared as P

__all__ = [
    "INDEX_FORMAT_VERSION",
    "LIBRARY_FORMAT",
    "LIBRARY_VERSION",
    "MANIFEST",
    "ROW_GROUP_ROWS",
    "STORAGE_DTYPES",
    "Ids",
    "Rows",
    "ids_array",
    "prepare_queries",
    "validate_rows",
    "is_library",
    "read_manifest",
    "open_index",
    "write_shard",
    "shard_complete",
    "finish_library",
    "save_library",
    "save_parquet",
    "verify_library",
    "read_columns",
]

#: Version of the Parquet layout (:func:`save_parquet`).
INDEX_FORMAT_VERSION = 1
#: Version of the library directory layout.
LIBRARY_VERSION = 2
LIBRARY_FORMAT = "molphenix-library"
MANIFEST = "manifest.json"
#: Rows per Parquet row group: a sharded reader reads only the row groups of its rows.
ROW_GROUP_ROWS = 65536
#: Row dtypes a library can store (``float16`` halves the size; scores then change, see
#: docs/screening.md for the measured effect).
STORAGE_DTYPES = ("float32", "float16", "float64")
_META_KEY = b"molphenix.index"
_ARROW_FLOAT = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16"}
#: Rows per default block when :func:`save_library` writes an in-memory index.
_BLOCK_ROWS = 1 << 18


# ---------------------------------------------------------------------------------------------
# validation (once, at construction or when written)
# ---------------------------------------------------------------------------------------------


def validate_rows(embeddings: Any, metric: str, *, normalized: bool = False) -> torch.Tensor:
    """Check candidate rows and return them as stored: detached, contiguous, unit-normalised for
    cosine (exactly as the ops normalise).

    Args:
        embeddings: [N, D] floating rows (numpy, torch or cupy).
        metric: ``"cosine"``, ``"dot"`` or ``"arctan_l2"``.
        normalized: the rows are already the stored (normalised) rows: only checked.

    Raises:
        TypeError: non-floating rows. ValueError: not 2-D, no rows, zero width, NaN/Inf,
            zero-norm rows under cosine.
    """
    t = P.to_torch(embeddings, "embeddings")
    P.check_float_matrix(t, "embeddings", allow_empty_rows=False)
    t = t.detach()
    if metric == "cosine":
        P.check_zero_norm(t, "embeddings")
        if not normalized:
            t = P.normalize_rows(t)
    return t.contiguous()


def prepare_queries(queries: Any, dim: int, dtype: torch.dtype, device: torch.device,
                    metric: str) -> Tuple[torch.Tensor, str, Optional[torch.device]]:
    """(queries checked, cast to the index's dtype / device and normalised for cosine, their array
    kind, their device), with the errors of the ops."""
    kind = P.array_kind(queries)
    q = P.to_torch(queries, "queries")
    if q.dim() != 2:
        raise ValueError(f"queries: expected a 2-D array [Q, {dim}], got shape {tuple(q.shape)}")
    if q.shape[1] != dim:
        raise ValueError(f"queries: expected {dim} columns (the index dim), got shape "
                         f"{tuple(q.shape)}")
    if not q.dtype.is_floating_point:
        raise TypeError(f"queries: expected a floating-point dtype, got {q.dtype}")
    back = q.device
    q = q.detach().to(device=device, dtype=dtype)
    P.check_finite(q, "queries")
    if metric == "cosine":
        P.check_zero_norm(q, "queries")
        q = P.normalize_rows(q)
    return q, kind, back


def ids_array(ids: Any, n: int) -> Tuple[np.ndarray, bool]:
    """(ids as int64 or object-str numpy [n], whether they are the default row positions).

    Raises:
        TypeError: ids of mixed or unsupported types. ValueError: wrong length, a missing id.
    """
    if ids is None:
        return np.arange(n, dtype=np.int64), True
    mod = type(ids).__module__.split(".")[0]
    if mod == "pyarrow":
        import pyarrow as pa

        if isinstance(ids, pa.Table):
            if "id" in ids.column_names:
                ids = ids.column("id")
            elif ids.num_columns == 1:
                ids = ids.column(0)
            else:
                raise ValueError(f"ids: a pyarrow Table must have one column or an 'id' column, "
                                 f"got columns {ids.column_names}")
        ids = ids.to_pylist()
    elif isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    elif isinstance(ids, (str, bytes)) or not hasattr(ids, "__len__"):
        raise TypeError(f"ids: expected a sequence of str or int (one per row), got "
                        f"{type(ids).__name__}")
    arr = np.asarray(ids) if not isinstance(ids, list) else None
    if arr is not None and arr.dtype.kind in "iu":
        out = arr.astype(np.int64).ravel()
    elif arr is not None and arr.dtype.kind == "U":
        out = arr.astype(object).ravel()
    else:
        values = list(ids) if arr is None else arr.ravel().tolist()
        if any(v is None for v in values):
            raise ValueError(f"ids: entry {values.index(None)} is missing (None)")
        if all(isinstance(v, str) for v in values):
            out = np.asarray(values, dtype=object) if values else np.zeros(0, dtype=object)
        elif all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
                 for v in values):
            out = np.asarray(values, dtype=np.int64)
        else:
            kinds = sorted({type(v).__name__ for v in values})
            raise TypeError(f"ids: expected all str or all int, got {kinds}")
    if out.shape[0] != n:
        raise ValueError(f"ids: expected {n} entries (one per embedding row), got {out.shape[0]}")
    return out, False


def _first_duplicate(sorted_ids: np.ndarray) -> Optional[Any]:
    if sorted_ids.shape[0] < 2:
        return None
    same = sorted_ids[1:] == sorted_ids[:-1]
    if np.any(same):
        return sorted_ids[int(np.flatnonzero(same)[0])]
    return None


# ---------------------------------------------------------------------------------------------
# ids
# ---------------------------------------------------------------------------------------------


class Ids:
    """The ids of ``n`` rows: row positions (from ``offset``), an array, or read lazily.

    Args:
        n: number of rows.
        kind: ``"positions"``, ``"int"`` or ``"str"``.
        values: int64 or object numpy array [n] (``"int"`` / ``"str"``), or None with ``loader``.
        loader: called once, when the ids are first needed; returns the values (numpy, or a
            pyarrow Array / ChunkedArray).
        offset: first position (``"positions"``).
        check_unique: check uniqueness now (in-memory ids; a library checked them when written).

    Raises:
        ValueError: a duplicate id (``check_unique``).
    """

    def __init__(self, n: int, kind: str, *, values: Any = None, loader: Any = None,
                 offset: int = 0, check_unique: bool = False) -> None:
        self.n, self.kind, self.offset = int(n), kind, int(offset)
        self._values = values
        self._loader = loader
        self._sorted: Optional[Tuple[np.ndarray, np.ndarray]] = None
        if check_unique and kind != "positions":
            self._sorted_ids()

    @classmethod
    def from_values(cls, ids: Any, n: int) -> "Ids":
        """Ids given by a user (anything :func:`ids_array` takes), uniqueness checked."""
        arr, default = ids_array(ids, n)
        if default:
            return cls(n, "positions")
        return cls(n, "str" if arr.dtype == object else "int", values=arr, check_unique=True)

    @property
    def default(self) -> bool:
        """True when the ids are the row positions."""
        return self.kind == "positions"

    def _raw(self) -> Any:
        if self._values is None and self._loader is not None:
            self._values = self._loader()
            self._loader = None
        return self._values

    def arrow(self) -> Any:
        """The ids as a pyarrow Array (string or int64), [n]."""
        import pyarrow as pa

        if self.kind == "positions":
            return pa.array(np.arange(self.offset, self.offset + self.n, dtype=np.int64))
        raw = self._raw()
        if isinstance(raw, (pa.Array, pa.ChunkedArray)):
            return raw.combine_chunks() if isinstance(raw, pa.ChunkedArray) else raw
        return pa.array(raw.tolist() if raw.dtype == object else raw,
                        type=pa.string() if self.kind == "str" else pa.int64())

    def array(self) -> np.ndarray:
        """The ids as numpy [n]: int64, or object (str)."""
        if self.kind == "positions":
            return np.arange(self.offset, self.offset + self.n, dtype=np.int64)
        raw = self._raw()
        if not isinstance(raw, np.ndarray):  # pyarrow: convert once and keep
            raw = (np.asarray(raw.to_pylist(), dtype=object) if self.kind == "str"
                   else raw.to_numpy(zero_copy_only=False).astype(np.int64))
            self._values = raw
        return raw

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Ids of local rows (any shape): int64 or object (str) numpy."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.kind == "positions":
            return rows + self.offset
        raw = self._raw()
        if isinstance(raw, np.ndarray):
            return raw[rows]
        flat = raw.take(rows.reshape(-1))
        out = (np.asarray(flat.to_pylist(), dtype=object) if self.kind == "str"
               else flat.to_numpy(zero_copy_only=False).astype(np.int64))
        return out.reshape(rows.shape)

    def slice(self, start: int, stop: int) -> "Ids":
        """The ids of rows [start, stop) (positions keep their global values)."""
        if self.kind == "positions":
            return Ids(stop - start, "positions", offset=self.offset + start)
        raw = self._raw()
        return Ids(stop - start, self.kind, values=raw[start:stop] if isinstance(raw, np.ndarray)
                   else raw.slice(start, stop - start))

    def _sorted_ids(self) -> Tuple[np.ndarray, np.ndarray]:
        if self._sorted is None:
            ids = self.array()
            order = np.argsort(ids, kind="stable")
            sorted_ids = ids[order]
            dup = _first_duplicate(sorted_ids)
            if dup is not None:
                raise ValueError(f"ids: duplicate id {dup!r}; ids must be unique")
            self._sorted = (order, sorted_ids)
        return self._sorted

    def lookup(self, target_ids: Any) -> Tuple[np.ndarray, np.ndarray]:
        """(int64 [Q] local row of each id, -1 where it is not here; the ids as an array).

        Raises ValueError only for ids of the wrong kind (str vs int): a sharded index calls it
        on every shard and decides globally which ids are missing."""
        if isinstance(target_ids, torch.Tensor):
            target_ids = target_ids.detach().cpu().numpy()
        elif type(target_ids).__module__.split(".")[0] == "pyarrow":
            target_ids = target_ids.to_pylist()
        elif P.array_kind(target_ids) == "cupy":
            target_ids = target_ids.get()
        if isinstance(target_ids, (str, bytes)) or not hasattr(target_ids, "__len__"):
            raise TypeError(f"target_ids: expected a sequence of ids, got {type(target_ids).__name__}")
        is_str = self.kind == "str"
        want = np.asarray(target_ids, dtype=object if is_str else None).ravel()
        if is_str:
            if want.size and not all(isinstance(v, str) for v in want):
                bad = next(v for v in want if not isinstance(v, str))
                raise ValueError(f"target_ids: id {bad!r} is not in the index (ids are str)")
        else:
            if want.size and want.dtype.kind not in "iu":
                bad = next((v for v in want.tolist()
                            if isinstance(v, bool) or not isinstance(v, (int, np.integer))), want[0])
                raise ValueError(f"target_ids: id {bad!r} is not in the index (ids are int)")
            want = want.astype(np.int64)
        if self.n == 0:
            return np.full(want.shape[0], -1, dtype=np.int64), want
        if self.kind == "positions":
            local = want - self.offset
            out = np.where((local >= 0) & (local < self.n), local, -1).astype(np.int64)
            return out, want
        order, sorted_ids = self._sorted_ids()
        pos = np.clip(np.searchsorted(sorted_ids, want), 0, self.n - 1)
        found = sorted_ids[pos] == want if want.size else np.zeros(0, bool)
        out = order[pos].astype(np.int64)
        out[~found] = -1
        return out, want


# ---------------------------------------------------------------------------------------------
# rows
# ---------------------------------------------------------------------------------------------


class Rows:
    """Validated candidate rows held as consecutive blocks, searched without re-validation.

    Blocks are torch tensors on one device: one in-memory tensor, or views of memory-mapped
    library files (float16 blocks are widened to the compute dtype a slice at a time). On the
    CPU the first search packs all rows once for the kernels (about ``N x D`` values of the
    compute dtype) and later searches reuse that copy; :meth:`release` frees it.

    Args:
        blocks: [n_b, D] tensors, in row order, all on one device.
        dtype: the compute dtype (float32 for float16 storage; otherwise the blocks' dtype).
        metric: the index's metric; rows are stored normalised for cosine.
    """

    def __init__(self, blocks: Sequence[torch.Tensor], *, dtype: torch.dtype, metric: str,
                 dim: Optional[int] = None) -> None:
        self.blocks = [b for b in blocks if b.shape[0]]
        self.dtype = dtype
        self.metric = metric
        self.n = int(sum(b.shape[0] for b in self.blocks))
        self.dim = int(dim if dim is not None else blocks[0].shape[1])
        self.device = self.blocks[0].device if self.blocks else torch.device("cpu")
        self._tensor: Optional[torch.Tensor] = None
        self._packed: Optional[P.PackedCandidates] = None

    @property
    def op_metric(self) -> str:
        """The metric the kernels run: rows (and queries) are already normalised for cosine, so
        the dot kernel gives the ops' cosine results bit for bit."""
        return "dot" if self.metric == "cosine" else self.metric

    def tensor(self) -> torch.Tensor:
        """All rows [n, D] in the compute dtype (a single block of that dtype is returned as
        is; otherwise the blocks are concatenated once and kept)."""
        if len(self.blocks) == 1 and self.blocks[0].dtype == self.dtype:
            return self.blocks[0]
        if self._tensor is None:
            if not self.blocks:
                self._tensor = torch.empty((0, self.dim), dtype=self.dtype, device=self.device)
            else:
                self._tensor = torch.cat([b.to(self.dtype) for b in self.blocks])
        return self._tensor

    def slice(self, start: int, stop: int) -> "Rows":
        """Rows [start, stop) as views of the same blocks (nothing is read or copied)."""
        out, row = [], 0
        for b in self.blocks:
            lo, hi = max(start, row), min(stop, row + b.shape[0])
            if hi > lo:
                out.append(b[lo - row:hi - row])
            row += b.shape[0]
        return Rows(out, dtype=self.dtype, metric=self.metric, dim=self.dim)

    def to(self, device: Union[str, torch.device, None]) -> "Rows":
        """The rows on ``device`` (one concatenated block there; this object when already
        there)."""
        if device is None or torch.device(device) == self.device:
            return self
        return Rows([self.tensor().to(device)], dtype=self.dtype, metric=self.metric, dim=self.dim)

    def packed(self, num_threads: int) -> Optional[P.PackedCandidates]:
        """The CPU-packed copy (made on first use, remade if the SIMD level changed); None where
        the kernels cannot read one (not on the CPU, a dtype other than float32 / float64, no
        extension, no rows)."""
        if (self.device.type != "cpu" or self.dtype not in (torch.float32, torch.float64)
                or self.n == 0):
            return None
        if self._packed is None or not self._packed.is_current():
            from molphenix import has_extension

            if not has_extension():
                return None
            self._packed = None  # free the stale copy first
            self._packed = P.PackedCandidates.from_blocks(
                self.blocks, self.n, self.dim, self.dtype,
                with_norms=self.metric == "arctan_l2", num_threads=num_threads)
        return self._packed

    def release(self) -> None:
        """Free the packed copy and any concatenated copy (remade when needed)."""
        self._packed = None
        self._tensor = None

    def _operands(self, which: str, nt: int) -> Tuple[Optional[torch.Tensor], Optional[P.PackedCandidates]]:
        packed = self.packed(nt) if which == "cpu" else None
        return (None if packed is not None else self.tensor()), packed

    def topk(self, q: torch.Tensor, k: int, which: str, nt: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Exactly :func:`molphenix.ops.topk_retrieve`'s (scores, indices) on these rows for
        prepared queries."""
        c, packed = self._operands(which, nt)
        return P.topk(q, c, k, metric=self.op_metric, which=which, num_threads=nt, packed=packed)

    def topk_keys(self, q: torch.Tensor, k: int, which: str, nt: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Local top-k keys and rows (:func:`molphenix.ops.prepared.topk_keys`)."""
        c, packed = self._operands(which, nt)
        return P.topk_keys(q, c, k, metric=self.op_metric, which=which, num_threads=nt,
                           packed=packed)

    def ranks(self, q: torch.Tensor, targets: torch.Tensor, target_scores: Optional[torch.Tensor],
              which: str, nt: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Exactly :func:`molphenix.ops.retrieval_ranks`'s (ranks, target keys) on these rows."""
        c, packed = self._operands(which, nt)
        return P.ranks(q, c, targets, target_scores=target_scores, metric=self.op_metric,
                       which=which, num_threads=nt, packed=packed)


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# library directories: writing
# ---------------------------------------------------------------------------------------------


def _storage_np(storage: str) -> np.dtype:
    if storage not in STORAGE_DTYPES:
        raise ValueError(f"storage: expected one of {STORAGE_DTYPES}, got {storage!r}")
    return np.dtype(storage).newbyteorder("<")


def write_shard(directory: Union[str, "os.PathLike[str]"], name: str, embeddings: Any, table: Any,
                *, metric: str, storage: str = "float32", normalized: bool = False) -> Dict[str, Any]:
    """Validate one block of rows and write it as a shard of a library directory, atomically.

    The rows are validated (finite; non-zero norms for cosine) and stored as the index stores
    them (normalised for cosine, exactly as :class:`molphenix.retrieval.Index` normalises), in
    ``storage`` precision. Both files go through a temporary file, fsync and rename, so a shard
    file is either absent or complete; the returned record (sizes and sha256) is what
    :func:`shard_complete` and :func:`finish_library` check.

    Args:
        directory: the library directory (created).
        name: shard name (file stem; letters, digits, ``-`` and ``_``).
        embeddings: [n, D] floating rows (n may be 0).
        table: pyarrow Table with an ``id`` column (str or int64) and any extra columns, n rows.
        metric: the library's metric.
        storage: ``"float32"`` (default), ``"float16"`` or ``"float64"``.
        normalized: the rows are already stored rows (only checked).

    Returns:
        The shard record: ``name, rows, embeddings, embeddings_bytes, embeddings_sha256, table,
        table_bytes, table_sha256``.

    Raises:
        ValueError / TypeError: invalid rows, a table of another length or without ``id``.
    """
    import pyarrow.parquet as pq

    directory = Path(directory)
    t = P.to_torch(embeddings, "embeddings")
    if t.dim() != 2:
        raise ValueError(f"embeddings: expected a 2-D array [n, D], got shape {tuple(t.shape)}")
    n = int(t.shape[0])
    if n:
        t = validate_rows(t, metric, normalized=normalized)
    if table.num_rows != n or "id" not in table.column_names:
        raise ValueError(f"table: expected {n} rows and an 'id' column, got {table.num_rows} rows, "
                         f"columns {table.column_names}")
    with np.errstate(over="ignore"):  # an overflow to inf is reported just below
        arr = t.cpu().numpy().astype(_storage_np(storage), copy=False)
    if storage == "float16" and n and not np.isfinite(arr).all():
        raise ValueError("embeddings: a value overflows float16 storage; store float32")
    (directory / "shards").mkdir(parents=True, exist_ok=True)
    emb_rel, tab_rel = f"shards/{name}.emb", f"shards/{name}.parquet"
    data = np.ascontiguousarray(arr).tobytes()
    atomic_write_bytes(directory / emb_rel, data)
    tab_path = directory / tab_rel
    atomic_write(tab_path, lambda f: pq.write_table(table, f, row_group_size=ROW_GROUP_ROWS))
    fsync_dir(directory / "shards")
    return {"name": name, "rows": n, "embeddings": emb_rel, "embeddings_bytes": len(data),
            "embeddings_sha256": hashlib.sha256(data).hexdigest(), "table": tab_rel,
            "table_bytes": tab_path.stat().st_size, "table_sha256": _sha256_file(tab_path)}


def shard_complete(directory: Union[str, "os.PathLike[str]"], record: Dict[str, Any], *,
                   checksum: bool = True) -> bool:
    """True when both files of a shard record exist with the recorded sizes (and sha256)."""
    directory = Path(directory)
    try:
        for key in ("embeddings", "table"):
            path = directory / record[key]
            if not path.is_file() or path.stat().st_size != int(record[f"{key}_bytes"]):
                return False
            if checksum and _sha256_file(path) != record[f"{key}_sha256"]:
                return False
    except (KeyError, TypeError, ValueError, OSError):
        return False
    return True


def _manifest_digest(manifest: Dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def finish_library(directory: Union[str, "os.PathLike[str]"], shards: Sequence[Dict[str, Any]], *,
                   dim: int, metric: str, dtype: str = "float32", storage: str = "float32",
                   id_kind: str, columns: Sequence[str] = ("id",), info: Optional[Dict[str, Any]] = None,
                   check_ids: bool = True) -> Dict[str, Any]:
    """Write ``manifest.json`` for shards already written (the last step: until it exists the
    directory is an unfinished library that nothing opens).

    Ids are checked unique across all shards (reading only the ``id`` columns, in Arrow).

    Args:
        directory: the library directory.
        shards: :func:`write_shard` records, in row order (empty shards are dropped).
        dim, metric: the rows' width and metric.
        dtype: the dtype searches compute in (float32 or float64).
        storage: the stored row dtype.
        id_kind: ``"str"``, ``"int"`` or ``"positions"`` (ids are the row positions).
        columns: the shards' table columns.
        info: provenance (JSON-serialisable) kept under ``"info"``.
        check_ids: check the ids' uniqueness.

    Returns:
        The manifest.

    Raises:
        ValueError: a duplicate id (named, with its two rows); no rows.
    """
    directory = Path(directory)
    shards = [dict(s) for s in shards if int(s["rows"])]
    n = sum(int(s["rows"]) for s in shards)
    if n == 0:
        raise ValueError("embeddings: the library has no rows")
    if check_ids and id_kind != "positions":
        _check_unique_ids(directory, shards)
    manifest = {"format": LIBRARY_FORMAT, "version": LIBRARY_VERSION, "n": n, "dim": int(dim),
                "metric": metric, "dtype": dtype, "storage": storage,
                "normalized": metric == "cosine", "ids": id_kind, "columns": list(columns),
                "shards": shards, "info": info or {}}
    manifest["manifest_sha256"] = _manifest_digest(manifest)
    atomic_write_bytes(directory / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    fsync_dir(directory)
    return manifest


def _check_unique_ids(directory: Path, shards: Sequence[Dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    ids = pa.chunked_array([pq.read_table(directory / s["table"], columns=["id"]).column("id")
                            .combine_chunks() for s in shards])
    if pc.count_distinct(ids).as_py() == len(ids):
        return
    counts = pc.value_counts(ids)
    dup = counts.filter(pc.greater(counts.field("counts"), 1))[0]["values"].as_py()
    rows = np.flatnonzero(pc.equal(ids, pa.scalar(dup, ids.type)).to_numpy(zero_copy_only=False))
    raise ValueError(f"ids: duplicate id {dup!r} (library rows {int(rows[0])} and {int(rows[1])}); "
                     "ids must be unique")


def save_library(directory: Union[str, "os.PathLike[str]"], rows: Rows, ids: Ids, *,
                 storage: Optional[str] = None, columns: Optional[Dict[str, Any]] = None,
                 info: Optional[Dict[str, Any]] = None, block_rows: int = _BLOCK_ROWS) -> Path:
    """Write validated rows and their ids as a library directory (:meth:`Index.save`).

    The directory must not hold a finished library already unless it is replaced: files are
    written under a temporary sibling directory and swapped in at the end.

    Args:
        directory: the library path (created; parents too).
        rows, ids: what an index holds.
        storage: stored dtype (default: float32, or float64 for a float64 index; bfloat16 rows
            are stored as float32, exactly).
        columns: extra columns (name -> [n] array / pyarrow Array) kept beside the ids.
        info: provenance kept in the manifest.
        block_rows: rows per shard.

    Returns:
        The directory.
    """
    import pyarrow as pa

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    dtype = rows.dtype
    compute = "float64" if dtype == torch.float64 else "float32"
    if storage is None:
        storage = compute
    _storage_np(storage)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        all_ids = ids.arrow()
        extra = {k: (v if isinstance(v, (pa.Array, pa.ChunkedArray)) else pa.array(
            v.tolist() if isinstance(v, np.ndarray) and v.dtype == object else v))
            for k, v in (columns or {}).items()}
        records, row = [], 0
        full = rows.tensor() if rows.device.type != "cpu" else None
        blocks = [full.cpu()] if full is not None else rows.blocks
        for b in blocks:
            for s in range(0, b.shape[0], block_rows):
                part = b[s:s + block_rows]
                m = part.shape[0]
                cols = {"id": all_ids.slice(row, m)}
                cols.update({k: v.slice(row, m) for k, v in extra.items()})
                if dtype == torch.bfloat16:
                    part = part.float()
                records.append(write_shard(tmp, f"b{len(records):06d}", part.to(
                    torch.float64 if storage == "float64" else torch.float32),
                    pa.table(cols), metric=rows.metric, storage=storage, normalized=True))
                row += m
        finish_library(tmp, records, dim=rows.dim, metric=rows.metric, dtype=compute if dtype in (
            torch.float32, torch.float64) else P.dtype_name(dtype), storage=storage,
            id_kind=ids.kind, columns=["id", *extra], info=info, check_ids=False)
        if directory.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".old", dir=directory.parent))
            os.replace(directory, old / "lib")
            os.replace(tmp, directory)
            _rmtree(old)
        else:
            os.replace(tmp, directory)
    except BaseException:
        _rmtree(tmp)
        raise
    return directory


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# library directories: reading
# ---------------------------------------------------------------------------------------------


def is_library(path: Union[str, "os.PathLike[str]"]) -> bool:
    """True for a directory (finished or not) rather than a Parquet file."""
    return Path(path).is_dir()


def read_manifest(path: Union[str, "os.PathLike[str]"]) -> Dict[str, Any]:
    """The manifest of a finished library directory, its own checksum verified.

    Raises:
        FileNotFoundError: no such directory. ValueError: an unfinished library (no manifest),
            a damaged or foreign manifest, a newer format version.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such library")
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise ValueError(f"{path}: not a finished molphenix library (no {MANIFEST}; an "
                         "interrupted embed-library run leaves this: rerun the same command to "
                         "finish it)")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{mpath}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != LIBRARY_FORMAT:
        raise ValueError(f"{mpath}: not a molphenix library manifest")
    if int(manifest.get("version", 0)) > LIBRARY_VERSION:
        raise ValueError(f"{path}: library format version {manifest['version']} is newer than "
                         f"this molphenix reads ({LIBRARY_VERSION}); upgrade molphenix")
    if manifest.get("manifest_sha256") != _manifest_digest(manifest):
        raise ValueError(f"{mpath}: checksum mismatch (the manifest was changed or damaged)")
    return manifest


def verify_library(path: Union[str, "os.PathLike[str]"]) -> Dict[str, Any]:
    """Check every shard file of a library against the manifest's sizes and sha256.

    Returns:
        The manifest.

    Raises:
        ValueError: a missing, truncated or changed shard file (named).
    """
    path = Path(path)
    manifest = read_manifest(path)
    for s in manifest["shards"]:
        if not shard_complete(path, s, checksum=True):
            raise ValueError(f"{path}: shard {s['name']} does not match the manifest (missing, "
                             "truncated or changed)")
    return manifest


def _open_block(path: Path, record: Dict[str, Any], dim: int, storage: str) -> torch.Tensor:
    f = path / record["embeddings"]
    try:
        size = f.stat().st_size
    except OSError:
        raise ValueError(f"{path}: shard file {record['embeddings']} is missing") from None
    if size != int(record["embeddings_bytes"]):
        raise ValueError(f"{path}: shard file {record['embeddings']} has {size} bytes, the manifest "
                         f"says {record['embeddings_bytes']} (truncated or replaced)")
    # Copy-on-write mapping: nothing is read until used, and torch gets a writable view without
    # a copy (the file itself is never written).
    arr = np.memmap(f, dtype=_storage_np(storage), mode="c", shape=(int(record["rows"]), dim))
    return torch.from_numpy(arr)


def _library_rows(path: Path, manifest: Dict[str, Any], start: int, stop: int
                  ) -> Tuple[List[torch.Tensor], List[Tuple[Dict[str, Any], int, int]]]:
    """Memory-mapped blocks of rows [start, stop) and (shard, lo, hi) of each."""
    blocks, parts, row = [], [], 0
    dim, storage = int(manifest["dim"]), manifest["storage"]
    for s in manifest["shards"]:
        m = int(s["rows"])
        lo, hi = max(start, row), min(stop, row + m)
        if hi > lo:
            blk = _open_block(path, s, dim, storage)
            blocks.append(blk[lo - row:hi - row])
            parts.append((s, lo - row, hi - row))
        row += m
    return blocks, parts


def read_columns(path: Union[str, "os.PathLike[str]"], names: Sequence[str], start: int = 0,
                 stop: Optional[int] = None) -> Any:
    """Columns of rows [start, stop) of a library directory or Parquet index file, as a pyarrow
    Table (only the shard tables / row groups that hold those rows are read).

    Raises:
        KeyError: a column the library does not have.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_dir():
        manifest = read_manifest(path)
        n = int(manifest["n"])
        stop = n if stop is None else stop
        positions = manifest["ids"] == "positions"
        have = [c for c in manifest.get("columns", ["id"]) if not (positions and c == "id")]
        for c in names:
            if c not in have and not (c == "id" and positions):
                raise KeyError(f"{path}: the library has no column {c!r} (columns: {', '.join(have)})")
        stored = [c for c in names if c in have]
        parts, row = [], 0
        for s in manifest["shards"]:
            m = int(s["rows"])
            lo, hi = max(start, row), min(stop, row + m)
            if hi > lo and stored:
                parts.append(pq.read_table(path / s["table"], columns=stored).slice(lo - row, hi - lo))
            row += m
        cols = {}
        if stored:
            t = pa.concat_tables(parts) if parts else None
            for c in stored:
                cols[c] = t.column(c) if t is not None else pa.array([])
        if "id" in names and positions:
            cols["id"] = pa.array(np.arange(start, max(start, stop), dtype=np.int64))
        return pa.table({c: cols[c] for c in names})
    schema = pq.read_schema(path)
    for c in names:
        if c not in schema.names:
            raise KeyError(f"{path}: the index file has no column {c!r} (columns: {', '.join(schema.names)})")
    n = pq.ParquetFile(path).metadata.num_rows
    stop = n if stop is None else stop
    return pq.read_table(path, columns=list(names)).slice(start, stop - start)


# ---------------------------------------------------------------------------------------------
# Parquet index files
# ---------------------------------------------------------------------------------------------


def _read_parquet_meta(path: Path) -> Dict[str, Any]:
    import pyarrow.parquet as pq

    if not path.exists():
        raise FileNotFoundError(f"{path}: no such index file")
    schema = pq.read_schema(path)
    raw = (schema.metadata or {}).get(_META_KEY)
    if raw is None or "embedding" not in schema.names or "id" not in schema.names:
        raise ValueError(f"{path}: not a molphenix index (no {_META_KEY.decode()!r} metadata "
                         "or missing id/embedding columns)")
    meta = json.loads(raw)
    if int(meta.get("version", 0)) > INDEX_FORMAT_VERSION:
        raise ValueError(f"{path}: index format version {meta['version']} is newer than this "
                         f"molphenix reads ({INDEX_FORMAT_VERSION}); upgrade molphenix")
    return meta


def _read_parquet_block(path: Path, start: int, stop: int, *, dim: int, read_ids: bool = True
                        ) -> Tuple[np.ndarray, Optional[np.ndarray], List[int]]:
    """Rows ``[start, stop)`` of a Parquet index file: (embeddings [n, dim] numpy in the stored
    dtype, ids or None, the row groups read). Reads only the row groups that overlap the rows, streamed in batches
    copied straight into the preallocated block: memory is the block plus one batch."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path, pre_buffer=False)
    groups: List[int] = []
    first = row0 = 0
    for g in range(pf.metadata.num_row_groups):
        m = pf.metadata.row_group(g).num_rows
        if stop > start and row0 < stop and row0 + m > start:
            if not groups:
                first = row0
            groups.append(g)
        row0 += m
    value_type = pf.schema_arrow.field("embedding").type.value_type
    emb = np.empty((stop - start, dim), dtype=value_type.to_pandas_dtype())
    id_parts: List[np.ndarray] = []
    id_type = pf.schema_arrow.field("id").type
    is_str = pa.types.is_string(id_type) or pa.types.is_large_string(id_type)
    pos = first
    if groups:
        columns = ["id", "embedding"] if read_ids else ["embedding"]
        for batch in pf.iter_batches(batch_size=65536, row_groups=groups, columns=columns):
            lo, hi = max(start, pos), min(stop, pos + batch.num_rows)
            if hi > lo:
                part = batch.slice(lo - pos, hi - lo)
                flat = part.column(columns.index("embedding")).flatten()
                emb[lo - start:hi - start] = flat.to_numpy(zero_copy_only=False).reshape(-1, dim)
                if read_ids:
                    col = part.column(0)
                    id_parts.append(np.asarray(col.to_pylist(), dtype=object) if is_str
                                    else col.to_numpy(zero_copy_only=False).astype(np.int64))
            pos += batch.num_rows
            if pos >= stop:
                break
    ids = None
    if read_ids:
        ids = (np.concatenate(id_parts) if id_parts
               else np.zeros(0, dtype=object if is_str else np.int64))
    del pf
    pa.default_memory_pool().release_unused()  # the allocator keeps freed batches otherwise
    return emb, ids, groups


def save_parquet(path: Union[str, "os.PathLike[str]"], rows: Rows, ids: Ids, *,
                 columns: Optional[Dict[str, Any]] = None) -> Path:
    """Write validated rows and ids as a Parquet index file, atomically (temp file + rename).

    Columns ``id`` (int64 or string) and ``embedding`` (``fixed_size_list<float32|float64|
    float16>[D]``; bfloat16 is stored as float32, exactly, and restored on load), then the extra
    ``columns``; the schema metadata key ``molphenix.index`` holds JSON ``{"version", "metric",
    "dtype", "dim", "normalized", "default_ids"}``. Row groups hold :data:`ROW_GROUP_ROWS` rows.

    Returns:
        The path written (parents are created).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    emb = rows.tensor().detach().cpu()
    arrow_dtype = _ARROW_FLOAT.get(emb.dtype)
    if arrow_dtype is None:  # bfloat16: exact in float32
        emb, arrow_dtype = emb.float(), "float32"
    flat = pa.array(emb.contiguous().numpy().reshape(-1))
    col = pa.FixedSizeListArray.from_arrays(flat, rows.dim)
    meta = {"version": INDEX_FORMAT_VERSION, "metric": rows.metric,
            "dtype": P.dtype_name(rows.dtype), "dim": rows.dim,
            "normalized": rows.metric == "cosine", "default_ids": ids.default}
    data = {"id": ids.arrow(), "embedding": col}
    for k, v in (columns or {}).items():
        data[k] = v if isinstance(v, (pa.Array, pa.ChunkedArray)) else pa.array(
            v.tolist() if isinstance(v, np.ndarray) and v.dtype == object else v)
    table = pa.table(data).replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
    return atomic_write(path, lambda f: pq.write_table(table, f, row_group_size=ROW_GROUP_ROWS))


# ---------------------------------------------------------------------------------------------
# opening either layout
# ---------------------------------------------------------------------------------------------


def open_index(path: Union[str, "os.PathLike[str]"], start: int = 0, stop: Optional[int] = None, *,
               device: Union[str, torch.device, None] = None, verify: bool = False,
               count_only: bool = False) -> Tuple[Rows, Ids, Dict[str, Any]]:
    """Rows [start, stop) of a library directory or a Parquet index file.

    A library is memory-mapped (nothing is read; ids load when first needed) and trusted (its
    manifest's checksum is checked, the shard sizes are checked; ``verify=True`` also hashes
    every shard). A Parquet file is read (only the row groups of the rows) and its rows are
    trusted as written by :func:`save_parquet`.

    Returns:
        ``(rows, ids, meta)``; ``meta`` holds ``n`` (all rows of the file), ``metric``,
        ``format`` (``"library"`` or ``"parquet"``) and, for a library, the manifest.

    Raises:
        FileNotFoundError: no such file or directory. ValueError: not a molphenix index or
            library, an unfinished library, a newer format, a damaged manifest or shard.
    """
    path = Path(path)
    if path.is_dir():
        manifest = verify_library(path) if verify else read_manifest(path)
        n = int(manifest["n"])
        stop = n if stop is None else stop
        meta = {"n": n, "metric": manifest["metric"], "format": "library", "manifest": manifest}
        if count_only:
            return None, None, meta  # type: ignore[return-value]
        blocks, parts = _library_rows(path, manifest, start, stop)
        dtype = getattr(torch, manifest["dtype"])
        rows = Rows(blocks, dtype=dtype, metric=manifest["metric"], dim=int(manifest["dim"]))
        if device is not None:
            rows = rows.to(device)
        kind = manifest["ids"]
        if kind == "positions":
            ids = Ids(stop - start, "positions", offset=start)
        else:
            def load(parts=parts):
                import pyarrow as pa
                import pyarrow.parquet as pq

                chunks = [pq.read_table(path / s["table"], columns=["id"]).column("id")
                          .combine_chunks().slice(lo, hi - lo) for s, lo, hi in parts]
                if not chunks:
                    return pa.array([], pa.string() if kind == "str" else pa.int64())
                return pa.chunked_array(chunks).combine_chunks()

            ids = Ids(stop - start, kind, loader=load)
        return rows, ids, meta
    meta = _read_parquet_meta(path)
    import pyarrow.parquet as pq

    n = int(pq.ParquetFile(path).metadata.num_rows)
    stop = n if stop is None else stop
    out = {"n": n, "metric": meta["metric"], "format": "parquet", "parquet": meta}
    if count_only:
        return None, None, out  # type: ignore[return-value]
    default_ids = bool(meta.get("default_ids", False))
    arr, ids_np, _ = _read_parquet_block(path, start, stop, dim=int(meta["dim"]), read_ids=not default_ids)
    emb = torch.from_numpy(arr)
    dtype = getattr(torch, meta["dtype"])
    if emb.dtype != dtype:  # bfloat16 is stored as float32
        emb = emb.to(dtype)
    if device is not None:
        emb = emb.to(device)
    metric = meta["metric"]
    if emb.shape[0]:  # a Parquet file carries no checksums: its rows are checked as they are read
        emb = validate_rows(emb, metric, normalized=bool(meta.get("normalized", False)))
    rows = Rows([emb], dtype=dtype, metric=metric, dim=int(meta["dim"]))
    if default_ids:
        ids = Ids(stop - start, "positions", offset=start)
    else:
        ids = Ids(stop - start, "str" if ids_np.dtype == object else "int", values=ids_np)
    return rows, ids, out


def iter_blocks(rows: Rows, block_rows: int) -> Iterable[torch.Tensor]:
    """The rows in slices of at most ``block_rows`` (views), in order."""
    for b in rows.blocks:
        for s in range(0, b.shape[0], block_rows):
            yield b[s:s + block_rows]
