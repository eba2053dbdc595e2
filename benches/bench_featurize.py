"""Featurizer throughput (molecules/s) on real molecules from RDKit's bundled test sets.

    python benches/bench_featurize.py           # 2000 molecules
    python benches/bench_featurize.py --quick   # 300 molecules

Providers: morgan (r=2, 2048 counts), maccs, rdkit2d (all 2D descriptors), graph (atom/bond
features) and morgan_cached (a warm Parquet cache lookup). Rows are appended to
benches/results/<machine>.csv through the shared harness.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import finish, measure, parser, set_threads  # noqa: E402

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
    threads = set_threads(a.threads)
    n = a.molecules or (300 if a.quick else 2000)
    smiles = molecules(n)
    case = {"molecules": len(smiles)}
    rows = []
    feats = {
        "morgan": F.MorganCounts(radius=2, n_bits=2048),
        "maccs": F.MACCSKeys(),
        "rdkit2d": F.RDKitDescriptors(),
    }
    for name, f in feats.items():
        x = f(smiles)  # correctness before timing
        assert x.shape == (len(smiles), f.dim) and np.isfinite(x).all()
        rows.append(measure("featurize", name, case, lambda f=f: f(smiles), dtype="float32", threads=threads,
                            work=len(smiles), work_unit="mol/s", warmup=0, repeats=a.repeats, memory=False))
    g = F.GraphFeaturizer()

    def graphs():
        return F.collate_graphs(g(smiles))

    assert graphs().num_graphs == len(smiles)
    rows.append(measure("featurize", "graph", case, graphs, dtype="float32", threads=threads,
                        work=len(smiles), work_unit="mol/s", warmup=0, repeats=a.repeats, memory=False))
    tmp = Path(tempfile.mkdtemp(prefix="bench-feat-"))
    try:
        F.featurize(smiles, feats["morgan"], cache_dir=tmp)  # fill the cache
        rows.append(measure("featurize", "morgan_cached", case,
                            lambda: F.featurize(smiles, feats["morgan"], cache_dir=tmp), dtype="float32",
                            threads=threads, work=len(smiles), work_unit="mol/s", warmup=1,
                            repeats=a.repeats, memory=False))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    finish(rows, out=a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
