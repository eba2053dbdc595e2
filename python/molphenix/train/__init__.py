"""molphenix.train — training MolPhenix runs and loading them back.

Public API:
    TrainConfig                      every setting of a run (dict / JSON / YAML round trip)
    fit(config) -> Path              train, resume or confirm a finished run; returns RUN
    load_run(RUN, checkpoint="best") -> TrainedModel (embed_wells, embed_molecules, retrieve)
    DEFAULT_SOFT_POSITIVE_FRACTION   the soft-label scale target of S2L/CWCL (sim_space="input")
    TUNED_DEFAULTS                   per-loss defaults frozen after the validation tuning
    RankFailure                      a data-parallel run lost a rank (died, hung past dist_timeout)

The run directory layout is documented in :mod:`molphenix.train.loop`; evaluation of a run is
:func:`molphenix.eval.run.evaluate_run`.
"""

from .config import (
    DEFAULT_INACTIVE_RATE,
    DEFAULT_LR,
    DEFAULT_SAMPLES,
    DEFAULT_SOFT_POSITIVE_FRACTION,
    RUNTIME_KEYS,
    TUNED_DEFAULTS,
    TrainConfig,
)
from ._dist import RankFailure
from .inputs import centre_wells, dataset_fingerprint
from .loop import LOG_COLUMNS, fit
from .trained import TrainedModel, load_run

__all__ = [
    "DEFAULT_INACTIVE_RATE",
    "DEFAULT_LR",
    "DEFAULT_SAMPLES",
    "DEFAULT_SOFT_POSITIVE_FRACTION",
    "LOG_COLUMNS",
    "RUNTIME_KEYS",
    "RankFailure",
    "TUNED_DEFAULTS",
    "TrainConfig",
    "TrainedModel",
    "centre_wells",
    "dataset_fingerprint",
    "fit",
    "load_run",
]
