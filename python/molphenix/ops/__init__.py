"""The compiled ops of molphenix (DESIGN.md section 3).

Each op accepts torch tensors (with autograd where differentiable), numpy arrays and cupy arrays
(returned as the same kind), and ``backend="auto" | "cpu" | "cuda" | "reference"``.
"""

from molphenix.ops.arctan_l2_similarity import arctan_l2_similarity
from molphenix.ops.retrieval import k_for_fraction, recall_at_fraction, retrieval_ranks, topk_retrieve
from molphenix.ops.s2l_loss import s2l_loss, siglip_loss

# Public names of the ops' internals that tools above this package use (python -m molphenix.info,
# the benchmark harness), so nothing outside ops imports a private module of it:
#   reference       the pure-torch twins of the kernels (molphenix.ops._reference, same signatures)
#   why_no_kernel   (device, dtype) -> None when a compiled kernel can run there, else the reason
#   check_finite    the NaN/Inf scan every op runs on its inputs (ValueError naming the argument)
from molphenix.ops import _reference as reference  # noqa: F401
from molphenix.ops._common import _why_no_kernel as why_no_kernel  # noqa: F401
from molphenix.ops._common import check_finite  # noqa: F401

__all__ = [
    "arctan_l2_similarity",
    "s2l_loss",
    "siglip_loss",
    "retrieval_ranks",
    "topk_retrieve",
    "recall_at_fraction",
    "k_for_fraction",
]
