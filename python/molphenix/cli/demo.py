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
    data: Optional[str] = typer.Option(None, "--data", help="Run on a bundled real dataset (cell-injury) with grouped "
                                       "k-fold cross-validation instead of the simulator."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (rerun with the same --out to resume; "
                                       "default molphenix-demo, or molphenix-demo-<data>)."),
    quick: bool = typer.Option(False, "--quick", help="A smaller run: simulator about 2 minutes on 2 CPU cores "
                               "(default run: about 10); --data: 3 folds and a smaller budget, at most 3 minutes "
                               "(default: 5 folds, at most 15)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the simulation and every training run.",
                             callback=non_negative_int),
    threads: Optional[int] = threads_option("CPU threads for torch (default: torch's setting); must be >= 1"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete the demo in --out and start over."),
    tiny: bool = typer.Option(False, "--tiny", hidden=True, help="seconds-long smoke sizes (tests)"),
    methods: Optional[str] = typer.Option(None, "--methods", hidden=True, help="comma-separated subset of methods (tests)"),
) -> None:
    """Simulate data (or take a bundled real screen with --data), train MolPhenix, the baselines and
    the ablations with the same budget, and write DIR/report.md."""
    import torch

    if data is not None:
        from molphenix.demo.real import MINIMOL_METHODS, REAL_DATASETS, REAL_METHODS

        key = data.replace("_", "-")
        if key not in REAL_DATASETS:
            usage_error("--data", f"unknown dataset {data!r}; expected a bundled dataset: {', '.join(REAL_DATASETS)} "
                                  "(your own data: molphenix cv --data DIR)")
        data = key
        known = [*REAL_METHODS, *MINIMOL_METHODS]
    else:
        from molphenix.demo import METHODS

        known = list(METHODS)
    if out is None:
        out = Path("molphenix-demo" if data is None else f"molphenix-demo-{data}")
    if out.exists() and not out.is_dir():
        usage_error("--out", f"{out} exists and is not a directory")
    chosen = None
    if methods is not None:
        chosen = [m.strip() for m in methods.split(",") if m.strip()]
        bad = [m for m in chosen if m not in known]
        if bad:
            usage_error("--methods", f"unknown method {bad[0]!r}; expected some of {', '.join(known)}")
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        if data is None:
            from molphenix.demo import run_demo

            report = run_demo(out, quick=quick, seed=seed, profile="tiny" if tiny else None, methods=chosen,
                              overwrite=overwrite, log=typer.echo)
        else:
            from molphenix.demo.real import run_real_demo

            command = _command(data, out, quick, seed, threads, tiny, methods, overwrite)
            report = run_real_demo(out, data=data, quick=quick, seed=seed, profile="tiny" if tiny else None,
                                   methods=chosen, overwrite=overwrite, command=command, log=typer.echo)
    except ValueError as exc:
        msg = str(exc)
        if msg.startswith("out: "):
            usage_error("--out", msg[len("out: "):])
        raise
    typer.echo(f"done: open {report}")


def _command(data: str, out: Path, quick: bool, seed: int, threads: Optional[int], tiny: bool,
             methods: Optional[str], overwrite: bool) -> str:
    """The command line as run (flags in a fixed order), for the report."""
    import shlex

    argv = ["molphenix", "demo", "--data", data, "--out", str(out)]
    argv += ["--quick"] if quick else []
    argv += ["--seed", str(seed)] if seed else []
    argv += ["--threads", str(threads)] if threads is not None else []
    argv += ["--tiny"] if tiny else []
    argv += ["--methods", methods] if methods is not None else []
    argv += ["--overwrite"] if overwrite else []
    return shlex.join(argv)


def register(app: typer.Typer) -> None:
    """Add ``demo`` to ``app``."""
    app.command("demo", help="The main job: simulate (or take a bundled real screen with --data), train MolPhenix "
                             "and baselines, evaluate, write a report.")(
        demo_command)
