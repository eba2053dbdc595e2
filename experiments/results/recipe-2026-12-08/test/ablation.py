"""Add the soft-label ablation (s2l with sim_space="none") to the test CV and write both reports
(best and last checkpoints) with every method."""
import sys

from molphenix import datasets
from molphenix.experiment import run_cv

out = sys.argv[1]
methods = {m: None for m in ("s2l", "clip", "siglip", "cloome", "ridge")}
methods["s2l-nosoft"] = {"loss": "s2l", "loss_kwargs": {"sim_space": "none"}}
for ck in ("last", "best"):
    run_cv(datasets.path("cell-injury"), out, methods, folds=5, checkpoint=ck, train={"threads": 2, "progress": False})
