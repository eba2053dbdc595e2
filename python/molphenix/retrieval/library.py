"""Embed a molecule library of any size into a library directory: streamed, resumable, sharded.

:func:`embed_library` reads a molecules file in fixed chunks of input rows (a global grid), and
for each chunk: parses the SMILES once and featurizes the valid ones in worker processes
(:mod:`molphenix.data.molecule_stream`), embeds them in this process (the ``embed`` callable, e.g.
a trained run's molecular head), and writes the rows as one shard of the library
(:func:`molphenix.retrieval.storage.write_shard`) before the chunk's record. Memory follows the
chunk, not the library.

* **Resumable**: a chunk is done when its record exists and its shard files match the record's
  sizes and sha256 (files are written to a temporary name, fsync'd and renamed; the record goes
  last). Rerunning the same command skips done chunks; the result is bitwise equal to an
  uninterrupted run (same chunk grid, same thread count). Settings that change the result (the
  input's sha256, the model, the featurizer, the concentrations, the chunk size, the storage
  dtype) are recorded; a rerun with other settings is refused unless ``overwrite``.
* **Sharded**: under ``torchrun`` rank ``r`` embeds the chunks ``c`` with ``c % world == r``
  into the same directory; rank 0 writes the manifest when all are done. The chunk grid does
  not depend on the number of ranks, so two ranks produce the same shards as one process.
* **Rejects**: invalid SMILES (with RDKit's reason), repeated ids and invalid concentrations are
  skipped into ``rejects.csv`` (``row, molecule_id, smiles, reason``; rows of the input, 0-based)
  and counted.

Layout while running: ``OUT/shards/`` (finished shards) and ``OUT/.embed/`` (settings and chunk
records). When every chunk is done: ``OUT/rejects.csv`` and ``OUT/manifest.json``, and ``.embed``
is removed. A ``.parquet`` OUT is built the same way in ``.<name>.parts/`` and then written as one
Parquet index file (``<OUT>.rejects.csv`` beside it).
"""

from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from molphenix._atomic import atomic_write, atomic_write_bytes
from molphenix.retrieval import storage as S

__all__ = ["embed_library", "LibraryBuildError", "EmbedSummary", "DEFAULT_CHUNK_ROWS",
           "OUTPUT_VERSION"]

#: Input rows per chunk (the grid of resumption and of the ranks' work).
DEFAULT_CHUNK_ROWS = 10_000
#: Rows per forward pass of ``embed`` (fixed: the embeddings do not depend on the batching).
_EMBED_BATCH = 4096
#: Changes when what the pipeline writes for the same settings changes.
OUTPUT_VERSION = 1
_WORK = ".embed"


class LibraryBuildError(ValueError):
    """A library cannot be built. ``flag`` names the argument at fault (``--molecules``,
    ``--out``, ...); ``usage`` is True for problems with the arguments or the input file as a
    whole (the CLI exits 2), False for problems found in the data while embedding (exit 1)."""

    def __init__(self, flag: str, message: str, *, usage: bool = True) -> None:
        self.flag, self.usage = flag, usage
        super().__init__(message)


@dataclass
class EmbedSummary:
    """What :func:`embed_library` did.

    Attributes:
        path: the library written (directory or Parquet file).
        input_rows: rows of the molecules file.
        molecules: molecules embedded (valid, not repeated).
        rows: library rows ((molecule, concentration) pairs).
        rejected: rejected input rows; ``reasons``: their count by reason.
        rejects_path: the rejects file (None when nothing was rejected).
        chunks, chunks_resumed: chunks in the grid; chunks found done at the start.
        seconds: wall time of this call; ``rate``: input rows per second embedded by this call.
        complete: False on a rank other than 0 (rank 0 writes the manifest and the summary).
    """

    path: Path
    input_rows: int = 0
    molecules: int = 0
    rows: int = 0
    rejected: int = 0
    reasons: Dict[str, int] = field(default_factory=dict)
    rejects_path: Optional[Path] = None
    chunks: int = 0
    chunks_resumed: int = 0
    seconds: float = 0.0
    rate: float = 0.0
    dim: int = 0
    storage: str = "float32"
    already_complete: bool = False
    complete: bool = True


# ---------------------------------------------------------------------------------------------
# settings and the work directory
# ---------------------------------------------------------------------------------------------


def _world() -> Tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _broadcast_error(message: Optional[str], flag: str) -> None:
    """Rank 0 decided; every rank raises the same error (or none)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        if message:
            raise LibraryBuildError(flag, message)
        return
    box = [message]
    dist.broadcast_object_list(box, src=0)
    if box[0]:
        raise LibraryBuildError(flag, box[0])


def _is_ours(path: Path) -> bool:
    return (path / S.MANIFEST).is_file() or (path / _WORK / "state.json").is_file()


def _check_writable(path: Path, flag: str = "--out") -> None:
    """Create ``path``'s parent if needed and prove it writable, or raise a usage error."""
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".{path.name}.probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise LibraryBuildError(flag, f"{path}: cannot write there ({exc.strerror or exc})") from None


def _prepare_out(out: Path, work: Path, settings: Dict[str, Any], overwrite: bool,
                 as_parquet: bool) -> Tuple[str, Optional[str]]:
    """On rank 0: ("complete" | "resume" | "fresh", error message or None)."""
    if as_parquet:
        if out.is_dir():
            return "", f"{out} is a directory; give a file path ending in .parquet"
        if out.exists():
            if not overwrite:
                return "", f"{out} exists; pass --overwrite"
            out.unlink()
    else:
        if out.exists() and not out.is_dir():
            if not overwrite:
                return "", f"{out} exists and is a file; pass --overwrite to replace it with a library directory"
            out.unlink()
        if (out / S.MANIFEST).is_file():
            try:
                done = S.read_manifest(out).get("info", {}).get("settings")
            except ValueError:
                done = None
            if done == settings and not overwrite:
                shutil.rmtree(out / _WORK, ignore_errors=True)  # a crash after the manifest
                return "complete", None
            if not overwrite:
                return "", (f"{out} holds a finished library made with other settings; pass "
                            "--overwrite to replace it")
            _clear(out)
    state = work / _WORK / "state.json"
    if state.is_file() and not overwrite:
        try:
            old = json.loads(state.read_text())
        except (OSError, ValueError):
            old = None
        if old != settings:
            diff = _first_difference(old, settings)
            return "", (f"{work} holds an unfinished library started with other settings ({diff} "
                        "differs); pass --overwrite to start over")
        for tmp in (work / "shards").glob(".*.tmp") if (work / "shards").is_dir() else ():
            tmp.unlink(missing_ok=True)  # a write cut short (its chunk is redone)
        return "resume", None
    if work.exists():
        if not work.is_dir():
            return "", f"{work} exists and is not a directory"
        if any(work.iterdir()):
            if not _is_ours(work):
                return "", f"{work} is a non-empty directory that is not a molphenix library; refusing to write into it"
            if not overwrite and not state.is_file():
                return "", f"{work} exists; pass --overwrite"
            _clear(work)
    try:
        (work / _WORK / "chunks").mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(state, (json.dumps(settings, indent=1, sort_keys=True) + "\n").encode())
    except OSError as exc:
        return "", f"{work}: cannot write there ({exc.strerror or exc})"
    return "fresh", None


def _clear(path: Path) -> None:
    """Remove what a library directory holds (only called on one of ours, or an empty one)."""
    for child in path.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


def _first_difference(old: Any, new: Dict[str, Any]) -> str:
    if not isinstance(old, dict):
        return "the recorded settings"
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            return repr(k)
    return "nothing"


# ---------------------------------------------------------------------------------------------
# one chunk
# ---------------------------------------------------------------------------------------------


def _chunk_rows(table: Any, start: int, conc_doses: Optional[Sequence[float]],
                duplicates: Dict[int, int]) -> Tuple[List[Optional[str]], List[str], np.ndarray,
                                                     Dict[int, str]]:
    """(smiles, molecule ids, per-row concentration or NaN, {position: reason} known before
    parsing) of a chunk."""
    smiles = table.column("smiles").to_pylist()
    if "molecule_id" in table.column_names:
        mids = table.column("molecule_id").to_pylist()
        mids = [m if m not in (None, "") else s for m, s in zip(mids, smiles)]
    else:
        mids = list(smiles)
    mids = [("" if m is None else str(m)) for m in mids]
    skip: Dict[int, str] = {}
    n = len(smiles)
    for i in range(n):
        first = duplicates.get(start + i)
        if first is not None:
            skip[i] = f"duplicate of row {first}"
    if conc_doses is None:
        conc = table.column("concentration_um").to_numpy(zero_copy_only=False).astype(np.float64)
        for i in np.flatnonzero(~(np.isfinite(conc) & (conc > 0))):
            skip.setdefault(int(i), f"invalid concentration_um ({conc[i]}): expected a finite number > 0 µM")
    else:
        conc = np.full(n, np.nan)
    return smiles, mids, conc, skip


def _embed_rows(embed: Callable[[Any, np.ndarray], torch.Tensor], take: Callable[[np.ndarray], Any],
                mol_idx: np.ndarray, conc: np.ndarray, dim: int) -> np.ndarray:
    """Embeddings [len(mol_idx), dim] of (molecule ``take([mol_idx[j]])``, conc[j]), in fixed
    batches (each batch's features are built just before its forward pass)."""
    out = np.empty((mol_idx.shape[0], dim), dtype=np.float32)
    for s in range(0, mol_idx.shape[0], _EMBED_BATCH):
        idx = mol_idx[s:s + _EMBED_BATCH]
        batch = take(idx)
        e = embed(batch, conc[s:s + _EMBED_BATCH])
        out[s:s + idx.shape[0]] = e.detach().to("cpu", torch.float32).numpy()
    return out


def _record_path(work: Path, c: int) -> Path:
    return work / _WORK / "chunks" / f"c{c:06d}.json"


def _load_record(work: Path, c: int) -> Optional[Dict[str, Any]]:
    p = _record_path(work, c)
    try:
        rec = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    if rec.get("chunk") != c:
        return None
    if rec.get("shard") is not None and not S.shard_complete(work, rec["shard"], checksum=True):
        return None  # a record without its (complete) shard is not done
    return rec


def _finish_chunk(work: Path, c: int, start: int, n_in: int, smiles, mids, conc_row, fc,
                  doses: Optional[Sequence[float]], embed, dim: int, storage: str,
                  feature_column: Optional[np.ndarray]) -> Dict[str, Any]:
    import pyarrow as pa

    valid = fc.valid
    if feature_column is not None:
        cols = feature_column[valid]
        take = lambda idx: np.ascontiguousarray(cols[idx])  # noqa: E731
    else:
        take = fc.take
    if doses is None:
        mol_idx = np.arange(valid.shape[0], dtype=np.int64)
        conc = conc_row[valid]
    else:
        mol_idx = np.repeat(np.arange(valid.shape[0], dtype=np.int64), len(doses))
        conc = np.tile(np.asarray(doses, dtype=np.float64), valid.shape[0])
    src = valid[mol_idx]
    ids = [f"{mids[i]}@{c_:g}" for i, c_ in zip(src.tolist(), conc.tolist())]
    shard = None
    if mol_idx.shape[0]:
        emb = _embed_rows(embed, take, mol_idx, conc, dim)
        table = pa.table({"id": pa.array(ids, pa.string()),
                          "molecule_id": pa.array([mids[i] for i in src.tolist()], pa.string()),
                          "smiles": pa.array([smiles[i] for i in src.tolist()], pa.string()),
                          "concentration_um": pa.array(conc, pa.float64())})
        shard = S.write_shard(work, f"c{c:06d}", emb, table, metric="cosine", storage=storage)
    rejects = [[start + i, mids[i], smiles[i], r] for i, r in sorted(fc.rejected.items())]
    rec = {"chunk": c, "rows": [start, start + n_in], "molecules": int(valid.shape[0]),
           "library_rows": int(mol_idx.shape[0]), "shard": shard, "rejects": rejects}
    atomic_write_bytes(_record_path(work, c), json.dumps(rec).encode())
    return rec


# ---------------------------------------------------------------------------------------------
# the pipeline
# ---------------------------------------------------------------------------------------------


def default_workers() -> int:
    """Featurizing processes by default: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def embed_library(source: Any, out: Any, *, featurizer: Any, embed: Callable[[Any, np.ndarray], torch.Tensor],
                  dim: int, doses: Optional[Sequence[float]] = None, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                  workers: Optional[int] = None, storage: str = "float32", overwrite: bool = False,
                  fingerprint: Optional[Dict[str, Any]] = None, info: Optional[Dict[str, Any]] = None,
                  feature_column: Optional[str] = None, progress: bool = True,
                  say: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> EmbedSummary:
    """Embed every (molecule, concentration) of a molecules file into a library, chunk by chunk.

    Args:
        source: the molecules file (Parquet, CSV, CSV.gz, .smi; see
            :mod:`molphenix.data.molecule_stream`).
        out: the library directory to create (any name), or a ``.parquet`` file.
        featurizer: picklable; ``compute_mols(mols)`` or ``f(smiles) -> float32 [n, F]`` (or a
            list of per-molecule objects, e.g. graphs). Runs in worker processes.
        embed: ``embed(features [b, F] or a list, concentrations float64 [b]) -> [b, dim]``
            (runs here, in batches of at most 4096 rows).
        dim: the embedding width.
        doses: concentrations (µM) for every molecule when the file has no
            ``concentration_um`` column (each molecule gives one row per dose); ignored (must be
            None) when it has one.
        chunk_rows: input rows per chunk.
        workers: featurizing processes (default: the usable CPUs; 0: featurize here).
        storage: ``"float32"`` or ``"float16"`` rows.
        overwrite: start over even if ``out`` holds a (finished or unfinished) library.
        fingerprint: what identifies the model and featurizer (recorded; a resume must match).
        info: provenance stored in the manifest.
        feature_column: take the features from this (fixed-size list) column of the file
            instead of ``featurizer`` (precomputed embeddings).
        progress: show a progress bar (rank 0) with molecules/s and the ETA.
        say: where to print notes (resumption, warnings).

    Returns:
        The :class:`EmbedSummary`.

    Raises:
        LibraryBuildError: unusable arguments or input (``usage``), or data problems.
    """
    from molphenix.data import molecule_stream as MS

    t0 = time.perf_counter()
    rank, world = _world()
    source, out = Path(source), Path(out)
    if chunk_rows < 1:
        raise LibraryBuildError("--chunk-rows", f"must be >= 1, got {chunk_rows}")
    if storage not in ("float32", "float16"):
        raise LibraryBuildError("--storage", f"must be float32 or float16, got {storage!r}")
    as_parquet = out.suffix.lower() == ".parquet"
    if as_parquet and storage != "float32":
        raise LibraryBuildError("--storage", "float16 storage needs a library directory (an --out "
                                             "without .parquet)")
    work = out.with_name(f".{out.name}.parts") if as_parquet else out
    _check_writable(out)
    try:
        scan = MS.scan_molecules(source)
    except MS.MoleculeFileError as exc:
        raise LibraryBuildError("--molecules", str(exc)) from None
    has_conc = "concentration_um" in scan.columns
    if has_conc and doses is not None:
        raise LibraryBuildError("--concentrations", "the --molecules file has a concentration_um "
                                                    "column; give one or the other")
    if not has_conc and not doses:
        raise LibraryBuildError("--concentrations", "no concentration_um column and no doses; "
                                                    "pass --concentrations")
    n_chunks = max(1, math.ceil(scan.rows / chunk_rows))
    settings = {"output_version": OUTPUT_VERSION, "library_version": S.LIBRARY_VERSION,
                "source_sha256": scan.sha256, "source_rows": scan.rows, "chunk_rows": int(chunk_rows),
                "storage": storage, "doses": None if doses is None else [float(d) for d in doses],
                "feature_column": feature_column, "dim": int(dim), "fingerprint": fingerprint or {}}
    status, err = ("", None)
    if rank == 0:
        status, err = _prepare_out(out, work, settings, overwrite, as_parquet)
    _broadcast_error(err, "--out")
    if world > 1:
        import torch.distributed as dist

        box = [status]
        dist.broadcast_object_list(box, src=0)
        status = box[0]
    summary = EmbedSummary(path=out, input_rows=scan.rows, chunks=n_chunks, dim=int(dim), storage=storage)
    if status == "complete":
        return _summary_from_manifest(out, summary, t0)
    mine = [c for c in range(n_chunks) if c % world == rank]
    done = {c for c in mine if _load_record(work, c) is not None}
    todo = [c for c in mine if c not in done]
    summary.chunks_resumed = len(done)
    threads = torch.get_num_threads()
    tfile = work / _WORK / f"threads-rank{rank}.json"
    if done and rank == 0:
        say(f"resuming {out}: {len(done)} of {len(mine)} chunks already done")
    try:
        before = json.loads(tfile.read_text())["threads"] if tfile.is_file() else None
    except (OSError, ValueError, KeyError):
        before = None
    if done and before is not None and before != threads:
        say(f"warning: resuming with {threads} threads; the finished chunks were embedded with "
            f"{before}: the rows embedded now may differ from an uninterrupted run in their last "
            "bits (pass --threads to match)")
    if todo:
        atomic_write_bytes(tfile, json.dumps({"threads": threads}).encode())
    rows_todo = sum(min(chunk_rows, scan.rows - c * chunk_rows) for c in todo)
    n_workers = default_workers() if workers is None else int(workers)
    # One chunk per task: more workers than chunks idle, and a lone chunk gains nothing from a
    # worker (there is nothing to overlap it with): featurize it here.
    n_workers = min(n_workers, len(todo)) if len(todo) > 1 else 0
    if mp.current_process().daemon:  # a daemonic process may not start workers
        n_workers = 0
    bar = None
    if progress and rank == 0 and rows_todo:
        from tqdm import tqdm

        tty = sys.stderr.isatty()
        bar = tqdm(total=rows_todo, unit="mol", unit_scale=True, dynamic_ncols=True,
                   mininterval=0.5 if tty else 30.0, desc=f"embedding {scan.rows:,} molecules",
                   file=sys.stderr, smoothing=0.1)
    try:
        _run_chunks(source, work, todo, chunk_rows, scan, doses, featurizer, embed, int(dim),
                    storage, n_workers, feature_column, bar)
    finally:
        if bar is not None:
            bar.close()
    _barrier()
    summary.seconds = time.perf_counter() - t0
    summary.rate = rows_todo / summary.seconds if summary.seconds > 0 else 0.0
    if rank != 0:
        _barrier()
        summary.complete = False
        return summary
    try:
        _finish(out, work, n_chunks, settings, info, summary, as_parquet, int(dim), storage)
    finally:
        _barrier()
    summary.seconds = time.perf_counter() - t0
    return summary


def _run_chunks(source: Path, work: Path, todo: List[int], chunk_rows: int, scan: Any,
                doses: Optional[Sequence[float]], featurizer: Any, embed, dim: int, storage: str,
                n_workers: int, feature_column: Optional[str], bar: Any) -> None:
    from molphenix.data import molecule_stream as MS

    if not todo:
        return
    pool = None
    if n_workers > 0:
        ctx = mp.get_context("spawn")
        pool = ctx.Pool(n_workers, initializer=MS.worker_init, initargs=(featurizer,))
    pending: deque = deque()

    def complete(item) -> None:
        c, start, n_in, smiles, mids, conc_row, fcol, res = item
        fc = res.get() if pool is not None else res
        if isinstance(fc, tuple):
            fc = fc[1]
        _finish_chunk(work, c, start, n_in, smiles, mids, conc_row, fc, doses, embed, dim,
                      storage, fcol)
        if bar is not None:
            bar.update(n_in)

    try:
        chunks = MS.iter_molecule_chunks(source, chunk_rows, chunks=todo,
                                         extra=[feature_column] if feature_column else None)
        for c, start, table in chunks:
            smiles, mids, conc_row, skip = _chunk_rows(table, start, doses, scan.duplicates)
            fcol = None
            if feature_column is not None:
                fcol = _column_matrix(table, feature_column)
            if pool is not None:
                task = pool.apply_async(MS.worker_featurize, ((c, smiles, skip),))
            else:
                task = MS.featurize_chunk(featurizer, smiles, skip)
            pending.append((c, start, table.num_rows, smiles, mids, conc_row, fcol, task))
            while len(pending) > max(1, n_workers):
                complete(pending.popleft())
        while pending:
            complete(pending.popleft())
    except MS.MoleculeFileError as exc:
        raise LibraryBuildError("--molecules", str(exc)) from None
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


def _column_matrix(table: Any, name: str) -> np.ndarray:
    col = table.column(name).combine_chunks()
    import pyarrow as pa

    if not (pa.types.is_fixed_size_list(col.type) or pa.types.is_list(col.type)):
        raise LibraryBuildError("--molecules", f"column {name!r}: expected a list of floats per "
                                               f"molecule, got {col.type}")
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return flat.reshape(table.num_rows, -1)


def _summary_from_manifest(out: Path, summary: EmbedSummary, t0: float) -> EmbedSummary:
    manifest = S.read_manifest(out)
    counts = manifest.get("info", {}).get("counts", {})
    summary.already_complete = True
    summary.molecules = int(counts.get("molecules", 0))
    summary.rows = int(manifest["n"])
    summary.rejected = int(counts.get("rejected", 0))
    summary.reasons = dict(counts.get("reasons", {}))
    summary.rejects_path = out / "rejects.csv" if summary.rejected else None
    summary.chunks_resumed = summary.chunks
    summary.seconds = time.perf_counter() - t0
    return summary


def _reason_kind(reason: str) -> str:
    """A short category of a reject reason (for the summary counts)."""
    if reason.startswith("duplicate of row"):
        return "duplicate id"
    if reason.startswith("invalid concentration_um"):
        return "invalid concentration_um"
    if reason.startswith("missing SMILES"):
        return "missing SMILES"
    if reason.startswith("SMILES Parse Error"):
        return "SMILES parse error"
    if "valence" in reason:
        return "valence"
    if "kekulize" in reason.lower():
        return "kekulization"
    return "other RDKit error"


def _finish(out: Path, work: Path, n_chunks: int, settings: Dict[str, Any],
            info: Optional[Dict[str, Any]], summary: EmbedSummary, as_parquet: bool, dim: int,
            storage: str) -> None:
    records = []
    for c in range(n_chunks):
        rec = _load_record(work, c)
        if rec is None:
            raise LibraryBuildError("--out", f"{work}: chunk {c} is not finished (did a rank fail?); "
                                             "rerun the same command to finish it", usage=False)
        records.append(rec)
    reasons: Counter = Counter()
    rejects_path = (out / "rejects.csv") if not as_parquet else out.with_name(out.name + ".rejects.csv")
    n_rej = sum(len(r["rejects"]) for r in records)
    if n_rej:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["row", "molecule_id", "smiles", "reason"])
        for r in records:
            for row in r["rejects"]:
                w.writerow(row)
                reasons[_reason_kind(row[3])] += 1
        atomic_write_bytes(rejects_path, buf.getvalue().encode())
    elif rejects_path.exists():
        rejects_path.unlink()
    summary.molecules = sum(int(r["molecules"]) for r in records)
    summary.rows = sum(int(r["library_rows"]) for r in records)
    summary.rejected = n_rej
    summary.reasons = dict(sorted(reasons.items()))
    summary.rejects_path = rejects_path if n_rej else None
    if summary.rows == 0:
        where = f" (reasons in {rejects_path})" if n_rej else ""
        raise LibraryBuildError("--molecules", f"no valid molecules: all {summary.input_rows} rows "
                                               f"were rejected{where}")
    counts = {"input_rows": summary.input_rows, "molecules": summary.molecules,
              "rows": summary.rows, "rejected": n_rej, "reasons": summary.reasons}
    meta = dict(info or {})
    meta.update({"settings": settings, "counts": counts})
    shards = [r["shard"] for r in records if r["shard"] is not None]
    columns = ["id", "molecule_id", "smiles", "concentration_um"]
    try:
        S.finish_library(work, shards, dim=dim, metric="cosine", dtype="float32", storage=storage,
                         id_kind="str", columns=columns, info=meta)
    except ValueError as exc:
        raise LibraryBuildError("--molecules", str(exc), usage=False) from None
    if as_parquet:
        _library_to_parquet(work, out)
        shutil.rmtree(work, ignore_errors=True)
    else:
        shutil.rmtree(work / _WORK, ignore_errors=True)


def _library_to_parquet(work: Path, out: Path) -> None:
    """Write a finished library directory as one Parquet index file (the layout of
    ``Index.save(... .parquet)`` plus the molecule columns), streamed shard by shard."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = S.read_manifest(work)
    dim = int(manifest["dim"])
    meta = {"version": S.INDEX_FORMAT_VERSION, "metric": manifest["metric"], "dtype": "float32",
            "dim": dim, "normalized": True, "default_ids": False}
    schema = pa.schema([("id", pa.string()), ("embedding", pa.list_(pa.float32(), dim)),
                        ("molecule_id", pa.string()), ("smiles", pa.string()),
                        ("concentration_um", pa.float64())],
                       metadata={b"molphenix.index": json.dumps(meta).encode()})
    def write(f) -> None:
        with pq.ParquetWriter(f, schema) as writer:
            buf: List[Any] = []
            have = 0
            rows, _, _ = S.open_index(work)
            for s, blk in zip(manifest["shards"], rows.blocks):
                t = pq.read_table(work / s["table"])
                emb = pa.FixedSizeListArray.from_arrays(pa.array(blk.numpy().reshape(-1)), dim)
                buf.append(pa.table({"id": t.column("id"), "embedding": emb,
                                     "molecule_id": t.column("molecule_id"), "smiles": t.column("smiles"),
                                     "concentration_um": t.column("concentration_um")}, schema=schema))
                have += t.num_rows
                while have >= S.ROW_GROUP_ROWS:
                    whole = pa.concat_tables(buf)
                    writer.write_table(whole.slice(0, S.ROW_GROUP_ROWS), row_group_size=S.ROW_GROUP_ROWS)
                    rest = whole.slice(S.ROW_GROUP_ROWS)
                    buf, have = [rest], rest.num_rows
            if have:
                writer.write_table(pa.concat_tables(buf), row_group_size=S.ROW_GROUP_ROWS)

    atomic_write(out, write)
