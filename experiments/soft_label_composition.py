"""Which pairs the S2L soft-label window selects (docs/design/training.md, "The soft-label scale").

Draws every training sample once (no undersampling, replicate-averaged, control-centred), takes
200,000 random pairs, and prints squared-distance quantiles by activity pair type and, for a
target fraction f of all pairs inside the window (sigma fitted as fit_similarity_scale does),
the fraction of inactive-inactive (ii), active-active (aa) and active-inactive (ai) pairs inside.

Usage: python experiments/soft_label_composition.py DATA_DIR
"""
import sys

import numpy as np

from molphenix.data import ReplicateSampler, load_dataset, make_splits

ds = load_dataset(sys.argv[1])
sp = make_splits(ds, seed=0)
print(sp.counts())
s = ReplicateSampler(ds, wells=sp.mask("train"), inactive_rate=1.0, batch_size=100000, seed=0)
b = next(iter(s))
x = b.phenomic.astype(np.float64); act = b.active
print("samples", len(x), "active frac", act.mean())
rng = np.random.default_rng(0)
i = rng.integers(0, len(x), 200000); j = rng.integers(0, len(x), 200000); m = i != j
d2 = ((x[i] - x[j]) ** 2).sum(1)[m]; ai, aj = act[i][m], act[j][m]
w = 0.3 * np.tan(np.pi / 16)
for name, sel in [("all", np.ones_like(ai)), ("ii", ~ai & ~aj), ("aa", ai & aj), ("ai", ai ^ aj)]:
    print(name, "share", sel.mean().round(3), "d2 quantiles 0.1/1/5/20/50%", np.quantile(d2[sel], [0.001, 0.01, 0.05, 0.2, 0.5]).round(2))
for f in [0.005, 0.02, 0.08]:
    sig2 = np.quantile(d2, f) / w
    print(f"f={f}: sigma={np.sqrt(sig2):.2f} inside: ii={np.mean(d2[~ai & ~aj] / sig2 <= w):.3f} "
          f"aa={np.mean(d2[ai & aj] / sig2 <= w):.3f} ai={np.mean(d2[ai ^ aj] / sig2 <= w):.3f}")
