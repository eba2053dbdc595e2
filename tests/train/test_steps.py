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


def _spy_reads(monkeypatch):
    """Record host reads of tensors made by molphenix.train / molphenix.losses code while a
    step runs (reads inside torch or inside the ops' input validation are not counted)."""
    reads, in_step = [], [False]
    mine = (os.path.join(PKG, "train") + os.sep, os.path.join(PKG, "losses") + os.sep)

    def spy(name, orig):
        def read(self, *a, **k):
            if in_step[0]:
                f = sys._getframe(1)
                if f.f_code.co_filename.startswith(mine):
                    reads.append(f"Tensor.{name} in {f.f_code.co_filename}:{f.f_lineno}")
            return orig(self, *a, **k)
        return read

    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, spy(name, getattr(torch.Tensor, name)))
    real_step = steps.StepLoop._step

    def step(self, *a, **k):
        in_step[0] = True
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
