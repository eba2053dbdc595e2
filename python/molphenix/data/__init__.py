"""molphenix.data — everything between files on disk and tensors in a batch.

Public API: :func:`load_dataset`, :func:`save_dataset`, :class:`Dataset`, :func:`simulate`,
:func:`call_activity`, the :mod:`~molphenix.data.featurize` module, splits, the replicate
sampler, preprocessing, :func:`load_profiles` (any well-level profile table; the RxRx3-core /
JUMP loaders are its presets), per-plate normalization (:mod:`~molphenix.data.normalize`) and
scale-free screen statistics for comparing screens, real or simulated (:mod:`~molphenix.data.stats`).
Nothing here imports the compiled extension.
"""

from . import featurize
from .activity import DEFAULT_CUTOFF, call_activity, evaluate_calls, roc_auc
from .io import Dataset, from_tables, load_calls, load_dataset, save_calls, save_dataset
from . import normalize, stats
from .loaders import ProfileImportError, import_profiles, load_jump, load_profiles, load_rxrx3_core
from .preprocess import (
    TVN,
    ControlMeans,
    average_replicates,
    center_by_controls,
    fit_tvn,
    normalize_wells,
    typical_variation_normalize,
)
from .sampling import ReplicateSampler
from .schema import DataFileError, InvalidSmilesReport, SchemaError
from .simulator import SimulatorConfig, simulate
from .splits import SPLIT_NAMES, Splits, fold_assignment, make_splits, scaffold_of

__all__ = [
    "ControlMeans",
    "DataFileError",
    "Dataset",
    "DEFAULT_CUTOFF",
    "InvalidSmilesReport",
    "ProfileImportError",
    "ReplicateSampler",
    "SPLIT_NAMES",
    "SchemaError",
    "SimulatorConfig",
    "Splits",
    "TVN",
    "average_replicates",
    "call_activity",
    "center_by_controls",
    "evaluate_calls",
    "featurize",
    "fit_tvn",
    "from_tables",
    "import_profiles",
    "load_calls",
    "load_dataset",
    "load_jump",
    "load_profiles",
    "load_rxrx3_core",
    "fold_assignment",
    "make_splits",
    "normalize",
    "normalize_wells",
    "roc_auc",
    "save_calls",
    "save_dataset",
    "scaffold_of",
    "simulate",
    "stats",
    "typical_variation_normalize",
]
