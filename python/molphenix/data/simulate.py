"""``python -m molphenix.data.simulate --out DIR --molecules N --seed S``.

The simulator itself lives in :mod:`molphenix.data.simulator`; this module re-exports it and is
the command-line entry point.
"""

from __future__ import annotations

from .simulator import SIMULATOR_VERSION, SimulatorConfig, main, simulate

__all__ = ["SIMULATOR_VERSION", "SimulatorConfig", "main", "simulate"]

if __name__ == "__main__":
    raise SystemExit(main())
