"""Sigmoid losses: S2L (MolPhenix) and SigLIP, both on the fused :mod:`molphenix.ops` kernels."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from molphenix._similarity import ARCTAN_C, S2L_DELTA, S2L_GAMMA, SOFT_LABEL_THRESHOLD
from molphenix.losses.base import ContrastiveLoss, LossOutput
from molphenix.losses.labels import (
    SIM_SPACES,
    SIMILARITIES,
    U_NORMS,
    SoftLabels,
    cosine_soft_labels,
    offdiagonal_positive_fraction,
    soft_positive_fraction,
)

__all__ = ["S2LLoss", "SigLIPLoss", "soft_positive_fraction", "cosine_soft_labels", "SIM_SPACES",
           "SIMILARITIES", "U_NORMS"]

_T_MIN_LOG, _T_MAX_LOG = 0.0, math.log(100.0)


def _s2l_from_labels(p: torch.Tensor, q: torch.Tensor, t: torch.Tensor, b: torch.Tensor, s: torch.Tensor,
                     gamma: float, delta: float, diagonal: str) -> torch.Tensor:
    """S2L on an explicit label matrix (pure torch, materialised; stable softplus form)."""
    wide = torch.float64 if p.dtype == torch.float64 else torch.float32
    z = t.to(wide) * (p.to(wide) @ q.to(wide).T) + b.to(wide)
    w_pos, w_neg = s.to(wide), gamma - delta * s.to(wide)
    if diagonal == "hard":
        eye = torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
        w_pos = w_pos.masked_fill(eye, 1.0)
        w_neg = w_neg.masked_fill(eye, 0.0)
    return (((w_pos + w_neg) * F.softplus(z) - w_pos * z).sum() / p.shape[0]).to(p.dtype)


class _SigmoidBase(ContrastiveLoss):
    """Learnable ``t = exp(t')`` (``t'`` clamped to [0, ln 100]) and bias ``b``."""

    def __init__(self, init_t: float = 10.0, init_b: float = -10.0, *, learn_t: bool = True,
                 learn_b: bool = True, backend: str = "auto") -> None:
        super().__init__()
        if not (isinstance(init_t, (int, float)) and 1.0 <= init_t <= 100.0):
            raise ValueError(f"init_t: must be in [1, 100] (t' = log t is clamped to [0, ln 100]), got {init_t!r}")
        if not (isinstance(init_b, (int, float)) and math.isfinite(init_b)):
            raise ValueError(f"init_b: must be a finite number, got {init_b!r}")
        if backend not in ("auto", "cpu", "cuda", "reference"):
            raise ValueError(f"backend: expected 'auto', 'cpu', 'cuda' or 'reference', got {backend!r}")
        self.logit_scale = nn.Parameter(torch.tensor(math.log(float(init_t))), requires_grad=bool(learn_t))
        self.logit_bias = nn.Parameter(torch.tensor(float(init_b)), requires_grad=bool(learn_b))
        self.backend = backend

    def scale_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The effective ``(t, b)``: ``t = exp(clamp(t', 0, ln 100))`` (0-dim tensors, differentiable)."""
        return torch.exp(torch.clamp(self.logit_scale, _T_MIN_LOG, _T_MAX_LOG)), self.logit_bias

    @staticmethod
    def _stats(t: torch.Tensor, b: torch.Tensor) -> dict:
        # 0-dim tensors (no host synchronisation); b is copied: the optimizer updates the
        # parameter in place after this step
        return {"t": t.detach(), "b": b.detach().clone()}

    @torch.no_grad()
    def clamp_parameters_(self) -> None:
        """Clamp the raw ``t'`` into [0, ln 100] in place."""
        self.logit_scale.clamp_(_T_MIN_LOG, _T_MAX_LOG)


class SigLIPLoss(_SigmoidBase):
    """SigLIP: ``-(1/B) sum_ij log sigmoid(y_ij z_ij)``, ``z = t <p_i, q_j> + b``, ``y = +1`` on the
    diagonal, -1 elsewhere; through :func:`molphenix.ops.siglip_loss`.

    Args:
        init_t: Initial ``t`` (``t' = log t``; default 10, i.e. ``t' = log 10``).
        init_b: Initial bias (default -10).
        learn_t, learn_b: Whether ``t'`` / ``b`` are trainable.
        backend: Op backend (``"auto"`` picks the compiled kernel when available).

    Shapes:
        forward(p [B, D], q [B, D], u ignored) -> LossOutput(loss [], {"t", "b"})
    """

    name = "siglip"
    takes_checked = True

    def forward(self, p: torch.Tensor, q: torch.Tensor, u: Optional[torch.Tensor] = None, *,
                checked: bool = False) -> LossOutput:
        """SigLIP loss of the pairs ``(p_i, q_i)``; ``u`` is accepted and ignored.

        ``checked=True``: the caller has verified ``p`` and ``q`` finite (floating, same dtype
        and device); the op's checks are skipped (:mod:`molphenix.ops.prepared`), same result.

        Raises:
            ValueError: shapes (p, q not [B, D] alike), empty batch.
        """
        from molphenix.ops import prepared, siglip_loss

        self._check_pq(p, q, None)
        t, b = self.scale_bias()
        op = prepared.siglip_loss if checked else siglip_loss
        loss = op(p, q, t, b, backend=self.backend)
        return LossOutput(loss, self._stats(t, b))


class S2LLoss(SoftLabels, _SigmoidBase):
    """S2L, the soft-weighted sigmoid loss of MolPhenix (DESIGN.md section 2), through
    :func:`molphenix.ops.s2l_loss`:

    ``L = (1/B) sum_ij [(w+ + w-) softplus(z_ij) - w+ z_ij]``, ``z = t <p_i, q_j> + b``,
    ``w+ = s``, ``w- = gamma - delta s``, ``s`` the thresholded arctan-L2 similarity of the rows
    of ``u`` (``s_ii = 1``).

    Two ablations of the labels, which are different things:

    * ``u_norm="unit"``: the arctan-L2 labels of the L2-normalised rows of ``u`` divided by
      ``unit_scale``. For unit vectors ``|a - b|^2 = 2 - 2 cos(a, b)``, so these labels are a
      monotone function of the cosine of ``u``: the norm information that separates
      inactive-inactive from active-inactive pairs is gone. ``unit_scale``
      (:func:`~molphenix.losses.fit_unit_scale`) puts the same fraction of random pairs in the
      window as the default run's scale, so only the geometry of the labels changes, not how
      many soft positives a batch holds (the demo's ``molphenix-cosine-labels``).
    * ``similarity="cosine"``: ``s = cos(u_i, u_j)`` itself, thresholded
      (:func:`~molphenix.losses.cosine_soft_labels`): other label values, no window.

    Args:
        c: arctan width (> 0).
        threshold: Soft-label threshold in [-1, 1] (None: no threshold).
        gamma, delta: Negative weights ``w- = gamma - delta s``.
        diagonal: ``"soft"`` (true pair weighted like any pair with s = 1) or ``"hard"``
            (w+ = 1, w- = 0 on the true pair).
        sim_space: ``"input"`` (default; ``u`` required: the control-centered, NOT normalised
            phenomic inputs divided by the dataset scale from :func:`fit_similarity_scale`),
            ``"projected"`` (``u = p.detach()``; a given ``u`` is ignored) or ``"none"``
            (identity labels: with ``gamma = delta = 1`` this is SigLIP).
        similarity: ``"arctan_l2"`` (default; the fused op) or ``"cosine"`` (computed in plain
            torch with the ``B x B`` matrix materialised; ``c`` unused).
        u_norm: ``"none"`` (default) or ``"unit"`` (see above; needs ``sim_space="input"``).
        unit_scale: The divisor of the normalised rows with ``u_norm="unit"`` (> 0).
        init_t, init_b, learn_t, learn_b, backend: as :class:`SigLIPLoss`.
        stats_rows: Row cap of :meth:`soft_positive_fraction` (arctan_l2; cosine is exact).

    Attributes:
        needs_u: True for ``sim_space="input"``.

    Shapes:
        forward(p [B, D], q [B, D], u [B, E] | None) -> LossOutput(loss [], {"t", "b"} (+
        "soft_pos_frac" for cosine labels, which cost nothing extra))

    Raises:
        ValueError: invalid option (named).
    """

    name = "s2l"
    takes_checked = True

    def __init__(self, *, c: float = ARCTAN_C, threshold: Optional[float] = SOFT_LABEL_THRESHOLD,
                 gamma: float = S2L_GAMMA, delta: float = S2L_DELTA, diagonal: str = "soft",
                 sim_space: str = "input", init_t: float = 10.0, init_b: float = -10.0, learn_t: bool = True,
                 learn_b: bool = True, backend: str = "auto", stats_rows: int = 1024,
                 similarity: str = "arctan_l2", u_norm: str = "none", unit_scale: Optional[float] = None) -> None:
        super().__init__(init_t, init_b, learn_t=learn_t, learn_b=learn_b, backend=backend)
        self._init_soft_labels(c=c, threshold=threshold, sim_space=sim_space, similarity=similarity,
                               u_norm=u_norm, unit_scale=unit_scale, stats_rows=stats_rows)
        for nm, v in (("gamma", gamma), ("delta", delta)):
            if isinstance(v, bool) or not (isinstance(v, (int, float)) and math.isfinite(v)):
                raise ValueError(f"{nm}: must be a finite number, got {v!r}")
        if diagonal not in ("soft", "hard"):
            raise ValueError(f"diagonal: expected 'soft' or 'hard', got {diagonal!r}")
        self.gamma, self.delta = float(gamma), float(delta)
        self.diagonal = diagonal

    def forward(self, p: torch.Tensor, q: torch.Tensor, u: Optional[torch.Tensor] = None, *,
                checked: bool = False) -> LossOutput:
        """S2L loss of the pairs ``(p_i, q_i)`` with soft labels from ``u`` (see the class).

        ``checked=True``: the caller has verified ``p``, ``q`` and ``u`` finite (floating, same
        dtype and device, as the training step does on the device); the op's checks, which read
        values on the host, are skipped (:mod:`molphenix.ops.prepared`): the same loss and
        gradients, bit for bit, and a NaN input gives a NaN loss instead of an error.

        Raises:
            ValueError: ``u`` missing with ``sim_space="input"``, shapes, empty batch, NaN/Inf
                (not with ``checked=True``).
        """
        from molphenix.ops import prepared, s2l_loss

        if self.sim_space == "input":
            self.similarity_inputs(p, u)  # a missing u is named before the shapes
        self._check_pq(p, q, u if self.sim_space == "input" else None)
        us = self.similarity_inputs(p, u)
        t, b = self.scale_bias()
        stats = self._stats(t, b)
        if us is not None and self.similarity == "cosine":
            s = cosine_soft_labels(us, self.threshold)
            loss = _s2l_from_labels(p, q, t, b, s, self.gamma, self.delta, self.diagonal)
            stats["soft_pos_frac"] = offdiagonal_positive_fraction(s)
        else:
            op = prepared.s2l_loss if checked else s2l_loss
            loss = op(p, q, t, b, us, c=self.c, threshold=self.threshold, gamma=self.gamma,
                      delta=self.delta, diagonal=self.diagonal, backend=self.backend)
        return LossOutput(loss, stats)

    def extra_repr(self) -> str:
        """Options."""
        unit = f", u_norm='unit', unit_scale={self.unit_scale}" if self.u_norm == "unit" else ""
        return (f"c={self.c}, threshold={self.threshold}, gamma={self.gamma}, delta={self.delta}, "
                f"diagonal={self.diagonal!r}, sim_space={self.sim_space!r}, similarity={self.similarity!r}{unit}")
