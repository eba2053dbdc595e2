"""Benchmark the simulator, dataset loading and activity calling at 10,000 molecules.

    python benches/bench_simulate.py            # 10k molecules (~133k wells), E = 384
    python benches/bench_simulate.py --quick    # 1k molecules

Rows (appended to benches/results/<machine>.csv through the shared harness):
  simulate_cli   the whole default pipeline in a fresh process, exactly as
                 ``python -m molphenix.data.simulate --out DIR --molecules N`` runs it
                 (generation + activity calling); peak MB = that process's peak RSS
  simulate       generation + streaming Parquet write (no activity calling)
  load_dataset   memory-mapped, streamed read + validation
  call_activity  p-values for every (molecule, concentration)
``peak MB`` is the harness's peak RSS beyond the RSS before the call; the absolute peak RSS
of the process is printed at the end (``ru_maxrss``) and put in the notes.
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

from _harness import finish, measure, parser, set_threads  # noqa: E402

from molphenix.data import call_activity, load_dataset, simulate  # noqa: E402


def main(argv=None) -> int:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--molecules", type=int, default=None, help="default 10000 (1000 with --quick)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    threads = set_threads(a.threads)
    n_mol = a.molecules or (1000 if a.quick else 10000)
    tmp = Path(tempfile.mkdtemp(prefix="bench-sim-"))
    out = tmp / "ds"
    rows = []
    try:
        def run_sim():
            return simulate(out, n_molecules=n_mol, seed=a.seed, call_activity=False, return_dataset=False, overwrite=True)

        # correctness before timing: the run produces a valid dataset of the expected size
        run_sim()
        meta = json.loads((out / "meta.json").read_text())
        n_wells = meta["counts"]["wells"]
        ds = load_dataset(out, check_smiles=False)
        assert ds.n_wells == n_wells and ds.molecules.num_rows == n_mol
        del ds
        case = {"molecules": n_mol, "wells": n_wells, "E": meta["embedding_dim"]}
        # the CLI path in a fresh process: wall time and that process's peak RSS
        from molphenix.benchmark import Measurement

        cli = Measurement(op="simulate_cli", provider="numpy", case=case, dtype="float32", threads=threads,
                          device="cpu", work=n_wells, work_unit="wells/s")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1] / "python"), os.environ.get("PYTHONPATH", "")]))
        for _ in range(a.repeats):
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "molphenix.data.simulate", "--out", str(tmp / "cli"), "--molecules",
                            str(n_mol), "--seed", str(a.seed), "--overwrite"], check=True, env=env, stdout=subprocess.DEVNULL)
            cli.times.append(time.perf_counter() - t0)
            cli.peak_mem_bytes = max(cli.peak_mem_bytes or 0, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, before * 1024)
        rows.append(cli)
        print(f"  simulate_cli           numpy         {cli.median:9.4f} s  peak {cli.peak_mem_bytes / 2**20:8.1f} MB", flush=True)
        rows.append(measure("simulate", "numpy", case, run_sim, dtype="float32", threads=threads,
                            work=n_wells, work_unit="wells/s", warmup=0, repeats=a.repeats))
        rows.append(measure("load_dataset", "pyarrow", case, lambda: load_dataset(out, check_smiles=False),
                            dtype="float32", threads=threads, work=n_wells, work_unit="wells/s",
                            warmup=1, repeats=a.repeats))
        ds = load_dataset(out, check_smiles=False)
        rows.append(measure("call_activity", "numpy", case, lambda: call_activity(ds), dtype="float32",
                            threads=threads, work=n_wells, work_unit="wells/s", warmup=0,
                            repeats=a.repeats))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    load = os.getloadavg()[0]
    for r in rows:
        r.notes = f"bench process peak RSS {peak_mb:.0f} MB; load average {load:.1f} on {os.cpu_count()} cores"
    finish(rows, out=a.out)
    by = {r.op: r for r in rows}
    print("\n| molecules | wells | CLI wall s (gen + calls) | CLI peak RSS MB | generation s | load s | call_activity s | load avg |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {n_mol} | {n_wells} | {by['simulate_cli'].median:.1f} | {by['simulate_cli'].peak_mem_bytes / 2**20:.0f} | "
          f"{by['simulate'].median:.1f} | {by['load_dataset'].median:.1f} | {by['call_activity'].median:.1f} | {load:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
