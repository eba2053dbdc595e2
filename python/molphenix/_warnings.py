"""Warnings that point at the user's line, however deep inside molphenix they are raised.

A fixed ``stacklevel`` is right for one call path only (a helper called from two public
functions, or an op reached through ``torch.library`` dispatch, lands the warning inside
molphenix or torch). :func:`warn` instead walks up the stack past every frame that belongs to
molphenix or torch and attributes the warning to the first frame outside them: the caller's line.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Optional, Tuple, Type

__all__ = ["warn", "external_stacklevel"]

_MOLPHENIX_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_internal_dirs: Optional[Tuple[str, ...]] = None


def _dirs() -> Tuple[str, ...]:
    global _internal_dirs
    if _internal_dirs is None:
        dirs = [_MOLPHENIX_DIR]
        torch = sys.modules.get("torch")
        if torch is not None and getattr(torch, "__file__", None):
            dirs.append(os.path.dirname(os.path.abspath(torch.__file__)) + os.sep)
        _internal_dirs = tuple(dirs)
    return _internal_dirs


def external_stacklevel() -> int:
    """``stacklevel`` for a ``warnings.warn`` in the caller that lands on the first frame outside
    molphenix and torch (the outermost frame if there is none, e.g. ``python -m molphenix``)."""
    frame = sys._getframe(1)  # the function that will call warnings.warn: stacklevel 1
    level = 1
    dirs = _dirs()
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(dirs):
        frame = frame.f_back
        level += 1
    return level


def warn(message: str, category: Type[Warning] = UserWarning) -> None:
    """``warnings.warn(message, category)`` attributed to the first frame outside molphenix/torch.

    Args:
        message: The warning text.
        category: Warning class.
    """
    warnings.warn(message, category, stacklevel=external_stacklevel())
