"""molphenix.distributed — multi-process training and sharded retrieval on torch.distributed.

Launched by ``torchrun`` (NCCL across GPUs, gloo across CPUs); see docs/distributed.md.

Public API:
    launched(), init_from_env(device=None, *, timeout_s=300), process_group(...),
    get_rank(group=None), get_world_size(group=None), is_main(group=None)
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

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "get_rank",
    "get_world_size",
    "init_from_env",
    "is_initialized",
    "is_main",
    "launched",
    "process_group",
]
