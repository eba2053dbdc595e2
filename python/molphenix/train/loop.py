"""``fit(config) -> run directory``: the MolPhenix training loop, resumable bit for bit.

Run directory layout (``RUN = config.out``)::

    config.json        the TrainConfig (runtime keys included, as last started)
    dataset.json       the dataset fingerprint (molphenix.train.inputs.dataset_fingerprint)
    versions.json      python, torch, numpy, pyarrow, rdkit, molphenix, build_info()
    run.json           what the trained model needs: the resolved ModelConfig, the featurizer
                       state, normalize, input_scale, sigma (+ the soft-positive fraction it
                       was fitted for), the dose set, the effective batch size, total steps
    split.parquet      the split assignment (well_id, split); evaluation reuses it
    calls.parquet      activity calls computed for the run (only when the dataset has none)
    cache/             Parquet feature cache of the molecular featurizer
    train_log.csv      one row per step (see LOG_COLUMNS)
    checkpoints/last.pt  the latest state (written at least every checkpoint_every seconds
                       and at the end; ``finished`` marks a completed run)
    checkpoints/best.pt  the model with the best validation criterion so far (MRR or recall,
                       molphenix.train.recipe)
    .lock              advisory lock held while a process trains the run

Determinism: the sample order of epoch e comes from the stream (seed, e), the replicate
averaging of batch b of epoch e from (seed, e, 2, b) (:class:`~molphenix.data.ReplicateSampler`),
the learning rate is a function of the step, and the checkpoint holds the model, loss,
optimizer, the position (epoch, batch) and every global RNG state (dropout draws from torch's).
A run resumed from any checkpoint therefore continues exactly as the uninterrupted run did
(bitwise on CPU with the same thread count).

Data-parallel (``torchrun ... -m molphenix train``, or ``fit`` in every process of a launch):
``fit`` creates the process group from the launch environment (:func:`molphenix.distributed.init_from_env`
with ``dist_timeout``) or uses the caller's; rank 0 owns the run directory and broadcasts the
set-up; each rank takes a contiguous slice of every global batch (bitwise the single-process
rows); the heads run in DistributedDataParallel with their gradients summed, the loss is
:class:`molphenix.distributed.DistributedLoss`; validation runs on rank 0 and its value is
broadcast; rank 0 writes checkpoints and the log (docs/distributed.md, "Training").
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import numpy as np

from .._warnings import external_stacklevel
from ._dist import RankFailure
from .checkpoint import restore_rng
from .config import TrainConfig
from .inputs import MolFeatures, MolTable
from .recipe import Budget, resolve_budget
from .rundir import LOG_COLUMNS, open_log, run_lock, setup_run, truncate_log, write_json
from .scales import fit_scales
from .steps import StepLoop, make_checkpoint
from .validation import Validator

__all__ = ["fit", "LOG_COLUMNS", "RunFinished"]

logger = logging.getLogger("molphenix.train")


class RunFinished(str):
    """Marker message type: returned through ``log`` when the run was already complete."""


@contextmanager
def _threads(n: Optional[int]):
    import torch

    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except Exception:  # noqa: BLE001
        return False


# --------------------------------------------------------------------------- the trainer


def fit(config: TrainConfig | Dict[str, Any] | str | os.PathLike, *,
        log: Optional[Callable[[str], None]] = None, **overrides: Any) -> Path:
    """Train (or resume, or confirm finished) a MolPhenix run; return its directory.

    The run trains on the ``train`` split: every step draws ``batch_size`` (molecule,
    concentration) samples with inactive undersampling and random replicate averaging
    (:class:`~molphenix.data.ReplicateSampler`), embeds the control-centered phenomic input and
    the featurized molecule at its concentration, and takes an AdamW step on the contrastive
    loss (linear warm-up, cosine decay, gradient clipping). Every ``eval_every`` steps and at
    the end it validates on the ``val`` split (the MRR over all queries and the
    top-``eval_fraction`` recall of the active ones) and keeps ``checkpoints/best.pt`` by the
    run's criterion. The budget, the validation cadence, the criterion and early stopping are
    resolved by :func:`molphenix.train.recipe.resolve_budget` (size-aware by default: a small
    training set gets an epoch-capped budget and early stopping) and recorded in ``run.json``
    (``recipe``); an early-stopped run's ``last.pt`` is where it stopped.

    Running ``fit`` again with the same ``out`` resumes from ``checkpoints/last.pt``; a finished
    run returns at once (``log`` says so); ``overwrite=True`` starts over.

    The closed-form ridge baseline (``loss="ridge"``) is fitted into a run directory by
    :func:`molphenix.baselines.fit_ridge_run` instead; :func:`~molphenix.train.load_run` and
    evaluation read that run the same way.

    Under a distributed launch (``WORLD_SIZE`` > 1, e.g. ``torchrun``) or inside an initialised
    process group, every process calls ``fit`` with the same config and trains one data-parallel
    run: ``batch_size`` is the global batch, rank 0 writes the run (see the module docstring).

    Args:
        config: A :class:`TrainConfig`, a dict of its fields, or a JSON/YAML config file.
        log: Receives one-line progress messages (default: the ``molphenix.train`` logger).
        **overrides: Config fields replacing ``config``'s (e.g. ``data=..., out=...``).

    Returns:
        The run directory (layout in the module docstring).

    Raises:
        ValueError: invalid config (field named); ``data``/``out`` missing; ``out`` holds a run
            with another config or dataset (what differs is named); an empty training split; a
            batch of the data without control wells (named); a non-finite loss, embedding or
            gradient (step and tensor named); unknown model or loss name.
        FileNotFoundError: the dataset directory or its files are missing.
        RankFailure: data-parallel: another rank died or hung (``dist_timeout``); launching
            again resumes from the last checkpoint.
    """
    if isinstance(config, TrainConfig):
        cfg = config.replace(**overrides) if overrides else config
    elif isinstance(config, dict):
        cfg = TrainConfig.from_dict({**config, **overrides})
    else:
        cfg = TrainConfig.from_file(config, **overrides)
    if cfg.data is None:
        raise ValueError("data: the dataset directory is required")
    if cfg.out is None:
        raise ValueError("out: the run directory is required")
    say = log if log is not None else logger.info
    if cfg.loss == "ridge":  # the closed-form baseline sits above train on the layer map
        raise ValueError("loss: 'ridge' is the closed-form baseline, not a contrastive loss: fit it with "
                         "molphenix.baselines.fit_ridge_run (molphenix train --loss ridge)")
    import torch

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' requested but torch sees no CUDA GPU")
    from molphenix.distributed import init_from_env, is_initialized

    # under torchrun (WORLD_SIZE > 1) this creates the process group (gloo on CPU, NCCL on
    # CUDA with the LOCAL_RANK device); a group created by the caller is used as it is
    created = init_from_env(cfg.device, timeout_s=cfg.dist_timeout)
    try:
        from ._dist import Ranks

        ranks = Ranks(cfg.dist_timeout if created else None)  # a caller's group has its own timeout
        with _threads(cfg.threads), ExitStack() as stack:
            return _Trainer(cfg, say, user_log=log is not None, ranks=ranks, stack=stack).run()
    finally:
        if created and is_initialized():
            import torch.distributed as dist

            dist.destroy_process_group()


def _heads_module(model: Any) -> Any:
    """One module whose forward runs both encoders (what DistributedDataParallel wraps)."""
    import torch

    class _Heads(torch.nn.Module):
        def __init__(self, m: Any):
            super().__init__()
            self.model = m

        def forward(self, x: Any, mol: Any, conc: Any) -> Tuple[Any, Any]:
            return self.model.encode_wells(x), self.model.encode_molecules(mol, conc)

    return _Heads(model)


def data_parallel_heads(model: Any, device: Any) -> Any:
    """Both encoders of ``model`` as one module, as the trainer runs them: in
    DistributedDataParallel with the trainer's summing gradient hook under a process group of
    several ranks, the module itself in one process (for benchmarks of the training step).

    Args:
        model: A :class:`molphenix.nn.MolPhenixModel` (``encode_wells``, ``encode_molecules``).
        device: The device the heads run on.

    Returns:
        A module whose ``forward(x, mol, conc)`` returns ``(p, q)``.

    Shapes:
        forward(x [B, E], mol [B, ...], conc [B]) -> (p [B, D], q [B, D])
    """
    from ._dist import Ranks

    return Ranks().wrap(_heads_module(model), device)


class _Trainer:
    def __init__(self, cfg: TrainConfig, say: Callable[[str], None], user_log: bool = False,
                 ranks: Any = None, stack: Optional[ExitStack] = None):
        from ._dist import Ranks

        self.cfg = cfg
        self.ranks = ranks if ranks is not None else Ranks()
        self.stack = stack if stack is not None else ExitStack()
        # logs, warnings and the progress bar come from rank 0 only
        self.say = say if self.ranks.main else (lambda msg: None)
        self.user_log = user_log
        self.run_dir = Path(cfg.out)

    def warn(self, msg: str) -> None:
        """A warning: through the caller's ``log`` when one was given, else ``warnings.warn``."""
        if not self.ranks.main:
            return
        if self.user_log:
            self.say(f"warning: {msg}")
        else:
            warnings.warn(msg, stacklevel=external_stacklevel())

    # ------------------------------------------------------------------ setup
    def run(self) -> Path:
        cfg, run, ranks = self.cfg, self.run_dir, self.ranks
        _check_names(cfg)
        if ranks.active and cfg.batch_size < ranks.world:
            raise ValueError(f"batch_size: the global batch of {cfg.batch_size} samples cannot be split over "
                             f"{ranks.world} ranks (each rank needs at least one sample per step)")
        if cfg.mol_input is None:  # resolved once, so config.json always names the input
            from molphenix.nn import get_model_config

            cfg = self.cfg = cfg.replace(mol_input=get_model_config(cfg.model, **cfg.model_overrides).mol_input)
        total = cfg.total_steps

        # Rank 0 owns the run directory (lock, checks, setup files, calls, split); the other
        # ranks get what they need from it by broadcast, so no shared filesystem is assumed
        # and an error on any rank is raised on every rank (no rank waits for a dead peer).
        err: Optional[BaseException] = None
        ds = setup = None
        try:
            if ranks.main:
                self.stack.enter_context(run_lock(run))
            from molphenix.data import load_dataset

            ds = load_dataset(cfg.data)
            if ranks.main:
                setup = setup_run(run, cfg, ds, total, self.say)
        except Exception as exc:  # noqa: BLE001 - re-raised on every rank by agree()
            err = exc
        ranks.agree(err, "the run's set-up")
        setup = ranks.broadcast(setup, "the run's set-up")
        ckpt, calls, splits = setup["ckpt"], setup["calls"], setup["splits"]
        if setup["finished"]:
            self.say(RunFinished(setup["finished"]))
            return run
        resuming = ckpt is not None
        train_mask = splits.mask("train")
        if not train_mask.any():
            counts = {k: v for k, v in splits.counts().items() if v}
            raise ValueError(f"data: the training split is empty (wells per split: {counts}); "
                             "the primary dataset needs treated wells outside the held-out scaffolds")
        from molphenix.data import ReplicateSampler

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            sampler = ReplicateSampler(
                ds, calls, wells=train_mask, p_cutoff=cfg.p_cutoff, inactive_rate=cfg.inactive_rate,
                min_average=cfg.min_average, max_average=cfg.max_average, batch_size=cfg.batch_size,
                normalize=None if cfg.normalize == "none" else cfg.normalize, drop_last=True, seed=cfg.seed)
        expected = sampler.expected_epoch_size()
        bs = int(cfg.batch_size)
        if expected < cfg.batch_size:
            bs = max(2, int(expected))
            if sampler.num_samples < 2:
                raise ValueError(f"data: the training split has {sampler.num_samples} sample(s); "
                                 "contrastive training needs at least 2")
        # the budget (molphenix.train.recipe): steps / samples / epochs as given, else the default
        # min(DEFAULT_SAMPLES, DEFAULT_EPOCHS epochs); equal budgets: a smaller batch takes more
        # steps, so the run still sees the configured samples (whole batches: ceil(samples / batch))
        budget = resolve_budget(cfg, expected, bs)
        total = budget.total_steps
        if bs != cfg.batch_size:
            if budget.samples is not None:
                then = f"and {total} steps, so the run still sees its {budget.samples} samples"
            else:
                then = f"for the {total} steps given ({total * bs} samples)"
            self.warn(f"batch_size {cfg.batch_size} exceeds the expected epoch size "
                      f"({expected:.0f} samples after undersampling); using batches of {bs} {then}")
            sampler.batch_size = bs
        self.sampler = sampler

        # molecules: one feature row per molecule of the dataset
        mol_ids = ds.molecules.column("molecule_id").to_pylist()
        smiles = ds.molecules.column("smiles").to_pylist()
        from molphenix.losses import create_loss

        loss_fn = create_loss(cfg.loss, **cfg.loss_kwargs)
        err, meta, features = None, None, None
        try:
            if ranks.main:
                meta, features = self._run_meta(ds, sampler, loss_fn, mol_ids, smiles, resuming, total, budget)
        except Exception as exc:  # noqa: BLE001 - re-raised on every rank by agree()
            err = exc
        ranks.agree(err, "the run's set-up")
        meta = ranks.broadcast(meta, "the run's set-up")
        if features is None:  # ranks > 0 featurize in memory (the cache belongs to rank 0)
            features = MolFeatures(meta["features"]["mol_input"], cfg.featurizer_kwargs, cache_dir=None,
                                   state=meta["features"])
        self.mols = MolTable(features, smiles, ds.molecules)
        if ranks.main and features.summary():  # e.g. how many molecules the embedding cache held
            self.say(features.summary())
        self.mol_row = {m: i for i, m in enumerate(mol_ids)}
        self.sample_mol_row = np.asarray(
            [self.mol_row[m] for m in sampler.samples.column("molecule_id").to_pylist()], dtype=np.int64)
        self.meta = meta
        self.input_scale = float(meta["input_scale"])
        self.similarity_scale = meta["sigma"]  # run.json's name for it
        sampler.batch_size = int(meta["batch_size"])
        total = self.total = int(meta.get("total_steps", total))  # the steps the run takes (run.json)
        # run.json's recipe; a run from before the recipe validated on the recall ~10 times and
        # never stopped early
        self.budget = Budget.from_dict(meta["recipe"]) if "recipe" in meta else Budget(
            kind="legacy", epoch_size=float(expected), samples=None, total_steps=total, early_stopping=False,
            patience=budget.patience, val_metric="recall",
            eval_every=cfg.eval_every if cfg.eval_every is not None else max(1, total // 10))
        if ranks.active and sampler.batch_size < ranks.world:
            raise ValueError(f"batch_size: the global batch of {sampler.batch_size} samples cannot be split "
                             f"over {ranks.world} ranks (each rank needs at least one sample per step)")

        self._build_model(meta, loss_fn)
        self.validator = Validator(ds, splits, calls, cfg, ranks)
        model, loss_fn, opt = self.model, self.loss_fn, self.opt

        state = {"step": 0, "epoch": 0, "batch": 0, "samples_seen": 0, "elapsed_s": 0.0,
                 "best_metric": None, "best_step": None, "stale": 0, "stopped_step": None}
        if resuming:
            model.load_state_dict(ckpt["model"])
            loss_fn.load_state_dict(ckpt["loss"])
            opt.load_state_dict(ckpt["optimizer"])
            for k in state:
                state[k] = ckpt[k] if k in ckpt else state[k]
            restore_rng(ckpt["rng"])
            if ranks.main:
                truncate_log(run / "train_log.csv", state["step"])
            was = int(ckpt.get("world_size", 1))
            note = "" if was == ranks.world else (
                f" with {ranks.world} process(es) (the checkpoint was written by {was}; same global batch "
                "and data order, not bitwise identical to an uninterrupted run)")
            self.say(f"resuming {run} at step {state['step']} of {total}{note}")
        self.state = state
        # the heads go through one module so that DistributedDataParallel sees both encoders
        # in one forward; the loss (its temperature/bias) stays outside DDP: the distributed
        # loss already gives it the full global-batch gradient on every rank
        self.heads = ranks.wrap(_heads_module(model), self.device)
        self.loss_call = loss_fn
        # the step checks p, q and u itself (on the device): the loss need not (no host sync)
        self.loss_checked = bool(loss_fn.takes_checked) and not ranks.active
        if ranks.active:
            try:
                from molphenix.distributed.losses import DistributedLoss
            except ImportError as exc:  # pragma: no cover - the module ships with molphenix
                raise RuntimeError(f"data-parallel training needs molphenix.distributed.losses ({exc})") from None
            self.loss_call = DistributedLoss(loss_fn)
        return self._loop(total)

    def _build_model(self, meta: Dict[str, Any], loss_fn: Any) -> None:
        """The model on the run's device (seeded), the loss there, and AdamW over both (weight
        decay on the heads' matrices only)."""
        import torch

        from molphenix.nn import ModelConfig, MolPhenixModel

        cfg, ranks = self.cfg, self.ranks
        device = torch.device(cfg.device)
        if device.type == "cuda" and ranks.active:
            device = torch.device("cuda", torch.cuda.current_device())  # LOCAL_RANK (init_from_env)
        torch.manual_seed(cfg.seed)
        model = MolPhenixModel(ModelConfig.from_dict(meta["model_config"])).to(device)
        loss_fn = loss_fn.to(device)
        decay, no_decay = [], []
        for name, prm in model.named_parameters():
            if not prm.requires_grad:
                continue
            (decay if prm.dim() >= 2 else no_decay).append(prm)
        loss_params = [p for p in loss_fn.parameters() if p.requires_grad]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay},
                  {"params": no_decay + loss_params, "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
        self.model, self.loss_fn, self.opt, self.device = model, loss_fn, opt, device
        self.params = [p for g in groups for p in g["params"]]
        self.param_names = {id(p): n for n, p in model.named_parameters()}
        self.param_names.update({id(p): f"loss.{n}" for n, p in loss_fn.named_parameters()})

    def _run_meta(self, ds: Any, sampler: Any, loss_fn: Any, mol_ids: list, smiles: list,
                  resuming: bool, total: int, budget: Budget) -> Tuple[Dict[str, Any], MolFeatures]:
        """Rank 0: the run's ``run.json`` (read when resuming, else computed and written) and the
        fitted molecular featurizer."""
        cfg, run = self.cfg, self.run_dir
        meta_path = run / "run.json"
        meta = json.loads(meta_path.read_text()) if (resuming and meta_path.is_file()) else None
        from molphenix.nn import get_model_config

        mol_input = meta["features"]["mol_input"] if meta else (
            cfg.mol_input or get_model_config(cfg.model, **cfg.model_overrides).mol_input)
        features = MolFeatures(mol_input, cfg.featurizer_kwargs, cache_dir=run / "cache",
                               state=meta["features"] if meta else None)
        if meta is None:
            train_mols = sorted(set(sampler.samples.column("molecule_id").to_pylist()))
            smi_of = dict(zip(mol_ids, smiles))
            features.fit([smi_of[m] for m in train_mols])
            doses = sorted({float(c) for c in ds.wells.column("concentration_um").drop_null().to_pylist()})
            overrides = dict(cfg.model_overrides)
            overrides.update(phenomic_dim=sampler.embedding_dim, molecular_dim=features.dim(ds.molecules),
                             mol_input=mol_input, doses=doses)
            if cfg.concentration is not None:
                overrides["concentration"] = cfg.concentration
            model_cfg = get_model_config(cfg.model, **overrides)
            input_scale, similarity_scale = fit_scales(sampler, loss_fn, seed=cfg.seed,
                                                       soft_positive_fraction=cfg.soft_positive_fraction)
            meta = {
                "model_config": model_cfg.to_dict(),
                "features": features.state(),
                "normalize": cfg.normalize,
                "input_scale": input_scale,
                "sigma": similarity_scale,
                "soft_positive_fraction": cfg.soft_positive_fraction if similarity_scale is not None else None,
                "doses": doses,
                "batch_size": int(sampler.batch_size),
                "total_steps": total,
                "recipe": budget.to_dict(),
                "loss": cfg.loss,
                "n_train_samples": int(sampler.num_samples),
                "n_train_active": int(sampler.active.sum()),
                "world_size": int(self.ranks.world),
            }
            write_json(meta_path, meta)
        return meta, features

    # ------------------------------------------------------------------ the loop
    def batches(self, epoch: int, batch: int) -> Iterator[Tuple[int, int, Any]]:
        """``(epoch, batch, SampleBatch)`` from position (epoch, batch) on, endlessly (this
        rank's slice of each global batch in a data-parallel run)."""
        empty = 0
        shard = (self.ranks.rank, self.ranks.world) if self.ranks.active else None
        while True:
            got = False
            for i, sb in enumerate(self.sampler.iter_epoch(epoch, start_batch=batch, shard=shard)):
                got = True
                yield epoch, batch + i, sb
            if not got and batch == 0:
                empty += 1
                if empty >= 100:
                    raise ValueError("data: 100 consecutive epochs drew fewer samples than one batch; "
                                     "lower batch_size or raise inactive_rate")
            else:
                empty = 0
            epoch, batch = epoch + 1, 0

    def checkpoint(self, *, finished: bool) -> Dict[str, Any]:
        """The checkpoint dict of the current state."""
        return make_checkpoint(self, finished=finished)

    def _loop(self, total: int) -> Path:
        cfg, st, run, ranks = self.cfg, self.state, self.run_dir, self.ranks
        logf = bar = None
        if ranks.main:
            logf = open_log(run)
            progress = cfg.progress if cfg.progress is not None else _is_tty()
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=total, initial=st["step"], desc="train", unit="step", file=sys.stderr,
                           dynamic_ncols=True)
        try:
            StepLoop(self, logf, bar).run(total)
        except Exception as exc:
            if ranks.active and not isinstance(exc, RankFailure) and _is_comm_error(exc):
                raise ranks.failure(exc, f"training step {st['step'] + 1}") from exc
            raise
        finally:
            if logf is not None:
                logf.close()
            if bar is not None:
                bar.close()
        metric = (f"top-{100 * cfg.eval_fraction:g}% recall" if self.budget.val_metric == "recall"
                  else self.budget.val_metric.upper())
        best = "" if st["best_metric"] is None else (
            f"; best val {metric} {st['best_metric']:.4f} at step {st['best_step']}")
        procs = f" on {ranks.world} processes" if ranks.active else ""
        steps = f"{total} steps" if st["stopped_step"] is None else (
            f"stopped early at step {st['stopped_step']} of {total} ({self.budget.patience} validations "
            "without improvement)")
        self.say(f"finished {run}: {steps}, {st['samples_seen']} samples in {st['elapsed_s']:.1f} s{procs}{best}")
        return run


def _check_names(cfg: TrainConfig) -> None:
    """Fail fast, before any data is read, on an unknown model/loss or a bad option of them."""
    from molphenix.losses import create_loss
    from molphenix.nn import get_model_config

    try:
        create_loss(cfg.loss, **cfg.loss_kwargs)
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        raise ValueError(msg if msg.startswith("loss:") else f"loss_kwargs: {msg}") from None
    try:
        get_model_config(cfg.model, **cfg.model_overrides)
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        if msg.startswith("name: "):
            raise ValueError(f"model: {msg[len('name: '):]}") from None
        raise ValueError(f"model_overrides: {msg}") from None


def _is_comm_error(exc: BaseException) -> bool:
    """True for an error of torch.distributed's transport (a peer died, hung or the network
    broke), as opposed to an error of the computation (a wrong shape in a collective is not one)."""
    try:
        import torch.distributed as dist

        kinds = tuple(k for k in (getattr(dist, "DistNetworkError", None), getattr(dist, "DistStoreError", None))
                      if k is not None)
        if kinds and isinstance(exc, kinds):
            return True
    except ImportError:  # pragma: no cover
        pass
    if not isinstance(exc, RuntimeError):
        return False
    msg = str(exc).lower()
    return any(k in msg for k in ("connection", "timed out", "timeout", "closed by peer", "reset by peer",
                                  "broken pipe", "no route to host", "socket"))
