"""The MolPhenix two-tower model: phenomic head and molecular head into one embedding space."""

from __future__ import annotations

from typing import Any, Tuple

import torch
from torch import nn

from molphenix.nn.concentration import ConcentrationEncoder
from molphenix.nn.config import ModelConfig
from molphenix.nn.heads import MolecularHead, PhenomicHead
from molphenix.nn.mpnn import MPNNEncoder

__all__ = ["MolPhenixModel"]


class MolPhenixModel(nn.Module):
    """Phenomic head g_x and molecular head g_m (with concentration encoding and, for graph
    inputs, a message-passing network), both producing L2-normalised D-dim embeddings.

    Args:
        config: A :class:`ModelConfig` with ``phenomic_dim`` (and ``molecular_dim`` unless
            ``mol_input == "graph"``) set; a dict is accepted and converted.

    Attributes:
        config: The (validated) config; ``config.to_dict()`` rebuilds the same architecture.
        phenomic_head: :class:`PhenomicHead`.
        molecular_head: :class:`MolecularHead`.
        concentration_encoder: :class:`ConcentrationEncoder` (width 0 for ``"none"``).
        graph_encoder: :class:`MPNNEncoder` or None.

    Raises:
        ValueError: an invalid config, or one without the data dimensions (field named).
    """

    def __init__(self, config: ModelConfig | dict) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = ModelConfig.from_dict(config)
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config: expected a ModelConfig or dict, got {type(config).__name__}")
        config = ModelConfig.from_dict(config.to_dict())  # own copy
        config.validate(require_dims=True)
        self.config = config
        self.concentration_encoder = ConcentrationEncoder(
            config.concentration_kinds(), doses=config.doses, unknown=config.onehot_unknown,
            sigmoid_centers=config.sigmoid_centers, sigmoid_slope=config.sigmoid_slope)
        if config.mol_input == "graph":
            from molphenix.data.featurize import GraphFeaturizer

            self.graph_encoder: MPNNEncoder | None = MPNNEncoder(
                GraphFeaturizer.ATOM_DIM, GraphFeaturizer.BOND_DIM, hidden=config.mpnn_hidden,
                rounds=config.mpnn_rounds, pool=config.mpnn_pool)
            mol_width = self.graph_encoder.out_dim
        else:
            self.graph_encoder = None
            mol_width = config.molecular_dim
        self.phenomic_head = PhenomicHead(config.phenomic_dim, config.phenomic_hidden,
                                          config.phenomic_blocks, config.embed_dim, config.dropout)
        self.molecular_head = MolecularHead(mol_width + self.concentration_encoder.dim,
                                            config.molecular_hidden, config.molecular_blocks,
                                            config.embed_dim, config.dropout)

    @property
    def embed_dim(self) -> int:
        """D, the embedding width."""
        return self.config.embed_dim

    def encode_wells(self, x: torch.Tensor) -> torch.Tensor:
        """Embed phenomic inputs.

        Args:
            x: Phenomic embeddings (as prepared by the trainer: e.g. control-centered).

        Returns:
            Unit-norm embeddings p.

        Shapes:
            x: [B, E] -> [B, D]

        Raises:
            ValueError: ``x`` not [B, E] with E = ``config.phenomic_dim``.
        """
        if x.dim() != 2 or x.shape[1] != self.config.phenomic_dim:
            raise ValueError(f"x: expected phenomic inputs [B, {self.config.phenomic_dim}], "
                             f"got shape {tuple(x.shape)}")
        return self.phenomic_head(x.to(self.phenomic_head.proj_in.weight.dtype))

    def encode_molecules(self, mol: Any, conc_um: torch.Tensor) -> torch.Tensor:
        """Embed (molecule, concentration) samples.

        Args:
            mol: Molecular features ``[B, F]`` (fingerprints, descriptors, embedding column),
                or a :class:`~molphenix.data.featurize.GraphBatch` of B graphs when
                ``config.mol_input == "graph"``.
            conc_um: Concentrations in µM (ignored when ``config.concentration == "none"``,
                but the row count is still checked).

        Returns:
            Unit-norm embeddings q.

        Shapes:
            mol: [B, F] or GraphBatch(num_graphs=B); conc_um: [B] -> [B, D]

        Raises:
            ValueError: wrong shapes, mismatched row counts, a tensor for a graph model or a
                graph batch for a feature model.
        """
        head_dtype = self.molecular_head.proj_in.weight.dtype
        if self.graph_encoder is not None:
            if isinstance(mol, torch.Tensor) or not hasattr(mol, "edge_index"):
                raise ValueError("mol: this model has mol_input='graph'; pass a GraphBatch "
                                 "(molphenix.data.featurize.collate_graphs)")
            feats = self.graph_encoder(mol)
        else:
            if not isinstance(mol, torch.Tensor):
                raise ValueError(f"mol: expected a tensor [B, {self.config.molecular_dim}] "
                                 f"(mol_input={self.config.mol_input!r}), got {type(mol).__name__}")
            if mol.dim() != 2 or mol.shape[1] != self.config.molecular_dim:
                raise ValueError(f"mol: expected molecular features [B, {self.config.molecular_dim}], "
                                 f"got shape {tuple(mol.shape)}")
            feats = mol.to(head_dtype)
        if not isinstance(conc_um, torch.Tensor):
            conc_um = torch.as_tensor(conc_um, device=feats.device)
        n_conc = conc_um.shape[0] if conc_um.dim() >= 1 else -1
        if n_conc != feats.shape[0]:
            raise ValueError(f"conc_um: expected {feats.shape[0]} concentrations (one per molecule "
                             f"row), got shape {tuple(conc_um.shape)}")
        enc = self.concentration_encoder(conc_um.to(feats.device))
        return self.molecular_head(feats, enc.to(head_dtype))

    def forward(self, x: torch.Tensor, mol: Any, conc_um: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(encode_wells(x), encode_molecules(mol, conc_um))``.

        Shapes:
            x: [B, E], mol: [B, F] | GraphBatch, conc_um: [B] -> ([B, D], [B, D])
        """
        return self.encode_wells(x), self.encode_molecules(mol, conc_um)
