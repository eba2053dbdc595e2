"""``molphenix simulate``, ``molphenix call-activity`` and ``molphenix featurize``: the data layer's
commands (``molphenix import-profiles`` lives in :mod:`molphenix.cli.profiles` and is registered here too).

Registered on the app by :func:`register`; errors follow :mod:`molphenix.cli._errors`
(``error: --flag: message``).
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Optional

import typer

from molphenix.cli._errors import (data_error, dataset_dir, describe_os_error, non_negative_int, positive_int, threads_option,
                                   usage_error)
from molphenix.data.activity import DEFAULT_CUTOFF
from molphenix.data.simulator import SimulatorConfig as _D

__all__ = ["call_activity_command", "featurize_command", "register", "simulate_command"]

# library parameter names that appear in ValueError messages -> the flag the user typed
_SIMULATE_FLAGS = {
    "n_molecules": "--molecules",
    "second_library_fraction": "--second-library-fraction",
    "min_replicates": "--min-replicates",
    "max_replicates": "--max-replicates",
    "embedding_dim": "--embedding-dim",
    "effect_scale": "--effect-scale",
}
_CALL_FLAGS = {"cutoff": "--cutoff", "n_null": "--n-null"}


def _reraise_with_flag(exc: ValueError, flags: dict) -> None:
    """Re-raise a library ``ValueError`` as ``error: --flag: ...`` when its message names one."""
    msg = str(exc)
    named = [(name, flag) for name, flag in flags.items() if re.search(rf"\b{name}\b", msg)]
    if not named:
        raise exc
    first_name, first_flag = min(named, key=lambda nf: re.search(rf"\b{nf[0]}\b", msg).start())
    if msg.startswith(first_name + " "):  # "n_molecules must be >= 2" -> "--molecules: must be >= 2"
        msg = msg[len(first_name) + 1:]
    for name, flag in named:
        msg = re.sub(rf"\b{name}\b", flag, msg)
    usage_error(first_flag, msg)


def simulate_command(
    out: Path = typer.Option(..., "--out", help="Output dataset directory (created if missing)."),
    molecules: int = typer.Option(_D.n_molecules, "--molecules", help="Number of molecules (both libraries).",
                                  callback=positive_int),
    seed: int = typer.Option(0, "--seed", help="Seed (same seed -> identical files).",
                             callback=non_negative_int),
    min_replicates: int = typer.Option(_D.min_replicates, "--min-replicates", help="Minimum replicate wells per (molecule, dose).",
                                       callback=positive_int),
    max_replicates: int = typer.Option(_D.max_replicates, "--max-replicates", help="Maximum replicate wells per (molecule, dose).",
                                       callback=positive_int),
    embedding_dim: int = typer.Option(_D.embedding_dim, "--embedding-dim", help="Phenomic embedding width E.",
                                      callback=positive_int),
    effect_scale: float = typer.Option(_D.effect_scale, "--effect-scale", help="Median maximal effect, in well-noise units."),
    second_library_fraction: float = typer.Option(
        _D.second_library_fraction, "--second-library-fraction", help="Fraction of molecules in the unseen second library (0: one dataset)."),
    calls: bool = typer.Option(True, "--calls/--no-calls", help="Compute activity p-values (calls.parquet)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing dataset in --out."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bar (default: when a TTY)."),
) -> None:
    """Simulate a realistic phenomolecular screen (offline, seeded) into --out."""
    from molphenix.data.simulator import simulate, summary

    if out.exists() and not out.is_dir():
        usage_error("--out", f"{out} exists and is not a directory")
    if (out / "wells.parquet").exists() and not overwrite:
        usage_error("--out", f"{out / 'wells.parquet'} exists; pass --overwrite")
    params = dict(n_molecules=molecules, min_replicates=min_replicates, max_replicates=max_replicates,
                  embedding_dim=embedding_dim, effect_scale=effect_scale,
                  second_library_fraction=second_library_fraction)
    if not (math.isfinite(effect_scale) and effect_scale >= 0):
        usage_error("--effect-scale", f"must be finite and >= 0, got {effect_scale}")
    try:
        _D(**params)  # validate before anything is written
    except ValueError as exc:
        _reraise_with_flag(exc, _SIMULATE_FLAGS)
    t0 = time.perf_counter()
    existed = out.exists()
    try:
        root = simulate(out, seed=seed, call_activity=calls, return_dataset=False, overwrite=overwrite,
                        progress=progress, **params)
    except BaseException as exc:
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # leave no empty directory behind a failed run
        if isinstance(exc, (FileNotFoundError, NotADirectoryError, PermissionError)):
            usage_error("--out", f"cannot write the dataset: {describe_os_error(exc)}")
        if isinstance(exc, ValueError):  # e.g. more molecules than the bundled libraries hold
            _reraise_with_flag(exc, _SIMULATE_FLAGS)
        raise
    typer.echo(summary(root, time.perf_counter() - t0))


def call_activity_command(
    dataset: Path = typer.Argument(..., metavar="DATASET", help="Dataset directory."),
    cutoff: float = typer.Option(DEFAULT_CUTOFF, "--cutoff", help="active = p < cutoff."),
    n_null: int = typer.Option(10000, "--n-null", help="Null sets per replicate count.", callback=positive_int),
    seed: int = typer.Option(0, "--seed", help="Seed for the control split and null draws.",
                             callback=non_negative_int),
) -> None:
    """Compute activity p-values for DATASET and write DATASET/calls.parquet."""
    from molphenix.data.activity import call_activity, evaluate_calls
    from molphenix.data.io import load_dataset, save_calls

    if not 0 < cutoff <= 1:
        usage_error("--cutoff", f"must lie in (0, 1], got {cutoff}")
    if not dataset.is_dir():
        usage_error("DATASET", f"{dataset}: dataset directory not found")
    try:
        ds = load_dataset(dataset)
    except FileNotFoundError as exc:  # a required file of the dataset is missing
        usage_error("DATASET", str(exc))
    try:
        calls = call_activity(ds, cutoff=cutoff, n_null=n_null, seed=seed)
    except ValueError as exc:
        _reraise_with_flag(exc, _CALL_FLAGS)
    path = save_calls(calls, dataset)
    n_act = int(calls.column("active").to_numpy(zero_copy_only=False).sum())
    msg = f"wrote {path}: {calls.num_rows} samples, {n_act} active (p < {cutoff})"
    if ds.truth is not None:
        msg += f"; ROC AUC vs truth {evaluate_calls(calls, ds.truth)['roc_auc']:.3f}"
    typer.echo(msg)


#: mol_input values with a machine-wide cache that ``featurize`` can fill
_PRECOMPUTED = ("minimol",)


def featurize_command(
    data: Path = typer.Option(..., "--data", help="Dataset directory (its molecules.parquet)."),
    mol_input: str = typer.Option("minimol", "--mol-input", help="Molecular input to precompute: minimol."),
    cache_dir: Optional[Path] = typer.Option(
        None, "--cache-dir", help="Cache root (default: $MOLPHENIX_CACHE_DIR, else ~/.cache/molphenix)."),
    threads: Optional[int] = threads_option("ONNX runtime threads (default: one per core); must be >= 1"),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bar (default: when a TTY)."),
) -> None:
    """Precompute the molecular embeddings of a dataset into the machine-wide cache."""
    from molphenix._extras import MissingExtraError
    from molphenix.data.io import load_dataset

    if mol_input not in _PRECOMPUTED:
        usage_error("--mol-input", f"only {', '.join(_PRECOMPUTED)} has a machine-wide cache to fill, got "
                                   f"{mol_input!r} (morgan, rdkit2d and maccs take seconds and are cached per run)")
    data = dataset_dir(data)
    if cache_dir is not None and cache_dir.exists() and not cache_dir.is_dir():
        usage_error("--cache-dir", f"{cache_dir} exists and is not a directory")
    from molphenix.data.minimol import MiniMol, require_minimol

    try:
        require_minimol()
    except MissingExtraError as exc:
        usage_error("--mol-input", str(exc))
    try:
        ds = load_dataset(data)
    except FileNotFoundError as exc:  # a required file of the dataset is missing
        usage_error("--data", str(exc))
    smiles = ds.molecules.column("smiles").to_pylist()
    f = MiniMol(threads=threads, cache_dir=cache_dir, progress=progress)
    try:
        f.compute(smiles, on_invalid="zero")
    except PermissionError as exc:
        data_error("--cache-dir", f"cannot write the cache: {describe_os_error(exc)}")
    st = f.last_stats
    load, work = st["model_load_seconds"], st["seconds"] - st["model_load_seconds"]
    rate = f", {st['computed'] / work:.1f} molecules/s" if st["computed"] and work > 0 else ""
    typer.echo(f"featurize {mol_input}: {st['molecules']} molecules ({st['distinct']} distinct structures): "
               f"{st['cached']} cached before, {st['computed']} computed, {st['failed']} failed, "
               f"{st['seconds']:.1f} s" + (f" (model load {load:.1f} s{rate})" if load else
                                          (f" ({rate[2:]})" if rate else "")))
    typer.echo(f"cache: {st['cache_dir']}")
    if st["failed"]:
        data_error("--data", f"{st['failed']} molecule(s) could not be embedded (training on this dataset "
                             f"with --mol-input {mol_input} names the first)")


def register(app: typer.Typer) -> None:
    """Add ``simulate``, ``call-activity``, ``featurize`` and ``import-profiles`` to ``app``."""
    from molphenix.cli.profiles import register as register_profiles

    app.command("simulate", help="Simulate a paired phenomic/molecular dataset (offline, seeded) into --out.")(
        simulate_command)
    app.command("call-activity", help="Activity p-values of a dataset's (molecule, concentration) samples.")(
        call_activity_command)
    app.command("featurize", help="Precompute a dataset's molecular embeddings (minimol) into the machine-wide cache.")(
        featurize_command)
    register_profiles(app)
