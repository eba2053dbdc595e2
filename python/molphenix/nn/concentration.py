"""Explicit concentration encodings fed into the molecular head (DESIGN.md section 2)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

__all__ = ["ConcentrationEncoder", "MIN_CONCENTRATION_UM"]

#: Concentrations are clamped to at least this many µM before taking log10 (a 0 dose would be -inf).
MIN_CONCENTRATION_UM = 1e-6


class ConcentrationEncoder(nn.Module):
    """Fixed (parameter-free) encoding of concentrations in µM.

    Kinds, concatenated in the order given:

    * ``onehot``: one-hot over the dose set ``doses``. A concentration that is not in the set
      (an unseen dataset's doses) is encoded as the **nearest** dose in log10 space (ties go to
      the lower dose) with ``unknown="nearest"`` (default), or as an **all-zero** vector with
      ``unknown="zero"``; a concentration counts as in the set when its log10 is within
      ``1e-3`` of a dose's (0.23% relative).
    * ``log10``: ``log10(max(c, 1e-6))``, one column.
    * ``sigmoid``: a bank ``sigmoid(slope * (log10 c - center_k))`` for each center (log10 µM),
      one column per center: a smooth, bounded dose-response-like code.

    Args:
        kinds: Sequence of kinds (empty: width 0, the "none" encoding).
        doses: The dose set in µM (required for ``onehot``).
        unknown: ``"nearest"`` or ``"zero"`` (one-hot only).
        sigmoid_centers: Centers of the sigmoid bank, log10 µM.
        sigmoid_slope: Slope per log10 unit.

    Shapes:
        forward: conc_um [B] (or [B, 1]) -> [B, dim]

    Raises:
        ValueError: unknown kind, ``onehot`` without doses, non-positive doses, bad ``unknown``.
    """

    def __init__(self, kinds: Sequence[str] = (), *, doses: Sequence[float] = (),
                 unknown: str = "nearest", sigmoid_centers: Sequence[float] = (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5),
                 sigmoid_slope: float = 3.0) -> None:
        super().__init__()
        self.kinds = [str(k) for k in kinds]
        for k in self.kinds:
            if k not in ("onehot", "log10", "sigmoid"):
                raise ValueError(f"concentration: unknown encoding {k!r}")
        if unknown not in ("nearest", "zero"):
            raise ValueError(f"onehot_unknown: expected 'nearest' or 'zero', got {unknown!r}")
        if "onehot" in self.kinds and len(doses) == 0:
            raise ValueError("doses: the 'onehot' concentration encoding needs the dose set")
        if any(not d > 0 for d in doses):
            raise ValueError(f"doses: every dose must be > 0 µM, got {list(doses)!r}")
        self.unknown = unknown
        self.slope = float(sigmoid_slope)
        # buffers: they follow .to(device) and are saved in the state dict
        self.register_buffer("log_doses", torch.tensor([math.log10(d) for d in sorted(doses)],
                                                       dtype=torch.float64), persistent=False)
        self.register_buffer("centers", torch.tensor(list(sigmoid_centers), dtype=torch.float64),
                             persistent=False)
        widths = {"onehot": len(doses), "log10": 1, "sigmoid": len(sigmoid_centers)}
        self.dim = sum(widths[k] for k in self.kinds)

    def forward(self, conc_um: torch.Tensor) -> torch.Tensor:
        """Encode concentrations (µM); returns float32 (float64 for float64 input).

        Raises:
            ValueError: ``conc_um`` is not [B] / [B, 1], or holds NaN or negative values.
        """
        c = conc_um
        if c.dim() == 2 and c.shape[1] == 1:
            c = c[:, 0]
        if c.dim() != 1:
            raise ValueError(f"conc_um: expected shape [B], got {tuple(conc_um.shape)}")
        out_dtype = torch.float64 if c.dtype == torch.float64 else torch.float32
        if not self.kinds:
            return torch.zeros(c.shape[0], 0, dtype=out_dtype, device=c.device)
        c = c.to(torch.float64)
        if bool(torch.isnan(c).any()) or bool((c < 0).any()):
            raise ValueError("conc_um: concentrations must be non-negative numbers (µM)")
        logc = torch.log10(c.clamp_min(MIN_CONCENTRATION_UM))
        parts = []
        for k in self.kinds:
            if k == "log10":
                parts.append(logc[:, None])
            elif k == "sigmoid":
                parts.append(torch.sigmoid(self.slope * (logc[:, None] - self.centers[None, :])))
            else:  # onehot
                dist = (logc[:, None] - self.log_doses[None, :]).abs()
                idx = dist.argmin(dim=1)  # first minimum: the lower dose on ties (sorted doses)
                oh = torch.zeros(c.shape[0], self.log_doses.shape[0], dtype=torch.float64, device=c.device)
                oh.scatter_(1, idx[:, None], 1.0)
                if self.unknown == "zero":
                    known = dist.gather(1, idx[:, None])[:, 0] <= 1e-3
                    oh = oh * known[:, None].to(oh.dtype)
                parts.append(oh)
        return torch.cat(parts, dim=1).to(out_dtype)

    def extra_repr(self) -> str:
        """Kinds and width."""
        return f"kinds={self.kinds}, dim={self.dim}"
