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
    checkpoints/best.pt  the model with the best validation recall so far
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

import csv
import io
import json
import logging
import math
import os
import shutil
import sys
import time
import warnings
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import numpy as np

from .._warnings import external_stacklevel
from ._dist import RankFailure
from .checkpoint import CHECKPOINT_FORMAT, capture_rng, load_checkpoint, restore_rng, save_checkpoint
from .config import TrainConfig
from .inputs import MolFeatures, MolTable, dataset_fingerprint

__all__ = ["fit", "LOG_COLUMNS", "RunFinished"]

logger = logging.getLogger("molphenix.train")

#: Columns of ``RUN/train_log.csv``; ``val_recall`` is filled on validation steps only;
#: ``world_size`` is the number of data-parallel processes that took the step (1 without torchrun).
LOG_COLUMNS = ("step", "epoch", "batch", "samples_seen", "loss", "lr", "t", "b", "soft_pos_frac",
               "grad_norm", "samples_per_s", "elapsed_s", "val_recall", "world_size")

_SETUP_FILES = ("config.json", "dataset.json", "versions.json", "run.json", "split.parquet",
                "calls.parquet", "train_log.csv")


class RunFinished(str):
    """Marker message type: returned through ``log`` when the run was already complete."""


# --------------------------------------------------------------------------- helpers


def _write_json(path: Path, obj: Any) -> None:
    from molphenix._atomic import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def versions() -> Dict[str, Any]:
    """Versions of the stack, recorded in ``RUN/versions.json``."""
    import platform

    import pyarrow
    import torch

    import molphenix

    out: Dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pyarrow": pyarrow.__version__,
        "molphenix": molphenix.__version__,
    }
    try:
        import rdkit

        out["rdkit"] = rdkit.__version__
    except ImportError:  # pragma: no cover
        out["rdkit"] = None
    try:
        out["build_info"] = molphenix.build_info()
    except Exception as exc:  # noqa: BLE001 - the extension may be missing
        out["build_info"] = {"error": str(exc)}
    return out


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


def _lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Learning rate of (0-based) step ``step``: linear warm-up to ``peak``, then cosine to 0."""
    if step < warmup:
        return peak * (step + 1) / warmup
    prog = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, prog)))


def _is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except Exception:  # noqa: BLE001
        return False


# --------------------------------------------------------------------------- run directory


def _open_run(run: Path, cfg: TrainConfig, fingerprint: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """Prepare ``run`` for training; return the last checkpoint when resuming (else None).

    Raises:
        ValueError: ``run`` holds something else, or a run with another config or dataset.
    """
    is_run = (run / "config.json").is_file()
    if any(p.name != _LOCK for p in run.iterdir()) and not is_run:
        raise ValueError(f"out: {run} is not empty and holds no molphenix run (config.json); "
                         "choose another directory")
    if cfg.overwrite and is_run:
        for p in run.iterdir():  # everything but the lock this process holds
            if p.name == _LOCK:
                continue
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        is_run = False
    (run / "checkpoints").mkdir(exist_ok=True)
    if not is_run:
        return None
    try:
        old = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"out: {run}/config.json is unreadable ({exc}); pass overwrite=True "
                         "(--overwrite) to start over") from None
    diffs = cfg.differences(old)
    if diffs:
        desc = "; ".join(f"{k}: {a!r} now vs {b!r} in the run" for k, (a, b) in diffs.items())
        raise ValueError(f"out: {run} holds a run with a different config ({desc}); pass "
                         "overwrite=True (--overwrite) to start over, or choose another --out")
    ds_file = run / "dataset.json"
    if ds_file.is_file():
        old_fp = json.loads(ds_file.read_text())
        if old_fp.get("sha256") != fingerprint["sha256"]:
            what = [k for k in ("n_wells", "n_molecules", "embedding_dim") if old_fp.get(k) != fingerprint.get(k)]
            detail = ", ".join(f"{k} {old_fp.get(k)} -> {fingerprint.get(k)}" for k in what) or "same sizes, different values"
            raise ValueError(f"data: the dataset differs from the one run {run} was trained on "
                             f"(fingerprint {old_fp.get('sha256', '?')[:12]} vs {fingerprint['sha256'][:12]}: "
                             f"{detail}); pass overwrite=True (--overwrite) to start over")
    last = run / "checkpoints" / "last.pt"
    if last.is_file():
        return load_checkpoint(last)
    return None


def _truncate_log(path: Path, step: int) -> None:
    """Keep the header and the complete rows with ``step <= step`` (a killed run may have
    logged steps past its last checkpoint, or half a line)."""
    if not path.is_file():
        return
    keep = []
    with open(path, newline="") as f:
        lines = f.read().splitlines(keepends=True)
    # a log written before a column was added (e.g. world_size) gets the new header, its rows
    # an empty value in the new columns
    pad = ""
    if lines:
        head = lines[0].rstrip("\r\n").split(",")
        if head != list(LOG_COLUMNS) and head == list(LOG_COLUMNS[: len(head)]):
            pad = "," * (len(LOG_COLUMNS) - len(head))
    for i, line in enumerate(lines):
        if i == 0:
            keep.append(",".join(LOG_COLUMNS) + "\n" if pad else line)
            continue
        if not line.endswith("\n"):
            break
        try:
            s = int(line.split(",", 1)[0])
        except ValueError:
            break
        if s <= step:
            keep.append(line[:-1] + pad + "\n" if pad else line)
    from molphenix._atomic import atomic_write_bytes

    atomic_write_bytes(path, "".join(keep).encode())


# --------------------------------------------------------------------------- the trainer


def fit(config: TrainConfig | Dict[str, Any] | str | os.PathLike, *,
        log: Optional[Callable[[str], None]] = None, **overrides: Any) -> Path:
    """Train (or resume, or confirm finished) a MolPhenix run; return its directory.

    The run trains on the ``train`` split: every step draws ``batch_size`` (molecule,
    concentration) samples with inactive undersampling and random replicate averaging
    (:class:`~molphenix.data.ReplicateSampler`), embeds the control-centred phenomic input and
    the featurized molecule at its concentration, and takes an AdamW step on the contrastive
    loss (linear warm-up, cosine decay, gradient clipping). Every ``eval_every`` steps and at
    the end it computes the top-``eval_fraction`` recall of the ``val`` split (active queries;
    all queries when there are no actives) and keeps ``checkpoints/best.pt``.

    Running ``fit`` again with the same ``out`` resumes from ``checkpoints/last.pt``; a finished
    run returns at once (``log`` says so); ``overwrite=True`` starts over.

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


_LOCK = ".lock"


@contextmanager
def _run_lock(run: Path):
    """Hold an exclusive advisory lock on ``RUN/.lock`` while training (two processes writing
    one run would interleave checkpoints); the OS drops it when the process dies, even by
    SIGKILL, so a killed run never leaves a stale lock."""
    if run.exists() and not run.is_dir():
        raise ValueError(f"out: {run} exists and is not a directory")
    if run.is_dir() and not (run / "config.json").is_file() and any(p.name != _LOCK for p in run.iterdir()):
        raise ValueError(f"out: {run} is not empty and holds no molphenix run (config.json); "
                         "choose another directory")
    run.mkdir(parents=True, exist_ok=True)
    f = open(run / _LOCK, "a+")
    try:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - no advisory locks (Windows): run unlocked
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise ValueError(f"out: {run} is being trained by another process; wait for it "
                                 "or choose another --out") from None
        yield
    finally:
        f.close()


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
        import torch

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
                self.stack.enter_context(_run_lock(run))
            from molphenix.data import load_dataset

            ds = load_dataset(cfg.data)
            if ranks.main:
                setup = self._setup_run(ds, total)
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
        if expected < cfg.batch_size:
            bs = max(2, int(expected))
            if sampler.num_samples < 2:
                raise ValueError(f"data: the training split has {sampler.num_samples} sample(s); "
                                 "contrastive training needs at least 2")
            self.warn(f"batch_size {cfg.batch_size} exceeds the expected epoch size "
                      f"({expected:.0f} samples after undersampling); using batches of {bs}")
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
                meta, features = self._run_meta(ds, sampler, loss_fn, mol_ids, smiles, resuming, total)
        except Exception as exc:  # noqa: BLE001 - re-raised on every rank by agree()
            err = exc
        ranks.agree(err, "the run's set-up")
        meta = ranks.broadcast(meta, "the run's set-up")
        if features is None:  # ranks > 0 featurize in memory (the cache belongs to rank 0)
            features = MolFeatures(meta["features"]["mol_input"], cfg.featurizer_kwargs, cache_dir=None,
                                   state=meta["features"])
        self.mols = MolTable(features, smiles, ds.molecules)
        self.mol_row = {m: i for i, m in enumerate(mol_ids)}
        self.sample_mol_row = np.asarray(
            [self.mol_row[m] for m in sampler.samples.column("molecule_id").to_pylist()], dtype=np.int64)
        self.meta = meta
        self.input_scale = float(meta["input_scale"])
        self.sigma = meta["sigma"]
        sampler.batch_size = int(meta["batch_size"])
        if ranks.active and sampler.batch_size < ranks.world:
            raise ValueError(f"batch_size: the global batch of {sampler.batch_size} samples cannot be split "
                             f"over {ranks.world} ranks (each rank needs at least one sample per step)")

        from molphenix.nn import MolPhenixModel, ModelConfig

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

        self.val = self._val_data(ds, splits, calls) if ranks.main else None

        state = {"step": 0, "epoch": 0, "batch": 0, "samples_seen": 0, "elapsed_s": 0.0,
                 "best_metric": None, "best_step": None}
        if resuming:
            model.load_state_dict(ckpt["model"])
            loss_fn.load_state_dict(ckpt["loss"])
            opt.load_state_dict(ckpt["optimizer"])
            for k in state:
                state[k] = ckpt[k] if k in ckpt else state[k]
            restore_rng(ckpt["rng"])
            if ranks.main:
                _truncate_log(run / "train_log.csv", state["step"])
            was = int(ckpt.get("world_size", 1))
            note = "" if was == ranks.world else (
                f" with {ranks.world} process(es) (the checkpoint was written by {was}; same global batch "
                "and data order, not bitwise identical to an uninterrupted run)")
            self.say(f"resuming {run} at step {state['step']} of {total}{note}")
        self.state = state
        # the heads go through one module so that DistributedDataParallel sees both encoders
        # in one forward; the loss (its temperature/bias) stays outside DDP: the distributed
        # loss already gives it the full global-batch gradient on every rank
        self.heads = ranks.wrap(_heads_module(model), device)
        self.loss_call = loss_fn
        if ranks.active:
            try:
                from molphenix.distributed.losses import DistributedLoss
            except ImportError as exc:  # pragma: no cover - the module ships with molphenix
                raise RuntimeError(f"data-parallel training needs molphenix.distributed.losses ({exc})") from None
            self.loss_call = DistributedLoss(loss_fn)
        return self._loop(total)

    def _setup_run(self, ds: Any, total: int) -> Dict[str, Any]:
        """Rank 0: check/open the run directory and write the setup files; what every rank needs."""
        cfg, run = self.cfg, self.run_dir
        fp = dataset_fingerprint(ds)
        ckpt = _open_run(run, cfg, fp)
        out: Dict[str, Any] = {"ckpt": ckpt, "calls": None, "splits": None, "finished": None}
        if ckpt is not None and ckpt.get("finished"):
            out["finished"] = (f"run {run} already finished ({ckpt['step']} of {total} steps); "
                               "nothing to do (overwrite=True / --overwrite starts over)")
            out["ckpt"] = None
            return out
        resuming = ckpt is not None
        if not resuming:
            # a fresh start (or a start killed before its first checkpoint): redo the setup
            for f in _SETUP_FILES:
                (run / f).unlink(missing_ok=True)
            (run / "checkpoints" / "best.pt").unlink(missing_ok=True)
            _write_json(run / "dataset.json", fp)
            _write_json(run / "versions.json", versions())
        _write_json(run / "config.json", cfg.to_dict())
        out["calls"] = self._calls(ds, resuming)
        out["splits"] = self._splits(ds, resuming)
        return out

    def _run_meta(self, ds: Any, sampler: Any, loss_fn: Any, mol_ids: list, smiles: list,
                  resuming: bool, total: int) -> Tuple[Dict[str, Any], MolFeatures]:
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
            input_scale, sigma = self._scales(loss_fn)
            meta = {
                "model_config": model_cfg.to_dict(),
                "features": features.state(),
                "normalize": cfg.normalize,
                "input_scale": input_scale,
                "sigma": sigma,
                "soft_positive_fraction": cfg.soft_positive_fraction if sigma is not None else None,
                "doses": doses,
                "batch_size": int(sampler.batch_size),
                "total_steps": total,
                "loss": cfg.loss,
                "n_train_samples": int(sampler.num_samples),
                "n_train_active": int(sampler.active.sum()),
                "world_size": int(self.ranks.world),
            }
            _write_json(meta_path, meta)
        return meta, features

    def _calls(self, ds: Any, resuming: bool):
        from molphenix.data import call_activity
        from molphenix.data.io import load_calls, save_calls

        if ds.calls is not None:
            return ds.calls
        path = self.run_dir / "calls.parquet"
        if resuming and path.is_file():
            return load_calls(path)
        self.say("computing activity calls (the dataset has no calls.parquet)")
        calls = call_activity(ds, cutoff=self.cfg.p_cutoff, seed=self.cfg.split_seed)
        save_calls(calls, path)
        return calls

    def _splits(self, ds: Any, resuming: bool):
        from molphenix.data import Splits, make_splits

        path = self.run_dir / "split.parquet"
        if resuming and path.is_file():
            return Splits.load(path, ds)
        cfg = self.cfg
        sp = make_splits(ds, seed=cfg.split_seed, unseen_molecules_fraction=cfg.unseen_molecules_fraction,
                         val_fraction=cfg.val_fraction, unseen_wells_fraction=cfg.unseen_wells_fraction)
        sp.save(path)
        return sp

    def _scales(self, loss_fn: Any) -> Tuple[float, Optional[float]]:
        """input_scale (RMS per dimension of sampled training inputs) and, for losses that take
        u, sigma fitted to ``soft_positive_fraction`` -- once, from a dedicated stream."""
        s = self.sampler
        rng = np.random.default_rng([self.cfg.seed, 77])
        idx = np.concatenate([s.epoch_samples(e) for e in range(4)])[:8192]
        if idx.size < 2:
            idx = np.arange(s.num_samples)
        x, _ = s.average(idx, rng)
        input_scale = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
        if not input_scale > 0:
            input_scale = 1.0
        sigma = None
        if getattr(loss_fn, "needs_u", False):
            from molphenix.losses import fit_similarity_scale

            kw = {}
            if getattr(loss_fn, "c", None) is not None:
                kw["c"] = loss_fn.c
            if getattr(loss_fn, "threshold", None) is not None:
                kw["threshold"] = loss_fn.threshold
            try:
                sigma = float(fit_similarity_scale(x, self.cfg.soft_positive_fraction, seed=self.cfg.seed, **kw))
            except ValueError:
                # A small dataset's repeated draws (four epochs) hold identical rows, and the
                # target quantile of pair distances can then be 0: fit on the distinct rows
                # (never taken on data where the first fit succeeds, so results there are as before).
                xu = np.unique(x, axis=0)
                if xu.shape[0] < 2:
                    raise
                sigma = float(fit_similarity_scale(xu, self.cfg.soft_positive_fraction, seed=self.cfg.seed, **kw))
        return input_scale, sigma

    def _val_data(self, ds: Any, splits: Any, calls: Any) -> Optional[Dict[str, Any]]:
        rows = splits.indices("val")
        if rows.size == 0:
            return None
        from molphenix.eval.queries import split_queries

        return split_queries(ds, rows, calls, normalize=self.cfg.normalize, p_cutoff=self.cfg.p_cutoff)

    # ------------------------------------------------------------------ the loop
    def _batches(self, epoch: int, batch: int) -> Iterator[Tuple[int, int, Any]]:
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

    def _loop(self, total: int) -> Path:
        cfg, st, run, ranks = self.cfg, self.state, self.run_dir, self.ranks
        logf = bar = None
        if ranks.main:
            log_path = run / "train_log.csv"
            new_log = not log_path.is_file() or log_path.stat().st_size == 0
            logf = open(log_path, "a", newline="")
            if new_log:
                csv.writer(logf, lineterminator="\n").writerow(LOG_COLUMNS)
                logf.flush()
            progress = cfg.progress if cfg.progress is not None else _is_tty()
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=total, initial=st["step"], desc="train", unit="step", file=sys.stderr,
                           dynamic_ncols=True)
        try:
            self._steps(total, logf, bar)
        except Exception as exc:
            if ranks.active and not isinstance(exc, RankFailure) and _is_comm_error(exc):
                raise ranks.failure(exc, f"training step {st['step'] + 1}") from exc
            raise
        finally:
            if logf is not None:
                logf.close()
            if bar is not None:
                bar.close()
        best = "" if st["best_metric"] is None else (
            f"; best val top-{100 * cfg.eval_fraction:g}% recall {st['best_metric']:.4f} at step {st['best_step']}")
        procs = f" on {ranks.world} processes" if ranks.active else ""
        self.say(f"finished {run}: {total} steps, {st['samples_seen']} samples in {st['elapsed_s']:.1f} s{procs}{best}")
        return run

    def _steps(self, total: int, logf: Any, bar: Any) -> None:
        import torch

        cfg, st, run, ranks = self.cfg, self.state, self.run_dir, self.ranks
        model, loss_fn, opt, dev = self.model, self.loss_fn, self.opt, self.device
        warm = int(round(cfg.warmup * total))
        eval_every = cfg.eval_every if cfg.eval_every is not None else max(1, total // 10)
        use_amp = cfg.amp and dev.type == "cuda"
        writer = csv.writer(logf, lineterminator="\n") if logf is not None else None
        last_ckpt = time.monotonic()
        t_start = time.perf_counter()
        elapsed0 = float(st["elapsed_s"])
        batches = self._batches(st["epoch"], st["batch"])
        model.train()
        while st["step"] < total:
            step = st["step"]
            t0 = time.perf_counter()
            if ranks.active:
                # dropout draws: a function of (seed, rank, step), so every rank masks its own
                # rows differently and a resumed run (any checkpoint) draws as the uninterrupted one
                torch.manual_seed(_rank_step_seed(cfg.seed, ranks.rank, step))
            epoch, bi, sb = next(batches)
            x = torch.from_numpy(sb.phenomic).to(dev)
            conc = torch.from_numpy(np.asarray(sb.concentration_um, dtype=np.float32)).to(dev)
            mol = self.mols.batch(self.sample_mol_row[sb.sample_index], dev)
            xin = x / self.input_scale
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
                p, q = self.heads(xin, mol, conc)
            p, q = p.float(), q.float()
            u = x / self.sigma if (self.sigma is not None and loss_fn.needs_u) else None
            finite = bool(torch.isfinite(p).all() & torch.isfinite(q).all())
            if not finite and not ranks.active:
                raise ValueError(self._nonfinite_msg(step, None, p, q, None))
            # distributed: the loss is the global batch's on every rank, so a non-finite input on
            # any rank shows on all of them (no rank raises while the others wait in a collective)
            out = self.loss_call(p, q, u)
            loss = out.loss
            if not finite or not torch.isfinite(loss):
                raise ValueError(self._nonfinite_msg(step, loss, p, q, u))
            lr = _lr_at(step, total, warm, cfg.lr)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss.backward()  # DDP sums the heads' gradients over the ranks (_dist.allreduce_sum_hook)
            if cfg.grad_clip:
                gn = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip))
            else:
                gn = float(torch.norm(torch.stack([p_.grad.detach().norm() for p_ in self.params
                                                   if p_.grad is not None])))
            if not math.isfinite(gn):
                raise ValueError(self._nonfinite_grad_msg(step))
            opt.step()
            if hasattr(loss_fn, "clamp_parameters_"):
                loss_fn.clamp_parameters_()
            n = len(sb) if sb.global_size is None else int(sb.global_size)
            st.update(step=step + 1, epoch=epoch, batch=bi + 1, samples_seen=st["samples_seen"] + n)
            dt = time.perf_counter() - t0
            st["elapsed_s"] = elapsed0 + (time.perf_counter() - t_start)
            val = None
            final = st["step"] == total
            if final or (eval_every > 0 and st["step"] % eval_every == 0):
                val = self._validate()
                model.train()
                if val is not None and (st["best_metric"] is None or val > st["best_metric"]):
                    st["best_metric"], st["best_step"] = val, st["step"]
                    if ranks.main:
                        save_checkpoint(self._checkpoint(finished=False), run / "checkpoints" / "best.pt")
            if not ranks.main:
                continue
            stats = out.stats
            writer.writerow([st["step"], epoch, bi, st["samples_seen"], f"{loss.item():.6g}", f"{lr:.6g}",
                             _fmt(stats.get("t")), _fmt(stats.get("b")), _fmt(stats.get("soft_pos_frac")),
                             f"{gn:.6g}", f"{n / max(dt, 1e-9):.1f}", f"{st['elapsed_s']:.3f}",
                             "" if val is None else f"{val:.6g}", ranks.world])
            logf.flush()
            if bar is not None:
                bar.update(1)
                post = {"loss": f"{loss.item():.4f}"}
                if st["best_metric"] is not None:
                    post["val"] = f"{st['best_metric']:.3f}"
                bar.set_postfix(post, refresh=False)
            now = time.monotonic()
            if final or now - last_ckpt >= cfg.checkpoint_every:
                if final and st["best_metric"] is None:
                    # no validation split: the final model is the best we know
                    save_checkpoint(self._checkpoint(finished=True), run / "checkpoints" / "best.pt")
                save_checkpoint(self._checkpoint(finished=final), run / "checkpoints" / "last.pt")
                last_ckpt = now
        if ranks.active:
            # the others wait for rank 0's last checkpoint: when fit returns on any rank, the run
            # directory is complete
            ranks.barrier("the final checkpoint")

    def _checkpoint(self, *, finished: bool) -> Dict[str, Any]:
        st = self.state
        return {
            "format": CHECKPOINT_FORMAT,
            "step": int(st["step"]),
            "epoch": int(st["epoch"]),
            "batch": int(st["batch"]),
            "samples_seen": int(st["samples_seen"]),
            "elapsed_s": float(st["elapsed_s"]),
            "best_metric": st["best_metric"],
            "best_step": st["best_step"],
            "finished": bool(finished),
            "total_steps": int(self.cfg.total_steps),
            "model": self.model.state_dict(),
            "loss": self.loss_fn.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": {"kind": "warmup_cosine", "step": int(st["step"]), "total_steps": int(self.cfg.total_steps),
                          "warmup_steps": int(round(self.cfg.warmup * self.cfg.total_steps)), "peak_lr": float(self.cfg.lr)},
            "rng": capture_rng(),
            "config_hash": self.cfg.identity_hash(),
            "world_size": int(self.ranks.world),
        }

    def _validate(self) -> Optional[float]:
        """Validation recall: computed on rank 0, the same value (and so the same best-checkpoint
        decision) on every rank."""
        if not self.ranks.active:
            return self._validate_here()
        err, val = None, None
        if self.ranks.main:
            try:
                val = self._validate_here()
            except Exception as exc:  # noqa: BLE001 - re-raised on every rank by agree()
                err = exc
        self.ranks.agree(err, "validation")
        return self.ranks.broadcast(val, "validation")

    def _validate_here(self) -> Optional[float]:
        if self.val is None:
            return None
        import torch

        from molphenix.eval import evaluate_embeddings, fraction_key

        from .embed import embed_molecule_rows, embed_wells_prepared

        v = self.val
        self.model.eval()
        with torch.no_grad():
            p = embed_wells_prepared(self.model, v["x"], self.input_scale, self.device)
            rows = np.asarray([self.mol_row[m] for m in v["molecule"]], dtype=np.int64)
            q = embed_molecule_rows(self.model, self.mols, rows, v["concentration"], self.device)
        m = evaluate_embeddings(p.float().cpu(), v["molecule"], v["concentration"], v["active"],
                                q.float().cpu(), v["molecule"], v["concentration"],
                                fractions=(self.cfg.eval_fraction,), n_bootstrap=0)
        key = fraction_key(self.cfg.eval_fraction)
        grp = m["active"] if m["active"]["n_queries"] else m["all"]
        return float(grp[key])

    def _nonfinite_msg(self, step: int, loss: Any, p: Any, q: Any, u: Any) -> str:
        import torch

        for name, t in (("p (phenomic embeddings)", p), ("q (molecular embeddings)", q), ("u (similarity inputs)", u)):
            if t is not None and not bool(torch.isfinite(t).all()):
                return f"non-finite {name} at step {step}; lower lr or check the inputs"
        return f"non-finite loss ({float(loss.detach())}) at step {step}; lower lr or check the inputs"

    def _nonfinite_grad_msg(self, step: int) -> str:
        import torch

        for prm in self.params:
            if prm.grad is not None and not bool(torch.isfinite(prm.grad).all()):
                return (f"non-finite gradient of {self.param_names.get(id(prm), '?')} at step {step}; "
                        "lower lr or check the inputs")
        return f"non-finite gradient norm at step {step}; lower lr or check the inputs"


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


def _rank_step_seed(seed: int, rank: int, step: int) -> int:
    """Torch seed of one rank at one step of a data-parallel run (dropout draws)."""
    return int(np.random.SeedSequence([int(seed), 5, int(rank), int(step)]).generate_state(1, np.uint64)[0] >> 1)


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


def _fmt(v: Any) -> str:
    return "" if v is None else f"{float(v):.6g}"
