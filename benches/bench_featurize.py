"""Featurizer throughput (molecules/s) on real molecules from RDKit's bundled test sets.

    python benches/bench_featurize.py           # 2000 molecules
    python benches/bench_featurize.py --quick   # 300 molecules

Providers: morgan (r=2, 2048 counts), maccs, rdkit2d (all 2D descriptors), graph (atom/bond
features) and morgan_cached (a warm Parquet cache lookup). Rows go to the machine's table (raw log
beside it) through the shared harness; no memory is measured.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import open_run, parser, time_provider  # noqa: E402

from molphenix.data import featurize as F  # noqa: E402
from molphenix.data.simulator import LIBRARY_A, _clean, load_library_smiles  # noqa: E402


def molecules(n: int) -> list[str]:
    out = []
    for _rid, smi in load_library_smiles(LIBRARY_A):
        res = _clean(smi)
        if res is not None:
            out.append(res[0])
        if len(out) == n:
            break
    return out


def main(argv=None) -> int:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--molecules", type=int, default=None)
    a = p.parse_args(argv)
    a.device = "cpu"
    n = a.molecules or (300 if a.quick else 2000)
    smiles = molecules(n)
    case = {"molecules": len(smiles)}
    feats = {
        "morgan": F.MorganCounts(radius=2, n_bits=2048),
        "maccs": F.MACCSKeys(),
        "rdkit2d": F.RDKitDescriptors(),
    }
    g = F.GraphFeaturizer()

    def graphs():
        return F.collate_graphs(g(smiles))

    # correctness before timing
    for name, f in feats.items():
        x = f(smiles)
        if not (x.shape == (len(smiles), f.dim) and np.isfinite(x).all()):
            print(f"CHECK FAILED: featurizer {name} gave shape {x.shape} or non-finite values")
            return 1
    if graphs().num_graphs != len(smiles):
        print("CHECK FAILED: graph featurizer lost molecules")
        return 1
    run = open_run(a, title="bench_featurize", matmul=False)
    with run:
        kw = dict(work=len(smiles), unit="mol/s", warmup=1, repeats=a.repeats)
        for name, f in feats.items():
            time_provider(run, "featurize", name, case, lambda f=f: f(smiles), **kw)
        time_provider(run, "featurize", "graph", case, graphs, **kw)
        tmp = Path(tempfile.mkdtemp(prefix="bench-feat-"))
        try:
            F.featurize(smiles, feats["morgan"], cache_dir=tmp)  # fill the cache
            time_provider(run, "featurize", "morgan_cached", case,
                          lambda: F.featurize(smiles, feats["morgan"], cache_dir=tmp), **kw)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
