"""molphenix.demo — the end-to-end demo (``molphenix demo``): simulate, train MolPhenix, the
baselines and the ablations with the same budget, fit the ridge anchor, evaluate every split and
write ``report.md`` with tables and figures. See :mod:`molphenix.demo.runner`.
"""

from .runner import ABLATIONS, BASELINES, LEARNED, METHODS, PROFILES, DemoProfile, run_demo

__all__ = ["ABLATIONS", "BASELINES", "LEARNED", "METHODS", "PROFILES", "DemoProfile", "run_demo"]
