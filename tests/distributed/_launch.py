"""Run a module-level function in N gloo processes on localhost, inside the test suite.

Usage (from a test module in this package)::

    from ._launch import run_ranks

    def _body(scale):                      # module level, so a spawned child can import it
        import torch.distributed as dist
        return dist.get_rank() * scale     # any picklable value

    def test_something():
        assert run_ranks(_body, 2, args=(10,)) == [0, 10]

Each rank is a fresh ``spawn`` child with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR=127.0.0.1`` and a free ``MASTER_PORT`` set, ``OMP_NUM_THREADS=1`` and
``torch.set_num_threads(1)``; by default the child creates the process group with
``molphenix.distributed.init_from_env`` (gloo) before calling the function and destroys it after.
Results come back through one pickle file per rank (a temporary directory), so a large result
cannot block a child's exit and a dead child is told apart from a failing one.

A rank that raises: its exception is re-raised in the parent with the rank and the child's
traceback added as a note (so ``pytest.raises(ValueError)`` works); the other ranks are killed
after a short grace period. A run that exceeds ``timeout_s`` kills every rank and raises
:class:`RankTimeout`, so a hang is a test failure, never a stuck suite. Each child makes itself a
process-group leader, and is killed with its own children by that group id.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import tempfile
import time
import traceback
import multiprocessing as mp
from typing import Any, Callable, Dict, List, Optional, Sequence

__all__ = ["run_ranks", "free_port", "RankDied", "RankTimeout"]

#: Seconds the surviving ranks get to finish after one rank failed, before they are killed.
GRACE_S = 5.0


class RankDied(RuntimeError):
    """A rank exited without reporting a result or an exception (killed, crashed, ``os._exit``)."""


class RankTimeout(TimeoutError):
    """The ranks did not all finish within the hard timeout; all were killed."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write(path: str, payload: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)


def _child(fn: Callable[..., Any], rank: int, world_size: int, port: int, out_dir: str,
           args: Sequence[Any], kwargs: Dict[str, Any], env: Dict[str, str], init_group: bool,
           group_timeout_s: float) -> None:
    try:
        os.setpgrp()  # own process group: the parent kills this rank and its children together
    except OSError:
        pass
    os.environ.update({
        "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
        "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
    })
    os.environ.update(env)
    path = os.path.join(out_dir, f"rank{rank}.pkl")
    try:
        import torch

        torch.set_num_threads(1)
        created = False
        if init_group:
            from molphenix.distributed import init_from_env

            created = init_from_env("cpu", timeout_s=group_timeout_s)
        try:
            result = fn(*args, **kwargs)
        finally:
            if created:
                import torch.distributed as dist

                if dist.is_initialized():
                    dist.destroy_process_group()
        try:
            _write(path, ("ok", result))
        except Exception as e:  # an unpicklable result is the caller's error, reported as such
            raise TypeError(f"rank {rank}: the function's return value is not picklable: {e}") from e
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
        tb = traceback.format_exc()
        try:
            exc_blob = pickle.dumps(e)
        except Exception:
            exc_blob = None
        _write(path, ("error", type(e).__name__, str(e), tb, exc_blob))
        os._exit(1)


def _kill(proc: mp.Process) -> None:
    if proc.pid is None or not proc.is_alive():
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the child is its own group leader (setpgrp)
    except (ProcessLookupError, PermissionError, OSError):
        pass
    try:
        proc.kill()
    except Exception:
        pass


def _read(path: str) -> Optional[tuple]:
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        return pickle.load(f)


def _as_exception(rank: int, payload: tuple) -> BaseException:
    _, name, msg, tb, blob = payload
    exc: Optional[BaseException] = None
    if blob is not None:
        try:
            exc = pickle.loads(blob)
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = RuntimeError(f"{name}: {msg}")
    note = f"raised on rank {rank}; the rank's traceback:\n{tb}"
    exc.add_note(note)
    exc.rank = rank  # type: ignore[attr-defined]
    exc.rank_traceback = tb  # type: ignore[attr-defined]
    return exc


def run_ranks(fn: Callable[..., Any], world_size: int, args: Sequence[Any] = (),
              kwargs: Optional[Dict[str, Any]] = None, *, timeout_s: float = 120.0,
              env: Optional[Dict[str, str]] = None, init_group: bool = True,
              group_timeout_s: float = 60.0, return_exceptions: bool = False) -> List[Any]:
    """Run ``fn(*args, **kwargs)`` on ``world_size`` gloo ranks and return each rank's result.

    Args:
        fn: A module-level (importable, picklable) function; called once per rank.
        world_size: Number of ranks (>= 1).
        args, kwargs: Passed to ``fn`` on every rank (must be picklable). ``fn`` reads its rank
            with ``torch.distributed.get_rank()`` or ``int(os.environ["RANK"])``.
        timeout_s: Hard wall-clock limit for the whole run (process start included); past it
            every rank is killed and :class:`RankTimeout` is raised.
        env: Extra environment variables for the children (applied after the launch variables).
        init_group: Create the default gloo process group (``init_from_env``) before calling
            ``fn`` and destroy it after; False leaves that to ``fn``.
        group_timeout_s: Collective timeout of that process group.
        return_exceptions: False (default): the first failing rank's exception is re-raised
            here. True: a failing rank's entry in the result list is its exception object
            (a rank that died without a report: :class:`RankDied`), the others their results.

    Returns:
        ``[result of rank 0, ..., result of rank world_size - 1]``.

    Raises:
        The failing rank's exception (with ``rank`` and ``rank_traceback`` attributes and a note
        holding the child's traceback), :class:`RankDied`, or :class:`RankTimeout`.
    """
    if world_size < 1:
        raise ValueError(f"world_size: expected >= 1, got {world_size}")
    kwargs = dict(kwargs or {})
    env = {str(k): str(v) for k, v in (env or {}).items()}
    ctx = mp.get_context("spawn")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="molphenix-ranks-") as out_dir:
        procs = [ctx.Process(target=_child, name=f"rank{r}", daemon=True,
                             args=(fn, r, world_size, port, out_dir, tuple(args), kwargs, env,
                                   init_group, group_timeout_s))
                 for r in range(world_size)]
        deadline = time.monotonic() + timeout_s
        failed_at: Optional[float] = None
        try:
            for p in procs:
                p.start()
            while True:
                alive = [p for p in procs if p.is_alive()]
                if not alive:
                    break
                now = time.monotonic()
                if failed_at is None and any(p.exitcode not in (None, 0) for p in procs):
                    failed_at = now
                if now > deadline or (failed_at is not None and now > failed_at + GRACE_S):
                    break
                alive[0].join(timeout=0.05)
            timed_out = any(p.is_alive() for p in procs) and failed_at is None
        finally:
            for p in procs:
                _kill(p)
            for p in procs:
                p.join(timeout=5.0)
        payloads = [_read(os.path.join(out_dir, f"rank{r}.pkl")) for r in range(world_size)]

    results: List[Any] = []
    first_error: Optional[BaseException] = None
    for r, (p, payload) in enumerate(zip(procs, payloads)):
        if payload is not None and payload[0] == "ok":
            results.append(payload[1])
            continue
        if payload is not None:
            err: BaseException = _as_exception(r, payload)
        elif timed_out:
            err = RankTimeout(f"rank {r} did not finish within timeout_s={timeout_s} s; "
                              "all ranks were killed")
        elif failed_at is not None and p.exitcode in (-signal.SIGKILL,):
            err = RankDied(f"rank {r} was killed {GRACE_S} s after another rank failed")
        else:
            err = RankDied(f"rank {r} exited with code {p.exitcode} without reporting a result")
        results.append(err)
        # The most informative error first: a reported exception beats a timeout or a kill.
        if first_error is None or (payload is not None and not hasattr(first_error, "rank_traceback")):
            first_error = err
    if first_error is not None and not return_exceptions:
        raise first_error
    return results
