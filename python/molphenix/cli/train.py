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

from molphenix.cli._errors import data_error, dataset_dir, non_negative_int, positive_int, threads_option, usage_error

__all__ = ["evaluate_command", "register", "train_command"]

# TrainConfig field -> the flag that sets it
_TRAIN_FLAGS = {
    "data": "--data", "out": "--out", "loss": "--loss", "model": "--model", "seed": "--seed",
    "device": "--device", "threads": "--threads", "checkpoint_every": "--checkpoint-every",
    "steps": "--steps", "samples": "--samples", "batch_size": "--batch-size", "lr": "--lr",
    "overwrite": "--overwrite", "dist_timeout": "--dist-timeout", "mol_input": "--mol-input",
    "split_seed": "--split-seed", "folds": "--folds", "fold": "--fold", "epochs": "--epochs",
    "early_stopping": "--early-stopping", "patience": "--patience",
}
#: Flags that set training-only fields (no meaning for the closed-form ridge baseline).
_NOT_FOR_RIDGE = {"steps": "--steps", "samples": "--samples", "batch_size": "--batch-size", "lr": "--lr",
                  "model": "--model", "dist_timeout": "--dist-timeout", "epochs": "--epochs",
                  "early_stopping": "--early-stopping", "patience": "--patience"}
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
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset directory, or a bundled dataset's name (cell-injury); required unless --config sets it."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory; an existing run there is resumed."),
    loss: Optional[str] = typer.Option(None, "--loss", help="s2l (default), siglip, clip, infoloob, cloome or cwcl; "
                                       "or ridge: the closed-form ridge-regression baseline (no training steps)."),
    config: Optional[Path] = typer.Option(None, "--config", help="JSON or YAML file of TrainConfig fields (flags override it)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model config name (default molphenix-small) or a JSON path."),
    mol_input: Optional[str] = typer.Option(
        None, "--mol-input", help="Molecular input: morgan, rdkit2d, maccs, minimol (pretrained MiniMol, needs "
        'pip install "molphenix[minimol]"), graph or column:NAME (default: the model config\'s).'),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed (default 0).", callback=non_negative_int),
    split_seed: Optional[int] = typer.Option(None, "--split-seed", help="Seed of the split assignment (default 0).",
                                             callback=non_negative_int),
    folds: Optional[int] = typer.Option(None, "--folds", help="Grouped k-fold: test fold --fold of K scaffold-grouped "
                                        "folds (what molphenix cv runs; give both).", callback=non_negative_int),
    fold: Optional[int] = typer.Option(None, "--fold", help="Which fold (0 .. K-1) is the unseen-molecule test set.",
                                       callback=non_negative_int),
    device: Optional[str] = typer.Option(None, "--device", help="cpu (default) or cuda."),
    threads: Optional[int] = threads_option("CPU threads for torch (default: torch's setting); must be >= 1"),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps (instead of --samples), taken in full "
                                        "unless --early-stopping.", callback=positive_int),
    samples: Optional[int] = typer.Option(None, "--samples", help="Samples seen in total, taken in full unless "
                                          "--early-stopping (default: min(256000, 250 epochs of the training split); "
                                          "a small training set then stops early).", callback=positive_int),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Budget in epochs over the training split (instead "
                                         "of --steps / --samples).", callback=positive_int),
    early_stopping: Optional[bool] = typer.Option(
        None, "--early-stopping/--no-early-stopping", help="Stop after --patience validations without improvement "
        "of the validation MRR (default: only for the default budget on a small training set)."),
    patience: Optional[int] = typer.Option(None, "--patience", help="Validations without improvement before an "
                                           "early stop (default 20).", callback=positive_int),
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

    ``--loss ridge`` fits the ridge-regression baseline instead and writes it as a run directory
    that ``molphenix evaluate``, ``embed-library`` and ``retrieve`` read like any other.

    Data-parallel: ``torchrun --nproc_per_node N -m molphenix train ...`` (docs/distributed.md);
    the global batch stays --batch-size, split over the ranks."""
    from molphenix.train import TrainConfig, fit

    given: Dict[str, Any] = {k: v for k, v in dict(
        data=str(data) if data is not None else None, out=str(out) if out is not None else None,
        loss=loss, model=model, mol_input=mol_input, seed=seed, device=device, threads=threads, steps=steps, samples=samples,
        batch_size=batch_size, lr=lr, checkpoint_every=checkpoint_every, progress=progress,
        dist_timeout=dist_timeout, split_seed=split_seed, folds=folds, fold=fold, epochs=epochs,
        early_stopping=early_stopping, patience=patience).items()
        if v is not None}
    if overwrite:
        given["overwrite"] = True
    if device is not None and device not in ("cpu", "cuda"):
        usage_error("--device", f"must be cpu or cuda, got {device!r}")
    if loss is not None:
        from molphenix.losses import LOSSES

        if loss not in LOSSES and loss != "ridge":
            usage_error("--loss", f"unknown loss {loss!r}; expected one of {', '.join(LOSSES)}, or ridge")
    if loss == "ridge":
        for field, flag in _NOT_FOR_RIDGE.items():
            if field in given:
                usage_error(flag, "does not apply to --loss ridge (a closed-form fit: no steps, batches or "
                                  "learning rate; its penalty is chosen on the validation split)")
    if data is not None:
        data = dataset_dir(data)
    try:
        if config is not None:
            if not config.is_file():
                usage_error("--config", f"{config}: file not found")
            for flag in ("steps", "samples", "epochs"):  # a budget flag replaces the file's budget
                if given.get(flag) is not None:
                    for other in {"steps", "samples", "epochs"} - {flag}:
                        given.setdefault(other, None)
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
        if cfg.loss == "ridge":
            from molphenix.baselines import fit_ridge_run

            run = fit_ridge_run(cfg, log=typer.echo)
        else:
            run = fit(cfg, log=typer.echo)
    except ValueError as exc:
        _flag_of(exc, _TRAIN_FLAGS, None)
    except RankFailure as exc:  # a peer rank died or hung (torchrun): one line, exit 1
        data_error(None, str(exc))
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports (fit has closed the group)
        typer.echo(f"run: {run}")


def evaluate_command(
    run: Path = typer.Option(..., "--run", help="Run directory (molphenix train --out)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset directory or a bundled dataset's name (default: the run's)."),
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
    if data is not None:
        data = dataset_dir(data)
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


def _cell(count: Any, rate: Any) -> str:
    if rate is None:
        return f"{'-':>13}"
    c = f"{count:.1f}" if isinstance(count, float) else str(count)
    return f"{c:>6} ({100 * rate:4.1f}%)"


def _summary(metrics: Dict[str, Any]) -> str:
    """Per split: top-1, top-K% as counts and rates, MRR and mean rank, all and active queries,
    and the chance level of each (a random ranking of the split's candidates)."""
    lines = []
    for name, m in metrics.items():
        if not isinstance(m, dict) or "all" not in m:
            continue
        a = m["all"]
        ks = m.get("k") or {}
        fkeys = [k for k in ks] or [k for k in ("top1", "top5") if k in a]
        same = set(m.get("same_as_rank1") or [])
        desc = ", ".join(f"top-{k[3:]}% is k = {ks[k]}" + (" (the same as top-1)" if k in same else "")
                         for k in fkeys if k in ks)
        lines.append(f"{name}: {m['n_candidates']} candidates" + (f"; {desc}" if desc else ""))
        head = f"  {'':<7}{'queries':>8}  {'top-1':>13}" + "".join(f"  {'top-' + k[3:] + '%':>13}" for k in fkeys)
        lines.append(head + f"  {'MRR':>6}  {'mean rank':>9}")
        for grp in ("all", "active"):
            g = m[grp]
            hits = g.get("hits") or {}
            row = f"  {grp:<7}{g['n_queries']:>8}  {_cell(hits.get('rank1'), g.get('rank1'))}"
            row += "".join(f"  {_cell(hits.get(k), g.get(k))}" for k in fkeys)
            mrr = "-" if g.get("mrr") is None else f"{g['mrr']:.3f}"
            mr = "-" if g.get("mean_rank") is None else f"{g['mean_rank']:.1f}"
            lines.append(row + f"  {mrr:>6}  {mr:>9}")
        if "hits_chance" in a:
            hc = a["hits_chance"]
            row = f"  {'chance':<7}{'':>8}  {_cell(hc['rank1'], a['chance_rank1'])}"
            row += "".join(f"  {_cell(hc.get(k), a['chance'].get(k))}" for k in fkeys)
            lines.append(row + f"  {a['chance_mrr']:>6.3f}  {a['chance_mean_rank']:>9.1f}")
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    """Add ``train`` and ``evaluate`` to the ``molphenix`` app."""
    app.command("train", help="Train MolPhenix (or a baseline loss) on a dataset; resumes an existing run.")(train_command)
    app.command("evaluate", help="Zero-shot retrieval metrics of a trained run (RUN/metrics.json).")(evaluate_command)
