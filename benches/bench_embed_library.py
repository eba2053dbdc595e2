"""``molphenix embed-library`` with different splits of the cores between featurizing worker
processes and the embedding forward passes, interleaved in one run: how the default was chosen.

Each configuration is one fresh ``embed-library`` command on the same molecules file (end to end:
start-up, read, featurize, embed, write), repeated round robin so that they share the machine's
noise; wall time, molecules/s and peak memory summed over the command's process tree.

    python benches/bench_embed_library.py --library /tmp/screen/lib-50k.smi --run RUN \\
        --configs 0x2,1x1,1x2,2x1,2x2 --results-dir benches/results/<run>
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from _harness import open_run, parser
from bench_screening import PY, du, load, run_cmd

from molphenix.benchmark import Row


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--library", type=Path, required=True)
    p.add_argument("--run", type=Path, required=True, help="a trained run (bench_screening.py makes one)")
    p.add_argument("--work", type=Path, default=Path("/tmp/molphenix-bench-embed"))
    p.add_argument("--configs", default="0x2,1x1,1x2,2x1,2x2", help="WORKERSxTHREADS, comma-separated")
    args = p.parse_args()
    run = open_run(args, title="embed-library: workers x threads", matmul=True)
    args.work.mkdir(parents=True, exist_ok=True)
    n = sum(1 for _ in open(args.library))
    configs = [tuple(int(v) for v in c.split("x")) for c in args.configs.split(",")]
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
            assert res["rc"] == 0, (args.work / f"log-{w}x{t}.txt").read_text()
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
    run.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
