"""Checkpoints: atomic writes, safe loads (``weights_only=True``) and RNG state capture.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts -- no pickled
objects -- so ``torch.load(path, weights_only=True)`` reads it. Writes go to a temporary file
in the same directory, are fsynced, then ``os.replace``d over the target (and the directory is
fsynced): a reader, or a run killed at any instant, sees either the previous checkpoint or the
new one, never a torn file.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

from molphenix._atomic import atomic_write, fsync_dir

__all__ = ["save_checkpoint", "load_checkpoint", "capture_rng", "restore_rng", "CHECKPOINT_FORMAT"]

#: Version of the checkpoint dict layout.
CHECKPOINT_FORMAT = 1


def save_checkpoint(obj: Dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``obj`` with ``torch.save`` atomically.

    Args:
        obj: The checkpoint dict (tensors and plain Python values only).
        path: Destination file (its directory must exist).

    Returns:
        The path written.
    """
    path = atomic_write(path, lambda f: torch.save(obj, f))
    fsync_dir(path.parent)
    return path


def load_checkpoint(path: str | os.PathLike, *, map_location: Any = "cpu") -> Dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``: no arbitrary code runs).

    Args:
        path: The ``.pt`` file.
        map_location: Where tensors are loaded.

    Returns:
        The checkpoint dict.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a molphenix checkpoint, or an unknown format version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises assorted unpickling errors
        raise ValueError(f"{path}: not a readable checkpoint ({exc})") from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a molphenix checkpoint (format {CHECKPOINT_FORMAT} expected)")
    return obj


def capture_rng() -> Dict[str, Any]:
    """Every global RNG state, as tensors and plain lists/ints.

    Returns:
        dict with ``torch`` (ByteTensor), ``cuda`` (list of ByteTensor, one per device; empty
        without CUDA), ``numpy`` (the legacy global generator: ``[name, keys list, pos,
        has_gauss, cached_gaussian]``) and ``python`` (``random.getstate()`` as lists).
    """
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": [str(np_state[0]), [int(v) for v in np_state[1]], int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": [int(py_state[0]), [int(v) for v in py_state[1]], py_state[2]],
    }


def restore_rng(state: Dict[str, Any]) -> None:
    """Restore what :func:`capture_rng` captured.

    Args:
        state: The dict from :func:`capture_rng` (possibly after a save/load round trip).
    """
    torch.set_rng_state(state["torch"].cpu() if hasattr(state["torch"], "cpu") else state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([c.cpu() for c in cuda])
    n = state.get("numpy")
    if n:
        np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = state.get("python")
    if p:
        random.setstate((p[0], tuple(p[1]), p[2]))
