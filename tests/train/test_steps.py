"""The step loop reads nothing from the device inside a step; reading a window of steps at once
(as on CUDA) gives the same run, bit for bit, and still names the step of a non-finite value."""

from __future__ import annotations

import csv
import os
import sys

import pytest
import torch

from _train_utils import tiny_config

import molphenix
from molphenix.train import steps

PKG = os.path.dirname(os.path.abspath(molphenix.__file__))
#: host reads of tensor values (each waits for the device on CUDA)
READS = ("item", "tolist", "__bool__", "__float__", "__int__", "numpy")


@pytest.fixture
def as_on_cuda(monkeypatch):
    """The CUDA resolution window on CPU: the host reads the steps' values only before
    validations, checkpoints and at the end."""
    monkeypatch.setattr(steps, "resolve_every", lambda device: 1000)


def _spy_reads(monkeypatch, parts=("train", "losses"), skip_functions=(), stats_steps=True):
    """Record host reads of tensors made by the code of molphenix's ``parts`` while a step runs
    (reads inside torch, or in a function named in ``skip_functions``, are not counted; nor,
    without ``stats_steps``, those of the steps that also compute the logged statistics)."""
    reads, in_step = [], [False]
    mine = tuple(os.path.join(PKG, part) + os.sep for part in parts)

    def spy(name, orig):
        def read(self, *a, **k):
            if in_step[0]:
                f = sys._getframe(1)
                if f.f_code.co_filename.startswith(mine) and f.f_code.co_name not in skip_functions:
                    reads.append(f"Tensor.{name} in {f.f_code.co_filename}:{f.f_lineno}")
            return orig(self, *a, **k)
        return read

    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, spy(name, getattr(torch.Tensor, name)))
    real_step = steps.StepLoop._step

    def step(self, *a, **k):
        in_step[0] = stats_steps or not k.get("with_stats")
        try:
            return real_step(self, *a, **k)
        finally:
            in_step[0] = False

    monkeypatch.setattr(steps.StepLoop, "_step", step)
    return reads, in_step


@pytest.mark.parametrize("loss", ["s2l", "cwcl", "siglip"])
def test_a_step_reads_nothing_from_the_device(tiny_data, tmp_path, monkeypatch, as_on_cuda, loss):
    from molphenix.train import fit

    reads, in_step = _spy_reads(monkeypatch)
    fit(tiny_config(tiny_data, tmp_path / "r", loss=loss))
    assert not reads, "host reads inside a training step:\n" + "\n".join(reads)
    # the spy does catch a read from this code
    in_step[0] = True
    steps._fmt(torch.ones(()))
    in_step[0] = False
    assert reads and "steps.py" in reads[0]


@pytest.mark.parametrize("loss", ["s2l", "siglip"])
def test_the_step_calls_the_loss_op_without_its_checks(tiny_data, tmp_path, monkeypatch, as_on_cuda, loss):
    """The step checks p, q and u itself, so the fused loss goes through ops.prepared: the public
    op (whose checks read values on the host) is never called, and the ops read nothing but
    the compiled op's scale and bias (the kernel takes them as host numbers). The steps that
    also compute the logged soft-positive fraction (one in ``STATS_EVERY``) may read more."""
    from molphenix import ops
    from molphenix.ops import prepared
    from molphenix.train import fit

    name = "s2l_loss" if loss == "s2l" else "siglip_loss"
    calls = []
    real = getattr(prepared, name)

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    def public(*a, **k):
        raise AssertionError(f"the training step called ops.{name}, which validates on the host")

    monkeypatch.setattr(prepared, name, counted)
    monkeypatch.setattr(ops, name, public)
    reads, _ = _spy_reads(monkeypatch, parts=("train", "losses", "ops"), skip_functions=("_s2l_loss_fwd",),
                          stats_steps=False)
    fit(tiny_config(tiny_data, tmp_path / "r", loss=loss, steps=6, eval_every=0))
    assert len(calls) == 6
    assert not reads, "host reads inside a training step:\n" + "\n".join(reads)


def test_the_loss_through_ops_prepared_is_the_same_run(tiny_data, tmp_path, monkeypatch):
    """Training with the loss's checks (the public op) and without (ops.prepared): bit for bit."""
    from molphenix.train import fit, loop
    from molphenix.train.checkpoint import load_checkpoint

    prepared_run = fit(tiny_config(tiny_data, tmp_path / "prepared", steps=8, eval_every=4))
    real_setup = loop._Trainer._loop

    def public_loss(self, total):
        self.loss_checked = False
        return real_setup(self, total)

    monkeypatch.setattr(loop._Trainer, "_loop", public_loss)
    public_run = fit(tiny_config(tiny_data, tmp_path / "public", steps=8, eval_every=4))
    assert _log(prepared_run) == _log(public_run)
    a, b = (load_checkpoint(r / "checkpoints" / "last.pt") for r in (prepared_run, public_run))
    for part in ("model", "loss"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k}"


def _log(run):
    with open(run / "train_log.csv") as f:
        return [{k: v for k, v in r.items() if k not in ("samples_per_s", "elapsed_s")} for r in csv.DictReader(f)]


def test_the_resolution_window_changes_nothing(tiny_data, tmp_path, monkeypatch):
    from molphenix.train import fit
    from molphenix.train.checkpoint import load_checkpoint

    every_step = fit(tiny_config(tiny_data, tmp_path / "one", steps=14, eval_every=7))
    monkeypatch.setattr(steps, "resolve_every", lambda device: 1000)
    windowed = fit(tiny_config(tiny_data, tmp_path / "window", steps=14, eval_every=7))
    assert _log(every_step) == _log(windowed)
    a, b = (load_checkpoint(r / "checkpoints" / "last.pt") for r in (every_step, windowed))
    for part in ("model", "loss"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k}"
    assert a["rng"]["torch"].equal(b["rng"]["torch"])


def test_non_finite_values_name_their_step_through_a_window(tiny_data, tmp_path, as_on_cuda):
    from molphenix.train import fit

    run = tmp_path / "r"
    with pytest.raises(ValueError, match=r"non-finite .* at step \d+"):
        fit(tiny_config(tiny_data, run, lr=1e30, grad_clip=None, warmup=0.0, eval_every=0))
    # nothing of the failed steps was checkpointed or logged
    assert not (run / "checkpoints" / "last.pt").exists()
    with open(run / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert all(float(r["loss"]) == float(r["loss"]) for r in rows)  # no NaN row
