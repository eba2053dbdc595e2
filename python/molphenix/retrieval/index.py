"""``Index``: exact nearest-candidate search over embeddings with ids, in memory or opened from disk.

A thin layer over the retrieval kernels (:mod:`molphenix.ops`): they stream the candidates
(never a ``Q x N`` score matrix), so a million candidates fit. Rows are validated once -- when the
index is built from arrays, or when a library was written -- and searches run the kernels on them
directly (:mod:`molphenix.retrieval.storage`), packing them for the CPU kernels once instead of
on every call.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch

from molphenix.ops import prepared as P
from molphenix.retrieval import storage as S
from molphenix.retrieval.storage import INDEX_FORMAT_VERSION, ROW_GROUP_ROWS

__all__ = ["Index", "INDEX_FORMAT_VERSION", "ROW_GROUP_ROWS"]


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

    The rows are validated here, once; searches do not re-check or re-scan them. On the CPU the
    first :meth:`search` / :meth:`rank` packs the rows into the kernels' layout (a copy of about
    ``N x D`` values, kept for later calls; :meth:`release` frees it).

    Candidates sharded across processes (``torchrun``): :class:`molphenix.distributed.ShardedIndex`,
    the same search / rank results. Libraries on disk: :meth:`save` / :meth:`load` (a library
    directory opens without reading its rows).

    Shapes:
        embeddings: [N, D]; ids: [N]

    Raises:
        TypeError: non-floating embeddings, ids of mixed / unsupported types.
        ValueError: not 2-D, no rows, zero width, NaN/Inf, zero-norm rows under cosine, ids of
            the wrong length, duplicate or missing ids, unknown metric.
    """

    def __init__(self, embeddings: Any, ids: Any = None, *, metric: str = "cosine") -> None:
        metric = P.check_metric(metric)
        t = S.validate_rows(embeddings, metric)
        self._set(S.Rows([t], dtype=t.dtype, metric=metric), S.Ids.from_values(ids, t.shape[0]))

    def _set(self, rows: S.Rows, ids: S.Ids, *, path: Optional[Path] = None,
             meta: Optional[Dict[str, Any]] = None) -> None:
        self._rows, self._ids = rows, ids
        self._path, self._meta = path, meta or {}

    @classmethod
    def from_storage(cls, rows: S.Rows, ids: S.Ids, *, path: Optional[Path] = None,
                     meta: Optional[Dict[str, Any]] = None) -> "Index":
        """An index over rows and ids that are already validated (:mod:`molphenix.retrieval.
        storage`: what :meth:`load` and ``ShardedIndex`` use; nothing is checked here)."""
        self = cls.__new__(cls)
        self._set(rows, ids, path=path, meta=meta)
        return self

    # -- properties ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._rows.n

    @property
    def dim(self) -> int:
        """Embedding width D."""
        return self._rows.dim

    @property
    def metric(self) -> str:
        """``"cosine"``, ``"dot"`` or ``"arctan_l2"``."""
        return self._rows.metric

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype searches compute in (float32 for a float16-stored library)."""
        return self._rows.dtype

    @property
    def device(self) -> torch.device:
        """Device of the stored embeddings."""
        return self._rows.device

    @property
    def embeddings(self) -> torch.Tensor:
        """[N, D] stored rows as a torch tensor (unit-normalised for cosine). For a library
        stored in several blocks or in float16 this reads and concatenates them (kept)."""
        return self._rows.tensor()

    @property
    def ids(self) -> np.ndarray:
        """[N] ids: int64, or object array of str (a library reads them on first use)."""
        return self._ids.array()

    @property
    def default_ids(self) -> bool:
        """True when the ids are the row positions ``0..N-1``."""
        return self._ids.default

    @property
    def storage(self) -> S.Rows:
        """The validated rows (:class:`molphenix.retrieval.storage.Rows`)."""
        return self._rows

    @property
    def id_store(self) -> S.Ids:
        """The ids (:class:`molphenix.retrieval.storage.Ids`)."""
        return self._ids

    @property
    def path(self) -> Optional[Path]:
        """The file or library directory it was loaded from (None when built in memory)."""
        return self._path

    @property
    def info(self) -> Dict[str, Any]:
        """What the library's manifest records beyond the rows (provenance: the run, the
        featurizer, counts); ``{}`` when built in memory or loaded from Parquet."""
        return dict(self._meta.get("manifest", {}).get("info", {}))

    def __repr__(self) -> str:
        kind = "row positions" if self._ids.default else self._ids.kind
        return (f"Index(n={len(self)}, dim={self.dim}, metric={self.metric!r}, "
                f"dtype={P.dtype_name(self.dtype)}, device={self.device}, ids={kind})")

    def release(self) -> None:
        """Free the copy packed for the CPU kernels (made again by the next search)."""
        self._rows.release()

    # -- queries ------------------------------------------------------------------------------

    def _queries(self, queries: Any) -> Tuple[torch.Tensor, str, Optional[torch.device]]:
        return S.prepare_queries(queries, self.dim, self.dtype, self.device, self.metric)

    @staticmethod
    def _out(t: torch.Tensor, kind: str, device: Optional[torch.device]) -> Any:
        if kind in ("torch", "cupy"):  # back on the queries' device (cupy lives on a GPU)
            t = t.to(device)
        return t if kind == "torch" else P.from_torch(t, kind)

    def _k(self, k: Optional[int], fraction: Optional[float]) -> int:
        if (k is None) == (fraction is None):
            raise ValueError("k/fraction: give exactly one of k or fraction")
        if k is not None:
            k = P.check_int(k, "k")
            if not 1 <= k <= len(self):
                raise ValueError(f"k: expected 1 <= k <= N = {len(self)} (the index size), got {k}")
            return k
        return P.fraction_to_k(fraction, len(self))

    def search_rows(self, queries: Any, k: Optional[int] = None, *, fraction: Optional[float] = None,
                    backend: str = "auto", num_threads: Optional[int] = None
                    ) -> Tuple[Any, np.ndarray]:
        """As :meth:`search`, but the results' row positions (int64 numpy [Q, k]) instead of
        their ids (:meth:`ids_at` and :meth:`column` map them)."""
        k = self._k(k, fraction)
        q, kind, back = self._queries(queries)
        nt = P.resolve_threads(num_threads)
        which = P.resolve_backend("topk_retrieve", backend, q.device, q.dtype)
        scores, idx = self._rows.topk(q, k, which, nt)
        return self._out(scores.detach(), kind, back), idx.detach().cpu().numpy()

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
        scores, rows = self.search_rows(queries, k, fraction=fraction, backend=backend,
                                        num_threads=num_threads)
        return scores, self.ids_at(rows)

    def ids_at(self, rows: Any) -> np.ndarray:
        """The ids of row positions (any shape): int64 or object (str) numpy."""
        return self._ids.take(np.asarray(rows, dtype=np.int64))

    def column(self, name: str) -> Any:
        """A column of the library the index was loaded from, for all N rows, as a pyarrow
        Array (``"id"`` always exists; ``embed-library`` libraries also keep ``molecule_id``,
        ``smiles`` and ``concentration_um``). Read on first use and kept.

        Raises:
            KeyError: no such column (an index built in memory has only ``"id"``).
        """
        cache = self.__dict__.setdefault("_columns", {})
        if name not in cache:
            if name == "id":
                cache[name] = self._ids.arrow()
            elif self._path is None:
                raise KeyError(f"{name!r}: an index built in memory has only the 'id' column")
            else:
                cache[name] = S.read_columns(self._path, [name]).column(name).combine_chunks()
        return cache[name]

    def positions(self, target_ids: Any) -> np.ndarray:
        """Row positions of ids.

        Args:
            target_ids: [Q] ids (str or int, as given at construction).

        Returns:
            int64 [Q] row positions.

        Raises:
            ValueError: an id not in the index (named in the message).
        """
        pos, want = self._ids.lookup(target_ids)
        missing = np.flatnonzero(pos < 0)
        if missing.size:
            raise ValueError(f"target_ids: id {want[int(missing[0])]!r} is not in the index")
        return pos

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
        q, kind, back = self._queries(queries)
        pos = self.positions(target_ids)
        if pos.shape[0] != q.shape[0]:
            raise ValueError(f"target_ids: expected {q.shape[0]} ids (one per query), got "
                             f"{pos.shape[0]}")
        nt = P.resolve_threads(num_threads)
        which = P.resolve_backend("retrieval_ranks", backend, q.device, q.dtype)
        targets = torch.from_numpy(pos).to(self.device)
        ranks, _ = self._rows.ranks(q, targets, None, which, nt)
        return self._out(ranks, kind, back)

    # -- persistence --------------------------------------------------------------------------

    def save(self, path: Union[str, "os.PathLike[str]"], *, storage: Optional[str] = None,
             columns: Optional[Dict[str, Any]] = None) -> Path:
        """Write the index, atomically: a Parquet file when ``path`` ends in ``.parquet``, a
        library directory otherwise.

        Parquet: columns ``id`` (int64 or string) and ``embedding`` (``fixed_size_list<float32|
        float64|float16>[D]``; bfloat16 is stored as float32, exactly, and restored on load);
        the schema metadata key ``molphenix.index`` holds JSON ``{"version", "metric", "dtype",
        "dim", "normalized", "default_ids"}``; row groups of :data:`ROW_GROUP_ROWS` rows.

        Library directory (:mod:`molphenix.retrieval.storage`): raw row blocks beside the ids
        and a checksummed manifest; :meth:`load` opens it in milliseconds without reading the
        rows.

        Either way the stored rows (normalised for cosine) are written, so :meth:`load` gives
        bit-identical search results (with ``storage="float16"`` the rows are rounded).

        Args:
            path: the file or directory (parents are created).
            storage: library row dtype: ``"float32"`` (default; ``"float64"`` for a float64
                index) or ``"float16"`` (half the size; scores change by about 1e-3).
            columns: extra columns (name -> [N] values) stored beside the ids.

        Returns:
            The path written.
        """
        path = Path(path)
        if path.suffix.lower() == ".parquet":
            if storage is not None:
                raise ValueError("storage: only for a library directory (a path without .parquet)")
            return S.save_parquet(path, self._rows, self._ids, columns=columns)
        return S.save_library(path, self._rows, self._ids, storage=storage, columns=columns)

    @classmethod
    def load(cls, path: Union[str, "os.PathLike[str]"], *,
             device: Union[str, torch.device, None] = None, verify: bool = False) -> "Index":
        """Open an index written by :meth:`save` or ``molphenix embed-library``.

        A library directory is memory-mapped: its manifest (checksummed) is read and the row
        blocks are mapped after a size check, so opening takes milliseconds whatever N; rows are
        read by the first search, ids when first needed. A Parquet file is read whole.

        Args:
            path: the library directory or Parquet file.
            device: where to put the embeddings (default: CPU; another device reads all rows).
            verify: also check every shard file of a library against its sha256.

        Returns:
            The :class:`Index` (same ids, metric, dtype and stored rows).

        Raises:
            FileNotFoundError: no such file. ValueError: not a molphenix index or library, an
                unfinished library, a newer format version, a damaged manifest or shard.
        """
        path = Path(path)
        rows, ids, meta = S.open_index(path, device=device, verify=verify)
        return cls.from_storage(rows, ids, path=path, meta=meta)
