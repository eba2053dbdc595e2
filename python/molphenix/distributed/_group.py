"""Process groups: launch detection, initialisation with a timeout, rank helpers.

``torchrun`` (or SLURM through it) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``
and ``MASTER_PORT``; :func:`launched` reads them and :func:`init_from_env` creates the default
process group (NCCL for CUDA devices, gloo otherwise) with a timeout, so a rank that dies makes
every other rank's next collective fail within ``timeout_s`` instead of hanging. Without a launch
every helper answers for a single process (rank 0 of 1), so callers need no branches.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from typing import Iterator, Optional

import torch
import torch.distributed as dist

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "launched",
    "is_initialized",
    "init_from_env",
    "process_group",
    "get_rank",
    "get_world_size",
    "is_main",
]

#: Default collective timeout (seconds) of a process group made by :func:`init_from_env`.
DEFAULT_TIMEOUT_S = 300.0


def launched() -> bool:
    """True when this process was started by a distributed launcher with ``WORLD_SIZE`` > 1."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError as e:
        raise ValueError(f"WORLD_SIZE: expected an integer, got {os.environ['WORLD_SIZE']!r}") from e


def is_initialized() -> bool:
    """True when ``torch.distributed`` is available and its default process group exists."""
    return dist.is_available() and dist.is_initialized()


def _backend_for(device: Optional[torch.device | str]) -> str:
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        if not dist.is_nccl_available():
            raise RuntimeError("device: CUDA training needs the NCCL backend, which this torch build lacks")
        return "nccl"
    if not dist.is_gloo_available():
        raise RuntimeError("device: CPU training needs the gloo backend, which this torch build lacks")
    return "gloo"


def init_from_env(device: Optional[torch.device | str] = None, *,
                  timeout_s: float = DEFAULT_TIMEOUT_S, backend: Optional[str] = None) -> bool:
    """Create the default process group from the launcher's environment, if there is a launch.

    Args:
        device: The device this rank computes on; picks the backend (``cuda`` -> NCCL, else gloo)
            unless ``backend`` is given. For CUDA the rank's device is set to ``LOCAL_RANK``.
        timeout_s: Collective timeout in seconds (> 0): a peer that died or hangs surfaces as an
            error on the others after at most this long.
        backend: ``"gloo"`` or ``"nccl"`` to override the choice.

    Returns:
        True when this call created the group (the caller should destroy it, see
        :func:`process_group`); False when there is no launch or a group already exists.

    Raises:
        ValueError: a malformed launch environment or ``timeout_s <= 0`` (named).
        RuntimeError: the backend is not available in this torch build.
    """
    if not (timeout_s > 0):
        raise ValueError(f"timeout_s: expected a positive number of seconds, got {timeout_s!r}")
    if is_initialized() or not launched():
        return False
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise ValueError(f"{key}: WORLD_SIZE={os.environ['WORLD_SIZE']} is set but {key} is not; "
                             "launch with torchrun (see docs/distributed.md)")
    backend = backend or _backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=float(timeout_s)))
    return True


@contextlib.contextmanager
def process_group(device: Optional[torch.device | str] = None, *,
                  timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[bool]:
    """Context manager around :func:`init_from_env`: yields whether a group is active and destroys
    the group on exit when it created it."""
    created = init_from_env(device, timeout_s=timeout_s)
    try:
        yield is_initialized()
    finally:
        if created and is_initialized():
            dist.destroy_process_group()


def get_rank(group: Optional[dist.ProcessGroup] = None) -> int:
    """This process's rank in ``group`` (0 without a process group)."""
    return dist.get_rank(group) if is_initialized() else 0


def get_world_size(group: Optional[dist.ProcessGroup] = None) -> int:
    """Number of ranks in ``group`` (1 without a process group)."""
    return dist.get_world_size(group) if is_initialized() else 1


def is_main(group: Optional[dist.ProcessGroup] = None) -> bool:
    """True on rank 0 (and in a single process): the rank that writes files and prints."""
    return get_rank(group) == 0
