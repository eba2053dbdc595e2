"""The test launcher itself: results per rank, a rank's exception re-raised here, a hang killed."""

from __future__ import annotations

import os
import time

import pytest

from ._launch import RankTimeout, run_ranks


def _ranks_and_sum(scale):
    import torch
    import torch.distributed as dist

    x = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(x)
    return dist.get_rank(), dist.get_world_size(), os.environ["OMP_NUM_THREADS"], float(x) * scale


def _fail_on_one():
    import torch.distributed as dist

    if dist.get_rank() == 1:
        raise ValueError("rank one says no")
    return "fine"


def _hang():
    time.sleep(600)


def test_results_errors_and_timeout():
    assert run_ranks(_ranks_and_sum, 2, args=(10.0,)) == [(0, 2, "1", 30.0), (1, 2, "1", 30.0)]
    with pytest.raises(ValueError, match="rank one says no") as info:
        run_ranks(_fail_on_one, 2)
    assert info.value.rank == 1 and "_fail_on_one" in info.value.rank_traceback
    out = run_ranks(_fail_on_one, 2, return_exceptions=True)
    assert out[0] == "fine" and isinstance(out[1], ValueError)
    t0 = time.monotonic()
    with pytest.raises(RankTimeout):
        run_ranks(_hang, 1, timeout_s=5.0, init_group=False)
    assert time.monotonic() - t0 < 20.0
