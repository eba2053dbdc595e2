"""Typer-style command functions for the data layer.

The core team's CLI (``molphenix.cli.main``) registers :func:`simulate_command` as
``molphenix simulate``. This module only needs ``typer`` for the annotations' metadata.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from .simulator import SimulatorConfig, simulate, summary

__all__ = ["simulate_command", "call_activity_command"]


def simulate_command(
    out: Annotated[Path, typer.Option("--out", help="Output dataset directory.")],
    molecules: Annotated[int, typer.Option("--molecules", help="Number of molecules (both libraries).")] = SimulatorConfig.n_molecules,
    seed: Annotated[int, typer.Option("--seed", help="Seed (same seed -> identical files).")] = 0,
    min_replicates: Annotated[int, typer.Option(help="Minimum replicate wells per (molecule, dose).")] = SimulatorConfig.min_replicates,
    max_replicates: Annotated[int, typer.Option(help="Maximum replicate wells per (molecule, dose).")] = SimulatorConfig.max_replicates,
    embedding_dim: Annotated[int, typer.Option(help="Phenomic embedding width E.")] = SimulatorConfig.embedding_dim,
    effect_scale: Annotated[float, typer.Option(help="Median maximal effect, in well-noise units.")] = SimulatorConfig.effect_scale,
    second_library_fraction: Annotated[float, typer.Option(help="Fraction of molecules in the unseen second library (0: one dataset).")] = SimulatorConfig.second_library_fraction,
    calls: Annotated[bool, typer.Option("--calls/--no-calls", help="Compute activity p-values (calls.parquet).")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing dataset in --out.")] = False,
    progress: Annotated[Optional[bool], typer.Option("--progress/--no-progress", help="Progress bar (default: when a TTY).")] = None,
) -> None:
    """Simulate a realistic phenomolecular screen (offline, seeded) into OUT."""
    t0 = time.perf_counter()
    root = simulate(
        out,
        n_molecules=molecules,
        seed=seed,
        min_replicates=min_replicates,
        max_replicates=max_replicates,
        embedding_dim=embedding_dim,
        effect_scale=effect_scale,
        second_library_fraction=second_library_fraction,
        call_activity=calls,
        return_dataset=False,
        overwrite=overwrite,
        progress=progress,
    )
    typer.echo(summary(root, time.perf_counter() - t0))


def call_activity_command(
    dataset: Annotated[Path, typer.Argument(help="Dataset directory.")],
    cutoff: Annotated[float, typer.Option(help="active = p < cutoff.")] = 0.1,
    n_null: Annotated[int, typer.Option(help="Null sets per replicate count.")] = 10000,
    seed: Annotated[int, typer.Option(help="Seed for the control split and null draws.")] = 0,
) -> None:
    """Compute activity p-values for DATASET and write DATASET/calls.parquet."""
    from .activity import call_activity, evaluate_calls
    from .io import load_dataset, save_calls

    ds = load_dataset(dataset)
    calls = call_activity(ds, cutoff=cutoff, n_null=n_null, seed=seed)
    path = save_calls(calls, dataset)
    n_act = int(calls.column("active").to_numpy(zero_copy_only=False).sum())
    msg = f"wrote {path}: {calls.num_rows} samples, {n_act} active (p < {cutoff})"
    if ds.truth is not None:
        msg += f"; ROC AUC vs truth {evaluate_calls(calls, ds.truth)['roc_auc']:.3f}"
    typer.echo(msg)
