"""A rank that dies mid-training: the other rank stops with one clear error line within the
collective timeout, and launching the same command again resumes from the last checkpoint.

Both launches go through the CLI (``molphenix train`` as ``torchrun`` runs it: the launch
environment set, the process group created by ``fit`` itself from it).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from pathlib import Path
from typing import List, Optional

import pytest
import torch

from . import _launch
from ._launch import RankDied, run_ranks
from .test_train import STEPS, assert_state_close, fit_on_rank, last, log_rows, reference_runs, train_config

#: The collective timeout of the test runs (--dist-timeout): the error must come within it.
TIMEOUT_S = 15.0


def cli_on_rank(argv: List[str], die_at: Optional[int] = None, die_rank: int = 1):
    """Rank body: ``molphenix train`` (``main(argv)``); returns (exit code, stdout, stderr).

    ``die_at=k``: rank ``die_rank`` exits abruptly (``os._exit``) at the optimizer step of step k."""
    import torch.distributed as dist  # noqa: F401 - the group is made by fit, from the environment

    from molphenix.cli.main import main

    if die_at is not None and int(os.environ["RANK"]) == die_rank:
        done = [0]
        step = torch.optim.AdamW.step

        def dying(self, *a, **k):
            if done[0] == die_at - 1:
                os._exit(3)
            done[0] += 1
            return step(self, *a, **k)

        torch.optim.AdamW.step = dying
    out, err = io.StringIO(), io.StringIO()
    t0 = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue(), time.monotonic() - t0


def train_argv(runs, out: Path, tmp_path: Path) -> List[str]:
    """``molphenix train`` arguments of the test run into ``out`` (the model and loss settings
    through a ``--config`` file in ``tmp_path``, the rest as flags; --dist-timeout TIMEOUT_S)."""
    cfg = train_config(runs["data"], out)
    flags = {k: cfg.pop(k) for k in ("data", "out", "steps", "batch_size", "threads", "checkpoint_every",
                                     "dist_timeout", "progress")}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    return ["train", "--config", str(tmp_path / "cfg.json"), "--data", flags["data"], "--out", str(out),
            "--steps", str(STEPS), "--batch-size", str(flags["batch_size"]), "--threads", "1",
            "--checkpoint-every", "0", "--no-progress", "--dist-timeout", str(TIMEOUT_S)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return reference_runs(tmp_path_factory.getbasetemp())


def test_dead_rank_is_a_clear_error_and_the_run_resumes(runs, monkeypatch, tmp_path):
    # the survivor needs time to report (the launcher kills the others a few seconds after a death)
    monkeypatch.setattr(_launch, "GRACE_S", TIMEOUT_S + 20.0)
    out = tmp_path / "run"
    argv = train_argv(runs, out, tmp_path)

    res = run_ranks(cli_on_rank, 2, args=(argv,), kwargs={"die_at": 4}, init_group=False,
                    timeout_s=180, return_exceptions=True)
    assert isinstance(res[1], RankDied), res[1]
    code, stdout, stderr, took = res[0]
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert code == 1 and len(lines) == 1, stderr  # one line, exit 1 (a failure, not a usage error)
    assert lines[0].startswith("error: rank 0 of 2: lost contact with the other ranks during training step ")
    assert "--dist-timeout" in lines[0] and "resume" in lines[0]
    # within the timeout: the whole rank-0 command (set-up and the steps before the death included)
    assert took < TIMEOUT_S + 30.0, took
    ck = last(out)
    # rank 1 dies in step 4's optimizer step, after step 4's gradients were exchanged: rank 0
    # finishes (and checkpoints) step 4 or not, depending on what reached it before the exit
    assert ck["step"] in (3, 4) and not ck["finished"], ck["step"]
    print(f"rank 0: {lines[0]!r} after {took:.1f} s of its command; last checkpoint at step {ck['step']}")

    # the same command again resumes from the last checkpoint and ends as the uninterrupted run
    res = run_ranks(cli_on_rank, 2, args=(argv,), init_group=False, timeout_s=180)
    (code0, stdout0, stderr0, _), (code1, stdout1, stderr1, _) = res
    assert code0 == 0 and code1 == 0, (stderr0, stderr1)
    assert f"resuming {out} at step {ck['step']} of {STEPS}" in stdout0 and f"run: {out}" in stdout0
    assert stdout1 == ""  # rank 1 prints nothing
    final = last(out)
    assert final["finished"]
    # same world size: bitwise the uninterrupted 2-rank run
    ref = last(runs["two"])
    for key in ("model", "loss"):
        assert all(torch.equal(final[key][k], ref[key][k]) for k in ref[key]), key
    assert_state_close(final, last(runs["one"]))
    assert [int(r["step"]) for r in log_rows(out)] == list(range(1, STEPS + 1))


def test_hung_rank_times_out_and_one_process_resumes(runs, monkeypatch):
    """A rank that stops responding (no closed connection to notice): the other fails after
    --dist-timeout; the run then resumes with another world size (one process)."""
    from molphenix.train import RankFailure, fit

    timeout = 6.0
    monkeypatch.setattr(_launch, "GRACE_S", 60.0)
    out = runs["root"] / "hung"
    cfg = train_config(runs["data"], out, dist_timeout=timeout)
    t0 = time.monotonic()
    res = run_ranks(fit_on_rank, 2, args=(cfg,), kwargs={"hang_at": 4, "hang_s": timeout + 6.0},
                    init_group=False, timeout_s=180, return_exceptions=True)
    assert isinstance(res[0], RankFailure), res[0]
    msg = str(res[0])
    assert msg.startswith("rank 0 of 2: lost contact with the other ranks during training step ")
    assert f"collective timeout {timeout:g} s" in msg and "timed out" in msg.lower(), msg
    assert time.monotonic() - t0 < 120
    ck = last(out)
    assert ck["step"] in (3, 4) and not ck["finished"]
    msgs = []
    fit(dict(cfg), log=msgs.append)
    assert any(f"resuming {out} at step {ck['step']}" in m and "written by 2" in m for m in msgs), msgs
    assert_state_close(last(out), last(runs["one"]))
    rows = log_rows(out)
    assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1))
    assert [r["world_size"] for r in rows] == ["2"] * ck["step"] + ["1"] * (STEPS - ck["step"])


def test_rank_zero_dying_is_a_clear_error_on_the_others(runs, monkeypatch, tmp_path):
    """Rank 0 hosts the rendezvous store and writes the run: when it dies, rank 1 still stops
    with one clear error line within the timeout (no hang), and the last checkpoint resumes."""
    monkeypatch.setattr(_launch, "GRACE_S", TIMEOUT_S + 20.0)
    out = tmp_path / "run"
    argv = train_argv(runs, out, tmp_path)

    res = run_ranks(cli_on_rank, 2, args=(argv,), kwargs={"die_at": 4, "die_rank": 0}, init_group=False,
                    timeout_s=180, return_exceptions=True)
    assert isinstance(res[0], RankDied), res[0]
    code, stdout, stderr, took = res[1]
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert code == 1 and len(lines) == 1, stderr
    assert lines[0].startswith("error: rank 1 of 2: lost contact with the other ranks"), lines[0]
    assert took < TIMEOUT_S + 30.0, took
    assert stdout == ""  # only rank 0 prints
    ck = last(out)
    assert ck["step"] == 3 and not ck["finished"], ck["step"]  # rank 0 died before checkpointing step 4
    # one process resumes it (another world size) and ends as the single-process run
    res = run_ranks(cli_on_rank, 1, args=(argv,), init_group=False, timeout_s=180)
    code0, stdout0, stderr0, _ = res[0]
    assert code0 == 0, stderr0
    assert f"resuming {out} at step 3 of {STEPS}" in stdout0
    assert_state_close(last(out), last(runs["one"]))
