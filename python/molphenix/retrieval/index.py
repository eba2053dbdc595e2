"""``Index``: exact nearest-candidate search over embeddings with ids, saved as Parquet.

A thin layer over :func:`molphenix.ops.topk_retrieve` and :func:`molphenix.ops.retrieval_ranks`:
the ops stream the candidates (never a ``Q x N`` score matrix), so a million candidates fit.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Tuple, Union

import numpy as np
import torch

from molphenix.ops import _common as C

__all__ = ["Index", "INDEX_FORMAT_VERSION"]

#: Version of the Parquet layout written by :meth:`Index.save`.
INDEX_FORMAT_VERSION = 1
_META_KEY = b"molphenix.index"
#: Rows per Parquet row group written by :meth:`Index.save`: a sharded reader
#: (``molphenix.distributed.ShardedIndex.load``) reads only the row groups of its rows.
ROW_GROUP_ROWS = 65536
_ARROW_FLOAT = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16"}


def _normalize(t: torch.Tensor) -> torch.Tensor:
    # The ops' own cosine normalisation (float32 work, float64 for float64, rounded back to the
    # input dtype); using the same function keeps Index results identical to ops(metric="cosine").
    from molphenix.ops.retrieval import _normalize as ops_normalize

    return ops_normalize(t)


def _check_zero_norm(t: torch.Tensor, name: str) -> None:
    work = t if t.dtype in (torch.float32, torch.float64) else t.float()
    zero = (torch.linalg.vector_norm(work, dim=1) == 0).nonzero()
    if zero.numel():
        raise ValueError(f"{name}: row {int(zero[0, 0])} has zero norm; cosine is undefined")


def _prepare_queries(queries: Any, dim: int, dtype: torch.dtype, device: torch.device,
                     metric: str) -> Tuple[torch.Tensor, str, Optional[torch.device]]:
    """(queries checked, cast to the index's dtype / device and normalised for cosine, their array
    kind, their device). Shared by :class:`Index` and ``molphenix.distributed.ShardedIndex``."""
    kind = C.array_kind(queries)
    q = C.to_torch(queries, "queries")
    if q.dim() != 2:
        raise ValueError(f"queries: expected a 2-D array [Q, {dim}], got shape "
                         f"{tuple(q.shape)}")
    if q.shape[1] != dim:
        raise ValueError(f"queries: expected {dim} columns (the index dim), got shape "
                         f"{tuple(q.shape)}")
    if not q.dtype.is_floating_point:
        raise TypeError(f"queries: expected a floating-point dtype, got {q.dtype}")
    back = q.device
    q = q.detach().to(device=device, dtype=dtype)
    C.check_finite(q, "queries")
    if metric == "cosine":
        _check_zero_norm(q, "queries")
        q = _normalize(q)
    return q, kind, back


def _ids_array(ids: Any, n: int) -> Tuple[np.ndarray, bool]:
    """(ids as int64 or object-str numpy [n], whether they are the default row positions)."""
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


class Index:
    """Exact retrieval index over candidate embeddings with ids.

    Args:
        embeddings: [N, D] floating candidate embeddings: numpy, torch (CPU or CUDA) or cupy.
            Kept on their device (numpy and cupy are viewed as torch without a copy). For
            ``metric="cosine"`` the rows are unit-normalised once here, exactly as the ops
            normalise them (one normalised copy is kept instead of the input).
        ids: [N] ids, one per row: str or int (a list, numpy array, torch tensor, pyarrow Array /
            ChunkedArray, or a pyarrow Table with one column or an ``id`` column). Default: the
            row positions ``0..N-1``. Must be unique.
        metric: ``"cosine"`` (default), ``"dot"`` or ``"arctan_l2"`` (as :mod:`molphenix.ops`).

    Candidates sharded across processes (``torchrun``): :class:`molphenix.distributed.ShardedIndex`,
    the same search / rank results.

    Shapes:
        embeddings: [N, D]; ids: [N]

    Raises:
        TypeError: non-floating embeddings, ids of mixed / unsupported types.
        ValueError: not 2-D, no rows, zero width, NaN/Inf, zero-norm rows under cosine, ids of
            the wrong length, duplicate or missing ids, unknown metric.
    """

    def __init__(self, embeddings: Any, ids: Any = None, *, metric: str = "cosine") -> None:
        self._init(embeddings, ids, metric, normalized=False)

    def _init(self, embeddings: Any, ids: Any, metric: str, *, normalized: bool) -> None:
        metric = C.check_metric(metric)
        t = C.to_torch(embeddings, "embeddings")
        C.check_float_matrix(t, "embeddings", allow_empty_rows=False)
        if metric == "cosine":
            _check_zero_norm(t, "embeddings")
            if not normalized:
                t = _normalize(t.detach())
        self._emb = t.detach().contiguous()
        self._metric = metric
        self._ids, self._default_ids = _ids_array(ids, t.shape[0])
        order = np.argsort(self._ids, kind="stable")
        sorted_ids = self._ids[order]
        dup = _first_duplicate(sorted_ids)
        if dup is not None:
            raise ValueError(f"ids: duplicate id {dup!r}; ids must be unique")
        self._order, self._sorted = order, sorted_ids

    # -- properties ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._emb.shape[0])

    @property
    def dim(self) -> int:
        """Embedding width D."""
        return int(self._emb.shape[1])

    @property
    def metric(self) -> str:
        """``"cosine"``, ``"dot"`` or ``"arctan_l2"``."""
        return self._metric

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the stored embeddings."""
        return self._emb.dtype

    @property
    def device(self) -> torch.device:
        """Device of the stored embeddings."""
        return self._emb.device

    @property
    def embeddings(self) -> torch.Tensor:
        """[N, D] stored rows as a torch tensor (unit-normalised for cosine)."""
        return self._emb

    @property
    def ids(self) -> np.ndarray:
        """[N] ids: int64, or object array of str."""
        return self._ids

    def __repr__(self) -> str:
        kind = "row positions" if self._default_ids else (
            "int" if self._ids.dtype.kind == "i" else "str")
        return (f"Index(n={len(self)}, dim={self.dim}, metric={self._metric!r}, "
                f"dtype={C.dtype_name(self.dtype)}, device={self.device}, ids={kind})")

    # -- queries ------------------------------------------------------------------------------

    def _queries(self, queries: Any) -> Tuple[torch.Tensor, str, Optional[torch.device]]:
        return _prepare_queries(queries, self.dim, self.dtype, self.device, self._metric)

    def _op_metric(self) -> str:
        # Rows (and queries) are already normalised exactly as the ops would: the dot kernel
        # then gives the ops' cosine results bit for bit, without renormalising N rows per call.
        return "dot" if self._metric == "cosine" else self._metric

    @staticmethod
    def _out(t: torch.Tensor, kind: str, device: Optional[torch.device]) -> Any:
        if kind in ("torch", "cupy"):  # back on the queries' device (cupy lives on a GPU)
            t = t.to(device)
        return t if kind == "torch" else C.from_torch(t, kind)

    def search(self, queries: Any, k: Optional[int] = None, *, fraction: Optional[float] = None,
               backend: str = "auto", num_threads: Optional[int] = None) -> Tuple[Any, np.ndarray]:
        """The k best candidates per query, best first (ties: lower row first), with their ids.

        Exactly the order and scores of :func:`molphenix.ops.topk_retrieve` on the index's
        embeddings. Queries are moved / cast to the index's device and dtype.

        Args:
            queries: [Q, D] query embeddings (numpy, torch or cupy).
            k: results per query, 1 <= k <= N (k > N is an error).
            fraction: instead of k, a fraction of the candidates (k = max(1, ceil(f N))).
            backend, num_threads: passed to the op.

        Returns:
            ``(scores [Q, k], ids [Q, k])``: scores as the queries' array kind (torch on the
            queries' device, numpy, or cupy), float32 (float64 for a float64 index; for
            ``arctan_l2`` the similarity ``1 - (4/pi) atan(d2 / 0.3)``); ids as a numpy array:
            int64 for integer ids (the default row positions), object (str) for string ids.

        Shapes:
            queries: [Q, D] -> scores [Q, k], ids [Q, k]

        Raises:
            ValueError: wrong shape / width, NaN/Inf or zero-norm (cosine) queries, both or
                neither of ``k`` and ``fraction``, k outside [1, N], fraction outside (0, 1].
            TypeError: non-floating queries, non-integer k.
        """
        from molphenix import ops

        if (k is None) == (fraction is None):
            raise ValueError("k/fraction: give exactly one of k or fraction")
        if k is not None:
            k = C.check_int(k, "k")
            if not 1 <= k <= len(self):
                raise ValueError(f"k: expected 1 <= k <= N = {len(self)} (the index size), got {k}")
        q, kind, back = self._queries(queries)
        scores, idx = ops.topk_retrieve(q, self._emb, k, fraction=fraction,
                                        metric=self._op_metric(), backend=backend,
                                        num_threads=num_threads)
        idx_np = idx.detach().cpu().numpy()
        ids = idx_np if self._default_ids else self._ids[idx_np]
        return self._out(scores, kind, back), ids

    def positions(self, target_ids: Any) -> np.ndarray:
        """Row positions of ids.

        Args:
            target_ids: [Q] ids (str or int, as given at construction).

        Returns:
            int64 [Q] row positions.

        Raises:
            ValueError: an id not in the index (named in the message).
        """
        pos, want = self._lookup(target_ids)
        missing = np.flatnonzero(pos < 0)
        if missing.size:
            raise ValueError(f"target_ids: id {want[int(missing[0])]!r} is not in the index")
        return pos

    def _lookup(self, target_ids: Any) -> Tuple[np.ndarray, np.ndarray]:
        """(int64 [Q] row positions, -1 where the id is not in this index; the ids as an array).

        Raises ValueError only for ids of the wrong kind (str vs int); a sharded index calls it
        on every shard and decides globally which ids are missing."""
        if isinstance(target_ids, torch.Tensor):
            target_ids = target_ids.detach().cpu().numpy()
        elif type(target_ids).__module__.split(".")[0] == "pyarrow":
            target_ids = target_ids.to_pylist()
        elif C.array_kind(target_ids) == "cupy":
            target_ids = target_ids.get()
        if isinstance(target_ids, (str, bytes)) or not hasattr(target_ids, "__len__"):
            raise TypeError(f"target_ids: expected a sequence of ids, got {type(target_ids).__name__}")
        want = np.asarray(target_ids, dtype=object if self._ids.dtype == object else None).ravel()
        if self._ids.dtype == object:
            if want.size and not all(isinstance(v, str) for v in want):
                bad = next(v for v in want if not isinstance(v, str))
                raise ValueError(f"target_ids: id {bad!r} is not in the index (ids are str)")
        else:
            if want.size and want.dtype.kind not in "iu":
                bad = next((v for v in want.tolist()
                            if isinstance(v, bool) or not isinstance(v, (int, np.integer))), want[0])
                raise ValueError(f"target_ids: id {bad!r} is not in the index (ids are int)")
            want = want.astype(np.int64)
        pos = np.searchsorted(self._sorted, want)
        pos = np.clip(pos, 0, len(self) - 1)
        found = self._sorted[pos] == want if want.size else np.zeros(0, bool)
        out = self._order[pos].astype(np.int64)
        out[~found] = -1
        return out, want

    def rank(self, queries: Any, target_ids: Any, *, backend: str = "auto",
             num_threads: Optional[int] = None) -> Any:
        """Rank of each query's target among all candidates (0 = best; ties count against it).

        Exactly :func:`molphenix.ops.retrieval_ranks` with the targets' row positions.

        Args:
            queries: [Q, D] query embeddings.
            target_ids: [Q] the id of each query's true candidate.
            backend, num_threads: passed to the op.

        Returns:
            int64 ranks [Q] as the queries' array kind (torch on the queries' device, numpy or
            cupy).

        Shapes:
            queries: [Q, D], target_ids: [Q] -> [Q]

        Raises:
            ValueError: unknown target id (named), length mismatch, bad queries (as
                :meth:`search`).
        """
        from molphenix import ops

        q, kind, back = self._queries(queries)
        pos = self.positions(target_ids)
        if pos.shape[0] != q.shape[0]:
            raise ValueError(f"target_ids: expected {q.shape[0]} ids (one per query), got "
                             f"{pos.shape[0]}")
        targets = torch.from_numpy(pos).to(self.device)
        ranks = ops.retrieval_ranks(q, self._emb, targets, metric=self._op_metric(),
                                    backend=backend, num_threads=num_threads)
        return self._out(ranks, kind, back)

    # -- persistence --------------------------------------------------------------------------

    def save(self, path: Union[str, "os.PathLike[str]"]) -> Path:
        """Write the index as Parquet, atomically (temp file + ``os.replace``).

        Columns ``id`` (int64 or string) and ``embedding`` (``fixed_size_list<float32|float64|
        float16>[D]``; bfloat16 is stored as float32, exactly, and restored on load); the schema
        metadata key ``molphenix.index`` holds JSON ``{"version", "metric", "dtype", "dim",
        "normalized", "default_ids"}``. The stored rows (normalised for cosine) are written, so
        :meth:`load` gives bit-identical search results. Row groups hold :data:`ROW_GROUP_ROWS`
        rows, so a sharded reader reads only its own rows.

        Returns:
            The path written (parents are created).
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        emb = self._emb.detach().cpu()
        arrow_dtype = _ARROW_FLOAT.get(emb.dtype)
        if arrow_dtype is None:  # bfloat16: exact in float32
            emb, arrow_dtype = emb.float(), "float32"
        flat = pa.array(emb.contiguous().numpy().reshape(-1))
        col = pa.FixedSizeListArray.from_arrays(flat, self.dim)
        ids = pa.array(self._ids.tolist(), type=pa.string()) if self._ids.dtype == object \
            else pa.array(self._ids, type=pa.int64())
        meta = {"version": INDEX_FORMAT_VERSION, "metric": self._metric,
                "dtype": C.dtype_name(self.dtype), "dim": self.dim,
                "normalized": self._metric == "cosine", "default_ids": self._default_ids}
        table = pa.table({"id": ids, "embedding": col})
        table = table.replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return path

    @classmethod
    def _from_rows(cls, emb: torch.Tensor, ids: Any, metric: str, *, normalized: bool) -> "Index":
        """An index over stored rows (already normalised for cosine when ``normalized``)."""
        self = cls.__new__(cls)
        self._init(emb, ids, metric, normalized=normalized)
        return self

    @classmethod
    def load(cls, path: Union[str, "os.PathLike[str]"], *,
             device: Union[str, torch.device, None] = None) -> "Index":
        """Read an index written by :meth:`save`.

        Args:
            path: the Parquet file.
            device: where to put the embeddings (default: CPU).

        Returns:
            The :class:`Index` (same ids, metric, dtype and stored rows).

        Raises:
            FileNotFoundError: no such file. ValueError: not a molphenix index file, or a newer
                format version.
        """
        path = Path(path)
        meta = _read_meta(path)
        emb, ids = _read_rows(path, meta, 0, _num_rows(path), device)
        return cls._from_rows(emb, ids, meta["metric"], normalized=bool(meta.get("normalized", False)))


def _read_meta(path: Path) -> dict:
    """The ``molphenix.index`` metadata of an index file, from its footer only (no rows read).

    Raises:
        FileNotFoundError: no such file. ValueError: not a molphenix index file, or a newer
            format version.
    """
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


def _num_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)


def _read_block(path: Path, start: int, stop: int, *, dim: int, read_ids: bool = True
                ) -> Tuple[np.ndarray, Optional[np.ndarray], List[int]]:
    """Rows ``[start, stop)`` of an index file: ``(embeddings [n, dim] numpy in the stored
    dtype, ids (int64 or object str; None when not read), the row groups read)``.

    Reads only the row groups that overlap the rows, streamed in batches; each batch's slice is
    copied straight into the preallocated ``[n, dim]`` array (Arrow's buffers are viewed, not
    concatenated), so memory is the block plus one batch, never the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    # pre_buffer=False: read column chunks as the batches need them, not every requested row
    # group up front (that would hold the block's file bytes besides the decoded block).
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


def _read_rows(path: Path, meta: dict, start: int, stop: int,
               device: Union[str, torch.device, None]) -> Tuple[torch.Tensor, Optional[np.ndarray]]:
    """Rows ``[start, stop)`` of an index file as (embeddings [n, D] in the index dtype on
    ``device``, ids; None for default ids)."""
    default_ids = bool(meta.get("default_ids", False))
    arr, ids, _ = _read_block(path, start, stop, dim=int(meta["dim"]), read_ids=not default_ids)
    emb = torch.from_numpy(arr)
    dtype = getattr(torch, meta["dtype"])
    if emb.dtype != dtype:  # bfloat16 is stored as float32
        emb = emb.to(dtype)
    if device is not None:
        emb = emb.to(device)
    return emb, ids
