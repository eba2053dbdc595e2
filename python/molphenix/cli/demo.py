"""``molphenix demo``: the main job (see :mod:`molphenix.demo`).

Registered on the app by :func:`register`; errors follow :mod:`molphenix.cli._errors`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from molphenix.cli._errors import non_negative_int, threads_option, usage_error

__all__ = ["demo_command", "register"]


def demo_command(
    out: Path = typer.Option(Path("molphenix-demo"), "--out", help="Output directory (rerun with the same --out to resume)."),
    quick: bool = typer.Option(False, "--quick", help="A smaller run: at most about 2 minutes on 2 CPU cores (default run: about 10)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the simulation and every training run.", callback=non_negative_int),
    threads: Optional[int] = threads_option("CPU threads for torch (default: torch's setting); must be >= 1"),
    tiny: bool = typer.Option(False, "--tiny", hidden=True, help="seconds-long smoke sizes (tests)"),
    methods: Optional[str] = typer.Option(None, "--methods", hidden=True, help="comma-separated subset of methods (tests)"),
) -> None:
    """Simulate data, train MolPhenix, the baselines and the ablations, and write DIR/report.md."""
    import torch

    from molphenix.demo import METHODS, run_demo

    if out.exists() and not out.is_dir():
        usage_error("--out", f"{out} exists and is not a directory")
    chosen = None
    if methods is not None:
        chosen = [m.strip() for m in methods.split(",") if m.strip()]
        bad = [m for m in chosen if m not in METHODS]
        if bad:
            usage_error("--methods", f"unknown method {bad[0]!r}; expected some of {', '.join(METHODS)}")
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        report = run_demo(out, quick=quick, seed=seed, profile="tiny" if tiny else None, methods=chosen,
                          log=typer.echo)
    except ValueError as exc:
        msg = str(exc)
        if msg.startswith("out: "):
            usage_error("--out", msg[len("out: "):])
        raise
    typer.echo(f"done: open {report}")


def register(app: typer.Typer) -> None:
    """Add ``demo`` to ``app``."""
    app.command("demo", help="The main job: simulate, train MolPhenix and baselines, evaluate, write a report.")(
        demo_command)
