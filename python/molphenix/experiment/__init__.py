"""molphenix.experiment — protocols built on training runs and their evaluation.

:func:`run_cv` (``molphenix cv``): grouped k-fold cross-validation of several methods on one
dataset. The folds are scaffold groups of the unseen-molecule split; every fold of every method is
a run directory (:func:`molphenix.train.fit`, evaluated by :func:`molphenix.eval.run.evaluate_run`);
per-query ranks are pooled over the folds and methods are compared pairwise with a cluster
bootstrap over molecules (:mod:`molphenix.eval.compare`). See :mod:`molphenix.experiment.cv`.

Layering: this package sits above ``train`` and ``eval`` (it calls both) and below the command
line and the demo.
"""

from .cv import DEFAULT_METHODS, CVResult, method_configs, run_cv

__all__ = ["DEFAULT_METHODS", "CVResult", "method_configs", "run_cv"]
