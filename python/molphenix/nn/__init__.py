"""molphenix.nn — the MolPhenix model: heads, concentration encodings, a graph network, configs.

Public API:
    list_models() -> list[str]                      shipped config names
    create_model(name, **overrides) -> MolPhenixModel
    get_model_config(name, **overrides) -> ModelConfig
    ModelConfig                                     dataclass, to_dict()/from_dict(), JSON
    MolPhenixModel                                  encode_wells(x), encode_molecules(mol, conc_um)
    ResidualBlock, MLPHead, PhenomicHead, MolecularHead, ConcentrationEncoder, MPNNEncoder

Shipped configs (``molphenix/nn/configs/*.json``): ``molphenix-small`` (the CPU demo shape),
``molphenix-paper`` (the published shape: six phenomic blocks, one molecular block, 512-d
output), ``molphenix-graph-small`` (message-passing molecular input).
"""

from molphenix.nn.concentration import ConcentrationEncoder
from molphenix.nn.config import CONCENTRATION_KINDS, MOL_INPUTS, ModelConfig
from molphenix.nn.factory import CONFIG_DIR, create_model, get_model_config, list_models
from molphenix.nn.heads import MLPHead, MolecularHead, PhenomicHead, ResidualBlock
from molphenix.nn.model import MolPhenixModel
from molphenix.nn.mpnn import MPNNEncoder

__all__ = [
    "CONCENTRATION_KINDS",
    "CONFIG_DIR",
    "ConcentrationEncoder",
    "MLPHead",
    "MOL_INPUTS",
    "MPNNEncoder",
    "ModelConfig",
    "MolPhenixModel",
    "MolecularHead",
    "PhenomicHead",
    "ResidualBlock",
    "create_model",
    "get_model_config",
    "list_models",
]
