"""How many active unseen-molecule queries a simulation gives (sizing a quality check; no training).

For each (molecules, seed), simulates with the current defaults (plus ``--sim`` overrides), makes
the default split (``make_splits(ds, seed=0)``, as ``molphenix train`` does) and counts the
(molecule, concentration) queries of the ``unseen_molecules`` split that are called active
(p < 0.1): the queries a quality check's top-1% recall is measured on. Reads no model output.

Usage:
    OMP_NUM_THREADS=1 python experiments/quality_queries.py --molecules 1000,2000 --seeds 100,101 \
        [--sim JSON] [--out FILE.log]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from molphenix.data import make_splits, simulate
from molphenix.data.simulator import SIMULATOR_VERSION


def count(ds) -> dict:
    sp = make_splits(ds, seed=0)
    rows = sp.indices("unseen_molecules")
    mol = ds.wells.column("molecule_id").take(rows).to_pylist()
    conc = ds.wells.column("concentration_um").take(rows).to_numpy(zero_copy_only=False)
    keys = sorted(set(zip(mol, conc.tolist())))
    c = ds.calls
    p = dict(zip(zip(c.column("molecule_id").to_pylist(), c.column("concentration_um").to_numpy().tolist()),
                 c.column("p_value").to_numpy().tolist()))
    act = np.array([p.get(k, 1.0) < 0.1 for k in keys])
    t = ds.truth
    truth = dict(zip(zip(t.column("molecule_id").to_pylist(), t.column("concentration_um").to_numpy().tolist()),
                     t.column("active").to_pylist()))
    true_act = np.array([bool(truth[k]) for k in keys])
    return {"unseen_molecule_queries": len(keys), "active_queries": int(act.sum()),
            "active_and_truly_active": int((act & true_act).sum()), "molecules": len({k[0] for k in keys})}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--molecules", default="1000,2000")
    ap.add_argument("--seeds", default="100,101")
    ap.add_argument("--sim", default="{}")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    overrides = json.loads(args.sim)
    log = open(args.out, "a") if args.out else None

    def say(msg: str) -> None:
        print(msg, flush=True)
        if log:
            log.write(msg + "\n")
            log.flush()

    say(f"# python experiments/quality_queries.py --molecules {args.molecules} --seeds {args.seeds} --sim '{args.sim}'"
        f" (simulator {SIMULATOR_VERSION})")
    for m in (int(v) for v in args.molecules.split(",")):
        for seed in (int(v) for v in args.seeds.split(",")):
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="molphenix-q-") as tmp:
                ds = simulate(Path(tmp) / "d", n_molecules=m, seed=seed, progress=False, **overrides)
                r = count(ds)
            say(f"molecules {m} seed {seed}: {json.dumps(r)} ({time.perf_counter() - t0:.0f} s to simulate and call)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
