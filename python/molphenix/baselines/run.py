"""The ridge-regression baseline as a run directory (``molphenix train --loss ridge``).

The baseline (:mod:`molphenix.baselines.ridge`: closed-form ridge from molecular features and a
dose encoding to the control-centered phenotype, its penalty chosen on the ``val`` split) is not
trained by steps, but it is written as a run like any other, so ``molphenix evaluate``,
``molphenix embed-library``, ``molphenix retrieve`` and :func:`molphenix.train.load_run` read it
unchanged::

    config.json, dataset.json, versions.json   as a trained run
    split.parquet, calls.parquet               the split (TrainConfig.make_splits) and calls
    run.json                                   kind "ridge", the featurizer state, the model's
                                               shapes and the chosen penalty ("ridge")
    ridge_grid.json                            validation numbers of every penalty on the grid
    checkpoints/best.pt, last.pt               the weights (one fit: the same model)

Fields of :class:`~molphenix.train.TrainConfig` a ridge run reads: ``data``, ``out``,
``mol_input`` (``morgan`` (default), ``maccs``, ``rdkit2d`` or ``minimol``: a matrix of molecular
features), ``featurizer_kwargs``, the split
fields (``split_seed``, the fractions, ``folds`` / ``fold``), ``p_cutoff`` (activity calls) and
``loss_kwargs={"alphas": [...]}`` (the penalty grid; default
:data:`molphenix.baselines.DEFAULT_ALPHAS`). ``normalize`` must be ``"center"``. The training
fields (steps, samples, batch size, learning rate, model, seed) do not apply.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from molphenix.train import TrainConfig
from molphenix.train.checkpoint import CHECKPOINT_FORMAT, save_checkpoint

__all__ = ["fit_ridge_run", "RIDGE_MOL_INPUTS"]

#: Molecular inputs the ridge baseline takes (a feature matrix computed from SMILES).
RIDGE_MOL_INPUTS = ("morgan", "maccs", "rdkit2d", "minimol")


def _check(cfg: TrainConfig) -> str:
    """The featurizer name; ``ValueError`` naming the field a ridge run cannot take."""
    mol_input = cfg.mol_input or "morgan"
    if mol_input not in RIDGE_MOL_INPUTS:
        raise ValueError(f"mol_input: the ridge baseline takes {', '.join(RIDGE_MOL_INPUTS)}, got {mol_input!r}")
    if cfg.normalize != "center":
        raise ValueError(f"normalize: the ridge baseline centers on the controls ('center'), got {cfg.normalize!r}")
    extra = sorted(set(cfg.loss_kwargs) - {"alphas"})
    if extra:
        raise ValueError(f"loss_kwargs: the ridge baseline takes only 'alphas', got {extra[0]!r}")
    if os.environ.get("WORLD_SIZE", "1") not in ("", "1"):
        raise ValueError("loss: the ridge baseline runs in one process; launch it without torchrun")
    return mol_input


def fit_ridge_run(cfg: TrainConfig, log: Optional[Callable[[str], None]] = None) -> Path:
    """Fit the ridge baseline into the run directory ``cfg.out`` (see the module docstring).

    A finished run (its checkpoint exists) returns at once; ``overwrite`` starts over; a run
    killed before its checkpoint is fitted again (the fit takes seconds).

    Args:
        cfg: The run's config (``loss="ridge"``).
        log: Receives one-line progress messages (default: none).

    Returns:
        The run directory.

    Raises:
        ValueError: a field a ridge run cannot take (named); ``out`` holds another run; an
            empty training split; a batch without controls.
    """
    from molphenix.data import load_dataset
    from molphenix.data.io import save_calls
    from molphenix.train import dataset_fingerprint
    from molphenix.train.loop import RunFinished
    from molphenix.train.rundir import SETUP_FILES, cached_calls, open_run, run_lock, versions, write_json

    from .ridge import DEFAULT_ALPHAS, RidgeConfig, fit_ridge

    say = log if log is not None else (lambda msg: None)
    if cfg.loss != "ridge":
        raise ValueError(f"loss: fit_ridge_run fits loss 'ridge', got {cfg.loss!r} (molphenix.train.fit trains it)")
    mol_input = _check(cfg)
    cfg = cfg.replace(mol_input=mol_input)  # resolved once, so config.json names the input
    run = Path(cfg.out)
    t0 = time.perf_counter()
    with run_lock(run):
        ds = load_dataset(cfg.data)
        fp = dataset_fingerprint(ds)
        ckpt = open_run(run, cfg, fp)
        if ckpt is not None and ckpt.get("finished"):
            say(RunFinished(f"run {run} already finished (the ridge baseline is fitted); nothing to do "
                            "(overwrite=True / --overwrite starts over)"))
            return run
        for f in SETUP_FILES + ("ridge_grid.json",):
            (run / f).unlink(missing_ok=True)
        for f in ("best.pt", "last.pt"):
            (run / "checkpoints" / f).unlink(missing_ok=True)
        write_json(run / "dataset.json", fp)
        write_json(run / "versions.json", versions())
        write_json(run / "config.json", cfg.to_dict())
        calls = ds.calls
        if calls is None:
            say("computing activity calls (the dataset has no calls.parquet)")
            calls = cached_calls(ds, fp["sha256"], cfg.p_cutoff, cfg.split_seed)
            save_calls(calls, run / "calls.parquet")
        splits = cfg.make_splits(ds)
        splits.save(run / "split.parquet")
        alphas = tuple(cfg.loss_kwargs.get("alphas", DEFAULT_ALPHAS))
        rcfg = RidgeConfig(featurizer=mol_input, featurizer_kwargs=dict(cfg.featurizer_kwargs), alphas=alphas,
                           p_cutoff=cfg.p_cutoff, split_seed=cfg.split_seed, n_bootstrap=0)
        res = fit_ridge(ds, splits, config=rcfg, calls=calls, log=say)
        model = res.model
        write_json(run / "ridge_grid.json", res.grid)
        features: Dict[str, Any] = {"mol_input": mol_input, "kwargs": dict(cfg.featurizer_kwargs)}
        if model.featurizer_stats is not None:
            features.update(mean=model.featurizer_stats["mean"], std=model.featurizer_stats["std"])
        if mol_input == "minimol":  # the embedder's version, checked when the run is loaded
            from molphenix.train.inputs import MolFeatures

            features["model_version"] = MolFeatures(mol_input, cfg.featurizer_kwargs).state()["model_version"]
        n_train = int(splits.counts()["train"])
        meta = {
            "kind": "ridge",
            "loss": "ridge",
            "ridge": model.run_meta(),
            "features": features,
            "normalize": "center",
            "input_scale": 1.0,
            "sigma": None,
            "doses": model.doses.tolist(),
            "batch_size": None,
            "total_steps": 0,
            "n_train_wells": n_train,
            "world_size": 1,
        }
        write_json(run / "run.json", meta)
        elapsed = time.perf_counter() - t0
        state = {
            "format": CHECKPOINT_FORMAT, "step": 0, "epoch": 0, "batch": 0, "samples_seen": 0,
            "elapsed_s": float(elapsed), "best_metric": None, "best_step": 0, "finished": True,
            "total_steps": 0, "model": model.state_dict(), "config_hash": cfg.identity_hash(),
            "world_size": 1, "kind": "ridge",
        }
        save_checkpoint(state, run / "checkpoints" / "best.pt")
        save_checkpoint(state, run / "checkpoints" / "last.pt")
    say(f"finished {run}: ridge baseline, alpha {res.grid['chosen_alpha']:g} chosen on val, "
        f"in {elapsed:.1f} s")
    return run

