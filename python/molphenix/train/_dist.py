"""What :func:`molphenix.train.fit` needs from ``torch.distributed`` for data-parallel training.

One :class:`Ranks` object per run: this process's rank and the world size, object broadcasts
from rank 0 (the rank that reads and writes the run directory), an agreement step that turns an
error on any rank into the same error on every rank (instead of a hang), the DDP gradient hook
that sums (the distributed losses already give each rank the exact rows of the global-batch
gradient), and the wrapping of a failed collective (a rank that died or hangs) into one clear
message. In a single process every method is a no-op answering for rank 0 of 1.
"""

from __future__ import annotations

import warnings
from typing import Any, List, Optional

__all__ = ["Ranks", "RankFailure", "allreduce_sum_hook"]


class RankFailure(RuntimeError):
    """A collective with the other ranks failed: a rank died, hung past the timeout, or the
    network between them broke. The run resumes from its last checkpoint when launched again."""


def allreduce_sum_hook(group, bucket):  # no annotations: DDP checks them (and this module's are strings)
    """DDP communication hook: all-reduce a gradient bucket **without** dividing by the world size.

    Each rank's loss backward gives its local rows exactly their rows of the global-batch
    gradient (:mod:`molphenix.distributed.losses`), so the heads' parameter gradient of the
    global batch is the *sum* over ranks of the local ones (DDP's default hook averages).
    """
    import torch.distributed as dist

    fut = dist.all_reduce(bucket.buffer(), group=group, async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


#: Collective timeout (seconds) while the other ranks wait for rank 0's set-up, validation and
#: final checkpoint (at least the run's ``dist_timeout``): rank 0 may spend minutes there on a
#: large dataset (fingerprint, activity calls, featurizer fit, the validation split), which a
#: short training-step timeout must not turn into a failure. A rank that dies is still noticed
#: at once (its connections close); only a rank that hangs there waits this long.
SLOW_TIMEOUT_S = 3600.0


class Ranks:
    """This process's place in a data-parallel run (rank 0 of 1 without a process group).

    Args:
        timeout_s: The training steps' collective timeout (``TrainConfig.dist_timeout``; the
            default group's when this process made it; named in error messages).
    """

    def __init__(self, timeout_s: Optional[float] = None):
        from molphenix.distributed import get_rank, get_world_size

        self.rank = get_rank()
        self.world = get_world_size()
        self.timeout_s = timeout_s
        self._grad_group = None
        self._slow_group = None
        self.slow_timeout_s = max(float(timeout_s or 0.0), SLOW_TIMEOUT_S)
        if self.active:
            import datetime

            import torch.distributed as dist

            # object broadcasts and waits for rank 0 go through gloo (CPU, also next to NCCL)
            # with the long timeout; every rank creates the groups in the same order
            try:
                self._slow_group = dist.new_group(backend="gloo",
                                                  timeout=datetime.timedelta(seconds=self.slow_timeout_s))
            except Exception as exc:  # noqa: BLE001
                raise self.failure(exc, "the process groups' set-up") from exc

    @property
    def active(self) -> bool:
        """True with more than one rank."""
        return self.world > 1

    @property
    def main(self) -> bool:
        """True on rank 0 (the rank that writes files and logs)."""
        return self.rank == 0

    # ------------------------------------------------------------------ collectives
    def failure(self, exc: BaseException, where: str, slow: bool = False) -> RankFailure:
        """The clear error for a collective that failed during ``where``."""
        if slow:
            t = f" (timeout {self.slow_timeout_s:g} s while waiting for rank 0)"
        else:
            t = f" (collective timeout {self.timeout_s:g} s, --dist-timeout)" if self.timeout_s else ""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return RankFailure(
            f"rank {self.rank} of {self.world}: lost contact with the other ranks during {where}{t}: "
            f"another rank died, hung or was killed ({type(exc).__name__}: {first[:300]}); launch the "
            "same command again to resume from the last checkpoint")

    def broadcast(self, obj: Any, where: str) -> Any:
        """Rank 0's ``obj`` on every rank (pickled; tensors included; long timeout)."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box: List[Any] = [obj if self.main else None]
        try:
            dist.broadcast_object_list(box, src=0, group=self._slow_group)
        except Exception as exc:  # noqa: BLE001 - gloo/NCCL raise RuntimeError subclasses
            raise self.failure(exc, where, slow=True) from exc
        return box[0]

    def agree(self, error: Optional[BaseException], where: str) -> None:
        """Raise on every rank when any rank hit an error (the lowest rank's, named).

        Every rank calls this at the same point with its own error (or None), so one rank's
        failure becomes a clear error everywhere instead of a hang at the next collective.
        """
        if not self.active:
            if error is not None:
                raise error
            return
        import torch.distributed as dist

        msg = None if error is None else (type(error).__name__, str(error))
        gathered: List[Any] = [None] * self.world
        try:
            dist.all_gather_object(gathered, msg, group=self._slow_group)
        except Exception as exc:  # noqa: BLE001
            raise self.failure(exc, where, slow=True) from exc
        if error is not None:
            raise error
        for r, m in enumerate(gathered):
            if m is not None:
                cls = {"ValueError": ValueError, "FileNotFoundError": FileNotFoundError}.get(m[0], RuntimeError)
                raise cls(m[1] if cls is ValueError else f"rank {r}: {m[0]}: {m[1]}")

    def barrier(self, where: str) -> None:
        """Wait for every rank (long timeout; a failed peer raises :class:`RankFailure`)."""
        if not self.active:
            return
        import torch.distributed as dist

        try:
            dist.barrier(group=self._slow_group)
        except Exception as exc:  # noqa: BLE001
            raise self.failure(exc, where, slow=True) from exc

    # ------------------------------------------------------------------ DDP
    def wrap(self, module: Any, device: Any) -> Any:
        """``module`` in DistributedDataParallel with the summing hook (on its own process group,
        so its gradient all-reduces never interleave with the loss's collectives); ``module``
        itself with one rank."""
        if not self.active:
            return module
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel as DDP

        try:
            self._grad_group = dist.new_group(backend=dist.get_backend())
            with warnings.catch_warnings():
                # the heads' buffers (dose tables) are constants: no per-forward buffer broadcast
                warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
                ddp = DDP(module, device_ids=[device.index] if device.type == "cuda" else None,
                          process_group=self._grad_group, broadcast_buffers=False)
        except Exception as exc:  # noqa: BLE001
            raise self.failure(exc, "the model's set-up (DistributedDataParallel)") from exc
        ddp.register_comm_hook(self._grad_group, allreduce_sum_hook)
        return ddp
