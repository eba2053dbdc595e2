"""Inner-validation sweep of the size-aware recipe (see README.md in this directory).

Every (method, fold, epochs) run trains WITHOUT early stopping, validating every epoch (the
validation molecules inside the training folds; test folds are never evaluated here). An
early-stopped run with patience P is exactly the prefix of such a run up to its stopping point
(stopping does not change the trajectory before it), so every (criterion, patience) candidate
is read off these curves by analyze.py.

Usage: python sweep.py OUT WORKER N_WORKERS
"""
import json
import shutil
import sys
import time
from pathlib import Path

from molphenix import datasets
from molphenix.train import TrainConfig, fit

out, worker, n = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
data = datasets.path("cell-injury")
jobs = [(e, m, k) for e in (50, 100, 200) for m in ("s2l", "clip", "siglip", "cloome") for k in range(5)]
for i, (e, m, k) in enumerate(jobs):
    if i % n != worker:
        continue
    run = Path("/tmp/recipe/sweep") / f"{m}-E{e}" / f"fold-{k}"
    dst = out / f"{m}-E{e}" / f"fold-{k}"
    if (dst / "train_log.csv").is_file():
        continue
    cfg = TrainConfig(data=str(data), out=str(run), loss=m, folds=5, fold=k, split_seed=0, epochs=e,
                      early_stopping=False, eval_every=1, threads=1, progress=False, overwrite=True)
    t0 = time.perf_counter()
    fit(cfg, log=lambda s: print(f"[{m} E{e} fold {k}] {s}", flush=True))
    dst.mkdir(parents=True, exist_ok=True)
    for f in ("train_log.csv", "run.json", "config.json"):
        shutil.copy(run / f, dst / f)
    print(f"[{m} E{e} fold {k}] wall {time.perf_counter() - t0:.1f} s", flush=True)
    shutil.rmtree(run / "checkpoints", ignore_errors=True)
