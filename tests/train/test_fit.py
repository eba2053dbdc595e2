"""fit(): run layout, resume semantics, clear errors."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from _train_utils import tiny_config


@pytest.fixture(scope="module")
def finished_run(tiny_data, tmp_path_factory):
    from molphenix.train import fit

    out = tmp_path_factory.mktemp("run") / "r"
    msgs = []
    run = fit(tiny_config(tiny_data, out), log=msgs.append)
    return run, msgs


def test_layout(finished_run):
    from molphenix.train import LOG_COLUMNS, TrainConfig
    from molphenix.train.checkpoint import load_checkpoint

    run, msgs = finished_run
    for f in ("config.json", "dataset.json", "versions.json", "run.json", "split.parquet",
              "train_log.csv", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / f).is_file(), f
    cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    assert cfg.steps == 12
    fp = json.loads((run / "dataset.json").read_text())
    assert len(fp["sha256"]) == 64 and fp["n_wells"] > 0
    v = json.loads((run / "versions.json").read_text())
    assert {"python", "torch", "molphenix", "build_info"} <= set(v)
    meta = json.loads((run / "run.json").read_text())
    assert meta["sigma"] > 0 and meta["input_scale"] > 0  # s2l with sim_space="input"
    assert meta["model_config"]["phenomic_dim"] == 16
    with open(run / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == LOG_COLUMNS
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    assert rows[5]["val_recall"] != "" and rows[-1]["val_recall"] != ""
    # the soft-positive fraction (a second similarity pass) every STATS_EVERY steps only
    from molphenix.train.steps import STATS_EVERY

    logged = [int(r["step"]) for r in rows if r["soft_pos_frac"] != ""]
    assert logged == list(range(1, 13, STATS_EVERY)) and all(
        0 <= float(r["soft_pos_frac"]) <= 1 for r in rows if r["soft_pos_frac"] != "")
    # checkpoints load with weights_only=True (load_checkpoint enforces it)
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ck["finished"] and ck["step"] == 12 and ck["samples_seen"] == 12 * 16
    assert isinstance(torch.load(run / "checkpoints" / "best.pt", weights_only=True)["model"], dict)
    assert any("finished" in m for m in msgs)


def test_finished_run_says_so(finished_run):
    from molphenix.train import fit

    run, _ = finished_run
    cfg = json.loads((run / "config.json").read_text())
    before = (run / "checkpoints" / "last.pt").stat().st_mtime_ns
    msgs = []
    assert fit(cfg, log=msgs.append, progress=True) == run  # a runtime key may differ
    assert any("already finished" in m for m in msgs)
    assert (run / "checkpoints" / "last.pt").stat().st_mtime_ns == before


def test_config_mismatch_names_the_field(finished_run, tiny_data):
    from molphenix.train import fit

    run, _ = finished_run
    with pytest.raises(ValueError, match=r"lr: 0\.002"):
        fit(tiny_config(tiny_data, run, lr=0.002))


def test_dataset_mismatch(finished_run, tiny_data, tmp_path):
    from molphenix.data import load_dataset, save_dataset
    from molphenix.train import fit

    run, _ = finished_run
    ds = load_dataset(tiny_data)
    x = ds.phenomic_matrix().copy()
    x[3, 2] += 1.0
    import pyarrow as pa

    col = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
    other = ds.__class__(wells=ds.wells.set_column(ds.wells.schema.get_field_index("phenomic"), "phenomic", col),
                         molecules=ds.molecules, truth=ds.truth, calls=ds.calls, meta=ds.meta)
    save_dataset(other, tmp_path / "ds2")
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    with pytest.raises(ValueError, match="dataset differs"):
        fit(tiny_config(tmp_path / "ds2", copy))


def test_overwrite_starts_over(finished_run, tmp_path, tiny_data):
    from molphenix.train import fit

    run, _ = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    msgs = []
    fit(tiny_config(tiny_data, copy, lr=0.002, overwrite=True), log=msgs.append)
    assert not any("already finished" in m for m in msgs)
    assert json.loads((copy / "config.json").read_text())["lr"] == 0.002


def test_refuses_foreign_directory(tmp_path, tiny_data):
    from molphenix.train import fit

    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="out: .* holds no molphenix run"):
        fit(tiny_config(tiny_data, tmp_path / "x", overwrite=True))
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["notes.txt"]  # untouched


def test_nonfinite_names_step(tiny_data, tmp_path):
    from molphenix.train import fit

    with pytest.raises(ValueError, match=r"non-finite .* at step \d+"):
        fit(tiny_config(tiny_data, tmp_path / "r", lr=1e30, grad_clip=None, warmup=0.0))


def test_empty_training_split(tiny_data, tmp_path):
    import pyarrow as pa
    import pyarrow.compute as pc

    from molphenix.data import load_dataset, save_dataset
    from molphenix.train import fit

    ds = load_dataset(tiny_data)
    w = ds.wells
    # every treated well goes to the second library; the primary one keeps only controls
    dcol = pc.if_else(w.column("is_control"), w.column("dataset"), pa.scalar("lib_b"))
    w = w.set_column(w.schema.get_field_index("dataset"), "dataset", dcol)
    meta = dict(ds.meta, primary_dataset="lib_a")
    save_dataset(ds.__class__(wells=w, molecules=ds.molecules, calls=ds.calls, meta=meta), tmp_path / "ds")
    with pytest.raises(ValueError, match="training split is empty"):
        fit(tiny_config(tmp_path / "ds", tmp_path / "r"))


def test_batch_without_controls_is_named(tiny_data, tmp_path):
    import pyarrow.compute as pc

    from molphenix.data import load_dataset, save_dataset
    from molphenix.train import fit

    ds = load_dataset(tiny_data)
    w = ds.wells
    b0 = sorted(set(w.column("batch").to_pylist()))[0]
    keep = pc.invert(pc.and_(pc.equal(w.column("batch"), b0), w.column("is_control")))
    save_dataset(ds.__class__(wells=w.filter(keep), molecules=ds.molecules, calls=ds.calls, meta=ds.meta),
                 tmp_path / "ds")
    with pytest.raises(ValueError, match=f"batch '{b0}' has no control wells"):
        fit(tiny_config(tmp_path / "ds", tmp_path / "r"))


@pytest.mark.parametrize("field,value,pattern", [
    ("loss", "triplet", "unknown loss 'triplet'"),
    ("model", "no-such-model", "unknown model"),
])
def test_unknown_names(tiny_data, tmp_path, field, value, pattern):
    from molphenix.train import fit

    with pytest.raises(ValueError, match=pattern):
        fit(tiny_config(tiny_data, tmp_path / "r", **{field: value}))


def test_calls_computed_when_missing(tiny_data, tmp_path):
    from molphenix.data import load_dataset, save_dataset
    from molphenix.train import fit

    ds = load_dataset(tiny_data)
    save_dataset(ds.__class__(wells=ds.wells, molecules=ds.molecules, meta=ds.meta), tmp_path / "ds")
    run = fit(tiny_config(tmp_path / "ds", tmp_path / "r", steps=2, loss="siglip"))
    assert (run / "calls.parquet").is_file()
    assert json.loads((run / "run.json").read_text())["sigma"] is None  # siglip takes no u


def test_other_losses_train(tiny_data, tmp_path):
    from molphenix.train import fit

    for loss in ("clip", "cloome", "cwcl"):
        run = fit(tiny_config(tiny_data, tmp_path / loss, steps=2, loss=loss, eval_every=0))
        assert (run / "checkpoints" / "last.pt").is_file()


def test_progress_bar_and_threads_restored(tiny_data, tmp_path, capsys):
    from molphenix.train import fit

    before = torch.get_num_threads()
    fit(tiny_config(tiny_data, tmp_path / "r", steps=3, progress=True, threads=1, eval_every=0))
    assert torch.get_num_threads() == before
    assert "train" in capsys.readouterr().err  # the tqdm bar went to stderr


def test_best_falls_back_to_last_before_validation(tiny_data, tmp_path):
    from molphenix.train import fit, load_run

    run = fit(tiny_config(tiny_data, tmp_path / "r", steps=3, eval_every=0))
    (run / "checkpoints" / "best.pt").unlink()
    with pytest.warns(UserWarning, match="last.pt"):
        tm = load_run(run)
    assert tm.step == 3


def test_start_killed_before_first_checkpoint_restarts(tiny_data, tmp_path):
    from molphenix.train import fit

    cfg = tiny_config(tiny_data, tmp_path / "r", steps=3, eval_every=0)
    run = fit(cfg)
    first = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    # what a run killed during setup or its first steps leaves: config and setup files, no checkpoint
    for f in ("checkpoints/last.pt", "checkpoints/best.pt", "run.json"):
        (run / f).unlink()
    (run / "train_log.csv").write_text("step,epoch\n1,0\n2,")
    msgs = []
    fit(cfg, log=msgs.append)
    assert not any("resuming" in m for m in msgs)
    again = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(first[k], again[k]) for k in first)  # same seed, same result
    with open(run / "train_log.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2, 3]


def test_a_run_in_use_is_refused(tiny_data, tmp_path):
    import fcntl

    from molphenix.train import fit

    run = tmp_path / "r"
    run.mkdir()
    with open(run / ".lock", "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # another trainer holds it
        with pytest.raises(ValueError, match="being trained by another process"):
            fit(tiny_config(tiny_data, run, steps=2))
    fit(tiny_config(tiny_data, run, steps=2, eval_every=0))  # free again
    assert (run / "checkpoints" / "last.pt").is_file()


def _budget(run):
    meta = json.loads((run / "run.json").read_text())
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    with open(run / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return meta, ck, rows


def test_equal_budget_when_the_batch_shrinks(tiny_data, tmp_path):
    """A batch larger than the undersampled epoch shrinks, and the step count grows so that the
    run still sees the configured samples (as CLOOME's 512 on a small dataset)."""
    from molphenix.train import fit

    msgs = []
    samples = 1000
    run = fit(tiny_config(tiny_data, tmp_path / "a", steps=None, samples=samples, batch_size=512,
                          inactive_rate=0.1, eval_every=0), log=msgs.append)
    meta, ck, rows = _budget(run)
    bs = meta["batch_size"]
    assert bs < 512
    assert meta["total_steps"] == ck["step"] == len(rows) == -(-samples // bs)  # not ceil(1000 / 512) = 2
    assert ck["samples_seen"] == int(rows[-1]["samples_seen"]) == meta["total_steps"] * bs
    assert samples <= ck["samples_seen"] < samples + bs  # whole batches: less than one batch over
    assert any(f"using batches of {bs} and {meta['total_steps']} steps, so the run still sees its {samples}"
               in m for m in msgs)
    msgs = []
    fit(tiny_config(tiny_data, tmp_path / "a", steps=None, samples=samples, batch_size=512, inactive_rate=0.1,
                    eval_every=0), log=msgs.append)
    assert f"already finished ({meta['total_steps']} of {meta['total_steps']} steps)" in msgs[-1]
    # a budget that is a whole number of the smaller batches is seen exactly
    run = fit(tiny_config(tiny_data, tmp_path / "b", steps=None, samples=7 * bs, batch_size=512,
                          inactive_rate=0.1, eval_every=0), log=lambda m: None)
    meta, ck, _ = _budget(run)
    assert meta["batch_size"] == bs and ck["samples_seen"] == 7 * bs and ck["step"] == 7
    # --steps: the steps given are kept (the samples follow from the smaller batch)
    msgs = []
    run = fit(tiny_config(tiny_data, tmp_path / "c", steps=5, batch_size=512, inactive_rate=0.1, eval_every=0),
              log=msgs.append)
    meta, ck, _ = _budget(run)
    assert ck["step"] == meta["total_steps"] == 5 and ck["samples_seen"] == 5 * bs
    assert any(f"for the 5 steps given ({5 * bs} samples)" in m for m in msgs)
