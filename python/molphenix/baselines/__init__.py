"""Non-contrastive baselines evaluated like a trained run.

:mod:`molphenix.baselines.ridge` — the linear anchor: closed-form ridge regression from molecular
features and a dose encoding to the control-centered, replicate-averaged phenotype, retrieved by
cosine. :func:`fit_ridge_run` (``molphenix train --loss ridge``) writes it as a run directory that
``molphenix evaluate`` and :func:`molphenix.train.load_run` read like any trained run.
"""

from .ridge import DEFAULT_ALPHAS, RidgeConfig, RidgeModel, RidgeResult, fit_ridge
from .run import RIDGE_MOL_INPUTS, fit_ridge_run

__all__ = ["DEFAULT_ALPHAS", "RIDGE_MOL_INPUTS", "RidgeConfig", "RidgeModel", "RidgeResult", "fit_ridge",
           "fit_ridge_run"]
