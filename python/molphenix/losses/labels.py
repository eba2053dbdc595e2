"""Soft labels of the S2L and CWCL losses: where they come from and what they are.

One home for the options both losses share (``c``, ``threshold``, ``sim_space``, ``similarity``,
``u_norm``), the similarity inputs they build from ``u`` or ``p``, the fitted similarity scale
(the trainer's hook), and the soft-positive statistic. The formula and its constants are
:mod:`molphenix._similarity`'s.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.nn import functional as F

from molphenix._similarity import ARCTAN_C, SOFT_LABEL_THRESHOLD, check_c, check_threshold

__all__ = ["SIM_SPACES", "SIMILARITIES", "U_NORMS", "cosine_soft_labels", "soft_positive_fraction",
           "SoftLabels"]

#: Where soft labels come from: the given ``u`` ("input"), the detached projected ``p``
#: ("projected"), or nowhere ("none": identity labels, S2L only).
SIM_SPACES = ("input", "projected", "none")
#: The soft-label similarity: arctan-L2 (DESIGN.md section 2, the default) or cosine (an ablation).
SIMILARITIES = ("arctan_l2", "cosine")
#: What is done to the rows of ``u`` before the similarity: nothing ("none"), or L2-normalise them
#: and divide by a fitted ``unit_scale`` ("unit": the cosine-label ablation of the arctan-L2
#: form, see :class:`~molphenix.losses.S2LLoss`).
U_NORMS = ("none", "unit")


@torch.no_grad()
def cosine_soft_labels(u: torch.Tensor, threshold: Optional[float] = SOFT_LABEL_THRESHOLD) -> torch.Tensor:
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


def offdiagonal_positive_fraction(s: torch.Tensor) -> torch.Tensor:
    """Fraction of off-diagonal entries ``> 0`` of a square label matrix whose diagonal is
    positive, as a float64 0-dim tensor on ``s``'s device (no host synchronisation)."""
    n = int(s.shape[0])
    if n < 2:
        return torch.zeros((), dtype=torch.float64, device=s.device)
    return ((s > 0).sum() - n).double() / float(n * (n - 1))


@torch.no_grad()
def soft_positive_fraction_tensor(u: torch.Tensor, *, c: float = ARCTAN_C,
                                  threshold: Optional[float] = SOFT_LABEL_THRESHOLD,
                                  max_rows: int = 1024, backend: str = "auto") -> torch.Tensor:
    """:func:`soft_positive_fraction` as a float64 0-dim tensor on ``u``'s device (no host sync)."""
    from molphenix.ops import arctan_l2_similarity

    m = min(int(u.shape[0]), int(max_rows))
    if m < 2:
        return torch.zeros((), dtype=torch.float64, device=u.device)
    us = u[:m].detach()
    us = us.to(torch.float64 if us.dtype == torch.float64 else torch.float32)
    s = arctan_l2_similarity(us, us, c=c, threshold=threshold, backend=backend)
    pos = (s > 0).sum() - (torch.diagonal(s) > 0).sum()
    return pos.double() / float(m * (m - 1))


def soft_positive_fraction(u: torch.Tensor, *, c: float = ARCTAN_C, threshold: Optional[float] = SOFT_LABEL_THRESHOLD,
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
    return float(soft_positive_fraction_tensor(u, c=c, threshold=threshold, max_rows=max_rows, backend=backend))


class SoftLabels:
    """Mixin of the soft-label losses (S2L, CWCL): their shared options and hooks.

    Call :meth:`_init_soft_labels` from the loss's ``__init__``. Provides ``needs_u``,
    :meth:`similarity_inputs` (the rows the labels are computed from),
    :meth:`similarity_scale` (the trainer's hook that fits the scale ``u`` is divided by) and
    :meth:`soft_positive_fraction` (the statistic the trainer logs every few steps).
    """

    name: str
    backend: str

    def _init_soft_labels(self, *, c, threshold, sim_space, similarity, u_norm="none", unit_scale=None,
                          sim_spaces=SIM_SPACES, stats_rows: int = 1024) -> None:
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity: expected one of {list(SIMILARITIES)}, got {similarity!r}")
        self.c = check_c(c)
        self.threshold = check_threshold(threshold)
        if sim_space not in sim_spaces:
            expected = " or ".join(repr(s) for s in sim_spaces) if len(sim_spaces) < 3 else f"one of {list(sim_spaces)}"
            raise ValueError(f"sim_space: expected {expected}, got {sim_space!r}")
        if u_norm not in U_NORMS:
            raise ValueError(f"u_norm: expected one of {list(U_NORMS)}, got {u_norm!r}")
        if u_norm == "unit":
            if sim_space != "input":
                raise ValueError(f"u_norm: 'unit' normalises the given u; it needs sim_space='input', "
                                 f"got sim_space={sim_space!r}")
            if isinstance(unit_scale, bool) or not (isinstance(unit_scale, (int, float)) and unit_scale > 0
                                                    and float(unit_scale) < float("inf")):
                raise ValueError(f"unit_scale: u_norm='unit' needs a finite number > 0 (fit it with "
                                 f"molphenix.losses.fit_unit_scale), got {unit_scale!r}")
            unit_scale = float(unit_scale)
        elif unit_scale is not None:
            raise ValueError(f"unit_scale: only used with u_norm='unit', got {unit_scale!r}")
        if isinstance(stats_rows, bool) or not (isinstance(stats_rows, int) and stats_rows >= 2):
            raise ValueError(f"stats_rows: must be an integer >= 2, got {stats_rows!r}")
        self.sim_space, self.similarity = sim_space, similarity
        self.u_norm, self.unit_scale, self.stats_rows = u_norm, unit_scale, stats_rows

    @property
    def needs_u(self) -> bool:
        """True for ``sim_space="input"``."""
        return self.sim_space == "input"

    def similarity_inputs(self, p: torch.Tensor, u: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The rows the soft labels come from (detached): ``u`` (``u_norm="unit"``: its
        L2-normalised rows divided by ``unit_scale``), ``p`` (``sim_space="projected"``) or
        None (``"none"``: identity labels).

        Raises:
            ValueError: ``u`` missing with ``sim_space="input"``.
        """
        if self.sim_space == "input":
            if u is None:
                raise ValueError(f"u: required by the {self.name} loss with sim_space='input' (the scaled, "
                                 "control-centered phenomic inputs [B, E]); or use sim_space='projected'")
            us = u.detach()
            if self.u_norm == "unit":
                us = F.normalize(us.float(), dim=1) / self.unit_scale
            return us
        if self.sim_space == "projected":
            return p.detach()
        return None

    def similarity_scale(self, x, target_fraction: float, *, seed: int = 0) -> Optional[float]:
        """The scale ``sigma`` the trainer divides ``u`` by: the fraction ``target_fraction`` of
        random pairs of rows of ``x / sigma`` fall in this loss's soft-label window
        (:func:`~molphenix.losses.fit_similarity_scale` with the loss's ``c`` and ``threshold``;
        a loss without a threshold uses the default 0.75 window). None when the loss takes no
        ``u`` (``sim_space`` other than ``"input"``).

        Raises:
            ValueError: what :func:`~molphenix.losses.fit_similarity_scale` raises.
        """
        if not self.needs_u:
            return None
        from molphenix.losses.scale import fit_similarity_scale

        threshold = SOFT_LABEL_THRESHOLD if self.threshold is None else self.threshold
        return float(fit_similarity_scale(x, target_fraction, c=self.c, threshold=threshold, seed=seed))

    @torch.no_grad()
    def soft_positive_fraction(self, p: torch.Tensor, u: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Fraction of off-diagonal pairs of the batch with a soft label ``s > 0`` (the first
        ``stats_rows`` rows for arctan-L2 labels; exact for cosine labels; 0 without labels), as
        a float64 0-dim tensor on the batch's device. A second similarity pass: the trainer calls
        it every few steps, not every step."""
        us = self.similarity_inputs(p, u)
        if us is None:
            return torch.zeros((), dtype=torch.float64, device=p.device)
        if self.similarity == "cosine":
            return offdiagonal_positive_fraction(cosine_soft_labels(us, self.threshold))
        return soft_positive_fraction_tensor(us, c=self.c, threshold=self.threshold, max_rows=self.stats_rows,
                                             backend=self.backend)
