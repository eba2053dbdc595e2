"""Benchmark the simulator, dataset loading and activity calling at 10,000 molecules.

    python benches/bench_simulate.py            # 10k molecules (~133k wells), E = 384
    python benches/bench_simulate.py --quick    # 1k molecules

Rows (the shared harness: appended to the machine's table, raw log beside it):
  simulate_cli   the whole default pipeline in a fresh process, exactly as
                 ``python -m molphenix simulate --out DIR --molecules N`` runs it
                 (generation + activity calling); peak MB = that process's peak RSS
  simulate       generation + streaming Parquet write (no activity calling)
  load_dataset   memory-mapped, streamed read + validation
  call_activity  p-values for every (molecule, concentration)
Peak memory: for ``simulate_cli`` the fresh process's peak RSS (``ru_maxrss`` of the child, an
absolute figure, stated in the row's ``mem_counted``); the in-process rows carry none.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Row, open_run, parser, time_provider  # noqa: E402

from molphenix.data import call_activity, load_dataset, simulate  # noqa: E402


def main(argv=None) -> int:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--molecules", type=int, default=None, help="default 10000 (1000 with --quick)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    a.device = "cpu"
    run = open_run(a, title="bench_simulate", matmul=False)
    n_mol = a.molecules or (1000 if a.quick else 10000)
    tmp = Path(tempfile.mkdtemp(prefix="bench-sim-"))
    out = tmp / "ds"
    with run:
        try:
            def run_sim():
                return simulate(out, n_molecules=n_mol, seed=a.seed, call_activity=False, return_dataset=False,
                                overwrite=True)

            # correctness before timing: the run produces a valid dataset of the expected size
            run_sim()
            meta = json.loads((out / "meta.json").read_text())
            n_wells = meta["counts"]["wells"]
            ds = load_dataset(out, check_smiles=False)
            if not (ds.n_wells == n_wells and ds.molecules.num_rows == n_mol):
                print("CHECK FAILED: the simulated dataset has the wrong size")
                return 1
            del ds
            case = {"molecules": n_mol, "wells": n_wells, "E": meta["embedding_dim"]}
            # the CLI path in a fresh process: wall time and that process's peak RSS
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(
                [str(Path(__file__).resolve().parents[1] / "python"), os.environ.get("PYTHONPATH", "")]))
            times, peak = [], 0
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "molphenix", "simulate", "--out", str(tmp / "cli"),
                                "--molecules", str(n_mol), "--seed", str(a.seed), "--overwrite", "--no-progress"],
                               check=True, env=env,
                               stdout=subprocess.DEVNULL)
                times.append(time.perf_counter() - t0)
                peak = max(peak, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
            cli = Row(op="simulate_cli", provider="numpy", case=case, dtype="float32", device="cpu",
                      threads=run.threads, warmup=0, times=times, work=n_wells, unit="wells/s", peak_mem_bytes=peak,
                      mem_counted="peak RSS of the CLI process (absolute, ru_maxrss of the children)")
            run.add(cli)
            print(f"  simulate_cli           numpy          median {cli.median:9.4f} s  peak {peak / 2**20:8.1f} MB",
                  flush=True)
            sim = time_provider(run, "simulate", "numpy", case, run_sim, work=n_wells, unit="wells/s", warmup=0,
                                repeats=a.repeats)
            ld = time_provider(run, "load_dataset", "pyarrow", case, lambda: load_dataset(out, check_smiles=False),
                               work=n_wells, unit="wells/s", warmup=1, repeats=a.repeats)
            ds = load_dataset(out, check_smiles=False)
            ca = time_provider(run, "call_activity", "numpy", case, lambda: call_activity(ds), work=n_wells,
                               unit="wells/s", warmup=0, repeats=a.repeats)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print("\n| molecules | wells | CLI wall s (gen + calls) | CLI peak RSS MB | generation s | load s | "
              "call_activity s |")
        print("|---|---|---|---|---|---|---|")
        print(f"| {n_mol} | {n_wells} | {cli.median:.1f} | {peak / 2**20:.0f} | {sim.median:.1f} | {ld.median:.1f} | "
              f"{ca.median:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
