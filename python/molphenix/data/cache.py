"""A machine-wide, integrity-checked on-disk cache of molecular embeddings.

One cache per *model version* (for example ``minimol-0.1.1-<sha256 of the ONNX graph>``), keyed
by canonical SMILES. Where it lives::

    $MOLPHENIX_CACHE_DIR/embeddings/<model key>/        (default ~/.cache/molphenix)
        model.json                       what the key stands for (written once, for people)
        shard-<time>-<pid>-<random>.parquet
        ...

A shard is an immutable Parquet file with the columns ``smiles`` (str), ``embedding``
(``fixed_size_list<float32>[dim]``) and ``checksum`` (uint64: the first 8 bytes of the BLAKE2b
digest of the SMILES' UTF-8 bytes, a NUL byte and the little-endian float32 vector), and the
model key and width in its schema metadata.

Guarantees:

* **Atomic writes.** A shard is written to a temporary file in the same directory, flushed to
  disk (``fsync``) and renamed into place (:mod:`molphenix._atomic`); a reader sees a whole
  shard or none. A process killed mid-write leaves only a hidden ``.*.tmp`` file, which no
  reader opens (and compaction deletes when it is over an hour old).
* **Concurrent processes.** Writers never modify a shard: each write adds a new file with a
  unique name, so two processes filling the same cache cannot corrupt it or lose each other's
  entries (a molecule both computed at once is stored twice, harmlessly). Compaction (merging
  many small shards) runs only under an exclusive advisory lock (``.compact.lock``) that readers
  hold shared while they read, and writes the merged shards before it deletes the merged ones;
  where locks do not work, a reader that meets a shard deleted under it re-lists and retries.
* **Integrity.** Every entry served is checked against its checksum. An unreadable shard
  (truncated, not Parquet, wrong width or model key) and entries that fail their checksum are
  reported with a warning and never used: the shard is renamed to ``*.corrupt`` (its good
  entries are first copied into a new shard), and the missing molecules are computed again by
  the caller.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from molphenix._atomic import atomic_write, atomic_write_bytes, fsync_dir

__all__ = [
    "EmbeddingCache",
    "default_cache_dir",
    "CACHE_ENV",
    "entry_checksum",
]

#: Environment variable naming the cache root (default ``~/.cache/molphenix``).
CACHE_ENV = "MOLPHENIX_CACHE_DIR"

_FORMAT = 1
_META_KEY = b"molphenix_embedding_cache"
_SHARD_GLOB = "shard-*.parquet"
_TMP_GLOB = ".*.tmp"  # molphenix._atomic's temporary files
_LOCK = ".compact.lock"


def default_cache_dir() -> Path:
    """The cache root: ``$MOLPHENIX_CACHE_DIR`` if set (and not empty), else ``~/.cache/molphenix``.

    Returns:
        The directory (not created here).
    """
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "molphenix"


def entry_checksum(smiles: str, vector: np.ndarray) -> int:
    """Checksum of one cache entry.

    Args:
        smiles: The key (canonical SMILES).
        vector: Its embedding, float32 [dim].

    Returns:
        An unsigned 64-bit integer: the first 8 bytes (little-endian) of the BLAKE2b digest of
        ``smiles.encode() + b"\\0" + vector.astype("<f4").tobytes()``.
    """
    h = hashlib.blake2b(smiles.encode("utf-8") + b"\x00", digest_size=8)
    h.update(np.ascontiguousarray(vector, dtype="<f4").tobytes())
    return int.from_bytes(h.digest(), "little")


def _safe_key(key: str) -> str:
    ok = all(c.isalnum() or c in "._-+" for c in key)
    if not key or not ok or key.startswith("."):
        raise ValueError(f"model key: expected letters, digits and . _ - + only, got {key!r}")
    return key


class EmbeddingCache:
    """Embeddings of one model version, keyed by canonical SMILES (see the module docstring).

    Args:
        key: The model version key (a directory name: letters, digits, ``._-+``).
        dim: Embedding width.
        root: Cache root (default :func:`default_cache_dir`, read when the cache is built).
        model_info: JSON-serialisable description of the model, written once to
            ``model.json`` for people (not read back).
        max_shards: Compact (merge small shards) once a write leaves more than this many.
        shard_rows: Rows per shard written by compaction.

    Raises:
        ValueError: a key that is not a plain directory name; ``dim < 1``.
    """

    def __init__(self, key: str, dim: int, *, root: Any = None, model_info: Optional[Dict[str, Any]] = None,
                 max_shards: int = 64, shard_rows: int = 65536):
        if int(dim) < 1:
            raise ValueError(f"dim: expected >= 1, got {dim}")
        self.key = _safe_key(key)
        self.dim = int(dim)
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self.directory = self.root / "embeddings" / self.key
        self.model_info = dict(model_info or {})
        self.max_shards = int(max_shards)
        self.shard_rows = int(shard_rows)
        # SMILES -> (shard name, row); shard name -> its SMILES (for dropping it again)
        self._index: Dict[str, Tuple[str, int]] = {}
        self._shards: Dict[str, List[str]] = {}
        #: Problems met so far (one line each; also issued as warnings).
        self.problems: List[str] = []

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.directory)!r}, dim={self.dim})"

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        """Distinct SMILES in the cache (re-lists the shards)."""
        self._refresh()
        return len(self._index)

    def __contains__(self, smiles: object) -> bool:
        self._refresh()
        return smiles in self._index

    def get(self, smiles: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """Cached embeddings of ``smiles``.

        Args:
            smiles: Canonical SMILES [N] (duplicates allowed).

        Returns:
            ``(embeddings, found)``: float32 [N, dim] (zero rows where not found) and bool [N].
            Every returned row has passed its checksum.
        """
        smiles = list(smiles)
        out = np.zeros((len(smiles), self.dim), dtype=np.float32)
        found = np.zeros(len(smiles), dtype=bool)
        with _shared_lock(self.directory / _LOCK):  # no compaction deletes a shard meanwhile
            self._get(smiles, out, found)
        return out, found

    def _get(self, smiles: List[str], out: np.ndarray, found: np.ndarray) -> None:
        # a shard can still vanish where advisory locks do not work (some network file
        # systems): then re-list and retry, a bounded number of times
        for _attempt in range(16):
            self._refresh()
            by_shard: Dict[str, List[int]] = {}
            for i, s in enumerate(smiles):
                if not found[i] and s in self._index:
                    by_shard.setdefault(self._index[s][0], []).append(i)
            if not by_shard:
                break
            retry = False
            for name, rows in by_shard.items():
                loaded = self._load_shard(name)
                if loaded is None:  # deleted under us (compaction) or found corrupt: re-list
                    retry = True
                    continue
                keys, mat = loaded
                for i in rows:
                    j = keys.get(smiles[i])
                    if j is None:
                        retry = True
                        continue
                    out[i] = mat[j]
                    found[i] = True
            if not retry:
                break

    def _shard_paths(self) -> List[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob(_SHARD_GLOB))

    def _refresh(self) -> None:
        """Bring the in-memory index up to date with the shards on disk."""
        names = {p.name for p in self._shard_paths()}
        for gone in set(self._shards) - names:
            self._drop(gone)
        for name in sorted(names - set(self._shards)):
            keys = self._read_keys(name)
            if keys is None:
                continue
            self._shards[name] = keys
            for j, s in enumerate(keys):
                self._index.setdefault(s, (name, j))

    def _drop(self, name: str) -> None:
        """Forget a shard; keys that another shard also holds point there again."""
        if self._shards.pop(name, None) is None:
            return
        self._index = {}
        for n in sorted(self._shards):
            for j, s in enumerate(self._shards[n]):
                self._index.setdefault(s, (n, j))

    def _check_meta(self, schema: Any) -> Optional[str]:
        meta = (schema.metadata or {}).get(_META_KEY)
        if meta is None:
            return "no molphenix embedding-cache metadata"
        try:
            info = json.loads(meta)
        except ValueError:
            return "unreadable metadata"
        if info.get("key") != self.key or int(info.get("dim", -1)) != self.dim:
            return (f"written for model {info.get('key')!r} with width {info.get('dim')}, "
                    f"expected {self.key!r} with width {self.dim}")
        return None

    def _read_keys(self, name: str) -> Optional[List[str]]:
        import pyarrow.parquet as pq

        path = self.directory / name
        try:
            t = pq.read_table(path, columns=["smiles"])
            bad = self._check_meta(t.schema)
            if bad is None:
                return t.column("smiles").to_pylist()
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001 - pyarrow raises assorted errors on bad files
            bad = _unreadable(exc)
        self._quarantine(name, bad)
        return None

    def _load_shard(self, name: str) -> Optional[Tuple[Dict[str, int], np.ndarray]]:
        """A shard's verified entries (``{smiles: row}``, matrix) or None (gone / unreadable).
        A shard with entries that fail their checksum is salvaged: the good entries are copied
        into a new shard, the old one is moved aside, and None is returned."""
        import pyarrow.parquet as pq

        path = self.directory / name
        try:
            t = pq.read_table(path)
            bad = self._check_meta(t.schema)
            if bad is None:
                keys = t.column("smiles").to_pylist()
                col = t.column("embedding").combine_chunks()
                mat = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, self.dim).astype(np.float32, copy=False)
                sums = t.column("checksum").to_numpy()
                if len(keys) != mat.shape[0] or len(sums) != len(keys):
                    raise ValueError("columns of different lengths")
        except FileNotFoundError:
            self._drop(name)
            return None
        except Exception as exc:  # noqa: BLE001 - pyarrow raises assorted errors on bad files
            bad = _unreadable(exc)
        if bad is not None:
            self._quarantine(name, bad)
            return None
        ok = np.fromiter((entry_checksum(s, v) == int(c) for s, v, c in zip(keys, mat, sums)),
                         dtype=bool, count=len(keys))
        if not ok.all():
            n_bad = int((~ok).sum())
            good = np.flatnonzero(ok)
            if good.size:
                self._write_shard([keys[j] for j in good], mat[good])
            self._quarantine(name, f"{n_bad} of {len(keys)} entries fail their checksum "
                                   f"({good.size} good entries kept)")
            return None
        return {s: j for j, s in enumerate(keys)}, mat

    def _quarantine(self, name: str, why: str) -> None:
        from molphenix._warnings import warn

        path = self.directory / name
        msg = (f"embedding cache: {path}: {why}; not used (moved to {name}.corrupt), "
               "its molecules are computed again")
        self.problems.append(msg)
        warn(msg, RuntimeWarning)
        try:
            os.replace(path, path.with_name(name + ".corrupt"))
        except FileNotFoundError:  # another process moved it first
            pass
        self._drop(name)

    # ------------------------------------------------------------------ writing
    def put(self, smiles: Sequence[str], embeddings: np.ndarray) -> None:
        """Add entries (one new shard; duplicates of cached keys are skipped).

        Args:
            smiles: Canonical SMILES [N].
            embeddings: float32 [N, dim], finite.

        Raises:
            ValueError: shapes disagree; non-finite values.
        """
        smiles = list(smiles)
        mat = np.asarray(embeddings, dtype=np.float32)
        if mat.shape != (len(smiles), self.dim):
            raise ValueError(f"embeddings: expected shape ({len(smiles)}, {self.dim}), got {mat.shape}")
        if not np.isfinite(mat).all():
            raise ValueError("embeddings: non-finite values cannot be cached")
        self._refresh()
        seen = set()
        keep = []
        for i, s in enumerate(smiles):
            if s not in self._index and s not in seen:
                seen.add(s)
                keep.append(i)
        if not keep:
            return
        self._write_shard([smiles[i] for i in keep], mat[keep])
        if len(self._shards) > self.max_shards:
            self.compact()

    def _ensure_dir(self) -> None:
        if self.directory.is_dir():
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        info = {"format": _FORMAT, "key": self.key, "dim": self.dim, **self.model_info}
        atomic_write_bytes(self.directory / "model.json", (json.dumps(info, indent=2, sort_keys=True) + "\n").encode())

    def _write_shard(self, smiles: List[str], mat: np.ndarray) -> str:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._ensure_dir()
        mat = np.ascontiguousarray(mat, dtype=np.float32)
        sums = np.fromiter((entry_checksum(s, v) for s, v in zip(smiles, mat)), dtype=np.uint64, count=len(smiles))
        meta = json.dumps({"format": _FORMAT, "key": self.key, "dim": self.dim}, sort_keys=True)
        table = pa.table({
            "smiles": pa.array(smiles, pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(mat.reshape(-1), pa.float32()), self.dim),
            "checksum": pa.array(sums, pa.uint64()),
        }).replace_schema_metadata({_META_KEY: meta.encode()})
        name = f"shard-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
        atomic_write(self.directory / name, lambda fh: pq.write_table(table, fh, compression="zstd"))
        fsync_dir(self.directory)
        self._shards[name] = list(smiles)
        for j, s in enumerate(smiles):
            self._index.setdefault(s, (name, j))
        return name

    # ------------------------------------------------------------------ maintenance
    def compact(self) -> bool:
        """Merge the small shards (fewer than ``shard_rows`` entries) into as few as possible.

        Runs only when no other process is compacting this cache (an exclusive, non-blocking
        advisory lock); entries are verified on the way (bad ones are reported and dropped),
        the merged shards are written before the old ones are deleted, and ``.*.tmp`` files
        older than an hour (left by killed writers) are removed.

        Returns:
            True if this call compacted, False if another process held the lock.
        """
        if not self.directory.is_dir():
            return True
        with _try_lock(self.directory / _LOCK) as locked:
            if not locked:
                return False
            now = time.time()
            for p in self.directory.glob(_TMP_GLOB):
                try:
                    if now - p.stat().st_mtime > 3600:
                        p.unlink()
                except FileNotFoundError:
                    pass
            self._refresh()
            # shards already full-sized are left alone: compaction costs at most one pass over
            # the small ones, however large the cache grows
            old = sorted(n for n, ks in self._shards.items() if len(ks) < self.shard_rows)
            if len(old) <= 1:
                return True
            keys: List[str] = []
            rows: List[np.ndarray] = []
            seen = set()
            merged = []
            for name in old:
                loaded = self._load_shard(name)
                if loaded is None:
                    continue
                merged.append(name)
                kmap, mat = loaded
                for s, j in kmap.items():
                    if s not in seen:
                        seen.add(s)
                        keys.append(s)
                        rows.append(mat[j])
            for start in range(0, len(keys), self.shard_rows):
                part = keys[start:start + self.shard_rows]
                self._write_shard(part, np.stack(rows[start:start + self.shard_rows]))
            for name in merged:
                (self.directory / name).unlink(missing_ok=True)
                self._drop(name)
            fsync_dir(self.directory)
            return True

    def shards(self) -> List[Path]:
        """The shard files now on disk."""
        return self._shard_paths()


# ----------------------------------------------------------------------------- file helpers


def _unreadable(exc: BaseException) -> str:
    """Why a shard cannot be used; re-raises errors of the file system itself (permissions,
    a full disk ...: those carry an errno), which say nothing about the shard's content."""
    if isinstance(exc, OSError) and exc.errno is not None:
        raise exc
    text = str(exc).strip().splitlines()
    return f"unreadable ({type(exc).__name__}: {text[0] if text else 'no detail'})"


class _shared_lock:
    """Context manager: a shared (blocking) ``flock`` on ``path`` while reading, so that
    compaction (which needs the exclusive lock) never deletes a shard under a reader. Does
    nothing where the lock file cannot be opened (no cache yet, a read-only cache)."""

    def __init__(self, path: Path):
        self.path = path
        self.fh: Any = None

    def __enter__(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return
        if not self.path.parent.is_dir():
            return
        try:
            self.fh = open(self.path, "a+")
        except OSError:
            return
        try:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_SH)
        except OSError:  # pragma: no cover - a file system without locks
            pass

    def __exit__(self, *exc: Any) -> None:
        if self.fh is not None:
            self.fh.close()


class _try_lock:
    """Context manager: an exclusive non-blocking ``flock``; yields whether it was acquired
    (always True where advisory locks do not exist)."""

    def __init__(self, path: Path):
        self.path = path
        self.fh: Any = None

    def __enter__(self) -> bool:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return True
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.fh.close()
            self.fh = None
            return False
        return True

    def __exit__(self, *exc: Any) -> None:
        if self.fh is not None:
            self.fh.close()

