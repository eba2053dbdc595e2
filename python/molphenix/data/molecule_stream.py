"""Molecule files read in fixed-size chunks, and chunks featurized in worker processes.

What ``molphenix embed-library`` streams through: a molecules file of any size is read
``chunk_rows`` input rows at a time (Parquet, CSV, CSV.gz or SMILES ``.smi`` / ``.smi.gz``), each
chunk's SMILES are parsed once by RDKit, invalid ones are reported with RDKit's reason, and the
valid ones are featurized by any batch featurizer. Nothing here imports torch, so worker
processes stay small.

Formats (columns matched case-insensitively):

* Parquet / CSV (``.csv``, ``.csv.gz``, ``.tsv``): ``smiles`` (required), ``molecule_id``
  (optional), ``concentration_um`` (optional, µM); other columns are ignored.
* SMILES files (``.smi``, ``.smiles``, optionally ``.gz``): one molecule per line, ``SMILES``
  then, after whitespace, its id (the rest of the line). Blank lines and lines starting with
  ``#`` are skipped (they are not rows).

A missing or empty ``molecule_id`` falls back to the SMILES string.

Featurizers: anything with a batch API ``f(smiles: list[str]) -> float32 [n, F]`` plugs in
(chunk by chunk); featurizers of :mod:`molphenix.data.featurize` also take the parsed molecules
(``compute_mols``), so each SMILES is parsed only once. Features travel from a worker to the
parent as a sparse matrix when most entries are zero (fingerprints), exactly.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "MOLECULE_SUFFIXES",
    "MoleculeFileError",
    "MoleculeScan",
    "FeatureChunk",
    "molecule_format",
    "scan_molecules",
    "iter_molecule_chunks",
    "parse_smiles",
    "smiles_problem",
    "featurize_chunk",
    "file_sha256",
]

#: File endings the reader understands.
MOLECULE_SUFFIXES = (".parquet", ".csv", ".csv.gz", ".tsv", ".tsv.gz", ".smi", ".smi.gz",
                     ".smiles", ".smiles.gz")
_COLUMNS = ("smiles", "molecule_id", "concentration_um")
#: Molecules featurized at a time inside a chunk (bounds a worker's dense intermediate).
_SLICE = 2048


class MoleculeFileError(ValueError):
    """A molecules file cannot be used: unreadable, empty, no SMILES column, unknown format.

    The message names the file; ``column`` the offending column when there is one."""

    def __init__(self, path: Any, message: str, column: Optional[str] = None) -> None:
        self.path, self.column = path, column
        super().__init__(f"{path}: {message}")


def molecule_format(path: Any) -> str:
    """``"parquet"``, ``"csv"`` (also ``.tsv`` and ``.gz``) or ``"smi"`` from the file name.

    Raises:
        MoleculeFileError: another ending.
    """
    name = Path(path).name.lower()
    for suf in MOLECULE_SUFFIXES:
        if name.endswith(suf):
            return {"parquet": "parquet", "csv": "csv", "tsv": "csv"}.get(
                suf.strip(".").split(".")[0], "smi")
    raise MoleculeFileError(path, f"unknown molecules file type; expected one of "
                                  f"{', '.join(MOLECULE_SUFFIXES)}")


def file_sha256(path: Any) -> str:
    """sha256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------


def _match_columns(path: Any, names: Sequence[str], extra: Sequence[str] = ()) -> Dict[str, str]:
    """{canonical name: the file's column name} for smiles / molecule_id / concentration_um
    (case-insensitive) and the ``extra`` columns (exact names)."""
    lower = {n.lower(): n for n in names}
    found = {c: lower[c] for c in _COLUMNS if c in lower}
    if "smiles" not in found:
        raise MoleculeFileError(path, f"no 'smiles' column (columns: {', '.join(names) or 'none'})",
                                column="smiles")
    for e in extra:
        if e not in names:
            raise MoleculeFileError(path, f"no {e!r} column (columns: {', '.join(names)})", column=e)
        found[e] = e
    return found


def _csv_reader(path: Path, block_size: int, extra: Sequence[str] = ()):
    import pyarrow as pa
    import pyarrow.csv as pcsv

    tsv = ".tsv" in path.name.lower()
    parse = pcsv.ParseOptions(delimiter="\t" if tsv else ",")
    read = pcsv.ReadOptions(block_size=block_size)
    try:
        head = pcsv.open_csv(path, read_options=read, parse_options=parse)
    except (pa.ArrowException, OSError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "Empty CSV file" in msg:
            raise MoleculeFileError(path, "empty file (no header, no rows)") from None
        raise MoleculeFileError(path, f"cannot read CSV ({msg})") from None
    cols = _match_columns(path, head.schema.names, extra)
    types = {cols[c]: pa.string() for c in ("smiles", "molecule_id") if c in cols}
    if "concentration_um" in cols:
        types[cols["concentration_um"]] = pa.float64()
    conv = pcsv.ConvertOptions(column_types=types, include_columns=list(cols.values()),
                               strings_can_be_null=True)
    return pcsv.open_csv(path, read_options=read, parse_options=parse, convert_options=conv), cols


def _iter_smi(path: Path, batch_rows: int) -> Iterator[Any]:
    import pyarrow as pa

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    smiles: List[Optional[str]] = []
    ids: List[Optional[str]] = []
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(None, 1)
            smiles.append(parts[0])
            ids.append(parts[1].strip() if len(parts) > 1 and parts[1].strip() else None)
            if len(smiles) >= batch_rows:
                yield pa.table({"smiles": pa.array(smiles, pa.string()),
                                "molecule_id": pa.array(ids, pa.string())})
                smiles, ids = [], []
    if smiles:
        yield pa.table({"smiles": pa.array(smiles, pa.string()),
                        "molecule_id": pa.array(ids, pa.string())})


def _batches(path: Path, batch_rows: int = 1 << 16, extra: Sequence[str] = ()
             ) -> Tuple[Iterator[Any], Dict[str, str]]:
    """(iterator of pyarrow Tables with the canonical columns (and ``extra``), the file's
    column names)."""
    import pyarrow as pa

    fmt = molecule_format(path)
    if not path.is_file():
        raise MoleculeFileError(path, "file not found")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as exc:
            raise MoleculeFileError(path, f"cannot read Parquet ({str(exc).splitlines()[0]})") from None
        cols = _match_columns(path, pf.schema_arrow.names, extra)

        def gen():
            for b in pf.iter_batches(batch_size=batch_rows, columns=list(cols.values())):
                yield _canonical(pa.Table.from_batches([b]), cols)
        return gen(), cols
    if fmt == "csv":
        reader, cols = _csv_reader(path, block_size=1 << 22, extra=extra)

        def gen_csv():
            try:
                for b in reader:
                    yield _canonical(pa.Table.from_batches([b]), cols)
            except pa.ArrowException as exc:
                raise MoleculeFileError(path, f"cannot read CSV ({str(exc).splitlines()[0]})") from None
        return gen_csv(), cols
    if extra:
        raise MoleculeFileError(path, f"a SMILES file has no {extra[0]!r} column")
    if path.stat().st_size == 0:
        raise MoleculeFileError(path, "empty file (no rows)")
    return _iter_smi(path, batch_rows), {"smiles": "smiles", "molecule_id": "molecule_id"}


def _canonical(table: Any, cols: Dict[str, str]) -> Any:
    """The table with canonical column names, SMILES / ids as strings, conc as float64."""
    import pyarrow as pa

    out = {}
    for c in _COLUMNS:
        if c in cols:
            col = table.column(cols[c])
            want = pa.float64() if c == "concentration_um" else pa.string()
            if col.type != want:
                try:
                    col = col.cast(want)
                except pa.ArrowException:
                    raise MoleculeFileError("", f"column {cols[c]!r}: expected {want} values, "
                                                f"got {col.type}", column=c) from None
            out[c] = col
    for c in cols:
        if c not in _COLUMNS:
            out[c] = table.column(cols[c])
    return pa.table(out)


@dataclass
class MoleculeScan:
    """One pass over a molecules file: what :func:`iter_molecule_chunks` will read.

    Attributes:
        path: the file.
        rows: number of input rows.
        columns: canonical columns present (``smiles``, ``molecule_id``, ``concentration_um``).
        duplicates: {row: first row} for every row whose key (``molecule_id`` -- or the SMILES
            where there is none -- plus ``concentration_um`` when the file has it) repeats an
            earlier row's.
        sha256: the file's sha256.
    """

    path: Path
    rows: int
    columns: Tuple[str, ...]
    duplicates: Dict[int, int] = field(default_factory=dict)
    sha256: str = ""


def scan_molecules(path: Any, *, duplicates: bool = True, checksum: bool = True) -> MoleculeScan:
    """Count the rows of a molecules file, check its columns and find repeated keys.

    Reads only the SMILES / id / concentration columns, in batches (Arrow memory: the keys,
    about 30 bytes a row).

    Raises:
        MoleculeFileError: missing or unreadable file, unknown type, no SMILES column, no rows.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    path = Path(path)
    it, cols = _batches(path)
    keys_m: List[Any] = []
    keys_c: List[Any] = []
    rows = 0
    has_conc = "concentration_um" in cols
    for t in it:
        rows += t.num_rows
        if duplicates:
            mol = t.column("molecule_id") if "molecule_id" in t.column_names else None
            smi = t.column("smiles")
            key = smi if mol is None else pc.if_else(
                pc.or_(pc.is_null(mol), pc.equal(mol, "")), smi, mol)
            keys_m.append(key)
            if has_conc:
                keys_c.append(t.column("concentration_um"))
    if rows == 0:
        raise MoleculeFileError(path, "no molecules (0 rows)")
    dups: Dict[int, int] = {}
    if duplicates:
        data = {"m": pa.chunked_array([k for c in keys_m for k in (c.chunks if isinstance(
            c, pa.ChunkedArray) else [c])], pa.string()),
            "row": pa.array(np.arange(rows, dtype=np.int64))}
        if has_conc:
            data["c"] = pa.chunked_array([k for c in keys_c for k in c.chunks], pa.float64())
        table = pa.table(data)
        by = ["m", "c"] if has_conc else ["m"]
        groups = table.group_by(by).aggregate([("row", "min"), ("row", "count")])
        rep = groups.filter(pc.greater(groups.column("row_count"), 1))
        if rep.num_rows:
            joined = table.join(rep.select(by + ["row_min"]), keys=by, join_type="inner")
            later = joined.filter(pc.not_equal(joined.column("row"), joined.column("row_min")))
            dups = dict(zip(later.column("row").to_pylist(), later.column("row_min").to_pylist()))
        del table, data, keys_m, keys_c
        pa.default_memory_pool().release_unused()
    return MoleculeScan(path=path, rows=rows, columns=tuple(c for c in _COLUMNS if c in cols),
                        duplicates=dups, sha256=file_sha256(path) if checksum else "")


def iter_molecule_chunks(path: Any, chunk_rows: int, *, chunks: Optional[Sequence[int]] = None,
                         extra: Optional[Sequence[str]] = None) -> Iterator[Tuple[int, int, Any]]:
    """``(chunk index, first input row, pyarrow Table)`` for consecutive chunks of exactly
    ``chunk_rows`` input rows (the last may be shorter): a fixed grid over the file.

    Args:
        path: the molecules file.
        chunk_rows: rows per chunk (>= 1).
        chunks: only these chunk indices (the others are read past, not built).
        extra: further columns to keep (exact names; e.g. a precomputed embedding column).

    Raises:
        MoleculeFileError: as :func:`scan_molecules`.
    """
    import pyarrow as pa

    if chunk_rows < 1:
        raise ValueError(f"chunk_rows: expected >= 1, got {chunk_rows}")
    want = None if chunks is None else set(int(c) for c in chunks)
    last = None if want is None else (max(want) if want else -1)
    it, _ = _batches(Path(path), batch_rows=min(chunk_rows, 1 << 16), extra=tuple(extra or ()))
    parts: List[Any] = []
    have = 0
    index = row = 0
    for t in it:
        pos = 0
        while pos < t.num_rows:
            take = min(chunk_rows - have, t.num_rows - pos)
            if want is None or index in want:
                parts.append(t.slice(pos, take))
            have += take
            pos += take
            if have == chunk_rows:
                if want is None or index in want:
                    yield index, row, pa.concat_tables(parts).combine_chunks()
                parts, have = [], 0
                index += 1
                row += chunk_rows
                if last is not None and index > last:
                    return
    if have and (want is None or index in want):
        yield index, row, pa.concat_tables(parts).combine_chunks()


# ---------------------------------------------------------------------------------------------
# parsing and featurizing (worker side)
# ---------------------------------------------------------------------------------------------


def smiles_problem(smiles: Optional[str]) -> str:
    """Why RDKit rejects a SMILES string: its first error message (e.g. ``SMILES Parse Error:
    unclosed ring``, ``Explicit valence for atom # 1 N, 5, is greater than permitted``)."""
    import contextlib
    import re

    from rdkit import Chem, RDLogger, rdBase

    if smiles is None or not str(smiles).strip():
        return "missing SMILES"
    buf = io.StringIO()
    rdBase.LogToPythonStderr()
    RDLogger.EnableLog("rdApp.error")
    try:
        with contextlib.redirect_stderr(buf):
            mol = Chem.MolFromSmiles(smiles)
    finally:
        RDLogger.DisableLog("rdApp.*")
        rdBase.LogToCppStreams()
    if mol is not None:
        return ""
    for line in buf.getvalue().splitlines():
        line = re.sub(r"^\[[0-9:.]+\]\s*", "", line).strip()
        if line:
            line = re.sub(r" for input: '.*'$", "", line)
            return line[:200]
    return "RDKit could not parse it"


def parse_smiles(smiles: Sequence[Optional[str]]) -> Tuple[List[Any], Dict[int, str]]:
    """RDKit molecules (None where invalid) and ``{position: reason}`` for the invalid ones."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    mols: List[Any] = []
    bad: Dict[int, str] = {}
    for i, s in enumerate(smiles):
        m = Chem.MolFromSmiles(s) if s else None
        if m is None:
            bad[i] = smiles_problem(s) or "RDKit could not parse it"
        mols.append(m)
    return mols, bad


@dataclass
class FeatureChunk:
    """Features of one chunk's valid molecules, as sent from a worker.

    Attributes:
        valid: int64 positions (in the chunk) of the molecules that were featurized.
        rejected: ``{position: reason}`` of the others.
        kind: ``"dense"``, ``"csr"`` (most entries zero) or ``"objects"`` (e.g. graphs).
        data: the float32 matrix; ``(indptr, indices, values, width)``; or a list.
    """

    valid: np.ndarray
    rejected: Dict[int, str]
    kind: str
    data: Any

    def __len__(self) -> int:
        return int(self.valid.shape[0])

    def features(self) -> Any:
        """The features of the valid molecules: float32 [n_valid, F] (or the list)."""
        if self.kind in ("dense", "objects"):
            return self.data
        return self.take(np.arange(len(self)))

    def take(self, idx: np.ndarray) -> Any:
        """Features of valid molecules ``idx`` (positions among the valid ones, repeats allowed):
        float32 [len(idx), F] built straight from the sparse rows (the chunk is never densified
        whole), or a list."""
        idx = np.asarray(idx, dtype=np.int64)
        if self.kind == "dense":
            return np.ascontiguousarray(self.data[idx])
        if self.kind == "objects":
            return [self.data[int(i)] for i in idx]
        indptr, indices, values, width = self.data
        counts = indptr[idx + 1] - indptr[idx]
        out = np.zeros((idx.shape[0], width), dtype=np.float32)
        if counts.sum():
            rows = np.repeat(np.arange(idx.shape[0]), counts)
            starts = np.repeat(indptr[idx] - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
            src = starts + np.arange(rows.shape[0])
            out[rows, indices[src]] = values[src]
        return out


def _pack_features(x: Any) -> Tuple[str, Any]:
    if not isinstance(x, np.ndarray):
        return "objects", list(x)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"featurizer: expected a 2-D float32 array [n, F], got shape {x.shape}")
    nz = np.count_nonzero(x)
    if nz * 3 < x.size:  # sparse: (indices int32 + values float32) beats the dense matrix
        rows, cols = np.nonzero(x)
        indptr = np.zeros(x.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=x.shape[0]), out=indptr[1:])
        return "csr", (indptr, cols.astype(np.int32), x[rows, cols], x.shape[1])
    return "dense", x


def featurize_chunk(featurizer: Any, smiles: Sequence[Optional[str]],
                    skip: Optional[Dict[int, str]] = None) -> FeatureChunk:
    """Parse a chunk's SMILES once, reject the invalid ones with their reason, featurize the rest.

    Args:
        featurizer: a featurizer with ``compute_mols`` (the molecules are passed on), or any
            callable ``list[str] -> float32 [n, F]`` (or a list of per-molecule objects, e.g.
            graphs); None: check validity only (features [n_valid, 0]).
        smiles: the chunk's SMILES [n].
        skip: positions rejected before parsing (``{position: reason}``, e.g. duplicates).

    Returns:
        The :class:`FeatureChunk`.

    Raises:
        ValueError: the featurizer returned the wrong number of rows.
    """
    skip = dict(skip or {})
    todo = [i for i in range(len(smiles)) if i not in skip]
    mols, bad = parse_smiles([smiles[i] for i in todo])
    rejected = dict(skip)
    rejected.update({todo[j]: r for j, r in bad.items()})
    keep = [j for j in range(len(todo)) if j not in bad]
    valid = np.asarray([todo[j] for j in keep], dtype=np.int64)
    if featurizer is None:  # validity only (the features come from elsewhere)
        x = np.zeros((len(keep), 0), dtype=np.float32)
        kind, data = _pack_features(x)
        return FeatureChunk(valid=valid, rejected=rejected, kind=kind, data=data)
    # In slices: a dense slice of fingerprints is packed (sparse) before the next is computed,
    # so a worker never holds a whole chunk's dense matrix.
    parts = []
    for s0 in range(0, len(keep), _SLICE):
        part = keep[s0:s0 + _SLICE]
        x = None
        if hasattr(featurizer, "compute_mols"):
            try:
                x = featurizer.compute_mols([mols[j] for j in part])
            except NotImplementedError:  # a featurizer that only takes SMILES
                x = None
        if x is None:
            x = featurizer([smiles[todo[j]] for j in part])
        if len(x) != len(part):
            raise ValueError(f"featurizer: returned {len(x)} rows for {len(part)} molecules")
        parts.append(_pack_features(x))
    if not parts:
        kind, data = "dense", np.zeros((0, 0), dtype=np.float32)
    else:
        kind, data = parts[0] if len(parts) == 1 else _concat(parts)
    return FeatureChunk(valid=valid, rejected=rejected, kind=kind, data=data)


def _concat(parts: List[Tuple[str, Any]]) -> Tuple[str, Any]:
    """One packed matrix from packed pieces (CSR pieces stay CSR; a dense piece densifies all)."""
    kinds = {k for k, _ in parts}
    if kinds == {"objects"}:
        return "objects", [o for _, d in parts for o in d]
    if kinds == {"csr"}:
        width = parts[0][1][3]
        indptr = [np.zeros(1, dtype=np.int64)]
        off = 0
        for _, (ip, _, _, _) in parts:
            indptr.append(ip[1:] + off)
            off += int(ip[-1])
        return "csr", (np.concatenate(indptr), np.concatenate([d[1] for _, d in parts]),
                       np.concatenate([d[2] for _, d in parts]), width)
    dense = [FeatureChunk(np.arange(0), {}, k, d).features() for k, d in parts]
    return "dense", np.concatenate(dense)


# Worker-process state: the featurizer is sent once, by the pool initializer.
_WORKER: Dict[str, Any] = {}


def worker_init(featurizer: Any, torch_threads: int = 1) -> None:
    """Pool initializer: keep the featurizer; pin thread pools to one thread per worker."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(torch_threads))
    _WORKER["featurizer"] = featurizer


def worker_featurize(task: Tuple[int, Sequence[Optional[str]], Dict[int, str]]) -> Tuple[int, FeatureChunk]:
    """Pool task: ``(chunk index, smiles, skip) -> (chunk index, FeatureChunk)``."""
    index, smiles, skip = task
    return index, featurize_chunk(_WORKER["featurizer"], smiles, skip)
