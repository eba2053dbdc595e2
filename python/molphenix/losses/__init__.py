"""molphenix.losses — the contrastive losses behind one interface.

Public API:
    LOSSES = ("s2l", "siglip", "clip", "infoloob", "cloome", "cwcl")
    create_loss(name, **kw) -> ContrastiveLoss
    ContrastiveLoss.forward(p [B, D], q [B, D], u [B, E] | None = None) -> LossOutput(loss, stats)
    ContrastiveLoss.needs_u, ContrastiveLoss.clamp_parameters_()
    fit_similarity_scale(x, target_fraction, c=0.3, threshold=0.75, seed=0, n_pairs=100_000) -> float
    soft_positive_fraction(u, c=0.3, threshold=0.75, max_rows=1024) -> float

Inits and clamps (DESIGN.md section 2): sigmoid losses (s2l, siglip) ``t = exp(t')``,
``t' = log 10`` clamped to [0, ln 100], ``b = -10``; clip and cwcl ``t = 1/0.07`` clamped to
``t <= 100``; infoloob and cloome a fixed ``kappa = 14.3`` (cloome's Hopfield ``beta = 14.3``).
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, Type

from molphenix.losses.base import ContrastiveLoss, LossOutput
from molphenix.losses.scale import fit_similarity_scale, soft_label_window
from molphenix.losses.sigmoid import (
    SIM_SPACES,
    SIMILARITIES,
    S2LLoss,
    SigLIPLoss,
    cosine_soft_labels,
    soft_positive_fraction,
)
from molphenix.losses.softmax import (
    CLIPLoss,
    CLOOMELoss,
    CWCLLoss,
    InfoLOOBLoss,
    hopfield_retrieval,
    infoloob,
)

__all__ = [
    "LOSSES",
    "SIM_SPACES",
    "SIMILARITIES",
    "cosine_soft_labels",
    "ContrastiveLoss",
    "LossOutput",
    "S2LLoss",
    "SigLIPLoss",
    "CLIPLoss",
    "InfoLOOBLoss",
    "CLOOMELoss",
    "CWCLLoss",
    "create_loss",
    "fit_similarity_scale",
    "soft_label_window",
    "soft_positive_fraction",
    "hopfield_retrieval",
    "infoloob",
]

#: Registry names, in the order of DESIGN.md.
LOSSES = ("s2l", "siglip", "clip", "infoloob", "cloome", "cwcl")

_CLASSES: Dict[str, Type[ContrastiveLoss]] = {
    "s2l": S2LLoss,
    "siglip": SigLIPLoss,
    "clip": CLIPLoss,
    "infoloob": InfoLOOBLoss,
    "cloome": CLOOMELoss,
    "cwcl": CWCLLoss,
}


def create_loss(name: str, **kw: Any) -> ContrastiveLoss:
    """Build the loss ``name`` with options ``kw``.

    Args:
        name: One of :data:`LOSSES`.
        **kw: Options of that loss's class (e.g. ``S2LLoss``: ``c``, ``threshold``, ``gamma``,
            ``delta``, ``diagonal``, ``sim_space``, ``similarity``, ``init_t``, ``init_b``, ``backend``).

    Returns:
        A :class:`ContrastiveLoss` (an ``nn.Module``; its parameters are the learnable
        temperature and bias).

    Raises:
        ValueError: unknown name (the known ones listed), an option the loss does not take
            (named, with the accepted ones), or an invalid option value (named).
    """
    if name not in _CLASSES:
        raise ValueError(f"loss: unknown loss {name!r}; expected one of {list(LOSSES)}")
    cls = _CLASSES[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for k in kw:
        if k not in accepted:
            raise ValueError(f"{k}: not an option of the {name!r} loss (accepted: {accepted})")
    return cls(**kw)
