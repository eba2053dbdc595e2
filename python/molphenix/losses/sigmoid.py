"""Sigmoid losses: S2L (MolPhenix) and SigLIP, both on the fused :mod:`molphenix.ops` kernels."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from molphenix.losses.base import ContrastiveLoss, LossOutput

__all__ = ["S2LLoss", "SigLIPLoss", "soft_positive_fraction", "cosine_soft_labels", "SIM_SPACES",
           "SIMILARITIES"]

#: Where S2L / CWCL soft labels come from: the given ``u`` ("input"), the detached projected ``p``
#: ("projected"), or nowhere ("none": identity labels, S2L only).
SIM_SPACES = ("input", "projected", "none")
#: The soft-label similarity: arctan-L2 (DESIGN.md section 2, the default) or cosine (an ablation).
SIMILARITIES = ("arctan_l2", "cosine")

_T_MIN_LOG, _T_MAX_LOG = 0.0, math.log(100.0)


@torch.no_grad()
def soft_positive_fraction(u: torch.Tensor, *, c: float = 0.3, threshold: Optional[float] = 0.75,
                           max_rows: int = 1024, backend: str = "auto") -> float:
    """Fraction of off-diagonal pairs with soft label ``s > 0`` among the first ``max_rows`` rows.

    The first rows rather than a random subsample: batches are already random, and drawing
    indices here would consume the training RNG. Exact when ``B <= max_rows``.

    Args:
        u: Similarity-space rows (as passed to the loss).
        c: arctan width.
        threshold: Soft-label threshold (None: ``s > 0`` means ``s~ > 0``).
        max_rows: Row cap (the cost is ``max_rows^2``).
        backend: Passed to :func:`molphenix.ops.arctan_l2_similarity`.

    Returns:
        The fraction in [0, 1]; 0.0 when fewer than two rows.

    Shapes:
        u: [B, E] -> float
    """
    from molphenix.ops import arctan_l2_similarity

    m = min(int(u.shape[0]), int(max_rows))
    if m < 2:
        return 0.0
    us = u[:m].detach()
    us = us.to(torch.float64 if us.dtype == torch.float64 else torch.float32)
    s = arctan_l2_similarity(us, us, c=c, threshold=threshold, backend=backend)
    pos = (s > 0).sum() - (torch.diagonal(s) > 0).sum()
    return float(pos.item()) / float(m * (m - 1))


@torch.no_grad()
def cosine_soft_labels(u: torch.Tensor, threshold: Optional[float] = 0.75) -> torch.Tensor:
    """Cosine soft labels ``s_ij = cos(u_i, u_j)`` where ``>= threshold``, else 0; ``s_ii = 1``.

    The ablation of the arctan-L2 labels (DESIGN.md section 2: cosine cannot separate
    inactive-inactive from active-inactive pairs). Scale-invariant, so the dataset scale
    ``sigma`` has no effect. A zero row has cosine 0 with every other row.

    Args:
        u: Similarity-space rows.
        threshold: Labels below it are zeroed (None: no threshold).

    Returns:
        ``s`` in float32 (float64 for float64 ``u``), materialised ``B x B``.

    Shapes:
        u: [B, E] -> [B, B]
    """
    un = F.normalize(u.to(torch.float64 if u.dtype == torch.float64 else torch.float32), dim=1)
    s = un @ un.T
    if threshold is not None:
        s = torch.where(s >= threshold, s, torch.zeros_like(s))
    s.fill_diagonal_(1.0)
    return s


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

    def forward(self, p: torch.Tensor, q: torch.Tensor, u: Optional[torch.Tensor] = None) -> LossOutput:
        """SigLIP loss of the pairs ``(p_i, q_i)``; ``u`` is accepted and ignored.

        Raises:
            ValueError: shapes (p, q not [B, D] alike), empty batch.
        """
        from molphenix.ops import siglip_loss

        self._check_pq(p, q, None)
        t, b = self.scale_bias()
        loss = siglip_loss(p, q, t, b, backend=self.backend)
        return LossOutput(loss, {"t": float(t.detach()), "b": float(b.detach())})


class S2LLoss(_SigmoidBase):
    """S2L, the soft-weighted sigmoid loss of MolPhenix (DESIGN.md section 2), through
    :func:`molphenix.ops.s2l_loss`:

    ``L = (1/B) sum_ij [(w+ + w-) softplus(z_ij) - w+ z_ij]``, ``z = t <p_i, q_j> + b``,
    ``w+ = s``, ``w- = gamma - delta s``, ``s`` the thresholded arctan-L2 similarity of the rows
    of ``u`` (``s_ii = 1``).

    Args:
        c: arctan width (> 0).
        threshold: Soft-label threshold in [-1, 1] (None: no threshold).
        gamma, delta: Negative weights ``w- = gamma - delta s``.
        diagonal: ``"soft"`` (true pair weighted like any pair with s = 1) or ``"hard"``
            (w+ = 1, w- = 0 on the true pair).
        sim_space: ``"input"`` (default; ``u`` required: the control-centred, NOT normalised
            phenomic inputs divided by the dataset scale from :func:`fit_similarity_scale`;
            for cosine-style soft labels pass row-normalised inputs divided by their own
            fitted scale), ``"projected"`` (``u = p.detach()``; a given ``u`` is ignored) or
            ``"none"`` (identity labels: with ``gamma = delta = 1`` this is SigLIP).
        similarity: ``"arctan_l2"`` (default; the fused op) or ``"cosine"`` (the ablation:
            ``s = cos(u_i, u_j)`` thresholded at ``threshold``, see :func:`cosine_soft_labels`;
            computed in plain torch with the ``B x B`` matrix materialised; ``c`` unused).
        init_t, init_b, learn_t, learn_b, backend: as :class:`SigLIPLoss`.
        stats_rows: Row cap for the ``soft_pos_frac`` statistic (arctan_l2; cosine is exact).

    Attributes:
        needs_u: True for ``sim_space="input"``.

    Shapes:
        forward(p [B, D], q [B, D], u [B, E] | None) -> LossOutput(loss [], {"t", "b", "soft_pos_frac"})

    Raises:
        ValueError: invalid option (named).
    """

    name = "s2l"

    def __init__(self, *, c: float = 0.3, threshold: Optional[float] = 0.75, gamma: float = 1.75,
                 delta: float = 0.75, diagonal: str = "soft", sim_space: str = "input",
                 init_t: float = 10.0, init_b: float = -10.0, learn_t: bool = True, learn_b: bool = True,
                 backend: str = "auto", stats_rows: int = 1024, similarity: str = "arctan_l2") -> None:
        super().__init__(init_t, init_b, learn_t=learn_t, learn_b=learn_b, backend=backend)
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity: expected one of {list(SIMILARITIES)}, got {similarity!r}")
        self.similarity = similarity
        if not (isinstance(c, (int, float)) and c > 0 and math.isfinite(c)):
            raise ValueError(f"c: must be a finite number > 0, got {c!r}")
        if threshold is not None and not (isinstance(threshold, (int, float)) and -1.0 <= threshold <= 1.0):
            raise ValueError(f"threshold: must be in [-1, 1] or None, got {threshold!r}")
        for nm, v in (("gamma", gamma), ("delta", delta)):
            if not (isinstance(v, (int, float)) and math.isfinite(v)):
                raise ValueError(f"{nm}: must be a finite number, got {v!r}")
        if diagonal not in ("soft", "hard"):
            raise ValueError(f"diagonal: expected 'soft' or 'hard', got {diagonal!r}")
        if sim_space not in SIM_SPACES:
            raise ValueError(f"sim_space: expected one of {list(SIM_SPACES)}, got {sim_space!r}")
        if not (isinstance(stats_rows, int) and stats_rows >= 2):
            raise ValueError(f"stats_rows: must be an integer >= 2, got {stats_rows!r}")
        self.c, self.threshold = float(c), (None if threshold is None else float(threshold))
        self.gamma, self.delta = float(gamma), float(delta)
        self.diagonal, self.sim_space, self.stats_rows = diagonal, sim_space, stats_rows

    @property
    def needs_u(self) -> bool:
        """True for ``sim_space="input"``."""
        return self.sim_space == "input"

    def forward(self, p: torch.Tensor, q: torch.Tensor, u: Optional[torch.Tensor] = None) -> LossOutput:
        """S2L loss of the pairs ``(p_i, q_i)`` with soft labels from ``u`` (see the class).

        Raises:
            ValueError: ``u`` missing with ``sim_space="input"``, shapes, empty batch, NaN/Inf.
        """
        from molphenix.ops import s2l_loss

        if self.sim_space == "input":
            if u is None:
                raise ValueError("u: required by the s2l loss with sim_space='input' (the scaled, "
                                 "control-centred phenomic inputs [B, E]); or use sim_space='projected'")
            self._check_pq(p, q, u)
            us = u.detach()
        elif self.sim_space == "projected":
            self._check_pq(p, q, None)
            us = p.detach()
        else:
            self._check_pq(p, q, None)
            us = None
        t, b = self.scale_bias()
        if us is not None and self.similarity == "cosine":
            s = cosine_soft_labels(us, self.threshold)
            loss = _s2l_from_labels(p, q, t, b, s, self.gamma, self.delta, self.diagonal)
            n = s.shape[0]
            frac = 0.0 if n < 2 else float(((s > 0).sum() - n).item()) / float(n * (n - 1))
        else:
            loss = s2l_loss(p, q, t, b, us, c=self.c, threshold=self.threshold, gamma=self.gamma,
                            delta=self.delta, diagonal=self.diagonal, backend=self.backend)
            frac = 0.0 if us is None else soft_positive_fraction(
                us, c=self.c, threshold=self.threshold, max_rows=self.stats_rows, backend=self.backend)
        return LossOutput(loss, {"t": float(t.detach()), "b": float(b.detach()), "soft_pos_frac": frac})

    def extra_repr(self) -> str:
        """Options."""
        return (f"c={self.c}, threshold={self.threshold}, gamma={self.gamma}, delta={self.delta}, "
                f"diagonal={self.diagonal!r}, sim_space={self.sim_space!r}, similarity={self.similarity!r}")
