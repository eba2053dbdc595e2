"""Paired MiniMol vs Morgan on a real-data demo run (pooled ranks of its grouped folds).

Usage: python experiments/minimol_vs_morgan_real.py DEMO_DIR/cv   (DEMO_DIR from `molphenix demo --data cell-injury`
with the minimol extra installed). Cluster bootstrap over molecules, 2,000 resamples, seed 0.
"""
import sys
from molphenix.eval import read_query_ranks
from molphenix.eval.compare import paired_compare
cv = sys.argv[1]
for a, b in (("molphenix-minimol", "molphenix"), ("ridge-minimol", "ridge")):
    ra, rb = read_query_ranks(f"{cv}/{a}/ranks.parquet"), read_query_ranks(f"{cv}/{b}/ranks.parquet")
    for subset in ("all", "active"):
        r = paired_compare(ra, rb, subset=subset, names=(a, b), n_bootstrap=2000, seed=0)
        m = r["metrics"]
        print(f"{a} vs {b}, {subset} ({r['n_queries']} queries, {r['n_clusters']} molecules): "
              + "; ".join(f"{k} {v['a']:.3f} vs {v['b']:.3f}, A-B {v['diff']:+.3f} [{v['diff_ci95'][0]:+.3f}, {v['diff_ci95'][1]:+.3f}]"
                          + (f", A/B {v['ratio']:.2f} [{v['ratio_ci95'][0]:.2f}, {v['ratio_ci95'][1]:.2f}]" if v.get('ratio') and None not in v['ratio_ci95'] else "")
                          for k, v in m.items() if k in ("mrr", "rank1", "mean_rank")))
