"""Residual MLP blocks and the projection heads of MolPhenix (DESIGN.md section 5)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ResidualBlock", "MLPHead", "PhenomicHead", "MolecularHead"]


class ResidualBlock(nn.Module):
    """``x + Linear(Dropout(GELU(Linear(LayerNorm(x)))))`` (pre-norm residual MLP block).

    Args:
        width: Input = output width.
        dropout: Dropout probability after the GELU.

    Shapes:
        forward: [B, width] -> [B, width]
    """

    def __init__(self, width: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block (see the class docstring)."""
        return x + self.fc2(self.drop(self.act(self.fc1(self.norm(x)))))


class MLPHead(nn.Module):
    """Input ``Linear(in_dim, hidden)``, ``blocks`` residual blocks, final ``Linear(hidden, out_dim)``
    on a LayerNorm, then L2 normalisation of each row.

    The input projection maps any input width onto the block width (the blocks are residual, so
    their width is fixed); with ``blocks = 0`` the head is two linear maps around a LayerNorm.

    Args:
        in_dim: Input width (> 0).
        hidden: Block width.
        blocks: Number of :class:`ResidualBlock` (>= 0).
        out_dim: Output width D.
        dropout: Dropout inside the blocks.

    Shapes:
        forward: [B, in_dim] -> [B, out_dim], every row of unit L2 norm.
    """

    def __init__(self, in_dim: int, hidden: int, blocks: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_dim, self.out_dim = int(in_dim), int(out_dim)
        self.proj_in = nn.Linear(in_dim, hidden)
        self.blocks = nn.Sequential(*[ResidualBlock(hidden, dropout) for _ in range(blocks)])
        self.norm = nn.LayerNorm(hidden)
        self.proj_out = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed and L2-normalise ``x`` (``eps = 1e-12``: a zero output row stays zero).

        Raises:
            ValueError: ``x`` is not 2-D with ``in_dim`` columns.
        """
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"{type(self).__name__}: expected input [B, {self.in_dim}], "
                             f"got shape {tuple(x.shape)}")
        h = self.blocks(self.proj_in(x))
        return F.normalize(self.proj_out(self.norm(h)), dim=-1, eps=1e-12)


class PhenomicHead(MLPHead):
    """The phenomic head g_x: frozen phenomic embeddings [B, E] -> unit vectors [B, D].

    Args, Shapes: as :class:`MLPHead`.
    """


class MolecularHead(MLPHead):
    """The molecular head g_m: molecular features with the concentration encoding concatenated,
    ``[B, F + C]`` -> unit vectors [B, D].

    Args:
        in_dim: F (molecular feature or graph-pooling width) + C (concentration encoding width).
        hidden, blocks, out_dim, dropout: as :class:`MLPHead`.

    Shapes:
        forward(mol [B, F], conc_enc [B, C]) -> [B, D]
    """

    def forward(self, mol: torch.Tensor, conc_enc: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        """Concatenate ``conc_enc`` (if given and non-empty) to ``mol`` and embed.

        Raises:
            ValueError: mismatched row counts or total width != ``in_dim``.
        """
        if conc_enc is not None and conc_enc.shape[-1] > 0:
            if conc_enc.shape[0] != mol.shape[0]:
                raise ValueError(f"MolecularHead: {mol.shape[0]} molecule rows but "
                                 f"{conc_enc.shape[0]} concentration rows")
            mol = torch.cat([mol, conc_enc.to(mol.dtype)], dim=1)
        return super().forward(mol)
