"""molphenix.demo — the end-to-end demo (``molphenix demo``): simulate, train MolPhenix, the
baselines and the ablations with the same budget, fit the ridge anchor, evaluate every split and
write ``report.md`` with tables and figures. See :mod:`molphenix.demo.runner`.

On a bundled real screen (``molphenix demo --data cell-injury``): grouped k-fold
cross-validation of MolPhenix, its soft-label ablation, the baselines and (with the MiniMol
extra) MiniMol variants, with a report of pooled, paired results: :mod:`molphenix.demo.real`.
"""

from .real import MINIMOL_METHODS, REAL_DATASETS, REAL_METHODS, REAL_PROFILES, RealDemoProfile, run_real_demo
from .runner import ABLATIONS, BASELINES, LEARNED, METHODS, PROFILES, DemoProfile, run_demo

__all__ = ["ABLATIONS", "BASELINES", "LEARNED", "METHODS", "MINIMOL_METHODS", "PROFILES", "REAL_DATASETS",
           "REAL_METHODS", "REAL_PROFILES", "DemoProfile", "RealDemoProfile", "run_demo", "run_real_demo"]
