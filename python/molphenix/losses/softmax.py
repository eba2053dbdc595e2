"""Softmax-family baselines: CLIP, InfoLOOB, CLOOME (InfoLOOB on Hopfield retrievals), CWCL.

All logits are formed in float32 or wider with autocast disabled (a bf16 ``B x B`` logit
matrix loses the resolution the softmax needs).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from molphenix._similarity import ARCTAN_C, SOFT_LABEL_THRESHOLD
from molphenix.losses.base import ContrastiveLoss, LossOutput
from molphenix.losses.labels import SIM_SPACES, SoftLabels, cosine_soft_labels

__all__ = ["CLIPLoss", "InfoLOOBLoss", "CLOOMELoss", "CWCLLoss", "infoloob", "hopfield_retrieval"]

_CLIP_T_MAX_LOG = math.log(100.0)


def _wide(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


def infoloob(a: torch.Tensor, b: torch.Tensor, kappa: float) -> torch.Tensor:
    """InfoLOOB ``(1/kappa) mean_i[-k_ii + logsumexp_{j != i} k_ij]``, ``k = kappa <a_i, b_j>``.

    The positive is left out of the denominator ("leave one out").

    Args:
        a: Row (query) embeddings.
        b: Column embeddings, row i of ``b`` is the positive of row i of ``a``.
        kappa: Inverse temperature (> 0).

    Returns:
        Scalar loss (float32, or float64 for float64 inputs).

    Shapes:
        a: [B, D], b: [B, D] -> []

    Raises:
        ValueError: ``B < 2`` (no negative to leave the positive out against).
    """
    n = a.shape[0]
    if n < 2:
        raise ValueError(f"infoloob: needs a batch of at least 2 pairs (the positive is left out "
                         f"of the denominator), got B = {n}")
    k = kappa * (_wide(a) @ _wide(b).T)
    eye = torch.eye(n, dtype=torch.bool, device=k.device)
    neg = k.masked_fill(eye, float("-inf"))
    return (-torch.diagonal(k) + torch.logsumexp(neg, dim=1)).mean() / kappa


def hopfield_retrieval(state: torch.Tensor, stored: torch.Tensor, beta: float) -> torch.Tensor:
    """Modern-Hopfield retrieval ``normalize(softmax(beta * state @ stored^T) @ stored)``.

    Args:
        state: State (query) patterns.
        stored: Stored patterns; the softmax runs over them.
        beta: Inverse temperature (> 0).

    Returns:
        Retrieved patterns, rows of unit L2 norm.

    Shapes:
        state: [N, D], stored: [M, D] -> [N, D]
    """
    attn = torch.softmax(beta * (_wide(state) @ _wide(stored).T), dim=1)
    return F.normalize(attn @ _wide(stored), dim=1)


class _LearnedTemperature(ContrastiveLoss):
    """Learnable ``t = exp(t')``, ``t'`` clamped to at most ln 100 (CLIP style)."""

    def __init__(self, init_t: float = 1.0 / 0.07, learn_t: bool = True) -> None:
        super().__init__()
        if not (isinstance(init_t, (int, float)) and 0.0 < init_t <= 100.0):
            raise ValueError(f"init_t: must be in (0, 100], got {init_t!r}")
        self.logit_scale = nn.Parameter(torch.tensor(math.log(float(init_t))), requires_grad=bool(learn_t))

    def temperature(self) -> torch.Tensor:
        """The effective multiplier ``t = exp(min(t', ln 100))`` (0-dim, differentiable)."""
        return torch.exp(torch.clamp(self.logit_scale, max=_CLIP_T_MAX_LOG))

    @torch.no_grad()
    def clamp_parameters_(self) -> None:
        """Clamp the raw ``t'`` to at most ln 100 in place."""
        self.logit_scale.clamp_(max=_CLIP_T_MAX_LOG)


class CLIPLoss(_LearnedTemperature):
    """CLIP: ``(CE(Z, diag) + CE(Z^T, diag)) / 2`` with ``Z = t <p_i, q_j>``, no bias.

    Args:
        init_t: Initial ``t`` (default 1/0.07); clamped to ``t <= 100``.
        learn_t: Whether ``t`` is trainable.

    Shapes:
        forward(p [B, D], q [B, D], u ignored) -> LossOutput(loss [], {"t"})
    """

    name = "clip"

    def forward(self, p: torch.Tensor, q: torch.Tensor, u: Optional[torch.Tensor] = None) -> LossOutput:
        """CLIP loss of the pairs ``(p_i, q_i)``; ``u`` is accepted and ignored.

        Raises:
            ValueError: shapes, empty batch.
        """
        self._check_pq(p, q, None)
        with torch.autocast(device_type=p.device.type, enabled=False):
            t = self.temperature()
            z = t * (_wide(p) @ _wide(q).T)
            target = torch.arange(z.shape[0], device=z.device)
            loss = 0.5 * (F.cross_entropy(z, target) + F.cross_entropy(z.T, target))
        return LossOutput(loss, {"t": t.detach()})


class InfoLOOBLoss(ContrastiveLoss):
    """InfoLOOB (DESIGN.md section 2): ``(1/kappa) mean_i[-k_ii + logsumexp_{j != i} k_ij]``,
    ``k = kappa <p_i, q_j>``, fixed inverse temperature ``kappa``.

    Args:
        kappa: Inverse temperature (default 14.3; fixed, not learned).
        symmetric: Also add the column direction (``q`` as queries against ``p``). Default
            False: the formula of DESIGN.md, phenomic queries against molecules.

    Shapes:
        forward(p [B, D], q [B, D], u ignored) -> LossOutput(loss [], {"t": kappa})

    Raises:
        ValueError: ``kappa <= 0``; in forward, ``B < 2``.
    """

    name = "infoloob"

    def __init__(self, kappa: float = 14.3, symmetric: bool = False) -> None:
        super().__init__()
        if not (isinstance(kappa, (int, float)) and kappa > 0 and math.isfinite(kappa)):
            raise ValueError(f"kappa: must be a finite number > 0, got {kappa!r}")
        self.kappa, self.symmetric = float(kappa), bool(symmetric)

    def forward(self, p: torch.Tensor, q: torch.Tensor, u: Optional[torch.Tensor] = None) -> LossOutput:
        """InfoLOOB loss of the pairs ``(p_i, q_i)``; ``u`` is ignored.

        Raises:
            ValueError: shapes, ``B < 2``.
        """
        self._check_pq(p, q, None, min_batch=2)
        with torch.autocast(device_type=p.device.type, enabled=False):
            loss = infoloob(p, q, self.kappa)
            if self.symmetric:
                loss = loss + infoloob(q, p, self.kappa)
        return LossOutput(loss, {"t": self.kappa})


class CLOOMELoss(ContrastiveLoss):
    """CLOOME: InfoLOOB on modern-Hopfield retrievals (DESIGN.md section 2),
    ``InfoLOOB(hop(x; x), hop(y; x)) + InfoLOOB(hop(y; y), hop(x; y))`` with x = p (phenomic),
    y = q (molecular), ``hop(state; stored) = normalize(softmax(beta state stored^T) stored)``.

    Args:
        kappa: InfoLOOB inverse temperature (default 14.3, fixed).
        beta: Hopfield inverse temperature (default 14.3, fixed).

    Shapes:
        forward(p [B, D], q [B, D], u ignored) -> LossOutput(loss [], {"t": kappa})

    Raises:
        ValueError: ``kappa``/``beta`` not > 0; in forward, ``B < 2``.
    """

    name = "cloome"

    def __init__(self, kappa: float = 14.3, beta: float = 14.3) -> None:
        super().__init__()
        for nm, v in (("kappa", kappa), ("beta", beta)):
            if not (isinstance(v, (int, float)) and v > 0 and math.isfinite(v)):
                raise ValueError(f"{nm}: must be a finite number > 0, got {v!r}")
        self.kappa, self.beta = float(kappa), float(beta)

    def forward(self, p: torch.Tensor, q: torch.Tensor, u: Optional[torch.Tensor] = None) -> LossOutput:
        """CLOOME loss of the pairs ``(p_i, q_i)``; ``u`` is ignored.

        Raises:
            ValueError: shapes, ``B < 2``.
        """
        self._check_pq(p, q, None, min_batch=2)
        with torch.autocast(device_type=p.device.type, enabled=False):
            x, y = _wide(p), _wide(q)
            u_xx = hopfield_retrieval(x, x, self.beta)
            u_yx = hopfield_retrieval(y, x, self.beta)
            v_yy = hopfield_retrieval(y, y, self.beta)
            v_xy = hopfield_retrieval(x, y, self.beta)
            loss = infoloob(u_xx, u_yx, self.kappa) + infoloob(v_yy, v_xy, self.kappa)
        return LossOutput(loss, {"t": self.kappa})


class CWCLLoss(SoftLabels, _LearnedTemperature):
    """CWCL-style continuously weighted contrastive loss: soft targets from the arctan-L2
    similarity inside a softmax cross-entropy, both directions.

    ``W_ij = max(s_ij, 0)`` (thresholded arctan-L2 similarity of the rows of ``u``, ``W_ii = 1``),
    ``Z = t <p_i, q_j>``;
    ``L = 1/2 [ -mean_i sum_j (W_ij / sum_k W_ik) log softmax_j(Z_i)
               -mean_j sum_i (W_ij / sum_k W_kj) log softmax_i(Z_:j) ]``.

    Args:
        c, threshold: As :class:`~molphenix.losses.S2LLoss`.
        sim_space: ``"input"`` (``u`` required) or ``"projected"`` (``u = p.detach()``).
        init_t, learn_t: As :class:`CLIPLoss` (init 1/0.07, clamp ``t <= 100``).
        backend: Backend of :func:`molphenix.ops.arctan_l2_similarity`.
        similarity: ``"arctan_l2"`` (default) or ``"cosine"`` (see
            :func:`~molphenix.losses.cosine_soft_labels`).

    Shapes:
        forward(p [B, D], q [B, D], u [B, E] | None) -> LossOutput(loss [], {"t", "soft_pos_frac"})
        (the soft-positive fraction comes from the labels the loss builds anyway: exact, free)

    Raises:
        ValueError: invalid option (named).
    """

    name = "cwcl"

    def __init__(self, *, c: float = ARCTAN_C, threshold: Optional[float] = SOFT_LABEL_THRESHOLD,
                 sim_space: str = "input", init_t: float = 1.0 / 0.07, learn_t: bool = True, backend: str = "auto",
                 similarity: str = "arctan_l2") -> None:
        super().__init__(init_t, learn_t)
        self._init_soft_labels(c=c, threshold=threshold, sim_space=sim_space, similarity=similarity,
                               sim_spaces=SIM_SPACES[:2])
        if backend not in ("auto", "cpu", "cuda", "reference"):
            raise ValueError(f"backend: expected 'auto', 'cpu', 'cuda' or 'reference', got {backend!r}")
        self.backend = backend

    def forward(self, p: torch.Tensor, q: torch.Tensor, u: Optional[torch.Tensor] = None) -> LossOutput:
        """CWCL loss of the pairs ``(p_i, q_i)`` with soft targets from ``u``.

        Raises:
            ValueError: ``u`` missing with ``sim_space="input"``, shapes, empty batch.
        """
        from molphenix.ops import arctan_l2_similarity

        if self.sim_space == "input":
            self.similarity_inputs(p, u)  # a missing u is named before the shapes
        self._check_pq(p, q, u if self.sim_space == "input" else None)
        us = self.similarity_inputs(p, u)
        n = p.shape[0]
        with torch.no_grad():
            us = us.to(torch.float64 if p.dtype == torch.float64 else torch.float32)
            if self.similarity == "cosine":
                s = cosine_soft_labels(us, self.threshold)
            else:
                s = arctan_l2_similarity(us, us, c=self.c, threshold=self.threshold, backend=self.backend)
            w = s.clamp_min(0.0)
            eye = torch.eye(n, dtype=torch.bool, device=w.device)
            w = w.masked_fill(eye, 1.0)
            frac = (((s > 0) & ~eye).sum().double() / float(n * (n - 1)) if n >= 2
                    else torch.zeros((), dtype=torch.float64, device=s.device))
        with torch.autocast(device_type=p.device.type, enabled=False):
            t = self.temperature()
            z = t * (_wide(p) @ _wide(q).T)
            w = w.to(z.dtype)
            rows = -(w / w.sum(dim=1, keepdim=True) * torch.log_softmax(z, dim=1)).sum(dim=1).mean()
            cols = -(w / w.sum(dim=0, keepdim=True) * torch.log_softmax(z, dim=0)).sum(dim=0).mean()
            loss = 0.5 * (rows + cols)
        return LossOutput(loss, {"t": t.detach(), "soft_pos_frac": frac})

    def extra_repr(self) -> str:
        """Options."""
        return (f"c={self.c}, threshold={self.threshold}, sim_space={self.sim_space!r}, "
                f"similarity={self.similarity!r}")
