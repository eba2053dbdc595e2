"""Wall-clock time of ``molphenix demo`` (``--quick`` and the default run), as a user runs it.

Each mode runs ``python -m molphenix demo --out TMP [--quick]`` in a subprocess from a fresh
output directory and records the wall time, the CPU time of the subprocess (user + system), the
machine's load average before and after (other processes on a shared machine slow the run; the
CPU time is unaffected by them), and the conditions (CPU count, torch threads, git sha). Results
are appended to ``benches/results/demo-<machine>.log``; ``--keep DIR`` keeps each run's output
(``DIR/<mode>/report.md`` and metrics) instead of deleting it.

Targets (issue 7): the default run at most 10 minutes, ``--quick`` at most 2 minutes on 2 CPU
cores.

Usage::

    python benches/bench_demo.py --modes quick            # ~2 minutes
    python benches/bench_demo.py --modes quick,default    # ~12 minutes
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LIMITS = {"quick": 120.0, "default": 600.0}


def _git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _machine() -> str:
    n = os.cpu_count() or 0
    return f"cpu-{platform.machine()}-{n}c"


def run_mode(mode: str, out: Path, threads: int | None) -> dict:
    """Run one demo mode in a subprocess; return its timings."""
    cmd = [sys.executable, "-m", "molphenix", "demo", "--out", str(out)]
    if mode == "quick":
        cmd.append("--quick")
    if threads:
        cmd += ["--threads", str(threads)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"mode": mode, "rc": proc.returncode, "wall_s": wall, "cpu_s": cpu,
            "load_before": load0[0], "load_after": os.getloadavg()[0],
            "stdout": proc.stdout, "stderr": proc.stderr[-4000:]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", default="quick", help="comma-separated: quick, default")
    ap.add_argument("--threads", type=int, default=None, help="--threads of the demo (default: torch's)")
    ap.add_argument("--log", type=Path, default=None, help="log file (default: benches/results/demo-<machine>.log)")
    ap.add_argument("--keep", type=Path, default=None, help="keep each run's output under KEEP/<mode>")
    args = ap.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in LIMITS:
            ap.error(f"--modes: unknown mode {m!r}; expected quick or default")
    log = args.log or HERE / "results" / f"demo-{_machine()}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    import torch

    header = (f"# {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} git {_git_sha()} "
              f"python {platform.python_version()} torch {torch.__version__} cpus {os.cpu_count()} "
              f"torch_threads {args.threads or torch.get_num_threads()}")
    lines = [header]
    status = 0
    for mode in modes:
        tmp = Path(tempfile.mkdtemp(prefix=f"molphenix-demo-{mode}-"))
        try:
            r = run_mode(mode, tmp / "out", args.threads)
            verdict = "within" if r["wall_s"] <= LIMITS[mode] else "OVER"
            summary = (f"mode={mode} rc={r['rc']} wall_s={r['wall_s']:.1f} cpu_s={r['cpu_s']:.1f} "
                       f"limit_s={LIMITS[mode]:.0f} ({verdict}) load1_before={r['load_before']:.2f} "
                       f"load1_after={r['load_after']:.2f}")
            lines.append(summary)
            print(summary, flush=True)
            lines += ["  | " + s for s in r["stdout"].rstrip().splitlines()]
            if r["rc"] != 0:
                status = 1
                lines += ["  ! " + s for s in r["stderr"].rstrip().splitlines()]
            if args.keep is not None:
                dest = args.keep / mode
                if dest.exists():
                    shutil.rmtree(dest)
                shutil.copytree(tmp / "out", dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    text = "\n".join(lines) + "\n"
    with open(log, "a") as fh:
        fh.write(text)
    print(text)
    print(f"appended to {log}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
