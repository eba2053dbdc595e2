"""The "cosine instead of arctan-L2 soft labels" ablation, emulated without changing the losses.

DESIGN.md section 2: for unit vectors ``||a - b||^2 = 2 - 2 cos(a, b)``, so the arctan-L2
similarity of row-normalised similarity inputs ``u`` is a monotone function of their cosine:
S2L on L2-normalised ``u`` *is* S2L with cosine soft labels (the norm information that separates
inactive-inactive from active-inactive pairs is gone). ``sim_space="projected"`` is a different
thing (labels from the learned embedding ``p``).

:class:`UnitS2LLoss` is :class:`molphenix.losses.S2LLoss` that L2-normalises each row of ``u``
and divides it by ``unit_scale``. ``unit_scale`` is fitted, like the default run's sigma, so that
the same fraction of random training pairs (``TrainConfig.soft_positive_fraction``) falls in the
soft-label window: only the geometry of the labels changes, not how many soft positives a batch
holds.

The trainer builds its loss with ``molphenix.losses.create_loss(cfg.loss, **cfg.loss_kwargs)``;
:func:`unit_s2l_loss_available` installs, for the duration of a ``with`` block, a ``create_loss``
that builds :class:`UnitS2LLoss` for ``loss="s2l"`` with ``loss_kwargs`` holding ``unit_u``. The
run's ``config.json`` records ``loss_kwargs={"unit_u": true, "unit_scale": ...}``, so the run
resumes only inside the demo (elsewhere ``create_loss`` names ``unit_u`` as an unknown option).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

import numpy as np
import torch

__all__ = ["UnitS2LLoss", "unit_s2l_loss_available", "fit_unit_scale"]


def _base():
    from molphenix.losses import S2LLoss

    return S2LLoss


class UnitS2LLoss(_base()):  # type: ignore[misc]
    """S2L with soft labels from row-normalised ``u`` (cosine soft labels).

    Args:
        unit_u: Must be True (marks the option in the run's config).
        unit_scale: Divisor of the normalised rows (> 0), from :func:`fit_unit_scale`.
        **kw: :class:`molphenix.losses.S2LLoss` options.
    """

    def __init__(self, *, unit_u: bool = True, unit_scale: float = 1.0, **kw: Any) -> None:
        super().__init__(**kw)
        if unit_u is not True:
            raise ValueError(f"unit_u: expected true, got {unit_u!r}")
        if not (isinstance(unit_scale, (int, float)) and unit_scale > 0 and np.isfinite(unit_scale)):
            raise ValueError(f"unit_scale: must be a finite number > 0, got {unit_scale!r}")
        self.unit_scale = float(unit_scale)

    def forward(self, p: torch.Tensor, q: torch.Tensor, u: Optional[torch.Tensor] = None):
        """S2L of ``(p, q)`` with labels from ``normalize(u) / unit_scale``."""
        if u is not None:
            u = torch.nn.functional.normalize(u.detach().float(), dim=1) / self.unit_scale
        return super().forward(p, q, u)


def fit_unit_scale(x: np.ndarray, target_fraction: float, *, seed: int = 0) -> float:
    """The divisor of row-normalised ``x`` that puts ``target_fraction`` of random pairs in the
    soft-label window (:func:`molphenix.losses.fit_similarity_scale` on the normalised rows).

    Shapes:
        x: [n, E] control-centred training inputs
    """
    from molphenix.losses import fit_similarity_scale

    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    xn = x / np.where(norms > 0, norms, 1.0)
    return float(fit_similarity_scale(xn.astype(np.float32), target_fraction, seed=seed))


@contextlib.contextmanager
def unit_s2l_loss_available() -> Iterator[None]:
    """Within the block, ``create_loss("s2l", unit_u=True, unit_scale=s, ...)`` builds a
    :class:`UnitS2LLoss`; every other call is unchanged."""
    import molphenix.losses as losses

    original = losses.create_loss

    def create_loss(name: str, **kw: Any):
        if name == "s2l" and "unit_u" in kw:
            return UnitS2LLoss(**kw)
        return original(name, **kw)

    losses.create_loss = create_loss
    try:
        yield
    finally:
        losses.create_loss = original
