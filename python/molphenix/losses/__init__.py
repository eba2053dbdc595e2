"""molphenix.losses — the contrastive losses behind one interface.

Public API:
    LOSSES = ("s2l", "siglip", "clip", "infoloob", "cloome", "cwcl")   the built-ins
    create_loss(name, **kw) -> ContrastiveLoss
    register_loss(name, factory, uses_similarity_inputs=False); available_losses()
    ContrastiveLoss.forward(p [B, D], q [B, D], u [B, E] | None = None) -> LossOutput(loss, stats)
    ContrastiveLoss.needs_u, .clamp_parameters_(), .similarity_scale(x, fraction, seed=) (the
        trainer's scale hook), .soft_positive_fraction(p, u) (the logged statistic)
    fit_similarity_scale(x, target_fraction, c=0.3, threshold=0.75, seed=0, n_pairs=100_000) -> float
    fit_unit_scale(x, target_fraction, seed=0) -> float   (S2L with u_norm="unit")
    soft_positive_fraction(u, c=0.3, threshold=0.75, max_rows=1024) -> float

A new loss: a ContrastiveLoss subclass in this package (or anywhere), registered with
``register_loss`` (the built-ins below register the same way).

Inits and clamps (DESIGN.md section 2): sigmoid losses (s2l, siglip) ``t = exp(t')``,
``t' = log 10`` clamped to [0, ln 100], ``b = -10``; clip and cwcl ``t = 1/0.07`` clamped to
``t <= 100``; infoloob and cloome a fixed ``kappa = 14.3`` (cloome's Hopfield ``beta = 14.3``).
"""

from __future__ import annotations

from molphenix.losses.base import ContrastiveLoss, LossOutput
from molphenix.losses.labels import SIM_SPACES, SIMILARITIES, U_NORMS, cosine_soft_labels, soft_positive_fraction
from molphenix.losses.registry import LossEntry, available_losses, create_loss, loss_entry, register_loss
from molphenix.losses.scale import fit_similarity_scale, fit_unit_scale, soft_label_window
from molphenix.losses.sigmoid import S2LLoss, SigLIPLoss
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
    "U_NORMS",
    "cosine_soft_labels",
    "ContrastiveLoss",
    "LossEntry",
    "LossOutput",
    "S2LLoss",
    "SigLIPLoss",
    "CLIPLoss",
    "InfoLOOBLoss",
    "CLOOMELoss",
    "CWCLLoss",
    "available_losses",
    "create_loss",
    "fit_similarity_scale",
    "fit_unit_scale",
    "loss_entry",
    "register_loss",
    "soft_label_window",
    "soft_positive_fraction",
    "hopfield_retrieval",
    "infoloob",
]

#: The built-in losses, in the order of DESIGN.md (:func:`available_losses` adds registered ones).
LOSSES = ("s2l", "siglip", "clip", "infoloob", "cloome", "cwcl")

for _name, _cls in zip(LOSSES, (S2LLoss, SigLIPLoss, CLIPLoss, InfoLOOBLoss, CLOOMELoss, CWCLLoss)):
    register_loss(_name, _cls, uses_similarity_inputs=_name in ("s2l", "cwcl"))
del _name, _cls
