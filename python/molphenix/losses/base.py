"""The one loss interface: ``ContrastiveLoss.forward(p, q, u=None) -> LossOutput``."""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Union

import torch
from torch import nn

__all__ = ["LossOutput", "ContrastiveLoss"]


class LossOutput(NamedTuple):
    """Result of a contrastive loss call.

    Attributes:
        loss: The scalar loss (0-dim tensor, differentiable w.r.t. p, q and the loss's own
            parameters).
        stats: Values for logging, as detached 0-dim tensors on the loss's device (reading them,
            e.g. ``float(v)``, waits for the device: a trainer reads them every few steps, not
            every step) or plain floats for constants: always ``"t"`` (the effective multiplier
            / inverse temperature), ``"b"`` for losses with a bias, ``"soft_pos_frac"`` where the
            loss has the soft labels at hand anyway (CWCL, S2L with cosine labels; otherwise
            :meth:`ContrastiveLoss.soft_positive_fraction` computes it on demand).
    """

    loss: torch.Tensor
    stats: Dict[str, Union[torch.Tensor, float]]


class ContrastiveLoss(nn.Module):
    """Base class of the contrastive losses of :mod:`molphenix.losses`.

    A loss holds its own learnable temperature (and bias) as parameters, so the trainer adds
    ``loss.parameters()`` to its optimizer (without weight decay) and saves ``loss.state_dict()``
    with the model. Clamps are applied in ``forward`` (``torch.clamp`` on the raw parameter: the
    effective value is always in range; the gradient is zero while the raw value sits beyond a
    bound). :meth:`clamp_parameters_` projects the raw parameters back into range in place; call
    it after each optimizer step so a raw parameter never drifts beyond a bound and gets stuck.

    Attributes:
        name: The registry name (``"s2l"``, ``"siglip"``, ...).
        needs_u: True when ``forward`` requires the similarity-space inputs ``u``.
        takes_checked: True when ``forward`` accepts ``checked=True``: the caller has verified
            that ``p``, ``q`` and ``u`` are finite (the training step does, on the device), and
            the loss skips the op's own checks, which read values on the host (a device
            synchronisation on a GPU). The result is bit for bit the same.

    Shapes:
        forward(p [B, D], q [B, D], u [B, E] | None) -> LossOutput(loss [], stats)
    """

    name: str = "base"
    takes_checked: bool = False

    @property
    def needs_u(self) -> bool:
        """Whether ``forward`` needs ``u`` (default False)."""
        return False

    def forward(self, p: torch.Tensor, q: torch.Tensor, u: Optional[torch.Tensor] = None) -> LossOutput:  # pragma: no cover - abstract
        """Compute the loss of paired rows ``(p_i, q_i)``.

        Args:
            p: Phenomic embeddings (L2-normalised by the model).
            q: Molecular embeddings (L2-normalised), row i paired with ``p``'s row i.
            u: Similarity-space rows for soft labels (see the subclass), or None.

        Returns:
            :class:`LossOutput`.

        Shapes:
            p: [B, D], q: [B, D], u: [B, E] -> loss []
        """
        raise NotImplementedError

    @torch.no_grad()
    def clamp_parameters_(self) -> None:
        """Project raw learnable parameters into their allowed range, in place (default: no-op)."""

    def similarity_scale(self, x: Any, target_fraction: float, *, seed: int = 0) -> Optional[float]:
        """The trainer's hook: the scale ``sigma`` that similarity inputs are divided by
        (``u = x / sigma``), fitted on training inputs ``x`` [n, E] so that a fraction
        ``target_fraction`` of random pairs are soft positives; None (the default) for a loss
        that takes no ``u``."""
        return None

    def soft_positive_fraction(self, p: torch.Tensor, u: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """The fraction of off-diagonal pairs of a batch with a soft label ``s > 0`` (a 0-dim
        tensor), or None (the default) for a loss without soft labels. Logged every few steps."""
        return None

    def _check_pq(self, p: torch.Tensor, q: torch.Tensor, u: Optional[torch.Tensor], min_batch: int = 1) -> None:
        if not isinstance(p, torch.Tensor) or not isinstance(q, torch.Tensor):
            raise TypeError(f"{self.name}: p and q must be torch tensors")
        if p.dim() != 2 or q.dim() != 2:
            raise ValueError(f"{self.name}: p and q must be 2-D [B, D], got {tuple(p.shape)} and {tuple(q.shape)}")
        if p.shape != q.shape:
            raise ValueError(f"{self.name}: p {tuple(p.shape)} and q {tuple(q.shape)} must have the same shape "
                             "(row i of p is paired with row i of q)")
        if p.shape[0] < min_batch:
            raise ValueError(f"{self.name}: needs a batch of at least {min_batch} pairs, got B = {p.shape[0]}")
        if u is not None:
            if not isinstance(u, torch.Tensor) or u.dim() != 2 or u.shape[0] != p.shape[0]:
                raise ValueError(f"u: expected [B={p.shape[0]}, E], got "
                                 f"{tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__}")
