"""Where the datasets that ship with molphenix live: bundled name -> directory.

The files are package data of :mod:`molphenix.datasets` (its public face: ``names``, ``path``,
``cell_injury_path``, ``load``); the lookup lives here, in the data layer, so that
:func:`molphenix.data.load_dataset` can find a bundled dataset by name while ``molphenix.datasets``
imports the data layer and never the reverse.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["names", "path"]

#: The directory of the bundled datasets (package data of molphenix.datasets).
DATASETS_DIR = Path(__file__).resolve().parents[1] / "datasets"
#: bundled name -> directory inside DATASETS_DIR
_BUNDLED = {"cell-injury": "cell_injury"}


def names() -> list[str]:
    """Names of the bundled datasets."""
    return sorted(_BUNDLED)


def path(name: str) -> Path:
    """Directory of a bundled dataset.

    Args:
        name: A name from :func:`names` (``"cell-injury"``; ``cell_injury`` is accepted too).

    Returns:
        The dataset directory (``wells.parquet``, ``molecules.parquet``, ``meta.json``, plus the
        dataset's ``README.md`` and ``NOTICE``).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
        FileNotFoundError: the package was installed without its data files.
    """
    key = str(name).replace("_", "-")
    if key not in _BUNDLED:
        raise ValueError(f"no bundled dataset {name!r}; bundled: {', '.join(names())}")
    root = DATASETS_DIR / _BUNDLED[key]
    if not (root / "wells.parquet").is_file():
        raise FileNotFoundError(f"{root / 'wells.parquet'} is missing: this molphenix was installed without its "
                                "bundled data files")
    return root
