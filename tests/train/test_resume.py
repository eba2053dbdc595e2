"""A run killed with SIGKILL at a random step and resumed ends bitwise equal to an uninterrupted
run (CPU, same thread count); a resumed epoch yields the same batches."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from _train_utils import tiny_config

# Runs fit in a child process, slowed down per optimizer step (a sleep changes no numbers) so the
# parent can kill it part-way through.
_CHILD = """
import json, sys, time
import torch
_step = torch.optim.AdamW.step
def _slow(self, *a, **k):
    time.sleep(0.05)
    return _step(self, *a, **k)
torch.optim.AdamW.step = _slow
from molphenix.train import TrainConfig, fit
fit(TrainConfig.from_dict(json.loads(sys.argv[1])))
"""


def _logged_steps(path) -> int:
    try:
        with open(path) as f:
            return max(0, sum(1 for line in f if line.endswith("\n")) - 1)
    except FileNotFoundError:
        return 0


def _kill_run_at(cfg, kill_at: int) -> int:
    """Run ``fit(cfg)`` in a child process, SIGKILL it once its train_log.csv has ``kill_at`` logged
    steps, and return the child's exit status."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    child = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(cfg.to_dict())], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = Path(cfg.out) / "train_log.csv"
    deadline = time.monotonic() + 240
    try:
        while _logged_steps(log) < kill_at:
            if child.poll() is not None:
                pytest.fail(f"the child run ended before step {kill_at}: {child.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the child run did not reach the kill step in time")
            time.sleep(0.005)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    return child.returncode


def _state(run):
    from molphenix.train.checkpoint import load_checkpoint

    return load_checkpoint(run / "checkpoints" / "last.pt")


def _assert_bitwise_equal(a, b, path="ckpt"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _assert_bitwise_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_bitwise_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def test_sigkill_resume_is_bitwise_equal(tiny_data, tmp_path):
    from molphenix.train import fit

    steps = 40
    kw = dict(steps=steps, checkpoint_every=0.0, eval_every=10)
    ref = fit(tiny_config(tiny_data, tmp_path / "ref", **kw))

    cfg = tiny_config(tiny_data, tmp_path / "killed", **kw)
    kill_at = random.Random().randint(3, steps - 12)
    returncode = _kill_run_at(cfg, kill_at)
    assert returncode == -signal.SIGKILL
    killed_at = _state(tmp_path / "killed")["step"]
    assert 0 < killed_at < steps, (kill_at, killed_at)

    msgs = []
    fit(cfg, log=msgs.append)
    assert any(f"resuming {tmp_path / 'killed'} at step {killed_at}" in m for m in msgs), msgs
    a, b = _state(ref), _state(tmp_path / "killed")
    for key in ("model", "loss", "optimizer"):
        _assert_bitwise_equal(a[key], b[key], f"{key} (killed at step {killed_at})")
    assert (a["step"], a["epoch"], a["batch"], a["samples_seen"]) == (b["step"], b["epoch"], b["batch"], b["samples_seen"])
    assert a["best_metric"] == b["best_metric"] and a["best_step"] == b["best_step"]
    # the log holds every step once, losses identical to the uninterrupted run's
    def losses(run):
        with open(run / "train_log.csv") as f:
            return [(int(r["step"]), r["loss"]) for r in csv.DictReader(f)]
    assert losses(ref) == losses(tmp_path / "killed")


def test_resumed_epoch_yields_the_same_batches(tiny_data):
    from molphenix.data import ReplicateSampler, load_dataset

    ds = load_dataset(tiny_data)
    s = ReplicateSampler(ds, inactive_rate=1.0, batch_size=8, seed=4)
    full = list(s.iter_epoch(3))
    assert s.num_batches(3) == len(full) > 3
    tail = list(s.iter_epoch(3, start_batch=2))
    assert len(tail) == len(full) - 2
    for a, b in zip(full[2:], tail):
        np.testing.assert_array_equal(a.sample_index, b.sample_index)
        np.testing.assert_array_equal(a.phenomic, b.phenomic)
        np.testing.assert_array_equal(a.n_averaged, b.n_averaged)
    assert list(s.iter_epoch(3, start_batch=len(full))) == []
    with pytest.raises(ValueError, match="start_batch"):
        next(s.iter_epoch(0, start_batch=-1))
