"""The run directory: its lock, its checks on resume, its set-up files and ``train_log.csv``.

Rank 0 of a run owns the directory (layout in :mod:`molphenix.train.loop`). Nothing here trains:
these are the file-level rules that make a run resumable and safe to run twice.
"""

from __future__ import annotations

import csv
import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np

from molphenix._atomic import atomic_write_bytes

from .checkpoint import load_checkpoint
from .config import TrainConfig
from .inputs import dataset_fingerprint

__all__ = ["LOG_COLUMNS", "LOCK", "SETUP_FILES", "run_lock", "open_run", "setup_run", "truncate_log",
           "open_log", "write_json", "versions", "cached_calls"]

#: Columns of ``RUN/train_log.csv``: one row per step. ``val_recall`` (top-``eval_fraction``
#: recall of the active validation queries) and ``val_mrr`` (MRR of all validation queries) are
#: filled on validation steps only; ``soft_pos_frac`` every few steps (:data:`molphenix.train.steps.STATS_EVERY`);
#: ``world_size`` is the number of data-parallel processes that took the step (1 without torchrun).
LOG_COLUMNS = ("step", "epoch", "batch", "samples_seen", "loss", "lr", "t", "b", "soft_pos_frac",
               "grad_norm", "samples_per_s", "elapsed_s", "val_recall", "world_size", "val_mrr")

#: Files a fresh start (re)writes; a start killed before its first checkpoint redoes them.
SETUP_FILES = ("config.json", "dataset.json", "versions.json", "run.json", "split.parquet",
               "calls.parquet", "train_log.csv")

#: The advisory lock file held while a process trains the run.
LOCK = ".lock"


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as indented, key-sorted JSON, written atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def versions() -> Dict[str, Any]:
    """Versions of the stack, recorded in ``RUN/versions.json``."""
    import platform

    import pyarrow
    import torch

    import molphenix

    out: Dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pyarrow": pyarrow.__version__,
        "molphenix": molphenix.__version__,
    }
    try:
        import rdkit

        out["rdkit"] = rdkit.__version__
    except ImportError:  # pragma: no cover
        out["rdkit"] = None
    try:
        out["build_info"] = molphenix.build_info()
    except Exception as exc:  # noqa: BLE001 - the extension may be missing
        out["build_info"] = {"error": str(exc)}
    return out


def _not_a_run(run: Path) -> ValueError:
    return ValueError(f"out: {run} is not empty and holds no molphenix run (config.json); "
                      "choose another directory")


@contextmanager
def run_lock(run: Path):
    """Hold an exclusive advisory lock on ``RUN/.lock`` while training (two processes writing
    one run would interleave checkpoints); the OS drops it when the process dies, even by
    SIGKILL, so a killed run never leaves a stale lock.

    Raises:
        ValueError: ``run`` is a file, a non-empty directory without a run, or locked by
            another process.
    """
    if run.exists() and not run.is_dir():
        raise ValueError(f"out: {run} exists and is not a directory")
    if run.is_dir() and not (run / "config.json").is_file() and any(p.name != LOCK for p in run.iterdir()):
        raise _not_a_run(run)
    run.mkdir(parents=True, exist_ok=True)
    f = open(run / LOCK, "a+")
    try:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - no advisory locks (Windows): run unlocked
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise ValueError(f"out: {run} is being trained by another process; wait for it "
                                 "or choose another --out") from None
        yield
    finally:
        f.close()


def open_run(run: Path, cfg: TrainConfig, fingerprint: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """Prepare ``run`` for training; return the last checkpoint when resuming (else None).

    Raises:
        ValueError: ``run`` holds something else, or a run with another config or dataset
            (what differs is named).
    """
    is_run = (run / "config.json").is_file()
    if any(p.name != LOCK for p in run.iterdir()) and not is_run:
        raise _not_a_run(run)
    if cfg.overwrite and is_run:
        for p in run.iterdir():  # everything but the lock this process holds
            if p.name == LOCK:
                continue
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        is_run = False
    (run / "checkpoints").mkdir(exist_ok=True)
    if not is_run:
        return None
    try:
        old = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"out: {run}/config.json is unreadable ({exc}); pass overwrite=True "
                         "(--overwrite) to start over") from None
    diffs = cfg.differences(old)
    if diffs:
        desc = "; ".join(f"{k}: {a!r} now vs {b!r} in the run" for k, (a, b) in diffs.items())
        raise ValueError(f"out: {run} holds a run with a different config ({desc}); pass "
                         "overwrite=True (--overwrite) to start over, or choose another --out")
    ds_file = run / "dataset.json"
    if ds_file.is_file():
        old_fp = json.loads(ds_file.read_text())
        if old_fp.get("sha256") != fingerprint["sha256"]:
            what = [k for k in ("n_wells", "n_molecules", "embedding_dim") if old_fp.get(k) != fingerprint.get(k)]
            detail = ", ".join(f"{k} {old_fp.get(k)} -> {fingerprint.get(k)}" for k in what) or "same sizes, different values"
            raise ValueError(f"data: the dataset differs from the one run {run} was trained on "
                             f"(fingerprint {old_fp.get('sha256', '?')[:12]} vs {fingerprint['sha256'][:12]}: "
                             f"{detail}); pass overwrite=True (--overwrite) to start over")
    last = run / "checkpoints" / "last.pt"
    if last.is_file():
        return load_checkpoint(last)
    return None


def truncate_log(path: Path, step: int) -> None:
    """Keep the header and the complete rows with ``step <= step`` (a killed run may have
    logged steps past its last checkpoint, or half a line)."""
    if not path.is_file():
        return
    keep = []
    with open(path, newline="") as f:
        lines = f.read().splitlines(keepends=True)
    # a log written before a column was added (e.g. world_size) gets the new header, its rows
    # an empty value in the new columns
    pad = ""
    if lines:
        head = lines[0].rstrip("\r\n").split(",")
        if head != list(LOG_COLUMNS) and head == list(LOG_COLUMNS[: len(head)]):
            pad = "," * (len(LOG_COLUMNS) - len(head))
    for i, line in enumerate(lines):
        if i == 0:
            keep.append(",".join(LOG_COLUMNS) + "\n" if pad else line)
            continue
        if not line.endswith("\n"):
            break
        try:
            s = int(line.split(",", 1)[0])
        except ValueError:
            break
        if s <= step:
            keep.append(line[:-1] + pad + "\n" if pad else line)
    atomic_write_bytes(path, "".join(keep).encode())


def open_log(run: Path):
    """``RUN/train_log.csv`` opened for appending (the header written to a new log)."""
    log_path = run / "train_log.csv"
    new_log = not log_path.is_file() or log_path.stat().st_size == 0
    logf = open(log_path, "a", newline="")
    if new_log:
        csv.writer(logf, lineterminator="\n").writerow(LOG_COLUMNS)
        logf.flush()
    return logf


def setup_run(run: Path, cfg: TrainConfig, ds: Any, total: int, say: Callable[[str], None]) -> Dict[str, Any]:
    """Rank 0: check and open the run directory, write the set-up files, and get the activity
    calls and the split (computed and saved on a fresh start, read back when resuming).

    Returns:
        dict ``ckpt`` (the checkpoint to resume from, or None), ``calls``, ``splits`` and
        ``finished`` (the message for a run that is already complete, else None).

    Raises:
        ValueError: what :func:`open_run` raises.
    """
    fp = dataset_fingerprint(ds)
    ckpt = open_run(run, cfg, fp)
    out: Dict[str, Any] = {"ckpt": ckpt, "calls": None, "splits": None, "finished": None}
    if ckpt is not None and ckpt.get("finished"):
        out["finished"] = (f"run {run} already finished ({ckpt['step']} of {ckpt.get('total_steps', total)} steps); "
                           "nothing to do (overwrite=True / --overwrite starts over)")
        out["ckpt"] = None
        return out
    resuming = ckpt is not None
    if not resuming:
        # a fresh start (or a start killed before its first checkpoint): redo the setup
        for f in SETUP_FILES:
            (run / f).unlink(missing_ok=True)
        (run / "checkpoints" / "best.pt").unlink(missing_ok=True)
        write_json(run / "dataset.json", fp)
        write_json(run / "versions.json", versions())
    write_json(run / "config.json", cfg.to_dict())
    out["calls"] = _calls(run, cfg, ds, resuming, say, fp["sha256"])
    out["splits"] = _splits(run, cfg, ds, resuming)
    return out


#: Activity calls computed in this process, by (dataset sha256, p_cutoff, split_seed): the calls
#: are a deterministic function of these, and a cross-validation computes them for every run
#: (seconds each on a real screen); a few datasets at most are kept.
_CALLS_MEMO: Dict[tuple, Any] = {}
_CALLS_MEMO_SIZE = 4


def cached_calls(ds: Any, sha256: str, p_cutoff: float, seed: int) -> Any:
    """:func:`molphenix.data.call_activity` of ``ds`` (``cutoff=p_cutoff, seed=seed``), computed
    once per process for the dataset whose fingerprint is ``sha256``.

    Returns:
        The calls table (the same object for the same key: do not modify it).
    """
    from molphenix.data import call_activity

    key = (str(sha256), float(p_cutoff), int(seed))
    if key not in _CALLS_MEMO:
        while len(_CALLS_MEMO) >= _CALLS_MEMO_SIZE:
            _CALLS_MEMO.pop(next(iter(_CALLS_MEMO)))
        _CALLS_MEMO[key] = call_activity(ds, cutoff=p_cutoff, seed=seed)
    return _CALLS_MEMO[key]


def _calls(run: Path, cfg: TrainConfig, ds: Any, resuming: bool, say: Callable[[str], None], sha256: str):
    from molphenix.data.io import load_calls, save_calls

    if ds.calls is not None:
        return ds.calls
    path = run / "calls.parquet"
    if resuming and path.is_file():
        return load_calls(path)
    say("computing activity calls (the dataset has no calls.parquet)")
    calls = cached_calls(ds, sha256, cfg.p_cutoff, cfg.split_seed)
    save_calls(calls, path)
    return calls


def _splits(run: Path, cfg: TrainConfig, ds: Any, resuming: bool):
    from molphenix.data import Splits

    path = run / "split.parquet"
    if resuming and path.is_file():
        return Splits.load(path, ds)
    sp = cfg.make_splits(ds)
    sp.save(path)
    return sp
