"""``molphenix embed-library`` with different splits of the cores between featurizing worker
processes and the embedding forward passes, interleaved in one run: how the default was chosen.

Each configuration is one fresh ``embed-library`` command on the same molecules file (end to end:
start-up, read, featurize, embed, write), repeated round robin so that they share the machine's
noise; wall time, molecules/s and peak memory summed over the command's process tree.

    head -n 50000 /tmp/screen/lib-1000000.smi > /tmp/screen/lib-50000.smi
    python benches/bench_embed_library.py --threads 2 --library /tmp/screen/lib-50000.smi \\
        --run /tmp/screen/run --configs 0x2,1x1,1x2,2x1,2x2

(the test library and the run as ``bench_screening.py`` leaves them in its ``--work``; commit first:
the rows are appended to ``benches/results/<machine>.csv``, the raw log goes to
``benches/results/<machine>/``; ``--no-save`` only prints)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from _harness import open_run, parser
from bench_screening import PY, du, load, run_cmd

from molphenix.benchmark import Row


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--library", type=Path, required=True)
    p.add_argument("--run", type=Path, required=True, help="a trained run (bench_screening.py makes one)")
    p.add_argument("--work", type=Path, default=Path("/tmp/molphenix-bench-embed"))
    p.add_argument("--configs", default="0x2,1x1,1x2,2x1,2x2", help="WORKERSxTHREADS, comma-separated")
    args = p.parse_args(argv)
    try:
        configs = [tuple(int(v) for v in c.split("x")) for c in args.configs.split(",")]
    except ValueError:
        configs = []
    if not configs or any(len(c) != 2 or c[0] < 0 or c[1] < 1 for c in configs):
        p.error(f"--configs: expected WORKERSxTHREADS items (e.g. 0x2,2x1), got {args.configs!r}")
    with open_run(args, title="embed-library: workers x threads", matmul=True) as run:
        return _measure(run, args, configs)


def _measure(run, args, configs) -> int:
    args.work.mkdir(parents=True, exist_ok=True)
    n = sum(1 for _ in open(args.library))
    times = {c: [] for c in configs}
    rss = {c: 0 for c in configs}
    for r in range(args.repeats):
        order = configs[r % len(configs):] + configs[:r % len(configs)]
        for w, t in order:
            out = args.work / f"lib-{w}x{t}"
            shutil.rmtree(out, ignore_errors=True)
            la = load()
            res = run_cmd([PY, "-m", "molphenix", "embed-library", "--run", str(args.run), "--molecules",
                           str(args.library), "--out", str(out), "--concentrations", "10", "--workers",
                           str(w), "--threads", str(t), "--no-progress"], log=args.work / f"log-{w}x{t}.txt")
            if res["rc"] != 0:
                print((args.work / f"log-{w}x{t}.txt").read_text()[-2000:])
                print(f"# workers {w} threads {t}: embed-library failed (rc {res['rc']}); nothing saved")
                return 1
            times[(w, t)].append(res["wall"])
            rss[(w, t)] = max(rss[(w, t)], res["rss"])
            print(f"round {r}: workers {w} threads {t}: {res['wall']:.1f} s = {n / res['wall']:,.0f} mol/s, "
                  f"peak RSS {res['rss'] / 2**20:.0f} MiB [load {la} -> {load()}]", flush=True)
            size = du(out)
            shutil.rmtree(out, ignore_errors=True)
    for (w, t), tt in times.items():
        run.add(Row(op="embed_library", provider=f"workers={w},threads={t}", case={"molecules": n},
                    dtype="float32", device="cpu", threads=t, times=tt, work=n, unit="molecules/s",
                    peak_mem_bytes=rss[(w, t)], mem_counted="peak RSS summed over the process tree",
                    notes=f"disk {size / 2**20:.0f} MiB; median {n / np.median(tt):,.0f} mol/s"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
