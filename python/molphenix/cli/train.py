"""``molphenix train`` and ``molphenix evaluate``.

Registered on the app by :func:`register`; errors follow :mod:`molphenix.cli._errors`
(``error: --flag: message``, exit 2 for usage errors). Library ``ValueError`` messages that
start with a config field (``"lr: must be > 0"``) are reported under that field's flag.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Dict, Optional

import typer

from molphenix.cli._errors import data_error, non_negative_int, positive_int, threads_option, usage_error

__all__ = ["evaluate_command", "register", "train_command"]

# TrainConfig field -> the flag that sets it
_TRAIN_FLAGS = {
    "data": "--data", "out": "--out", "loss": "--loss", "model": "--model", "seed": "--seed",
    "device": "--device", "threads": "--threads", "checkpoint_every": "--checkpoint-every",
    "steps": "--steps", "samples": "--samples", "batch_size": "--batch-size", "lr": "--lr",
    "overwrite": "--overwrite", "dist_timeout": "--dist-timeout", "mol_input": "--mol-input",
}
_EVAL_FLAGS = {"data": "--data", "run": "--run", "match": "--match", "checkpoint": "--checkpoint",
               "splits": "--split", "out": "--out"}


def _flag_of(exc: ValueError, flags: Dict[str, str], fallback: Optional[str]) -> None:
    """Re-raise a ``"field: message"`` ValueError as ``error: --flag: message``."""
    msg = str(exc)
    m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*): (.*)$", msg, re.S)
    if m and m.group(1) in flags:
        usage_error(flags[m.group(1)], m.group(2))
    if m and fallback is not None:
        usage_error(fallback, msg)
    raise exc


def train_command(
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset directory (required unless --config sets it)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory; an existing run there is resumed."),
    loss: Optional[str] = typer.Option(None, "--loss", help="s2l (default), siglip, clip, infoloob, cloome or cwcl."),
    config: Optional[Path] = typer.Option(None, "--config", help="JSON or YAML file of TrainConfig fields (flags override it)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model config name (default molphenix-small) or a JSON path."),
    mol_input: Optional[str] = typer.Option(
        None, "--mol-input", help="Molecular input: morgan, rdkit2d, maccs, minimol (pretrained MiniMol, needs "
        'pip install "molphenix[minimol]"), graph or column:NAME (default: the model config\'s).'),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed (default 0).", callback=non_negative_int),
    device: Optional[str] = typer.Option(None, "--device", help="cpu (default) or cuda."),
    threads: Optional[int] = threads_option("CPU threads for torch (default: torch's setting); must be >= 1"),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps (instead of --samples).", callback=positive_int),
    samples: Optional[int] = typer.Option(None, "--samples", help="Samples seen in total (default 256000).", callback=positive_int),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Samples per step (default 256).", callback=positive_int),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (default: the loss's tuned default, TUNED_DEFAULTS; 1e-3)."),
    checkpoint_every: Optional[float] = typer.Option(None, "--checkpoint-every", help="Seconds between checkpoints (default 60; 0: every step)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete an existing run in --out and start over."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bar (default: when a TTY)."),
    dist_timeout: Optional[float] = typer.Option(
        None, "--dist-timeout", help="Under torchrun: seconds a rank waits for the others before it fails "
        "(default 300); a dead rank stops the run within this long, relaunching resumes it."),
) -> None:
    """Train MolPhenix (or a baseline loss) on DATA into the run directory --out.

    Data-parallel: ``torchrun --nproc_per_node N -m molphenix train ...`` (docs/distributed.md);
    the global batch stays --batch-size, split over the ranks."""
    from molphenix.train import TrainConfig, fit

    given: Dict[str, Any] = {k: v for k, v in dict(
        data=str(data) if data is not None else None, out=str(out) if out is not None else None,
        loss=loss, model=model, mol_input=mol_input, seed=seed, device=device, threads=threads, steps=steps, samples=samples,
        batch_size=batch_size, lr=lr, checkpoint_every=checkpoint_every, progress=progress,
        dist_timeout=dist_timeout).items()
        if v is not None}
    if overwrite:
        given["overwrite"] = True
    if device is not None and device not in ("cpu", "cuda"):
        usage_error("--device", f"must be cpu or cuda, got {device!r}")
    if loss is not None:
        from molphenix.losses import LOSSES

        if loss not in LOSSES:
            usage_error("--loss", f"unknown loss {loss!r}; expected one of {', '.join(LOSSES)}")
    if data is not None and not data.is_dir():
        usage_error("--data", f"{data}: dataset directory not found")
    try:
        if config is not None:
            if not config.is_file():
                usage_error("--config", f"{config}: file not found")
            if steps is not None:
                given.setdefault("samples", None)
            elif samples is not None:
                given.setdefault("steps", None)
            cfg = TrainConfig.from_file(config, **given)
        else:
            cfg = TrainConfig(**given)
    except ValueError as exc:
        _flag_of(exc, _TRAIN_FLAGS, "--config" if config is not None else None)
    if cfg.data is None:
        usage_error("--data", "required (the dataset directory)")
    if cfg.out is None:
        usage_error("--out", "required (the run directory)")
    if cfg.mol_input == "minimol":  # say it before any work, not after the data is loaded
        from molphenix._extras import MissingExtraError
        from molphenix.data.minimol import require_minimol

        try:
            require_minimol()
        except MissingExtraError as exc:
            usage_error("--mol-input" if mol_input is not None else "--config", str(exc))
    from molphenix.train import RankFailure

    try:
        run = fit(cfg, log=typer.echo)
    except ValueError as exc:
        _flag_of(exc, _TRAIN_FLAGS, None)
    except RankFailure as exc:  # a peer rank died or hung (torchrun): one line, exit 1
        data_error(None, str(exc))
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports (fit has closed the group)
        typer.echo(f"run: {run}")


def evaluate_command(
    run: Path = typer.Option(..., "--run", help="Run directory (molphenix train --out)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset directory (default: the run's)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Metrics file (default RUN/metrics.json)."),
    match: str = typer.Option("pair", "--match", help="pair (the true (molecule, concentration)) or molecule."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best (validation) or last."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples of the 95% intervals (0: none).",
                                  callback=non_negative_int),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed.", callback=non_negative_int),
) -> None:
    """Zero-shot retrieval metrics of a run on its saved splits; writes RUN/metrics.json."""
    from molphenix.train import evaluate_run

    if match not in ("pair", "molecule"):
        usage_error("--match", f"must be pair or molecule, got {match!r}")
    if checkpoint not in ("best", "last"):
        usage_error("--checkpoint", f"must be best or last, got {checkpoint!r}")
    if not (run / "run.json").is_file():
        usage_error("--run", f"{run} is not a molphenix run directory (no run.json)")
    if data is not None and not data.is_dir():
        usage_error("--data", f"{data}: dataset directory not found")
    if out is not None and out.is_dir():
        usage_error("--out", f"{out} is a directory; give a file path")
    from molphenix.distributed import is_main, process_group

    # Under torchrun (WORLD_SIZE > 1) the ranks shard the candidates; rank 0 writes and prints.
    with process_group():
        try:
            metrics = evaluate_run(run, data, out=out, match=match, checkpoint=checkpoint,
                                   n_bootstrap=bootstrap, seed=seed, distributed=True)
        except ValueError as exc:
            _flag_of(exc, _EVAL_FLAGS, None)
        if not is_main():
            return
    typer.echo(_summary(metrics))
    typer.echo(f"wrote {out if out is not None else run / 'metrics.json'}")


def _pct(v: Any) -> str:
    return "   -  " if v is None else f"{100 * v:5.1f}%"


def _summary(metrics: Dict[str, Any]) -> str:
    lines = [f"{'split':<17}{'queries':>8}{'cands':>7}  {'top1 all':>9}{'top5 all':>9}  "
             f"{'top1 act':>9}{'top5 act':>9}  {'chance1':>8}"]
    for name, m in metrics.items():
        if not isinstance(m, dict) or "all" not in m:
            continue
        a, act = m["all"], m["active"]
        lines.append(f"{name:<17}{a['n_queries']:>8}{m['n_candidates']:>7}  {_pct(a.get('top1')):>9}"
                     f"{_pct(a.get('top5')):>9}  {_pct(act.get('top1')):>9}{_pct(act.get('top5')):>9}  "
                     f"{_pct(a['chance'].get('top1')):>8}")
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    """Add ``train`` and ``evaluate`` to the ``molphenix`` app."""
    app.command("train", help="Train MolPhenix (or a baseline loss) on a dataset; resumes an existing run.")(train_command)
    app.command("evaluate", help="Zero-shot retrieval metrics of a trained run (RUN/metrics.json).")(evaluate_command)
