"""molphenix.train — training MolPhenix runs and loading them back.

Public API:
    TrainConfig                      every setting of a run (dict / JSON / YAML round trip)
    fit(config) -> Path              train, resume or confirm a finished run; returns RUN
    load_run(RUN, checkpoint="best") -> TrainedModel (embed_wells, embed_molecules, retrieve)
    evaluate_run(RUN, ...) -> metrics  zero-shot retrieval metrics of a run (RUN/metrics.json)
    DEFAULT_SOFT_POSITIVE_FRACTION   the soft-label scale target of S2L/CWCL (sim_space="input")
    TUNED_DEFAULTS                   per-loss defaults frozen after the validation tuning
    RankFailure                      a data-parallel run lost a rank (died, hung past dist_timeout)

The run directory layout is documented in :mod:`molphenix.train.loop`. This package sits above
:mod:`molphenix.eval` (validation uses its metrics and queries); eval never imports it.
"""

import warnings as _warnings

from .config import (
    DEFAULT_INACTIVE_RATE,
    DEFAULT_LR,
    DEFAULT_SAMPLES,
    DEFAULT_EPOCHS,
    DEFAULT_PATIENCE,
    DEFAULT_SOFT_POSITIVE_FRACTION,
    RUNTIME_KEYS,
    TUNED_DEFAULTS,
    TrainConfig,
)
from ._dist import RankFailure
from .evaluate import EVAL_SPLITS, evaluate_run
from .inputs import dataset_fingerprint
from .loop import LOG_COLUMNS, data_parallel_heads, fit
from .trained import TrainedModel, load_run

__all__ = [
    "DEFAULT_INACTIVE_RATE",
    "DEFAULT_LR",
    "DEFAULT_SAMPLES",
    "DEFAULT_EPOCHS",
    "DEFAULT_PATIENCE",
    "DEFAULT_SOFT_POSITIVE_FRACTION",
    "EVAL_SPLITS",
    "LOG_COLUMNS",
    "RUNTIME_KEYS",
    "RankFailure",
    "TUNED_DEFAULTS",
    "TrainConfig",
    "TrainedModel",
    "data_parallel_heads",
    "dataset_fingerprint",
    "evaluate_run",
    "fit",
    "load_run",
]


def centre_wells(x, batches, is_control, rows=None, *, normalize="center"):
    """Deprecated: :func:`molphenix.data.normalize_wells` (same arguments, same result).

    The run's phenomic preprocessing moved to the data layer, spelled like the rest of the API
    (``center_by_controls``, ``normalize="center"``).
    """
    from molphenix._warnings import external_stacklevel
    from molphenix.data import normalize_wells

    _warnings.warn("molphenix.train.centre_wells is deprecated; use molphenix.data.normalize_wells",
                   DeprecationWarning, stacklevel=external_stacklevel())
    return normalize_wells(x, batches, is_control, rows, normalize=normalize)
