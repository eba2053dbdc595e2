"""The size-aware training recipe: a run's budget, validation cadence and early stopping.

A run's budget is resolved once the training split's epoch size is known (the expected samples
of one epoch after inactive undersampling, :meth:`molphenix.data.ReplicateSampler.expected_epoch_size`):

* ``steps`` given: exactly those steps; ``samples`` given: ``ceil(samples / batch)`` steps;
  ``epochs`` given: ``ceil(epochs * epoch size)`` samples. An explicit budget runs in full
  unless ``early_stopping=True`` asks for early stopping.
* none given (the default): ``min(DEFAULT_SAMPLES, DEFAULT_EPOCHS * epoch size)`` samples. When
  the epoch cap binds (a small training set), the run validates every epoch on the validation
  MRR and stops early after ``patience`` validations without improvement; on a large training
  set (``DEFAULT_SAMPLES`` binds, e.g. the simulators') the run is exactly the fixed-budget run
  of before (validation recall, about 10 validations, no early stopping), so the defaults tuned
  there stay valid. ``early_stopping=True``/``False`` overrides the automatic choice.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional

from .config import DEFAULT_EPOCHS, DEFAULT_PATIENCE, DEFAULT_SAMPLES

__all__ = ["Budget", "resolve_budget", "VAL_METRICS"]

#: Validation criteria of the best checkpoint and of early stopping: ``"mrr"`` (mean reciprocal
#: rank over all validation queries) or ``"recall"`` (top-``eval_fraction`` recall of the active
#: validation queries; all queries when none is active).
VAL_METRICS = ("mrr", "recall")


@dataclass
class Budget:
    """A run's resolved budget and model selection (recorded in ``run.json`` as ``recipe``).

    Attributes:
        kind: ``"steps"``, ``"samples"``, ``"epochs"`` (given) or ``"default"``.
        epoch_size: Expected samples of one training epoch (after inactive undersampling).
        samples: Samples the run plans to see (None for a ``steps`` budget).
        total_steps: Steps the run plans to take (early stopping may end it sooner).
        early_stopping: Whether the run stops after ``patience`` validations without improvement.
        patience: Validations without improvement of ``val_metric`` before it stops.
        val_metric: The criterion of ``best.pt`` and early stopping (:data:`VAL_METRICS`).
        eval_every: Steps between validations (0: only at the end).
        epoch_capped: For the default budget: whether the epoch cap set it (a small training set).
    """

    kind: str
    epoch_size: float
    samples: Optional[int]
    total_steps: int
    early_stopping: bool
    patience: int
    val_metric: str
    eval_every: int
    epoch_capped: bool = False

    def to_dict(self) -> Dict[str, Any]:
        """The fields as a JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Budget":
        """The inverse of :meth:`to_dict`."""
        return cls(**d)


def resolve_budget(cfg: Any, epoch_size: float, batch_size: int) -> Budget:
    """The budget of a run of ``cfg`` whose training epoch holds ``epoch_size`` samples (expected)
    and whose steps take ``batch_size`` samples (after any shrinking to fit the epoch).

    Args:
        cfg: The run's :class:`~molphenix.train.TrainConfig`.
        epoch_size: Expected samples per epoch (> 0).
        batch_size: Samples per step.

    Returns:
        The :class:`Budget` (rules in the module docstring).
    """
    epoch_size = float(epoch_size)
    capped = False
    if cfg.steps is not None:
        kind, samples, total = "steps", None, int(cfg.steps)
    else:
        if cfg.samples is not None:
            kind, samples = "samples", int(cfg.samples)
        elif cfg.epochs is not None:
            kind, samples = "epochs", max(1, math.ceil(cfg.epochs * epoch_size))
        else:
            kind = "default"
            by_epochs = max(1, math.ceil(DEFAULT_EPOCHS * epoch_size))
            capped = by_epochs < DEFAULT_SAMPLES
            samples = min(DEFAULT_SAMPLES, by_epochs)
        total = max(1, -(-samples // int(batch_size)))
    es = cfg.early_stopping if cfg.early_stopping is not None else (kind == "default" and capped)
    metric = cfg.val_metric if cfg.val_metric is not None else ("mrr" if es else "recall")
    if cfg.eval_every is not None:
        every = int(cfg.eval_every)
    elif es:  # every epoch
        every = max(1, int(epoch_size // int(batch_size)))
    else:
        every = max(1, total // 10)
    patience = int(cfg.patience) if cfg.patience is not None else DEFAULT_PATIENCE
    return Budget(kind=kind, epoch_size=epoch_size, samples=samples, total_steps=total, early_stopping=bool(es),
                  patience=patience, val_metric=metric, eval_every=every, epoch_capped=capped)
