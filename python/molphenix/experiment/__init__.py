"""molphenix.experiment — protocols built on training runs and their evaluation.

:func:`run_cv` (``molphenix cv``): grouped k-fold cross-validation of several methods on one
dataset. The folds are scaffold groups of the unseen-molecule split; every fold of every method is
a run directory (:func:`molphenix.train.fit` or :func:`molphenix.baselines.fit_ridge_run`,
evaluated by :func:`molphenix.train.evaluate_run`); per-query ranks are pooled over the folds and
methods are compared pairwise with a cluster bootstrap over molecules (:mod:`molphenix.eval.compare`). See :mod:`molphenix.experiment.cv`;
:mod:`molphenix.experiment.report` writes its tables.

Layering: beside the demo, above ``baselines``, ``train`` and ``eval`` (it calls them), below the
command line.
"""

from .cv import DEFAULT_METHODS, CVResult, method_configs, run_cv
from .report import cv_markdown, cv_summary

__all__ = ["DEFAULT_METHODS", "CVResult", "cv_markdown", "cv_summary", "method_configs", "run_cv"]
