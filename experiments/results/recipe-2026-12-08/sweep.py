"""Inner-validation sweep of the size-aware recipe (see README.md in this directory).

Every (method, fold, epochs) run validates every epoch (the validation molecules inside the
training folds; test folds are never evaluated here). E = 50 and 100 train WITHOUT early
stopping; E = 250 (the smallest round cap that keeps the 1,500-molecule simulator's default at
256,000 samples: its epoch is 1,251 samples, so >= 205 epochs) stops early on the validation
MRR with patience 60 to save time. An early-stopped run with patience P is exactly the prefix of
a longer run up to its stopping point (stopping does not change the trajectory before it), so
every (criterion, patience) candidate whose stop falls inside the logged curve is read off
these curves by analyze.py (exact for the MRR criterion with P <= 60 at E = 250).

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
jobs = [(e, m, k) for e in (250, 100, 50) for m in ("s2l", "clip", "siglip", "cloome") for k in range(5)]
for i, (e, m, k) in enumerate(jobs):
    if i % n != worker:
        continue
    run = Path("/tmp/recipe/sweep") / f"{m}-E{e}" / f"fold-{k}"
    dst = out / f"{m}-E{e}" / f"fold-{k}"
    if (dst / "train_log.csv").is_file():
        continue
    es = dict(early_stopping=True, val_metric="mrr", patience=60) if e == 250 else dict(early_stopping=False)
    cfg = TrainConfig(data=str(data), out=str(run), loss=m, folds=5, fold=k, split_seed=0, epochs=e,
                      eval_every=1, threads=1, progress=False, overwrite=True, **es)
    t0 = time.perf_counter()
    fit(cfg, log=lambda s: print(f"[{m} E{e} fold {k}] {s}", flush=True))
    dst.mkdir(parents=True, exist_ok=True)
    for f in ("train_log.csv", "run.json", "config.json"):
        shutil.copy(run / f, dst / f)
    print(f"[{m} E{e} fold {k}] wall {time.perf_counter() - t0:.1f} s", flush=True)
    shutil.rmtree(run / "checkpoints", ignore_errors=True)
