"""Retrieval over candidates sharded across ranks: :class:`ShardedIndex` and :func:`sharded_ranks`.

Layout: every rank holds one contiguous block of the candidates, in rank order (rank 0 the first
rows, rank 1 the next, ...; blocks may be uneven, some may be empty, not all). The *global
order* of the candidates is the concatenation of the blocks in rank order, so a sharded index
answers exactly as :class:`molphenix.retrieval.Index` over the concatenated rows.

Queries: every rank passes the SAME queries (and the same ``k`` / ``fraction`` / target ids);
every rank gets the same, global, answer. The shapes and ``k`` are checked across ranks (one
small all-gather); the values are not (that would cost a pass over the queries).

Rank of the true candidate (``rank``): the rank holding a query's target computes the
target's key with :func:`molphenix.ops.retrieval_ranks` (``return_target_scores=True``) and
its own count; the keys are shared (one all-reduce of ``Q`` float64, plus the owner counts);
every other rank counts its candidates scoring at least that key
(``targets = -1``, ``target_scores=``); the counts are additive and all-reduced (``Q`` int64).
Communication: ``O(Q)`` per call, independent of the number of candidates.

Top-k (``search``): each rank takes its exact local top-``min(k, n_rank)`` with its global
positions, the lists are all-gathered (``Q x k`` keys and positions per rank) and merged by
(key descending, global position ascending): exactly the order of
:func:`molphenix.ops.topk_retrieve` on the concatenated candidates, ties included. For
``arctan_l2`` the merge uses the kernel's squared distances, not the saturating similarity.
Queries are processed in chunks so the gathered lists stay bounded.

Exactness: the compiled CPU kernels compute every score as one fma chain per (query, candidate)
pair (``csrc/cpu/gemm.h``), independent of where the candidate sits, so sharded results equal
the single-process ones bit for bit (ranks, ids and scores). The pure-torch reference backend
(``backend="reference"``, float16/bfloat16 on the CPU) uses torch matrix products whose last
bits can depend on the shapes; there a sharded result can differ where scores differ in the
last bit.

Errors: input errors are raised on every rank alike (the checks run on data every rank has,
or on gathered flags), so a bad call never leaves some ranks waiting in a collective. A rank
that dies makes the others' next collective fail after the process group's timeout
(:func:`molphenix.distributed.init_from_env`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist

from molphenix.distributed._group import is_initialized
from molphenix.ops import prepared as P
from molphenix.retrieval import Index
from molphenix.retrieval import storage as S

__all__ = ["ShardedIndex", "sharded_ranks", "shard_range"]

_METRIC_CODE = {"cosine": 0, "dot": 1, "arctan_l2": 2}
_DTYPE_CODE = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
_ID_KIND = {"positions": 0, "int": 1, "str": 2}
#: Gathered top-k entries per chunk of queries (keys + positions): bounds the merge's memory.
_MERGE_BUDGET = 1 << 22


# ---------------------------------------------------------------------------------------------
# process-group plumbing
# ---------------------------------------------------------------------------------------------


def _world(group: Optional[dist.ProcessGroup]) -> Tuple[int, int]:
    """(rank, world size) in ``group``; (0, 1) without a process group."""
    if not is_initialized():
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _comm_device(group: Optional[dist.ProcessGroup]) -> torch.device:
    """Where collective buffers live: the current CUDA device for NCCL, else the CPU (gloo)."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _gather_ints(values: Sequence[int], group: Optional[dist.ProcessGroup]) -> np.ndarray:
    """All-gather a short int64 vector: ``[world, len(values)]`` on every rank."""
    dev = _comm_device(group)
    t = torch.tensor([int(v) for v in values], dtype=torch.int64, device=dev)
    out = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, t, group=group)
    return torch.stack(out).cpu().numpy()


def _agree(error: Optional[BaseException], group: Optional[dist.ProcessGroup],
           values: Sequence[int] = ()) -> np.ndarray:
    """Gather ``[failed, *values]`` from every rank; if any rank failed, raise on every rank
    (the failing rank its own error, the others a ValueError naming it). Returns the values."""
    rows = _gather_ints([int(error is not None), *([0] * len(values) if error else values)], group)
    failed = np.flatnonzero(rows[:, 0])
    if failed.size:
        if error is not None:
            raise error
        raise ValueError(f"rank {int(failed[0])} rejected its input (see the error on that rank)")
    return rows[:, 1:]


def _same_on_all(rows: np.ndarray, col: int, what: str) -> int:
    vals = rows[:, col]
    if np.any(vals != vals[0]):
        raise ValueError(f"{what}: every rank must pass the same value; got {vals.tolist()} "
                         "(rank 0, 1, ...)")
    return int(vals[0])


def shard_range(n: int, rank: Optional[int] = None, world_size: Optional[int] = None, *,
                group: Optional[dist.ProcessGroup] = None) -> Tuple[int, int]:
    """Rows ``[start, stop)`` of rank ``rank``'s contiguous block of ``n`` rows.

    Blocks differ in size by at most one row, larger first (``numpy.array_split``'s split);
    some are empty when ``n < world_size``.

    Args:
        n: number of rows (>= 0).
        rank, world_size: default: this process's rank and world size in ``group`` (0 and 1
            without a process group).

    Returns:
        ``(start, stop)``.
    """
    n = P.check_int(n, "n")
    if n < 0:
        raise ValueError(f"n: expected >= 0, got {n}")
    r, w = _world(group)
    rank = r if rank is None else P.check_int(rank, "rank")
    world_size = w if world_size is None else P.check_int(world_size, "world_size")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank: expected 0 <= rank < world_size = {world_size}, got {rank}")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


# ---------------------------------------------------------------------------------------------
# rank counting over shards
# ---------------------------------------------------------------------------------------------


def _sharded_counts(q: torch.Tensor, rows: Optional[S.Rows], local_t: torch.Tensor,
                    group: Optional[dist.ProcessGroup], which: str, nt: int,
                    name_of) -> torch.Tensor:
    """Global ranks [Q] (int64, on q's device) from this rank's validated rows (None or empty
    on a rank without candidates) and ``local_t`` [Q]: the target's row in them, or -1 when it
    lives on another rank. ``q``: prepared queries (normalised for cosine).

    Every query's target must live on exactly one rank; ``name_of(i)`` names query i's target
    in the error otherwise."""
    nq = q.shape[0]
    rows_info = _gather_ints([nq, q.shape[1]], group)
    _same_on_all(rows_info, 0, "queries (number of rows)")
    _same_on_all(rows_info, 1, "queries (number of columns)")
    dev = _comm_device(group)
    own = local_t >= 0
    keys = torch.zeros(nq, dtype=torch.float64, device=q.device)
    counts = torch.zeros(nq, dtype=torch.int64, device=q.device)
    mine = own.nonzero().squeeze(1)
    if mine.numel():
        r_own, k_own = rows.ranks(q[mine], local_t[mine], None, which, nt)
        counts[mine] = r_own
        keys[mine] = k_own.to(torch.float64)
    # One all-reduce for the target keys and the owner counts (exactly one owner adds its key
    # to zeros, which is exact).
    buf = torch.cat([keys, own.to(torch.float64)]).to(dev)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
    buf = buf.to(q.device)
    keys, owners = buf[:nq], buf[nq:]
    bad = (owners != 1).nonzero()
    if bad.numel():
        i = int(bad[0, 0])
        if float(owners[i]) == 0:
            raise ValueError(f"target_ids: {name_of(i)} is not in the index (on no rank)")
        raise ValueError(f"target_ids: {name_of(i)} is on {int(owners[i])} ranks; ids must be "
                         "unique across the shards")
    others = (~own).nonzero().squeeze(1)
    if others.numel() and rows is not None and rows.n:
        counts[others], _ = rows.ranks(
            q[others], torch.full((others.numel(),), -1, dtype=torch.int64, device=q.device),
            keys[others], which, nt)
    counts = counts.to(dev)
    dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=group)
    return counts.to(q.device)


def sharded_ranks(queries: Any, candidates: Any, targets: Any, *, metric: str = "cosine",
                  group: Optional[dist.ProcessGroup] = None, backend: str = "auto",
                  num_threads: Optional[int] = None) -> Any:
    """:func:`molphenix.ops.retrieval_ranks` over candidates sharded across ranks.

    Every rank passes the same queries and global targets, and its own contiguous block of the
    candidates (blocks in rank order; see the module docstring). Every rank gets the global
    ranks, equal to ``retrieval_ranks(queries, concatenated_candidates, targets)``. Without a
    process group (or with one rank) it is ``retrieval_ranks``.

    Args:
        queries: [Q, D] query embeddings (torch, numpy or cupy), the same on every rank.
        candidates: [n_rank, D] this rank's block (n_rank may be 0 on some ranks).
        targets: [Q] int indices into the concatenated candidates (global positions).
        metric, backend, num_threads: as :func:`molphenix.ops.retrieval_ranks`.
        group: the process group (default: the default group).

    Returns:
        int64 ranks [Q] as the queries' array kind.

    Shapes:
        queries: [Q, D], candidates: [n_rank, D], targets: [Q] -> [Q]

    Raises:
        ValueError / TypeError: as ``retrieval_ranks`` (raised on every rank alike for the
            shapes, the metric and out-of-range targets).
    """
    from molphenix import ops

    rank, w = _world(group)
    if w == 1:
        return ops.retrieval_ranks(queries, candidates, targets, metric=metric, backend=backend,
                                   num_threads=num_threads)
    kind = P.result_kind(queries, candidates)
    metric = P.check_metric(metric)
    err: Optional[BaseException] = None
    rows = None
    try:
        q = P.to_torch(queries, "queries")
        c = P.to_torch(candidates, "candidates")
        P.check_float_matrix(q, "queries")
        P.check_float_matrix(c, "candidates")
        P.check_same_dtype(q, "queries", c, "candidates")
        if c.shape[1] != q.shape[1]:
            raise ValueError(f"candidates: expected {q.shape[1]} columns (the queries' width), "
                             f"got shape {tuple(c.shape)}")
        t = P.to_torch(targets, "targets")
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise TypeError(f"targets: expected an integer dtype, got {t.dtype}")
        if t.dim() != 1 or t.shape[0] != q.shape[0]:
            raise ValueError(f"targets: expected shape [{q.shape[0]}] (one per query), got "
                             f"{tuple(t.shape)}")
        if metric == "cosine":
            P.check_zero_norm(q, "queries")
            q = P.normalize_rows(q.detach())
        if c.shape[0]:
            rows = S.Rows([S.validate_rows(c, metric)], dtype=c.dtype, metric=metric)
    except (TypeError, ValueError) as e:
        err = e
    sizes = _agree(err, group, [c.shape[0] if err is None else 0])[:, 0]
    n = int(sizes.sum())
    if n == 0:
        raise ValueError("candidates: the candidate set is empty (0 rows on every rank)")
    start = int(sizes[:rank].sum())
    stop = start + int(sizes[rank])
    t = t.to(device=q.device, dtype=torch.int64)
    if t.numel():
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= n:
            bad = int(((t < 0) | (t >= n)).nonzero()[0, 0])
            raise ValueError(f"targets: entry {bad} is {int(t[bad])}; expected an index in "
                             f"[0, {n}) (the concatenated candidates)")
    local = torch.where((t >= start) & (t < stop), t - start, torch.full_like(t, -1))
    which = P.resolve_backend("retrieval_ranks", backend, q.device, q.dtype)
    ranks = _sharded_counts(q, rows, local, group, which, P.resolve_threads(num_threads),
                            lambda i: f"target {int(t[i])}")
    return P.from_torch(ranks, kind)


# ---------------------------------------------------------------------------------------------
# top-k over shards
# ---------------------------------------------------------------------------------------------


def _merge(keys: torch.Tensor, pos: torch.Tensor, k: int, group: Optional[dist.ProcessGroup]
           ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All-gather every rank's [Q, k] (keys, global positions) and keep the global top k.

    Returns (keys [Q, k], positions [Q, k], columns [Q, k] into the rank-order concatenation
    of the gathered lists, to pick other per-entry values the same way)."""
    dev = _comm_device(group)
    w = dist.get_world_size(group)
    kd, pd = keys.to(dev).contiguous(), pos.to(dev).contiguous()
    ks = [torch.empty_like(kd) for _ in range(w)]
    ps = [torch.empty_like(pd) for _ in range(w)]
    dist.all_gather(ks, kd, group=group)
    dist.all_gather(ps, pd, group=group)
    allk = torch.cat(ks, dim=1).to(keys.device)
    allp = torch.cat(ps, dim=1).to(keys.device)
    # Global position ascending first, then a stable sort on the key (descending): ties keep the
    # lower position first, as topk_retrieve breaks them.
    o1 = torch.argsort(allp, dim=1, stable=True)
    k1 = allk.gather(1, o1)
    o2 = torch.sort(k1, dim=1, descending=True, stable=True).indices[:, :k]
    cols = o1.gather(1, o2)
    return allk.gather(1, cols), allp.gather(1, cols), cols


# ---------------------------------------------------------------------------------------------
# the index
# ---------------------------------------------------------------------------------------------


class ShardedIndex:
    """An :class:`molphenix.retrieval.Index` whose candidates are sharded across ranks.

    Each rank holds a contiguous block of the candidates; the global order is the blocks'
    concatenation in rank order. :meth:`search` and :meth:`rank` take the same arguments as
    ``Index``'s, must be called by every rank with the same queries, and return on every rank
    exactly what ``Index`` over the concatenated rows returns (ranks, ids, and scores bit for bit
    on the compiled backends). Without a process group (or with one rank) it is an ``Index``.
    Each rank's block is held in the same storage as ``Index``'s
    (:mod:`molphenix.retrieval.storage`): validated once, searched without re-checks.

    Args:
        embeddings: [n_rank, D] this rank's candidate rows (n_rank may be 0 on some ranks).
        ids: [n_rank] this rank's ids (str or int, unique across all ranks), or None on every
            rank: the ids are then the global row positions, as ``Index``'s default. Uniqueness
            is checked within a rank here; across ranks :meth:`rank` reports a target id found
            on several ranks (checking every id would gather them all).
        metric: ``"cosine"`` (default), ``"dot"`` or ``"arctan_l2"``; the same on every rank.
        group: the process group (default: the default group).

    Constructors for the usual layouts: :meth:`from_full` (every rank has all rows and keeps
    its block), :meth:`from_index` (shard an ``Index``), :meth:`load` (each rank opens only its
    rows of a library directory or an ``Index.save`` Parquet file).

    Shapes:
        embeddings: [n_rank, D]; ids: [n_rank]

    Raises:
        TypeError / ValueError: as ``Index``, on every rank (a rank's bad shard is reported on
            the others as "rank r rejected its input"); different widths, dtypes or metrics on
            different ranks; ids on some ranks but not others; an empty candidate set.
    """

    def __init__(self, embeddings: Any, ids: Any = None, *, metric: str = "cosine",
                 group: Optional[dist.ProcessGroup] = None) -> None:
        self._group = group
        self._rank, self._world = _world(group)
        err: Optional[BaseException] = None
        rows = id_store = None
        shape: Tuple[int, int] = (0, 0)
        dtype = torch.float32
        device = torch.device("cpu")
        try:
            metric = P.check_metric(metric)
            t = P.to_torch(embeddings, "embeddings")
            if t.dim() != 2:
                raise ValueError(f"embeddings: expected a 2-D array [n, D], got shape {tuple(t.shape)}")
            if not t.dtype.is_floating_point or t.dtype not in _DTYPE_CODE:
                raise TypeError(f"embeddings: expected a floating-point dtype, got {t.dtype}")
            shape, dtype, device = (int(t.shape[0]), int(t.shape[1])), t.dtype, t.device
            if shape[0] or self._world == 1:
                v = S.validate_rows(t, metric)
                rows = S.Rows([v], dtype=v.dtype, metric=metric)
            if ids is not None:
                id_store = S.Ids.from_values(ids, shape[0])
        except (TypeError, ValueError) as e:
            if self._world == 1:
                raise
            err = e
        self._build(rows, id_store, metric if err is None else "cosine", shape, dtype, device,
                    err=err, ids_given=ids is not None)

    def _build(self, rows: Optional[S.Rows], ids: Optional[S.Ids], metric: str,
               shape: Tuple[int, int], dtype: torch.dtype, device: torch.device, *,
               err: Optional[BaseException] = None, ids_given: bool,
               path: Optional[Path] = None) -> None:
        """Agree on the blocks across ranks (sizes, width, dtype, metric, id kind) and keep
        this rank's validated ``rows`` / ``ids`` (ids None: the global positions)."""
        self._group = getattr(self, "_group", None)
        self._path = path
        if not hasattr(self, "_rank"):
            self._rank, self._world = _world(self._group)
        n, dim = shape
        if self._world == 1:
            ids = ids if ids is not None else S.Ids(n, "positions")
            local = Index.from_storage(rows, ids, path=path)
            self._set(local, 0, np.asarray([n]), ids.kind)
            return
        kind = -1
        if err is None:
            if not ids_given or ids is None or ids.kind == "positions":
                kind = _ID_KIND["positions"] if not ids_given else _ID_KIND.get(
                    ids.kind if ids is not None else "positions")
            else:
                kind = _ID_KIND[ids.kind]
            if ids_given and n == 0:
                kind = -2  # empty: any kind
        info = _agree(err, self._group, [n, dim, _DTYPE_CODE.get(dtype, 0), kind,
                                         _METRIC_CODE[metric]])
        sizes = info[:, 0]
        _same_on_all(info, 1, "embeddings (number of columns)")
        _same_on_all(info, 2, "embeddings (dtype)")
        _same_on_all(info, 4, "metric")
        kinds = {int(v) for v in info[:, 3]} - {-2}
        if len(kinds) > 1:
            if _ID_KIND["positions"] in kinds:
                raise ValueError("ids: given on some ranks and not on others; pass each rank's "
                                 "ids, or None on every rank")
            raise ValueError("ids: str on some ranks and int on others")
        if int(sizes.sum()) == 0:
            raise ValueError("embeddings: the candidate set is empty (0 rows on every rank)")
        offset = int(sizes[:self._rank].sum())
        id_kind = {v: k for k, v in _ID_KIND.items()}[kinds.pop()] if kinds else "int"
        local = None
        if n:
            if ids is None or ids.kind == "positions":
                ids = S.Ids(n, "positions", offset=offset)
            local = Index.from_storage(rows, ids, path=path)
        self._set(local, offset, sizes, id_kind, metric=metric, dim=dim, dtype=dtype, device=device)

    def _set(self, local, offset: int, sizes: np.ndarray, id_kind: str, *, metric: str = "",
             dim: int = 0, dtype: Optional[torch.dtype] = None,
             device: Optional[torch.device] = None) -> None:
        self._local = local
        self._offset = int(offset)
        self._sizes = np.asarray(sizes, dtype=np.int64)
        self._n = int(self._sizes.sum())
        self._id_kind = id_kind
        self._metric = local.metric if local is not None else metric
        self._dim = local.dim if local is not None else dim
        self._dtype = local.dtype if local is not None else dtype
        self._device = local.device if local is not None else device

    # -- constructors -------------------------------------------------------------------------

    @classmethod
    def from_full(cls, embeddings: Any, ids: Any = None, *, metric: str = "cosine",
                  group: Optional[dist.ProcessGroup] = None) -> "ShardedIndex":
        """Every rank passes all N rows (and ids); each keeps its block :func:`shard_range`.

        Returns the sharded index; equal in results to ``Index(embeddings, ids, metric=...)``.
        """
        t = P.to_torch(embeddings, "embeddings")
        if t.dim() != 2:
            raise ValueError(f"embeddings: expected a 2-D array [N, D], got shape {tuple(t.shape)}")
        start, stop = shard_range(int(t.shape[0]), group=group)
        local_ids = None
        if ids is not None:
            arr, _ = S.ids_array(ids, int(t.shape[0]))
            local_ids = arr[start:stop]
        return cls(t[start:stop], local_ids, metric=metric, group=group)

    @classmethod
    def from_index(cls, index: Any, *, group: Optional[dist.ProcessGroup] = None) -> "ShardedIndex":
        """Shard an :class:`molphenix.retrieval.Index` that every rank holds (its stored rows,
        ids and metric); each rank keeps its block :func:`shard_range` (views: nothing is
        copied or re-validated)."""
        start, stop = shard_range(len(index), group=group)
        self = cls.__new__(cls)
        self._group = group
        self._rank, self._world = _world(group)
        ids = index.id_store.slice(start, stop)
        self._build(index.storage.slice(start, stop), ids, index.metric, (stop - start, index.dim),
                    index.dtype, index.device, ids_given=not index.default_ids, path=index.path)
        return self

    @classmethod
    def load(cls, path: Union[str, "Path"], *, group: Optional[dist.ProcessGroup] = None,
             device: Union[str, torch.device, None] = None) -> "ShardedIndex":
        """Open this rank's block of a library directory (``molphenix embed-library``,
        :meth:`molphenix.retrieval.Index.save`) or of an ``Index.save`` Parquet file.

        A library directory is memory-mapped: each rank maps only the shard files of its rows
        (:func:`shard_range` of the manifest's N) and reads their ids when needed. A Parquet
        file is read row group by row group: only the groups that overlap this rank's rows,
        streamed and sliced, so a rank's memory follows its block, not the file.

        Args:
            path: the library directory or Parquet file.
            group: the process group (default: the default group).
            device: where to put this rank's rows (default: CPU).

        Raises:
            FileNotFoundError / ValueError: as :meth:`molphenix.retrieval.Index.load`.
        """
        path = Path(path)
        _, _, meta = S.open_index(path, count_only=True)
        start, stop = shard_range(int(meta["n"]), group=group)
        rows, ids, meta = S.open_index(path, start, stop, device=device)
        self = cls.__new__(cls)
        self._group = group
        self._rank, self._world = _world(group)
        self._build(rows if rows.n else None, ids, meta["metric"], (rows.n, rows.dim), rows.dtype,
                    rows.device, ids_given=not ids.default, path=path)
        if ids.default:
            self._id_kind = "positions"
        return self

    # -- properties ---------------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of candidates on all ranks together (N)."""
        return self._n

    @property
    def path(self) -> Optional[Path]:
        """The library directory or Parquet file it was loaded from (None otherwise)."""
        return getattr(self, "_path", None)

    def column(self, name: str) -> Any:
        """A column of the library it was loaded from, for all N rows of every rank, as a
        pyarrow Array (read on each call; ``"id"``, and the molecule columns an
        ``embed-library`` library keeps).

        Raises:
            KeyError: no such column, or not loaded from a file.
        """
        if self.path is None:
            raise KeyError(f"{name!r}: a ShardedIndex built in memory has no stored columns")
        return S.read_columns(self.path, [name]).column(name).combine_chunks()

    @property
    def local(self) -> Any:
        """This rank's block as an :class:`molphenix.retrieval.Index` (None when empty)."""
        return self._local

    @property
    def offset(self) -> int:
        """Global position of this rank's first row."""
        return self._offset

    @property
    def sizes(self) -> np.ndarray:
        """[world] rows per rank, in rank order."""
        return self._sizes.copy()

    @property
    def dim(self) -> int:
        """Embedding width D."""
        return self._dim

    @property
    def metric(self) -> str:
        """``"cosine"``, ``"dot"`` or ``"arctan_l2"``."""
        return self._metric

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the stored embeddings."""
        return self._dtype

    @property
    def device(self) -> torch.device:
        """Device of this rank's stored embeddings."""
        return self._device

    def __repr__(self) -> str:
        return (f"ShardedIndex(n={self._n}, ranks={self._sizes.size}, local=[{self._offset}, "
                f"{self._offset + int(self._sizes[self._rank])}), dim={self._dim}, "
                f"metric={self._metric!r}, dtype={P.dtype_name(self._dtype)}, ids={self._id_kind})")

    # -- queries ------------------------------------------------------------------------------

    def _rows(self) -> Optional[S.Rows]:
        return self._local.storage if self._local is not None else None

    def _op_metric(self) -> str:
        return "dot" if self._metric == "cosine" else self._metric

    def search_rows(self, queries: Any, k: Optional[int] = None, *, fraction: Optional[float] = None,
                    backend: str = "auto", num_threads: Optional[int] = None) -> Tuple[Any, np.ndarray]:
        """As :meth:`search`, but the results' global row positions (int64 numpy [Q, k])
        instead of their ids (as :meth:`molphenix.retrieval.Index.search_rows`)."""
        return self._search(queries, k, fraction, backend, num_threads, positions=True)

    def search(self, queries: Any, k: Optional[int] = None, *, fraction: Optional[float] = None,
               backend: str = "auto", num_threads: Optional[int] = None) -> Tuple[Any, np.ndarray]:
        """The k best candidates of all ranks per query, best first (ties: lower global position).

        Same arguments and results as :meth:`molphenix.retrieval.Index.search` over the
        concatenated rows (``k`` / ``fraction`` refer to the global N). Every rank must call it
        with the same queries and k / fraction, and gets the same result.

        Shapes:
            queries: [Q, D] -> scores [Q, k], ids [Q, k]

        Raises:
            ValueError / TypeError: as ``Index.search``; different query shapes or k on
                different ranks.
        """
        return self._search(queries, k, fraction, backend, num_threads, positions=False)

    def _search(self, queries: Any, k: Optional[int], fraction: Optional[float], backend: str,
                num_threads: Optional[int], *, positions: bool) -> Tuple[Any, np.ndarray]:
        if self._world == 1:
            fn = self._local.search_rows if positions else self._local.search
            return fn(queries, k, fraction=fraction, backend=backend, num_threads=num_threads)
        err: Optional[BaseException] = None
        try:  # checked on every rank, then agreed: a rank's bad input never strands the others
            if (k is None) == (fraction is None):
                raise ValueError("k/fraction: give exactly one of k or fraction")
            if k is not None:
                k = P.check_int(k, "k")
                if not 1 <= k <= self._n:
                    raise ValueError(f"k: expected 1 <= k <= N = {self._n} (the index size), "
                                     f"got {k}")
            else:
                k = P.fraction_to_k(fraction, self._n)
            q, kind, back = S.prepare_queries(queries, self._dim, self._dtype, self._device,
                                              self._metric)
        except (TypeError, ValueError) as e:
            err = e
        rows = _agree(err, self._group, [0, 0] if err else [q.shape[0], k])
        _same_on_all(rows, 0, "queries (number of rows)")
        _same_on_all(rows, 1, "k")
        nq = q.shape[0]
        local_rows = self._rows()
        kl = min(k, local_rows.n if local_rows is not None else 0)
        metric = self._op_metric()
        nt = P.resolve_threads(num_threads)
        # The same on every rank (a rank with an empty block runs no kernel but must format the
        # merged keys as the others do).
        which = P.resolve_backend("topk_retrieve", backend, q.device, q.dtype)
        sdtype = self._dtype if self._dtype in (torch.float32, torch.float64) else torch.float32
        id_dtype = object if self._id_kind == "str" else np.int64
        if nq == 0:
            return (self._local_out(torch.empty((0, k), dtype=sdtype, device=q.device), kind, back),
                    np.zeros((0, k), dtype=np.int64 if positions else id_dtype))
        chunk = max(1, _MERGE_BUDGET // (k * self._world))
        out_scores, out_pos, out_ids = [], [], []
        for s in range(0, nq, chunk):
            qc = q[s:s + chunk]
            m = qc.shape[0]
            # Padding past a short block: key -inf at position N sorts after every real entry.
            keys = torch.full((m, k), -math.inf, dtype=sdtype, device=q.device)
            pos = torch.full((m, k), self._n, dtype=torch.int64, device=q.device)
            rows_l = None
            if kl:
                lk, rows_l = local_rows.topk_keys(qc, kl, which, nt)
                keys[:, :kl] = lk.to(sdtype)
                pos[:, :kl] = rows_l + self._offset
            mk, mp, cols = _merge(keys, pos, k, self._group)
            out_scores.append(P.scores_from_keys(mk, metric, which, self._dtype))
            out_pos.append(mp)
            if self._id_kind != "positions" and not positions:
                out_ids.append(self._gather_ids(rows_l, m, k, kl, cols))
        scores = torch.cat(out_scores)
        if self._id_kind == "positions" or positions:
            ids = torch.cat(out_pos).cpu().numpy()
        else:
            ids = np.concatenate(out_ids)
        return self._local_out(scores, kind, back), ids

    def _gather_ids(self, local_rows: Optional[torch.Tensor], m: int, k: int, kl: int,
                    cols: torch.Tensor) -> np.ndarray:
        """The ids of the merged entries: every rank contributes the ids of its local top-k."""
        w = self._world
        if self._id_kind == "int":
            mine = torch.full((m, k), -1, dtype=torch.int64)
            if local_rows is not None:
                mine[:, :kl] = torch.from_numpy(self._local.ids_at(local_rows.cpu().numpy()))
            dev = _comm_device(self._group)
            md = mine.to(dev)
            parts = [torch.empty_like(md) for _ in range(w)]
            dist.all_gather(parts, md, group=self._group)
            allids = torch.cat(parts, dim=1).cpu()
            return allids.gather(1, cols.cpu()).numpy()
        mine_o = np.full((m, k), None, dtype=object)
        if local_rows is not None:
            mine_o[:, :kl] = self._local.ids_at(local_rows.cpu().numpy())
        parts_o: List[Any] = [None] * w
        dist.all_gather_object(parts_o, mine_o, group=self._group)
        allids_o = np.concatenate(parts_o, axis=1)
        return np.take_along_axis(allids_o, cols.cpu().numpy(), axis=1)

    @staticmethod
    def _local_out(t: torch.Tensor, kind: str, device: Optional[torch.device]) -> Any:
        if kind in ("torch", "cupy"):  # back on the queries' device (cupy lives on a GPU)
            t = t.to(device)
        return t if kind == "torch" else P.from_torch(t, kind)

    def rank(self, queries: Any, target_ids: Any, *, backend: str = "auto",
             num_threads: Optional[int] = None) -> Any:
        """Rank of each query's target among the candidates of all ranks (0 = best; ties count
        against it). Same arguments and results as :meth:`molphenix.retrieval.Index.rank`;
        every rank passes the same queries and target ids.

        Shapes:
            queries: [Q, D], target_ids: [Q] -> [Q]

        Raises:
            ValueError: a target id on no rank (named), length mismatch, bad queries, different
                query shapes on different ranks.
        """
        if self._world == 1:
            return self._local.rank(queries, target_ids, backend=backend, num_threads=num_threads)
        err: Optional[BaseException] = None
        try:
            q, kind, back = S.prepare_queries(queries, self._dim, self._dtype, self._device,
                                              self._metric)
            if self._local is not None:
                pos, want = self._local.id_store.lookup(target_ids)
            else:
                if isinstance(target_ids, (str, bytes)) or not hasattr(target_ids, "__len__"):
                    raise TypeError(f"target_ids: expected a sequence of ids, got "
                                    f"{type(target_ids).__name__}")
                want = np.asarray(target_ids.detach().cpu().numpy()
                                  if isinstance(target_ids, torch.Tensor) else list(target_ids),
                                  dtype=object).ravel()
                pos = np.full(want.shape[0], -1, dtype=np.int64)
            if pos.shape[0] != q.shape[0]:
                raise ValueError(f"target_ids: expected {q.shape[0]} ids (one per query), got "
                                 f"{pos.shape[0]}")
        except (TypeError, ValueError) as e:  # wrong id kind: raised where a block checked it
            err = e
        _agree(err, self._group)
        local_t = torch.from_numpy(pos).to(q.device)
        which = P.resolve_backend("retrieval_ranks", backend, q.device, q.dtype)
        ranks = _sharded_counts(q, self._rows(), local_t, self._group, which,
                                P.resolve_threads(num_threads), lambda i: f"id {want[i]!r}")
        return self._local_out(ranks, kind, back)
