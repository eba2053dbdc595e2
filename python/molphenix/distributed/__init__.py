"""molphenix.distributed — multi-process training and sharded retrieval on torch.distributed.

Launched by ``torchrun`` (NCCL across GPUs, gloo across CPUs); see docs/distributed.md.

Public API:
    launched(), init_from_env(device=None, *, timeout_s=300), process_group(...),
    get_rank(group=None), get_world_size(group=None), is_main(group=None)
    Global-batch losses (molphenix.distributed.losses): s2l_loss, siglip_loss (mode "ring" |
    "allgather"), all_gather_with_grad, DistributedLoss(loss, group=None, mode="ring"),
    communication_counter()
    Sharded retrieval (molphenix.distributed.retrieval): ShardedIndex (Index's search/rank over
    candidates sharded across ranks; from_full / from_index / load), sharded_ranks, shard_range
"""

from __future__ import annotations

from molphenix.distributed._group import (
    DEFAULT_TIMEOUT_S,
    get_rank,
    get_world_size,
    init_from_env,
    is_initialized,
    is_main,
    launched,
    process_group,
)
from molphenix.distributed.losses import (
    DistributedLoss,
    all_gather_with_grad,
    communication_counter,
    s2l_loss,
    siglip_loss,
)
from molphenix.distributed.retrieval import ShardedIndex, shard_range, sharded_ranks

__all__ = [
    "DistributedLoss",
    "all_gather_with_grad",
    "communication_counter",
    "s2l_loss",
    "siglip_loss",
    "ShardedIndex",
    "shard_range",
    "sharded_ranks",
    "DEFAULT_TIMEOUT_S",
    "get_rank",
    "get_world_size",
    "init_from_env",
    "is_initialized",
    "is_main",
    "launched",
    "process_group",
]
