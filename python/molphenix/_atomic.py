"""Atomic file writes, shared by every layer that writes files a reader (or a resumed run) relies on.

A write goes to a temporary file in the target's directory, is flushed and fsynced, then renamed
over the target with ``os.replace``: a reader, or a process killed at any instant, sees the old
file or the new one, never a torn one. Root-level and private: it imports no molphenix subpackage,
so every subpackage may use it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Union

__all__ = ["atomic_write", "atomic_write_bytes", "fsync_dir"]

PathLike = Union[str, "os.PathLike[str]"]


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Write a file atomically: ``write(f)`` fills a temporary file in the same directory, which
    is fsynced and then renamed over ``path`` (``os.replace``); on any error the temporary file
    is removed and ``path`` is untouched. Creates the parent directory.

    Args:
        path: Destination file.
        write: Fills the open binary file it is given.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`). Returns the path."""
    return atomic_write(path, lambda f: f.write(data))


def fsync_dir(d: PathLike) -> None:
    """fsync a directory, so a rename inside it survives a power loss (a no-op where the platform
    has no directory file descriptors)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
