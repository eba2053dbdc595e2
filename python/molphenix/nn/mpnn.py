"""A small trainable message-passing network over :class:`~molphenix.data.featurize.GraphBatch`.

Plain torch (``index_add_`` scatter sums), no torch_geometric. Edge-conditioned messages:

    h⁰_v = Linear(x_v)
    m_{u→v} = GELU(W_r h_u + U_r e_{uv})            (e: bond features; edges are directed, both ways)
    a_v = Σ_{u→v} m_{u→v}
    h^{r+1}_v = h^r_v + Linear(GELU(Linear(LayerNorm([h^r_v, a_v]))))

then a sum and/or mean over each graph's atoms. Sums over a set are invariant to the order of
atoms and edges (up to floating-point summation order).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["MPNNEncoder"]


class MPNNEncoder(nn.Module):
    """Edge-conditioned message passing + pooling: molecular graphs -> one vector per graph.

    Args:
        atom_dim: Atom feature width (``GraphFeaturizer.ATOM_DIM``).
        bond_dim: Bond feature width (``GraphFeaturizer.BOND_DIM``).
        hidden: Node width H.
        rounds: Message-passing rounds (>= 1).
        pool: ``"sum"``, ``"mean"`` or ``"sum+mean"`` (concatenated).

    Attributes:
        out_dim: H, or 2H for ``"sum+mean"``.

    Shapes:
        forward(GraphBatch with x [N_atoms, atom_dim], edge_index [2, N_edges],
        edge_attr [N_edges, bond_dim], batch [N_atoms], num_graphs B) -> [B, out_dim]
    """

    def __init__(self, atom_dim: int, bond_dim: int, hidden: int = 128, rounds: int = 3,
                 pool: str = "mean") -> None:
        super().__init__()
        if pool not in ("sum", "mean", "sum+mean"):
            raise ValueError(f"mpnn_pool: expected 'sum', 'mean' or 'sum+mean', got {pool!r}")
        if rounds < 1:
            raise ValueError(f"mpnn_rounds: must be >= 1, got {rounds}")
        self.atom_dim, self.bond_dim, self.pool = int(atom_dim), int(bond_dim), pool
        self.embed = nn.Linear(atom_dim, hidden)
        self.msg_node = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(rounds)])
        self.msg_edge = nn.ModuleList([nn.Linear(bond_dim, hidden, bias=False) for _ in range(rounds)])
        self.update = nn.ModuleList([
            nn.Sequential(nn.LayerNorm(2 * hidden), nn.Linear(2 * hidden, hidden), nn.GELU(),
                          nn.Linear(hidden, hidden))
            for _ in range(rounds)
        ])
        self.act = nn.GELU()
        self.out_dim = hidden * (2 if pool == "sum+mean" else 1)

    def forward(self, graphs: Any) -> torch.Tensor:
        """Embed a batch of graphs.

        Raises:
            ValueError: feature widths that do not match the network, or an atom whose graph
                index is outside ``[0, num_graphs)``.
        """
        x, ei, ea, batch, b = graphs.x, graphs.edge_index, graphs.edge_attr, graphs.batch, int(graphs.num_graphs)
        if x.dim() != 2 or x.shape[1] != self.atom_dim:
            raise ValueError(f"graphs.x: expected [N_atoms, {self.atom_dim}], got {tuple(x.shape)}")
        if ea.dim() != 2 or ea.shape[1] != self.bond_dim:
            raise ValueError(f"graphs.edge_attr: expected [N_edges, {self.bond_dim}], got {tuple(ea.shape)}")
        if ei.dim() != 2 or ei.shape[0] != 2 or ei.shape[1] != ea.shape[0]:
            raise ValueError(f"graphs.edge_index: expected [2, {ea.shape[0]}], got {tuple(ei.shape)}")
        if batch.numel() and (int(batch.min()) < 0 or int(batch.max()) >= b):
            raise ValueError(f"graphs.batch: graph indices must lie in [0, {b})")
        dtype = self.embed.weight.dtype
        h = self.embed(x.to(dtype))
        ea = ea.to(dtype)
        src, dst = ei[0], ei[1]
        for node, edge, upd in zip(self.msg_node, self.msg_edge, self.update):
            m = self.act(node(h)[src] + edge(ea))  # [N_edges, H]
            agg = torch.zeros_like(h).index_add_(0, dst, m)
            h = h + upd(torch.cat([h, agg], dim=1))
        summed = torch.zeros(b, h.shape[1], dtype=h.dtype, device=h.device).index_add_(0, batch, h)
        if self.pool == "sum":
            return summed
        counts = torch.zeros(b, dtype=h.dtype, device=h.device).index_add_(
            0, batch, torch.ones_like(batch, dtype=h.dtype))
        mean = summed / counts.clamp_min(1.0)[:, None]  # an atom-less graph pools to zeros
        return mean if self.pool == "mean" else torch.cat([summed, mean], dim=1)
