"""``molphenix cv``: grouped k-fold cross-validation of several methods (see
:mod:`molphenix.experiment.cv`).

Registered on the app by :func:`register`; errors follow :mod:`molphenix.cli._errors`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Optional

import typer

from molphenix.cli._errors import dataset_dir, non_negative_int, positive_int, threads_option, usage_error

__all__ = ["cv_command", "register"]

# library field / argument names -> the flag that sets them
_FLAGS = {
    "data": "--data", "out": "--out", "folds": "--folds", "methods": "--methods", "reference": "--reference",
    "match": "--match", "checkpoint": "--checkpoint", "n_bootstrap": "--bootstrap", "split_seed": "--split-seed",
    "seed": "--seed", "samples": "--samples", "steps": "--steps", "batch_size": "--batch-size", "lr": "--lr",
    "model": "--model", "device": "--device", "threads": "--threads", "loss": "--methods",
}


def cv_command(
    data: Path = typer.Option(..., "--data", help="Dataset directory, or a bundled dataset's name (cell-injury)."),
    out: Path = typer.Option(..., "--out", help="Cross-validation directory (rerun with the same --out to resume)."),
    folds: int = typer.Option(5, "--folds", help="Number of scaffold-grouped folds K (>= 2).", callback=positive_int),
    methods: str = typer.Option("s2l,clip,siglip,cloome,ridge", "--methods",
                                help="Comma-separated methods: losses (s2l, clip, siglip, cloome, infoloob, cwcl) "
                                     "and ridge (the closed-form baseline)."),
    config: Optional[Path] = typer.Option(None, "--config", help="JSON or YAML file of TrainConfig fields shared by "
                                          "every learned method (flags override it)."),
    samples: Optional[int] = typer.Option(None, "--samples", help="Samples seen by every learned method in every fold, "
                                          "in full (default: min(256000, 250 epochs of the fold's training split), "
                                          "stopping early on a small training set).", callback=positive_int),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps instead of --samples.", callback=positive_int),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Samples per step (default: each loss's).",
                                             callback=positive_int),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (default: each loss's)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model config name (default molphenix-small)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Training seed of every run (default 0).",
                                       callback=non_negative_int),
    split_seed: int = typer.Option(0, "--split-seed", help="Seed of the fold partition and of each fold's "
                                   "validation draw.", callback=non_negative_int),
    match: str = typer.Option("pair", "--match", help="pair (the true (molecule, concentration)) or molecule."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best (each fold's validation) or last."),
    bootstrap: int = typer.Option(2000, "--bootstrap", help="Cluster-bootstrap resamples of the pooled intervals "
                                  "and comparisons.", callback=positive_int),
    reference: Optional[str] = typer.Option(None, "--reference", help="Method the others are compared with "
                                            "(default: the first of --methods)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu (default) or cuda (learned methods)."),
    threads: Optional[int] = threads_option("CPU threads for torch (default: torch's setting); must be >= 1"),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Training progress bars "
                                            "(default: when a TTY)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete the cross-validation in --out and start over."),
) -> None:
    """Grouped k-fold cross-validation: train and evaluate every method on the same scaffold folds,
    pool the per-query ranks, compare the methods (cluster bootstrap over molecules).

    Every molecule is tested once, in its fold. Inside a fold, a validation set of whole scaffold
    groups (the run's val_fraction of all molecules) is drawn from the other folds and picks the
    best checkpoint; --split-seed fixes both the folds and these draws. Writes OUT/results.json
    and OUT/report.md; each fold of each method is a run directory OUT/METHOD/fold-K."""
    import torch

    from molphenix.experiment import run_cv
    from molphenix.experiment.report import cv_summary

    data = dataset_dir(data)
    if out.exists() and not out.is_dir():
        usage_error("--out", f"{out} exists and is not a directory")
    if match not in ("pair", "molecule"):
        usage_error("--match", f"must be pair or molecule, got {match!r}")
    if checkpoint not in ("best", "last"):
        usage_error("--checkpoint", f"must be best or last, got {checkpoint!r}")
    if folds < 2:
        usage_error("--folds", f"must be >= 2, got {folds}")
    if device is not None and device not in ("cpu", "cuda"):
        usage_error("--device", f"must be cpu or cuda, got {device!r}")
    if steps is not None and samples is not None:
        usage_error("--steps", "give either --steps or --samples, not both")
    names = [m.strip() for m in methods.split(",") if m.strip()]
    if not names:
        usage_error("--methods", "no method given")
    train: Dict[str, Any] = {}
    if config is not None:
        if not config.is_file():
            usage_error("--config", f"{config}: file not found")
        train.update(_read_config(config))
    flags = dict(samples=samples, steps=steps, batch_size=batch_size, lr=lr, model=model, seed=seed,
                 device=device, threads=threads, progress=progress)
    if steps is not None:
        train.pop("samples", None)
        train.pop("epochs", None)
    if samples is not None:
        train.pop("steps", None)
        train.pop("epochs", None)
    train.update({k: v for k, v in flags.items() if v is not None})
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        res = run_cv(data, out, names, folds=folds, split_seed=split_seed, train=train, match=match,
                     checkpoint=checkpoint, n_bootstrap=bootstrap, reference=reference, overwrite=overwrite,
                     log=typer.echo)
    except ValueError as exc:
        msg = str(exc)
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*): (.*)$", msg, re.S)
        if m and m.group(1) in _FLAGS:
            usage_error(_FLAGS[m.group(1)], m.group(2))
        if m and config is not None:
            usage_error("--config", msg)
        raise
    typer.echo(cv_summary(res.results))
    typer.echo(f"done: {res.report}")


def _read_config(path: Path) -> Dict[str, Any]:
    import json

    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            d = yaml.safe_load(text)
        else:
            d = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - json and yaml raise different errors
        usage_error("--config", f"{path}: cannot parse ({exc})")
    if d is None:
        d = {}
    if not isinstance(d, dict):
        usage_error("--config", f"{path}: expected a mapping of TrainConfig fields, got {type(d).__name__}")
    return {k.replace("-", "_") if isinstance(k, str) else k: v for k, v in d.items()}


def register(app: typer.Typer) -> None:
    """Add ``cv`` to ``app``."""
    app.command("cv", short_help="Grouped k-fold cross-validation of several methods on one dataset; "
                                 "pooled, paired results.")(cv_command)
