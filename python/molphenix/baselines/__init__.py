"""Non-contrastive baselines evaluated like a trained run.

:mod:`molphenix.baselines.ridge` — the linear anchor: closed-form ridge regression from molecular
features and a dose encoding to the control-centered, replicate-averaged phenotype, retrieved by
cosine.
"""

from .ridge import DEFAULT_ALPHAS, RidgeConfig, RidgeModel, RidgeResult, fit_ridge

__all__ = ["DEFAULT_ALPHAS", "RidgeConfig", "RidgeModel", "RidgeResult", "fit_ridge"]
