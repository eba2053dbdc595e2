"""The size-aware recipe: budget resolution (steps / samples / epochs / default), early stopping
(stops, records where, resumes bitwise after SIGKILL), and the new config fields' checks."""

from __future__ import annotations

import csv
import json
import math
import random

import pytest

from _train_utils import tiny_config
from test_resume import _assert_bitwise_equal, _kill_run_at, _state


# --------------------------------------------------------------------------- config fields


def test_new_fields_are_checked_and_named():
    from molphenix.train import TrainConfig

    with pytest.raises(ValueError, match=r"^steps: give one of steps, samples or epochs, not steps and epochs"):
        TrainConfig(steps=3, epochs=2)
    with pytest.raises(ValueError, match=r"^samples: give one of"):
        TrainConfig(samples=3, epochs=2)
    with pytest.raises(ValueError, match=r"^epochs: must be >= 1"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match=r"^patience: must be >= 1"):
        TrainConfig(patience=0)
    with pytest.raises(ValueError, match=r"^early_stopping: expected true, false or null"):
        TrainConfig(early_stopping="yes")
    with pytest.raises(ValueError, match=r"^val_metric: expected 'mrr' or 'recall'"):
        TrainConfig(val_metric="top1")


def test_unset_fields_keep_the_identity_of_older_runs():
    """A config that sets none of the recipe fields hashes as before they existed (old runs
    resume); setting one changes the identity."""
    from molphenix.train import TrainConfig

    base = TrainConfig(steps=5)
    ident = base.identity()
    assert not {"epochs", "early_stopping", "patience", "val_metric"} & set(ident)
    assert TrainConfig(steps=5, patience=3).identity_hash() != base.identity_hash()
    assert TrainConfig(steps=5, early_stopping=False).identity()["early_stopping"] is False


# --------------------------------------------------------------------------- budget resolution


def test_explicit_budgets_keep_their_meaning():
    from molphenix.train import TrainConfig
    from molphenix.train.recipe import resolve_budget

    b = resolve_budget(TrainConfig(steps=37), epoch_size=240.0, batch_size=240)
    assert (b.kind, b.total_steps, b.early_stopping, b.val_metric, b.eval_every) == ("steps", 37, False, "recall", 3)
    b = resolve_budget(TrainConfig(samples=1000), epoch_size=240.0, batch_size=240)
    assert (b.kind, b.samples, b.total_steps, b.early_stopping) == ("samples", 1000, 5, False)
    b = resolve_budget(TrainConfig(epochs=7), epoch_size=240.5, batch_size=240)
    assert (b.kind, b.samples, b.total_steps, b.early_stopping) == ("epochs", math.ceil(7 * 240.5), 8, False)
    # early stopping only when asked for, with the MRR criterion unless another is named
    b = resolve_budget(TrainConfig(steps=37, early_stopping=True), epoch_size=480.0, batch_size=240)
    assert (b.total_steps, b.early_stopping, b.val_metric, b.eval_every) == (37, True, "mrr", 2)
    b = resolve_budget(TrainConfig(steps=37, early_stopping=True, val_metric="recall", eval_every=5, patience=4),
                       epoch_size=480.0, batch_size=240)
    assert (b.val_metric, b.eval_every, b.patience) == ("recall", 5, 4)


def test_default_budget_is_size_aware():
    from molphenix.train import DEFAULT_EPOCHS, DEFAULT_PATIENCE, DEFAULT_SAMPLES, TrainConfig
    from molphenix.train.recipe import resolve_budget

    # a small training set: the epoch cap binds; validation every epoch on the MRR, early stopping
    b = resolve_budget(TrainConfig(), epoch_size=240.0, batch_size=240)
    assert b.kind == "default" and b.epoch_capped and b.early_stopping
    assert b.samples == DEFAULT_EPOCHS * 240 < DEFAULT_SAMPLES and b.total_steps == DEFAULT_EPOCHS
    assert (b.val_metric, b.eval_every, b.patience) == ("mrr", 1, DEFAULT_PATIENCE)
    b = resolve_budget(TrainConfig(), epoch_size=1000.0, batch_size=256)
    assert b.eval_every == 3  # whole batches per epoch
    # a large one (the simulators'): exactly the fixed budget of before
    cfg = TrainConfig()
    b = resolve_budget(cfg, epoch_size=DEFAULT_SAMPLES / DEFAULT_EPOCHS * 4, batch_size=cfg.batch_size)
    assert not b.epoch_capped and not b.early_stopping and b.val_metric == "recall"
    assert b.samples == DEFAULT_SAMPLES and b.total_steps == cfg.total_steps and b.eval_every == cfg.total_steps // 10
    # early_stopping=False turns the small-data stop off (the criterion then is the recall)
    b = resolve_budget(TrainConfig(early_stopping=False), epoch_size=240.0, batch_size=240)
    assert not b.early_stopping and b.val_metric == "recall" and b.total_steps == DEFAULT_EPOCHS


# --------------------------------------------------------------------------- fit


def _log_rows(run):
    with open(run / "train_log.csv") as f:
        return list(csv.DictReader(f))


_ES = dict(steps=80, early_stopping=True, patience=3, eval_every=2, checkpoint_every=0.0)


@pytest.fixture(scope="module")
def stopped_run(tiny_data, tmp_path_factory):
    from molphenix.train import fit

    out = tmp_path_factory.mktemp("es") / "ref"
    msgs = []
    fit(tiny_config(tiny_data, out, **_ES), log=msgs.append)
    return out, msgs


def test_early_stopping_stops_and_records_where(stopped_run):
    run, msgs = stopped_run
    ck = _state(run)
    meta = json.loads((run / "run.json").read_text())
    rec = meta["recipe"]
    assert rec["early_stopping"] and rec["val_metric"] == "mrr" and rec["patience"] == 3 and rec["total_steps"] == 80
    stop = ck["stopped_step"]
    assert stop is not None and ck["finished"] and ck["step"] == stop < 80
    # it stopped exactly `patience` validations after the best one
    assert ck["stale"] == 3 and stop == ck["best_step"] + 3 * 2
    rows = _log_rows(run)
    assert [int(r["step"]) for r in rows] == list(range(1, stop + 1))
    vals = [(int(r["step"]), float(r["val_mrr"])) for r in rows if r["val_mrr"] != ""]
    assert [s for s, _ in vals] == list(range(2, stop + 1, 2))
    best_step, best = max(vals, key=lambda sv: (sv[1], -sv[0]))  # the first of the maxima
    assert best_step == ck["best_step"] and best == pytest.approx(ck["best_metric"], abs=1e-6)
    assert all(float(r["val_recall"]) >= 0 for r in rows if r["val_mrr"] != "")
    best_ck = __import__("molphenix.train.checkpoint", fromlist=["x"]).load_checkpoint(run / "checkpoints" / "best.pt")
    assert best_ck["step"] == ck["best_step"]
    assert any(f"stopped early at step {stop} of 80" in m for m in msgs), msgs


def test_explicit_steps_run_in_full(tiny_data, tmp_path):
    """Without early_stopping=True an explicit --steps budget is taken in full (the recall
    criterion, about 10 validations)."""
    from molphenix.train import fit

    run = fit(tiny_config(tiny_data, tmp_path / "r", steps=20, eval_every=None))
    ck = _state(run)
    assert ck["step"] == 20 and ck["stopped_step"] is None
    rec = json.loads((run / "run.json").read_text())["recipe"]
    assert (rec["kind"], rec["early_stopping"], rec["val_metric"], rec["eval_every"]) == ("steps", False, "recall", 2)


def test_epochs_budget(tiny_data, tmp_path):
    from molphenix.train import fit

    run = fit(tiny_config(tiny_data, tmp_path / "r", steps=None, epochs=2, eval_every=None))
    rec = json.loads((run / "run.json").read_text())["recipe"]
    assert rec["kind"] == "epochs" and rec["samples"] == math.ceil(2 * rec["epoch_size"])
    assert rec["total_steps"] == -(-rec["samples"] // 16) and _state(run)["step"] == rec["total_steps"]


def test_early_stopped_run_resumes_bitwise_after_sigkill(stopped_run, tiny_data, tmp_path):
    from molphenix.train import fit

    ref, _ = stopped_run
    stop = _state(ref)["stopped_step"]
    assert stop >= 8, "the reference run must stop late enough to be killed before it stops"
    cfg = tiny_config(tiny_data, tmp_path / "killed", **_ES)
    kill_at = random.Random().randint(3, stop - 3)
    _kill_run_at(cfg, kill_at)
    killed_at = _state(tmp_path / "killed")["step"]
    assert 0 < killed_at < stop, (kill_at, killed_at, stop)
    fit(cfg)
    a, b = _state(ref), _state(tmp_path / "killed")
    for key in ("model", "loss", "optimizer"):
        _assert_bitwise_equal(a[key], b[key], f"{key} (killed at step {killed_at})")
    for key in ("step", "samples_seen", "best_metric", "best_step", "stale", "stopped_step", "finished"):
        assert a[key] == b[key], (key, a[key], b[key])
    assert [(r["step"], r["loss"], r["val_mrr"]) for r in _log_rows(ref)] == \
        [(r["step"], r["loss"], r["val_mrr"]) for r in _log_rows(tmp_path / "killed")]
