"""The compiled ops of molphenix (DESIGN.md section 3).

Each op accepts torch tensors (with autograd where differentiable), numpy arrays and cupy arrays
(returned as the same kind), and ``backend="auto" | "cpu" | "cuda" | "reference"``.
"""

from molphenix.ops.arctan_l2_similarity import arctan_l2_similarity
from molphenix.ops.retrieval import k_for_fraction, recall_at_fraction, retrieval_ranks, topk_retrieve
from molphenix.ops.s2l_loss import s2l_loss, siglip_loss

__all__ = [
    "arctan_l2_similarity",
    "s2l_loss",
    "siglip_loss",
    "retrieval_ranks",
    "topk_retrieve",
    "recall_at_fraction",
    "k_for_fraction",
]
