"""Real datasets that ship with molphenix, in the molphenix dataset format.

=================  ==========================================================================
name               what
=================  ==========================================================================
``cell-injury``    U2OS Cell Painting profiles of reference compounds that cause known kinds
                   of cellular injury (Dahlin et al. 2023, Nat Commun 14:1364; profiles from
                   github.com/axiomcura/predicting-cell-injury-compounds), CC BY 4.0: 3,199
                   wells (1,752 treated, 1,447 DMSO), 111 structures, 352 CellProfiler
                   features, datasets ``cell-injury/24`` and ``cell-injury/48`` (hours).
=================  ==========================================================================

Each is a dataset directory inside the installed package (read-only; load it, or copy it
before changing it). Nothing is downloaded. ``molphenix.data.load_dataset("cell-injury")``
finds a bundled dataset by name when no directory of that name exists.

The name lookup is :mod:`molphenix.data.bundled` (the data layer finds bundled datasets by name
without importing this package); this package adds the files and :func:`load`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from molphenix.data.bundled import names, path

__all__ = ["cell_injury_path", "load", "names", "path"]


def cell_injury_path() -> Path:
    """Directory of the bundled cell-injury dataset (see the module docstring).

    Returns:
        The dataset directory; pass it wherever a dataset directory is expected
        (``molphenix train --data``, :func:`molphenix.data.load_dataset`).
    """
    return path("cell-injury")


def load(name: str, **kwargs: Any):
    """Load a bundled dataset (:func:`molphenix.data.load_dataset` on :func:`path`).

    Args:
        name: A name from :func:`names`.
        **kwargs: Passed to :func:`molphenix.data.load_dataset`.

    Returns:
        The :class:`molphenix.data.Dataset`.
    """
    from molphenix.data.io import load_dataset

    return load_dataset(path(name), **kwargs)
