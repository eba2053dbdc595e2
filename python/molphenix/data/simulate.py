"""The simulator's module name, kept for ``python -m molphenix.data.simulate ...``.

The simulator itself lives in :mod:`molphenix.data.simulator`. Run from the command line, this
module is the ``molphenix simulate`` command itself (same flags, output and errors), not a second
implementation: ``python -m molphenix.data.simulate --out DIR`` == ``molphenix simulate --out DIR``.
"""

from __future__ import annotations

import sys
from typing import Sequence

from .simulator import SIMULATOR_VERSION, SimulatorConfig, simulate

__all__ = ["SIMULATOR_VERSION", "SimulatorConfig", "main", "simulate"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``molphenix simulate`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    from molphenix.cli.main import main as cli_main  # the CLI sits above the data layer

    return cli_main(["simulate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
