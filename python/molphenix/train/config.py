"""The training configuration: one dataclass, dict/JSON/YAML round-trip, field-named errors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

__all__ = [
    "TrainConfig",
    "DEFAULT_SOFT_POSITIVE_FRACTION",
    "DEFAULT_INACTIVE_RATE",
    "DEFAULT_SAMPLES",
    "DEFAULT_EPOCHS",
    "DEFAULT_PATIENCE",
    "DEFAULT_LR",
    "TUNED_DEFAULTS",
    "RUNTIME_KEYS",
]

#: Target fraction of random pairs of training inputs that fall inside the soft-label window
#: (s~ >= threshold) after dividing the inputs by the fitted scale sigma, for losses with
#: ``sim_space="input"`` (s2l, cwcl). DESIGN.md section 2: a scale that made most pairs soft
#: positives collapsed the heads; the value is chosen on the validation split
#: (docs/design/training.md) and frozen.
DEFAULT_SOFT_POSITIVE_FRACTION = 0.005

#: Probability that an inactive (p >= p_cutoff) sample is drawn in an epoch.
DEFAULT_INACTIVE_RATE = 0.1

#: Samples seen by a default run (steps = ceil(samples / batch_size)).
DEFAULT_SAMPLES = 256_000

#: Epochs over the training split (after inactive undersampling) that cap the default budget: a
#: run without ``steps``, ``samples`` or ``epochs`` sees min(DEFAULT_SAMPLES, DEFAULT_EPOCHS x
#: epoch size) samples; when the cap binds (a small training set) it also validates every epoch
#: and stops early (molphenix.train.recipe). Chosen on the inner validation folds of the bundled
#: real screen (docs/design/training.md, experiments/results/recipe-2026-12-08/).
DEFAULT_EPOCHS = 250

#: Validations without improvement of the validation criterion before a run stops early.
DEFAULT_PATIENCE = 20

#: Peak learning rate when neither the config nor :data:`TUNED_DEFAULTS` sets one.
DEFAULT_LR = 1e-3

#: Per-loss defaults frozen after the validation-split tuning (docs/design/training.md,
#: experiments/tune_defaults.py, experiments/results/tuning-2026-11-28/ and
#: tuning-round{2,3,4}-2026-11-28/). A field left ``None`` in a :class:`TrainConfig` takes the
#: value here for its loss, else the global default; a ``loss_kwargs`` or ``model_overrides``
#: entry here is used unless the config sets the same key (``model_overrides`` only with
#: :data:`TUNED_MODEL`).
TUNED_DEFAULTS: Dict[str, Dict[str, Any]] = {
    # round 1: s2l's scale rule from {0.005, 0.02, 0.08}, the baselines' inactive_rate from
    # {0.1, 0.3, 1.0} at lr 1e-3; round 2 (every method): regularisation {dropout 0.3 with
    # weight decay 0.1 or 1.0} on top of the round-1 pick; round 3 (every method): lr {3e-4,
    # 3e-3} on top of the round-2 pick; round 4: s2l diagonal "hard", the baselines batch 512;
    # the best of the 8 runs per method kept
    "s2l": {"soft_positive_fraction": 0.005, "inactive_rate": 0.1, "lr": 1e-3,
            "loss_kwargs": {"diagonal": "hard"}},
    "clip": {"inactive_rate": 0.1, "lr": 1e-3},
    "siglip": {"inactive_rate": 0.1, "lr": 3e-4, "weight_decay": 0.1, "model_overrides": {"dropout": 0.3}},
    "cloome": {"inactive_rate": 0.3, "lr": 1e-3, "weight_decay": 0.1, "model_overrides": {"dropout": 0.3},
               "batch_size": 512},
}
#: Samples per step when neither the config nor :data:`TUNED_DEFAULTS` sets it.
DEFAULT_BATCH_SIZE = 256
#: AdamW weight decay when neither the config nor :data:`TUNED_DEFAULTS` sets one.
DEFAULT_WEIGHT_DECAY = 1e-4
#: The model the defaults were tuned with: a ``model_overrides`` entry of :data:`TUNED_DEFAULTS`
#: applies to this model only (another model keeps its own config's values).
TUNED_MODEL = "molphenix-small"
_TUNABLE = {"soft_positive_fraction": DEFAULT_SOFT_POSITIVE_FRACTION, "inactive_rate": DEFAULT_INACTIVE_RATE,
            "lr": DEFAULT_LR, "weight_decay": DEFAULT_WEIGHT_DECAY, "batch_size": DEFAULT_BATCH_SIZE}

#: Keys that may differ when a run is resumed: they change where files are and how the run
#: reports, not what it computes (``device`` and ``threads`` can change the low bits of float
#: results: a resume on another device or thread count is allowed, but is then not bitwise
#: identical to an uninterrupted run).
RUNTIME_KEYS = ("data", "out", "overwrite", "progress", "checkpoint_every", "device", "threads",
                "dist_timeout")

_NORMALIZE = ("center", "tvn", "none")
_DEVICES = ("cpu", "cuda")


@dataclass
class TrainConfig:
    """Every setting of a training run (``molphenix train`` flags map onto these fields).

    Attributes:
        data: Dataset directory (:func:`molphenix.data.load_dataset`).
        out: Run directory (created; an existing run there is resumed).
        model: Model config name (:func:`molphenix.nn.list_models`) or a JSON config path.
        model_overrides: :class:`~molphenix.nn.ModelConfig` fields replacing the named
            config's (``phenomic_dim``, ``molecular_dim`` and ``doses`` come from the data).
        loss: Loss name (:data:`molphenix.losses.LOSSES`, or any registered with
            :func:`molphenix.losses.register_loss`).
        loss_kwargs: Keyword arguments of :func:`molphenix.losses.create_loss`.
        mol_input: Molecular input: ``"morgan"`` (Morgan count fingerprint from SMILES),
            ``"rdkit2d"``, ``"maccs"``, ``"minimol"`` (the pretrained MiniMol encoder, 512-d;
            the ``molphenix[minimol]`` extra), ``"graph"`` or ``"column:<name>"`` (a precomputed
            embedding column of the molecules table); ``None`` (default) takes the model
            config's (``"morgan"`` for ``molphenix-small``, ``"graph"`` for
            ``molphenix-graph-small``).
        featurizer_kwargs: Arguments of the featurizer (e.g. ``{"radius": 2, "n_bits": 2048}``).
        concentration: Concentration encoding of the molecular head (``"none"``, ``"onehot"``,
            ``"log10"``, ``"sigmoid"`` or ``"+"``-joined); ``None`` keeps the model config's.
        seed: Seed of initialisation, sampling, replicate averaging and dropout.
        split_seed: Seed of the split assignment (fixed by default so that runs with different
            seeds are evaluated on the same split); with ``folds``, the seed of the fold
            partition.
        val_fraction, unseen_molecules_fraction, unseen_wells_fraction: Split sizes
            (:func:`molphenix.data.make_splits`).
        folds, fold: Grouped k-fold (``molphenix cv``): the run tests fold ``fold`` of ``folds``
            scaffold-grouped folds (``unseen_molecules``; ``unseen_molecules_fraction`` is then
            not used) and validates on ``val_fraction`` of the molecules drawn from the other
            folds (:func:`molphenix.data.make_splits`). Both ``None`` (default): one split.
        device: ``"cpu"`` or ``"cuda"``.
        threads: CPU threads for torch (``None``: torch's current setting; must be >= 1).
        batch_size: Samples per step (>= 2; ``None``: the loss's :data:`TUNED_DEFAULTS` entry,
            else :data:`DEFAULT_BATCH_SIZE`).
        steps: Optimiser steps; exclusive with ``samples`` and ``epochs``.
        samples: Total samples seen (steps = ceil(samples / batch_size)); exclusive with
            ``steps`` and ``epochs``. With none of the three, the default budget is
            min(:data:`DEFAULT_SAMPLES`, :data:`DEFAULT_EPOCHS` x the training epoch size)
            (:mod:`molphenix.train.recipe`). Every method sees this budget: when
            the batch must shrink to fit an epoch of the training split (after inactive
            undersampling), the step count grows to ceil(samples / the smaller batch), and
            ``run.json`` records the batch and the steps taken.
        epochs: Budget in epochs over the training split (expected samples of an epoch after
            inactive undersampling): ceil(epochs x epoch size) samples; exclusive with ``steps``
            and ``samples``.
        early_stopping: Stop after ``patience`` validations without improvement of
            ``val_metric`` (the last checkpoint is where the run stopped). ``None`` (default):
            on only for the default budget when its epoch cap binds (a small training set);
            an explicit ``steps``, ``samples`` or ``epochs`` budget runs in full unless this
            is True.
        patience: Validations without improvement before an early stop (``None``:
            :data:`DEFAULT_PATIENCE`).
        val_metric: Criterion of ``best.pt`` and early stopping: ``"mrr"`` (validation MRR
            over all validation queries) or ``"recall"`` (top-``eval_fraction`` recall of the
            active validation queries); ``None``: ``"mrr"`` with early stopping, else
            ``"recall"``.
        lr: Peak learning rate (AdamW; ``None``: the loss's :data:`TUNED_DEFAULTS` entry).
        weight_decay: AdamW weight decay of the heads' weight matrices (biases, norms and the
            loss's temperature/bias are not decayed; ``None``: the loss's :data:`TUNED_DEFAULTS`
            entry, else :data:`DEFAULT_WEIGHT_DECAY`).
        warmup: Fraction of the steps spent in linear warm-up (then cosine to 0).
        grad_clip: Gradient-norm clip (``None`` or 0: off).
        p_cutoff: Samples with activity p >= cutoff are inactive (undersampled).
        inactive_rate: Probability an inactive sample is drawn in an epoch (``None``: the
            loss's :data:`TUNED_DEFAULTS` entry).
        min_average, max_average: Replicate-subset size range of the random averaging
            (``max_average=None``: up to all replicates).
        normalize: Phenomic preprocessing: ``"center"`` (per-batch control centering),
            ``"tvn"`` (centering + TVN whitening on the controls) or ``"none"``.
        soft_positive_fraction: For losses that need similarity inputs u (s2l with
            ``sim_space="input"``, cwcl): the fraction of random pairs of training inputs
            inside the soft-label window; sigma is fitted once to reach it
            (:func:`molphenix.losses.fit_similarity_scale`) and stored in the run.
        eval_every: Validate every this many steps (``None``: every epoch with early stopping,
            else about 10 times per run; 0: only at the end).
        eval_fraction: Top-K% fraction of the validation recall that selects ``best.pt``.
        checkpoint_every: Seconds between checkpoints (0: after every step); one is always
            written at the end.
        amp: bf16 autocast of the heads on CUDA (ignored on CPU).
        overwrite: Delete an existing run in ``out`` and start over.
        progress: Progress bar (``None``: when stderr is a TTY).
        dist_timeout: Seconds a rank of a data-parallel run (``torchrun``) waits in a
            collective before it fails: a rank that died or hangs surfaces as an error on the
            others after at most this long (a runtime setting: not part of the run's identity).

    Raises:
        ValueError: on construction, an invalid value (the field is named).
    """

    data: Optional[str] = None
    out: Optional[str] = None
    model: str = "molphenix-small"
    model_overrides: Dict[str, Any] = field(default_factory=dict)
    loss: str = "s2l"
    loss_kwargs: Dict[str, Any] = field(default_factory=dict)
    mol_input: Optional[str] = None
    featurizer_kwargs: Dict[str, Any] = field(default_factory=dict)
    concentration: Optional[str] = None
    seed: int = 0
    split_seed: int = 0
    val_fraction: float = 0.1
    unseen_molecules_fraction: float = 0.2
    unseen_wells_fraction: float = 0.2
    folds: Optional[int] = None
    fold: Optional[int] = None
    device: str = "cpu"
    threads: Optional[int] = None
    batch_size: Optional[int] = None
    steps: Optional[int] = None
    samples: Optional[int] = None
    epochs: Optional[int] = None
    early_stopping: Optional[bool] = None
    patience: Optional[int] = None
    val_metric: Optional[str] = None
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    warmup: float = 0.05
    grad_clip: Optional[float] = 1.0
    p_cutoff: float = 0.1
    inactive_rate: Optional[float] = None
    min_average: int = 1
    max_average: Optional[int] = None
    normalize: str = "center"
    soft_positive_fraction: Optional[float] = None
    eval_every: Optional[int] = None
    eval_fraction: float = 0.01
    checkpoint_every: float = 60.0
    amp: bool = True
    overwrite: bool = False
    progress: Optional[bool] = None
    dist_timeout: float = 300.0

    def __post_init__(self) -> None:
        if self.data is not None:
            self.data = str(self.data)
        if self.out is not None:
            self.out = str(self.out)
        # per-loss frozen defaults (TUNED_DEFAULTS), then the global ones
        tuned = TUNED_DEFAULTS.get(self.loss, {}) if isinstance(self.loss, str) else {}
        for key, default in _TUNABLE.items():
            if getattr(self, key) is None:
                setattr(self, key, tuned.get(key, default))
        if isinstance(self.loss_kwargs, dict) and tuned.get("loss_kwargs"):
            self.loss_kwargs = {**tuned["loss_kwargs"], **self.loss_kwargs}
        if isinstance(self.model_overrides, dict) and tuned.get("model_overrides") and self.model == TUNED_MODEL:
            self.model_overrides = {**tuned["model_overrides"], **self.model_overrides}
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> "TrainConfig":
        """Check every field.

        Returns:
            ``self``.

        Raises:
            ValueError: naming the first offending field.
        """
        if self.mol_input is not None:
            from molphenix.nn.config import MOL_INPUTS

            if not isinstance(self.mol_input, str) or not (
                    self.mol_input in MOL_INPUTS or (self.mol_input.startswith("column:") and len(self.mol_input) > 7)):
                raise ValueError(f"mol_input: expected one of {', '.join(MOL_INPUTS)} or column:<name> "
                                 f"(or None: the model config's), got {self.mol_input!r}")
        for f in ("model", "loss", "normalize", "device"):
            if not isinstance(getattr(self, f), str) or not getattr(self, f):
                raise ValueError(f"{f}: expected a non-empty string, got {getattr(self, f)!r}")
        for f in ("model_overrides", "loss_kwargs", "featurizer_kwargs"):
            if not isinstance(getattr(self, f), dict):
                raise ValueError(f"{f}: expected a dict, got {type(getattr(self, f)).__name__}")
        if self.device not in _DEVICES:
            raise ValueError(f"device: expected one of {list(_DEVICES)}, got {self.device!r}")
        if self.normalize not in _NORMALIZE:
            raise ValueError(f"normalize: expected one of {list(_NORMALIZE)}, got {self.normalize!r}")
        _int(self.seed, "seed", None)
        _int(self.split_seed, "split_seed", None)
        _int(self.batch_size, "batch_size", 2)
        _int(self.min_average, "min_average", 1)
        if self.threads is not None:
            _int(self.threads, "threads", 1)
        if self.max_average is not None:
            _int(self.max_average, "max_average", self.min_average)
        given = [f for f in ("steps", "samples", "epochs") if getattr(self, f) is not None]
        if len(given) > 1:
            raise ValueError(f"{given[0]}: give one of steps, samples or epochs, not {' and '.join(given)}")
        if self.steps is not None:
            _int(self.steps, "steps", 1)
        if self.samples is not None:
            _int(self.samples, "samples", 1)
        if self.epochs is not None:
            _int(self.epochs, "epochs", 1)
        if self.patience is not None:
            _int(self.patience, "patience", 1)
        if self.early_stopping is not None and not isinstance(self.early_stopping, bool):
            raise ValueError(f"early_stopping: expected true, false or null, got {self.early_stopping!r}")
        if self.val_metric is not None and self.val_metric not in ("mrr", "recall"):
            raise ValueError(f"val_metric: expected 'mrr' or 'recall' (or None: automatic), got {self.val_metric!r}")
        if self.eval_every is not None:
            _int(self.eval_every, "eval_every", 0)
        _num(self.lr, "lr", lo=0.0, lo_open=True)
        _num(self.weight_decay, "weight_decay", lo=0.0)
        _num(self.warmup, "warmup", lo=0.0, hi=1.0, hi_open=True)
        if self.grad_clip is not None:
            _num(self.grad_clip, "grad_clip", lo=0.0)
        _num(self.p_cutoff, "p_cutoff", lo=0.0, hi=1.0, lo_open=True)
        _num(self.inactive_rate, "inactive_rate", lo=0.0, hi=1.0)
        _num(self.soft_positive_fraction, "soft_positive_fraction", lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        _num(self.eval_fraction, "eval_fraction", lo=0.0, hi=1.0, lo_open=True)
        _num(self.checkpoint_every, "checkpoint_every", lo=0.0)
        _num(self.dist_timeout, "dist_timeout", lo=0.0, lo_open=True)
        for f in ("val_fraction", "unseen_molecules_fraction", "unseen_wells_fraction"):
            _num(getattr(self, f), f, lo=0.0, hi=1.0, hi_open=True)
        if (self.folds is None) != (self.fold is None):
            raise ValueError("folds: give folds and fold together (grouped k-fold), or neither")
        if self.folds is not None:
            _int(self.folds, "folds", 2)
            _int(self.fold, "fold", 0)
            if self.fold >= self.folds:
                raise ValueError(f"fold: must be < folds ({self.folds}), got {self.fold}")
        if self.concentration is not None and not isinstance(self.concentration, str):
            raise ValueError(f"concentration: expected a string or None, got {self.concentration!r}")
        for f in ("amp", "overwrite"):
            if not isinstance(getattr(self, f), bool):
                raise ValueError(f"{f}: expected true or false, got {getattr(self, f)!r}")
        if self.progress is not None and not isinstance(self.progress, bool):
            raise ValueError(f"progress: expected true, false or null, got {self.progress!r}")
        return self

    def make_splits(self, dataset: Any) -> Any:
        """The run's split assignment of ``dataset`` (:func:`molphenix.data.make_splits` with
        ``split_seed``, the fractions and, for a grouped k-fold run, ``folds`` / ``fold``).

        Returns:
            A :class:`molphenix.data.Splits`.
        """
        from molphenix.data import make_splits

        return make_splits(dataset, seed=self.split_seed, unseen_molecules_fraction=self.unseen_molecules_fraction,
                           val_fraction=self.val_fraction, unseen_wells_fraction=self.unseen_wells_fraction,
                           folds=self.folds, fold=self.fold)

    @property
    def total_steps(self) -> int:
        """Optimiser steps of the run as configured: ``steps`` or ``ceil(samples / batch_size)``
        (a run whose batch shrinks to fit the epoch takes more, an ``epochs`` or default budget
        on a small training set fewer: ``run.json``'s ``total_steps``; for ``epochs`` and the
        default budget this is the :data:`DEFAULT_SAMPLES` bound)."""
        if self.steps is not None:
            return int(self.steps)
        samples = DEFAULT_SAMPLES if self.samples is None else int(self.samples)
        return max(1, -(-samples // self.batch_size))

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> Dict[str, Any]:
        """All fields as a JSON-serialisable dict (nested dicts copied)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        """Build and validate a config from a dict (missing keys take their defaults).

        Raises:
            TypeError: ``d`` is not a dict.
            ValueError: an unknown key (named) or an invalid value (field named).
        """
        if not isinstance(d, dict):
            raise TypeError(f"TrainConfig.from_dict: expected a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown training config key (known: {sorted(known)})")
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides: Any) -> "TrainConfig":
        """Read a config from a JSON (``.json``) or YAML (``.yaml``/``.yml``) file.

        Args:
            path: The file.
            **overrides: Fields replacing the file's (e.g. the CLI's ``--seed``).

        Returns:
            The validated config.

        Raises:
            FileNotFoundError: no such file.
            ValueError: unparseable file (named), not a mapping, unknown key, invalid value.
        """
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        text = p.read_text()
        try:
            if p.suffix.lower() in (".yaml", ".yml"):
                import yaml

                d = yaml.safe_load(text)
            else:
                d = json.loads(text)
        except Exception as exc:  # noqa: BLE001 - json and yaml raise different errors
            raise ValueError(f"{p}: cannot parse ({exc})") from None
        if d is None:
            d = {}
        if not isinstance(d, dict):
            raise ValueError(f"{p}: expected a mapping of config keys, got {type(d).__name__}")
        d = {k.replace("-", "_") if isinstance(k, str) else k: v for k, v in d.items()}
        d.update(overrides)
        return cls.from_dict(d)

    def replace(self, **overrides: Any) -> "TrainConfig":
        """A validated copy with ``overrides`` applied."""
        d = self.to_dict()
        d.update(overrides)
        return type(self).from_dict(d)

    def identity(self) -> Dict[str, Any]:
        """The fields that define what a run computes (everything but :data:`RUNTIME_KEYS`;
        ``soft_positive_fraction`` only for losses that read it; ``folds`` / ``fold`` only when
        set)."""
        d = {k: v for k, v in self.to_dict().items() if k not in RUNTIME_KEYS}
        if not _uses_similarity_inputs(self.loss):  # the field has no effect on such a run
            d.pop("soft_positive_fraction", None)
        if self.folds is None:  # one split: the identity (and its hash) of runs from before folds
            d.pop("folds", None)
            d.pop("fold", None)
        for f in ("epochs", "early_stopping", "patience", "val_metric"):
            if d.get(f) is None:  # unset: the identity (and its hash) of runs from before the recipe
                d.pop(f, None)
        return d

    def identity_hash(self) -> str:
        """sha256 of :meth:`identity` (canonical JSON)."""
        blob = json.dumps(self.identity(), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def differences(self, other: "TrainConfig") -> Dict[str, tuple]:
        """Identity fields whose values differ: ``{field: (self's, other's)}``."""
        a, b = self.identity(), other.identity()
        return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _uses_similarity_inputs(loss: str) -> bool:
    """Whether the registered loss ``loss`` can read similarity inputs (and so
    ``soft_positive_fraction``); False for an unknown name."""
    from molphenix.losses import loss_entry

    try:
        return loss_entry(loss).uses_similarity_inputs
    except ValueError:
        return False


def _int(v: Any, name: str, lo: Optional[int]) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{name}: expected an integer, got {type(v).__name__} {v!r}")
    if lo is not None and v < lo:
        raise ValueError(f"{name}: must be >= {lo}, got {v}")
    return v


def _num(v: Any, name: str, *, lo: Optional[float] = None, hi: Optional[float] = None,
         lo_open: bool = False, hi_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{name}: expected a number, got {type(v).__name__} {v!r}")
    x = float(v)
    if not math.isfinite(x):
        raise ValueError(f"{name}: must be finite, got {v!r}")
    if lo is not None and (x < lo or (lo_open and x == lo)):
        raise ValueError(f"{name}: must be {'>' if lo_open else '>='} {lo}, got {v!r}")
    if hi is not None and (x > hi or (hi_open and x == hi)):
        raise ValueError(f"{name}: must be {'<' if hi_open else '<='} {hi}, got {v!r}")
    return x
