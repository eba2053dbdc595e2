"""Paired comparison of two methods' zero-shot recall on the same queries (ratio with a bootstrap interval).

Reads the per-query ranks files (``RUN/ranks.parquet`` written by ``evaluate_run``) of runs
trained on the same datasets, and reports for one split and query subset the top-K% recall of
each method, the difference and the ratio of method A to method B with paired bootstrap 95%
intervals (queries resampled together, so the shared query difficulty cancels), per dataset and
pooled over datasets (resampling within each dataset).

Usage:
    python experiments/paired_compare.py --runs NAME=DIR [--runs NAME=DIR ...] --a s2l --b clip \
        [--split unseen_molecules] [--subset active] [--fraction 0.01] [--out FILE.json]

``DIR`` holds one run directory per method (``DIR/<method>/ranks.parquet`` and ``metrics.json``),
the layout of ``experiments/quality_check.py``'s ``--work``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq


def _hits(run: Path, split: str, subset: str, fraction: float):
    metrics = json.loads((run / "metrics.json").read_text())
    n = int(metrics[split]["n_candidates"])
    k = max(1, math.ceil(fraction * n - 1e-9))
    t = pq.read_table(run / "ranks.parquet")
    t = t.filter(pc.equal(t["split"], split))
    if subset == "active":
        t = t.filter(t["active"])
    keys = [f"{m}|{c!r}" for m, c in zip(t["molecule"].to_pylist(), t["concentration"].to_pylist())]
    hits = np.asarray(t["rank"].to_numpy() < k, dtype=np.float64)  # ranks are 0-based
    order = np.argsort(keys)
    return [keys[i] for i in order], hits[order], k / n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", action="append", required=True, help="NAME=DIR")
    ap.add_argument("--a", default="s2l")
    ap.add_argument("--b", default="clip")
    ap.add_argument("--split", default="unseen_molecules")
    ap.add_argument("--subset", default="active", choices=("active", "all"))
    ap.add_argument("--fraction", type=float, default=0.01)
    ap.add_argument("--n-bootstrap", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    per, pooled_a, pooled_b, boots_a, boots_b = {}, [], [], 0.0, 0.0
    n_total = 0
    for spec in args.runs:
        name, d = spec.split("=", 1)
        ka, ha, chance = _hits(Path(d) / args.a, args.split, args.subset, args.fraction)
        kb, hb, _ = _hits(Path(d) / args.b, args.split, args.subset, args.fraction)
        if ka != kb:
            raise SystemExit(f"{name}: the two runs' {args.split}/{args.subset} queries differ")
        idx = rng.integers(0, len(ha), size=(args.n_bootstrap, len(ha)))
        ba, bb = ha[idx].mean(1), hb[idx].mean(1)
        per[name] = _summary(ha, hb, ba, bb, chance)
        pooled_a.append(ha)
        pooled_b.append(hb)
        boots_a = boots_a + ba * len(ha)
        boots_b = boots_b + bb * len(ha)
        n_total += len(ha)
    ha, hb = np.concatenate(pooled_a), np.concatenate(pooled_b)
    per["pooled"] = _summary(ha, hb, boots_a / n_total, boots_b / n_total, None)
    out = {"a": args.a, "b": args.b, "split": args.split, "subset": args.subset, "fraction": args.fraction,
           "n_bootstrap": args.n_bootstrap, "datasets": per}
    for name, s in per.items():
        print(f"{name:>18}: n={s['n_queries']:4d} {args.a} {s['a']:.3f} {args.b} {s['b']:.3f} "
              f"diff {s['diff']:+.3f} [{s['diff_ci95'][0]:+.3f}, {s['diff_ci95'][1]:+.3f}] "
              f"ratio {s['ratio']:.2f} [{s['ratio_ci95'][0]:.2f}, {s['ratio_ci95'][1]:.2f}]"
              + (f" {args.a}/chance {s['a_over_chance']:.1f}x" if s.get("a_over_chance") else ""))
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    return 0


def _summary(ha, hb, ba, bb, chance):
    diff = ba - bb
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(bb > 0, ba / np.where(bb > 0, bb, 1.0), np.inf)
    s = {"n_queries": int(len(ha)), "a": float(ha.mean()), "b": float(hb.mean()),
         "diff": float(ha.mean() - hb.mean()),
         "diff_ci95": [float(np.quantile(diff, 0.025)), float(np.quantile(diff, 0.975))],
         "ratio": float(ha.mean() / hb.mean()) if hb.mean() > 0 else float("inf"),
         "ratio_ci95": [float(np.quantile(ratio, q, method="inverted_cdf")) for q in (0.025, 0.975)],
         "p_a_below_0.9b": float(np.mean(ba < 0.9 * bb))}
    if chance:
        s["chance"] = chance
        s["a_over_chance"] = float(ha.mean() / chance)
    return s


if __name__ == "__main__":
    raise SystemExit(main())
