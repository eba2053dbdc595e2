"""The docs table: pooled unseen-molecule MRR of the best and last checkpoints of the same runs.

Usage: python table.py DIR (results-best.json and results-last.json of one CV)
"""
import json
import sys
from pathlib import Path

d = Path(sys.argv[1])
best = json.loads((d / "results-best.json").read_text())
last = json.loads((d / "results-last.json").read_text())
print("| method | MRR, best checkpoint [95% CI] | MRR, last checkpoint [95% CI] | last inside best's CI | last > chance | "
      "top-1 hits best / last | steps taken (per fold) | best step (per fold) |")
print("|---|---|---|---|---|---|---|---|")
for sub in ("all",):
    for m in last["methods"]:
        if m not in best["methods"]:
            continue
        b, l = best["methods"][m]["pooled"][sub], last["methods"][m]["pooled"][sub]
        lo, hi = b["ci95"]["mrr"]
        inside = "yes" if lo <= l["mrr"] <= hi else "**no**"
        above = "yes" if l["mrr"] > l["chance"]["mrr"] else "**no**"
        folds = last["methods"][m]["per_fold"]
        steps = "/".join(str(f.get("samples_seen", 0) // max(1, f.get("batch_size") or 1)) if f.get("total_steps") else "-"
                         for f in folds)
        bsteps = "/".join(str(f.get("best_step")) if f.get("best_step") is not None else "-" for f in folds)
        print(f"| {m} | {b['mrr']:.3f} [{lo:.3f}, {hi:.3f}] | {l['mrr']:.3f} [{l['ci95']['mrr'][0]:.3f}, "
              f"{l['ci95']['mrr'][1]:.3f}] | {inside} | {above} | {b['hits']['rank1']} / {l['hits']['rank1']} | "
              f"{steps} | {bsteps} |")
    c = last["methods"][next(iter(last["methods"]))]["pooled"][sub]
    print(f"| *chance* | *{c['chance']['mrr']:.3f}* | *{c['chance']['mrr']:.3f}* | | | *{c['hits_chance']['rank1']:.1f}* | | |")
    print(f"\n{c['n_queries']} queries ({c['n_clusters']} molecules), all queries of the unseen-molecule folds; "
          f"cluster bootstrap over molecules, {best['n_bootstrap']} resamples.")
