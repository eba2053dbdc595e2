"""The run's two input scales, fitted once from the training inputs and stored in ``run.json``.

* ``input_scale``: the model sees ``x / input_scale`` (the RMS per dimension of sampled
  training inputs).
* ``similarity_scale`` (``run.json``'s ``"sigma"``): the similarity inputs of the soft-label
  losses are ``u = x / similarity_scale``, fitted by the loss's own hook
  (:meth:`molphenix.losses.ContrastiveLoss.similarity_scale`) so that
  ``TrainConfig.soft_positive_fraction`` of random training pairs are soft positives; None for a
  loss that takes no ``u``.

(The loss's learnable logit multiplier ``t``, ``t = exp(t')``, is the loss's parameter, not one
of these.)
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

__all__ = ["fit_scales"]

#: Training inputs the scales are fitted on (the first of four epochs' draws).
N_FIT_ROWS = 8192


def fit_scales(sampler: Any, loss_fn: Any, *, seed: int, soft_positive_fraction: float
               ) -> Tuple[float, Optional[float]]:
    """``(input_scale, similarity_scale)`` of a run, from a dedicated random stream (seed, 77).

    Args:
        sampler: The run's :class:`~molphenix.data.ReplicateSampler`.
        loss_fn: The run's loss (its :meth:`similarity_scale` hook).
        seed: The run's seed.
        soft_positive_fraction: The target fraction of soft-positive random pairs.

    Returns:
        ``input_scale`` (> 0; 1.0 for inputs that are all zero) and the similarity scale or None.

    Raises:
        ValueError: the similarity scale cannot be fitted (the inputs have no spread).
    """
    rng = np.random.default_rng([seed, 77])
    idx = np.concatenate([sampler.epoch_samples(e) for e in range(4)])[:N_FIT_ROWS]
    if idx.size < 2:
        idx = np.arange(sampler.num_samples)
    x, _ = sampler.average(idx, rng)
    input_scale = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    if not input_scale > 0:
        input_scale = 1.0
    try:
        similarity_scale = loss_fn.similarity_scale(x, soft_positive_fraction, seed=seed)
    except ValueError:
        # A small dataset's repeated draws (four epochs) hold identical rows, and the target
        # quantile of pair distances can then be 0: fit on the distinct rows (never taken on
        # data where the first fit succeeds, so results there are as before).
        xu = np.unique(x, axis=0)
        if xu.shape[0] < 2:
            raise
        similarity_scale = loss_fn.similarity_scale(xu, soft_positive_fraction, seed=seed)
    return input_scale, similarity_scale
