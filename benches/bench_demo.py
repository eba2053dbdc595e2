"""Wall-clock time of ``molphenix demo`` (``--quick`` and the default run), as a user runs it.

Each mode runs ``python -m molphenix demo --out TMP [--quick]`` in a subprocess from a fresh
output directory and records one row (op ``demo``, provider = the mode): the wall time, the CPU
time of the subprocess (user + system; other processes on a shared machine slow the wall time,
not the CPU time), its peak resident memory, the load average before and after, and whether the
wall time is within the target: the default run at most 10 minutes, ``--quick`` at most 2
minutes on 2 CPU cores. Modes ``real`` and ``real-quick`` run the real-data demo
(``--data cell-injury [--quick]``; targets 15 and 3 minutes), with an empty MiniMol cache of
their own (``MOLPHENIX_CACHE_DIR`` in the temporary directory: a first run on the machine, which
embeds the molecules when the ``molphenix[minimol]`` extra is installed). The demo's own output
goes into the raw log. ``--keep DIR`` keeps each run's output (``DIR/<mode>/report.md`` and
metrics) instead of deleting it.

    python benches/bench_demo.py --modes quick            # ~1 minute on an idle 2-core machine
    python benches/bench_demo.py --modes quick,default    # ~5 minutes
    python benches/bench_demo.py --modes real-quick,real  # the real-data demo
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import Row, open_run, parser

LIMITS = {"quick": 120.0, "default": 600.0, "real-quick": 180.0, "real": 900.0}
MEM_NOTE = "peak RSS of the demo process (ru_maxrss from wait4; absolute, not an increase)"


def run_mode(mode: str, out: Path, threads: int | None) -> dict:
    """Run one demo mode in a subprocess; return its timings and output."""
    cmd = [sys.executable, "-m", "molphenix", "demo", "--out", str(out)]
    env = dict(os.environ)
    if mode.startswith("real"):
        cmd += ["--data", "cell-injury"]
        env["MOLPHENIX_CACHE_DIR"] = str(out.parent / "cache")  # a first run: nothing embedded yet
    if mode.endswith("quick"):
        cmd.append("--quick")
    if threads:
        cmd += ["--threads", str(threads)]
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    text = proc.stdout.read()
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    return {"mode": mode, "rc": os.waitstatus_to_exitcode(status), "wall_s": wall,
            "cpu_s": ru.ru_utime + ru.ru_stime, "maxrss_kb": ru.ru_maxrss, "load_before": load0[0],
            "load_after": os.getloadavg()[0], "output": text, "cmd": " ".join(cmd)}


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--modes", default="quick", help="comma-separated: quick, default, real-quick, real")
    p.add_argument("--keep", type=Path, default=None, help="keep each run's output under KEEP/<mode>")
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in LIMITS:
            p.error(f"--modes: unknown mode {m!r}; expected one of {', '.join(LIMITS)}")
    if args.device != "cpu":
        p.error("--device: the demo benchmark is CPU only")
    run = open_run(args, title="benches/bench_demo.py", matmul=False)
    status = 0
    with run:
        for mode in modes:
            tmp = Path(tempfile.mkdtemp(prefix=f"molphenix-demo-{mode}-"))
            try:
                r = run_mode(mode, tmp / "out", args.threads)
                verdict = "within" if r["wall_s"] <= LIMITS[mode] else "OVER"
                print(f"\n## demo {mode}: {r['cmd']} -> exit {r['rc']}", flush=True)
                for line in r["output"].rstrip().splitlines():
                    print(f"  | {line}", flush=True)
                summary = (f"mode={mode} rc={r['rc']} wall_s={r['wall_s']:.1f} cpu_s={r['cpu_s']:.1f} "
                           f"limit_s={LIMITS[mode]:.0f} ({verdict}) load1_before={r['load_before']:.2f} "
                           f"load1_after={r['load_after']:.2f} peak_rss_mb={r['maxrss_kb'] / 1024:.0f}")
                print(summary, flush=True)
                if r["rc"] != 0:
                    status = 1
                    continue
                run.add(Row(op="demo", provider=mode, case={"mode": mode, "threads_flag": args.threads or 0},
                            dtype="float32", device="cpu", threads=args.threads or run.threads, warmup=0,
                            times=[r["wall_s"]], peak_mem_bytes=r["maxrss_kb"] * 1024, mem_counted=MEM_NOTE,
                            status="ok" if verdict == "within" else f"over the {LIMITS[mode]:.0f} s target",
                            notes=(f"wall time of molphenix demo"
                                   f"{' --data cell-injury' if mode.startswith('real') else ''}"
                                   f"{' --quick' if mode.endswith('quick') else ''}; "
                                   f"cpu_s {r['cpu_s']:.1f} (user+system); load1 {r['load_before']:.2f} before, "
                                   f"{r['load_after']:.2f} after; target {LIMITS[mode]:.0f} s: {verdict}")))
                if args.keep is not None:
                    dest = args.keep / mode
                    if dest.exists():
                        shutil.rmtree(dest)
                    shutil.copytree(tmp / "out", dest)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
