"""Read the inner-validation sweep (sweep.py) and score every recipe candidate.

A candidate is (epochs E, criterion c in {mrr, recall}, patience P in validations; P = inf: no
early stopping). Its run is the prefix of the sweep's E-epoch run up to the step where
early stopping with (c, P) stops (validation every epoch, as the recipe does). For each
(method, fold) we read the INNER validation MRR (all validation queries) at the stopping point
(the `last` checkpoint) and at the best-by-c step (the `best` checkpoint), and the steps taken.
Scores are means over the 5 folds (each fold's validation set: ~10% of the molecules, drawn from
the training folds; the test folds are never evaluated here).

Usage: python analyze.py SWEEP_DIR > candidates.md
"""
import csv
import json
import math
import sys
from pathlib import Path

root = Path(sys.argv[1])
METHODS = ("s2l", "clip", "siglip", "cloome")
EPOCHS = (50, 100, 250)
PATIENCE = (5, 10, 20, 40, math.inf)


def curve(path):
    with open(path) as f:
        rows = [r for r in csv.DictReader(f) if r["val_mrr"] != ""]
    return [(int(r["step"]), float(r["val_mrr"]), float(r["val_recall"])) for r in rows]


def simulate(cv, crit, patience, complete):
    """(stop index, best index) of early stopping on the curve; None when the curve (an
    early-stopped sweep run, ``complete`` False) ends before this candidate would stop."""
    k = 1 if crit == "mrr" else 2
    best_i, stale = None, 0
    for i, row in enumerate(cv):
        if best_i is None or row[k] > cv[best_i][k]:
            best_i, stale = i, 0
        else:
            stale += 1
        if stale >= patience and i < len(cv) - 1:
            return i, best_i
    if not complete:
        return None
    return len(cv) - 1, best_i


def mean(xs):
    return sum(xs) / len(xs)


print("| epochs | criterion | patience | method | val MRR last | val MRR best | best - last | steps (mean) |")
print("|---|---|---|---|---|---|---|---|")
summary = []
for e in EPOCHS:
    for crit in ("mrr", "recall"):
        for p in PATIENCE:
            per_method = {}
            for m in METHODS:
                lasts, bests, steps = [], [], []
                for k in range(5):
                    path = root / f"{m}-E{e}" / f"fold-{k}" / "train_log.csv"
                    if not path.is_file():
                        break
                    cv = curve(path)
                    rec = json.loads((path.parent / "run.json").read_text())["recipe"]
                    complete = cv[-1][0] == rec["total_steps"]
                    sb = simulate(cv, crit, p, complete)
                    if sb is None:
                        break
                    s, b = sb
                    lasts.append(cv[s][1]); bests.append(cv[b][1]); steps.append(cv[s][0])
                if len(lasts) < 5:
                    continue
                per_method[m] = (mean(lasts), mean(bests), mean(steps))
                print(f"| {e} | {crit} | {p} | {m} | {mean(lasts):.4f} | {mean(bests):.4f} | "
                      f"{mean(bests) - mean(lasts):+.4f} | {mean(steps):.0f} |")
            if len(per_method) == len(METHODS):
                summary.append((e, crit, p, mean([v[0] for v in per_method.values()]),
                                mean([v[1] for v in per_method.values()]), per_method["s2l"][0],
                                mean([v[2] for v in per_method.values()])))
print()
print("## Summary: mean over the 4 learned methods (and s2l alone) of the 5-fold mean inner-validation MRR")
print()
print("| epochs | criterion | patience | last (all methods) | best (all methods) | last (s2l) | steps (mean) |")
print("|---|---|---|---|---|---|---|")
for e, crit, p, l, b, s, st in sorted(summary, key=lambda t: -t[3]):
    print(f"| {e} | {crit} | {p} | {l:.4f} | {b:.4f} | {s:.4f} | {st:.0f} |")
