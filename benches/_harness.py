"""The command line shared by every ``benches/bench_*.py`` (CPU and GPU), on top of the one harness
in :mod:`molphenix.benchmark` (timing, memory, CSV layout) and the op definitions in
:mod:`molphenix.benchmark.cases`.

    from _harness import parser, open_run, run_op

``open_run(args)`` starts a run (results directory with ``results.csv`` + ``run.log``, the
conditions, torch.mm's rate measured first); ``run_op(run, spec, cases, args)`` runs the op's
correctness check (a failure ends the script with exit status 1) and then every case.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
try:  # prefer the installed package; fall back to the checkout (with a dev-built _C)
    import molphenix  # noqa: F401
except ImportError:
    sys.path.insert(0, str(HERE.parent / "python"))

from molphenix.benchmark import (  # noqa: E402
    CheckFailed,
    Provider,
    Row,
    Run,
    default_results_dir,
    run_case,
    run_checks,
    time_interleaved,
)

__all__ = ["parser", "open_run", "run_op", "parse_sizes", "time_provider", "CheckFailed", "Row", "RESULTS"]

RESULTS = HERE / "results"


def parser(description: str, *, sizes: str = "", default_sizes: str = "") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes (seconds), for smoke runs")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default=None, help="float32 (CPU default) | bfloat16 (GPU default) | float16")
    p.add_argument("--threads", type=int, default=None, help="threads for every provider (default: all cores)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per provider (the same for all)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed calls per provider, interleaved across providers (the same for all)")
    p.add_argument("--providers", default=None, help="comma-separated subset, e.g. naive,chunked,ours,faiss")
    p.add_argument("--variants", action="store_true", help="also the ours-<mode> kernel variants (GPU)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--results-dir", type=Path, default=None,
                   help="directory for results.csv and run.log (default benches/results/<machine>-<date>)")
    p.add_argument("--no-save", action="store_true", help="print only")
    p.add_argument("--mem-cap-gb", type=float, default=None,
                   help="skip providers whose estimated memory exceeds this (CPU default 9)")
    if sizes:
        p.add_argument("--sizes", default=None, help=f"comma-separated {sizes} cases (default {default_sizes})")
    return p


def parse_sizes(text: str, names: Sequence[str]) -> List[Dict[str, int]]:
    out = []
    for item in text.split(","):
        vals = [int(v) for v in item.lower().split("x")]
        if len(vals) != len(names):
            raise SystemExit(f"--sizes: {item!r} is not {'x'.join(names)}")
        out.append(dict(zip(names, vals)))
    return out


def open_run(args: argparse.Namespace, *, title: str, matmul: bool = True) -> Run:
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no CUDA device")
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    if args.no_save:
        rdir = None
    else:
        rdir = args.results_dir or default_results_dir(args.device, RESULTS)
    cap = args.mem_cap_gb if args.mem_cap_gb is not None else (None if args.device == "cuda" else 9.0)
    run = Run(device=args.device, threads=args.threads, results_dir=rdir, title=title,
              mem_cap_bytes=int(cap * 2**30) if cap else None)
    if matmul:
        run.measure_matmul()
    return run


def run_op(run: Run, spec, cases: Sequence[Dict[str, Any]], args: argparse.Namespace, *,
           repeats: Optional[int] = None) -> None:
    only = args.providers.split(",") if args.providers else None
    print(f"\n## {spec.op} ({args.dtype}, {run.threads} threads, device {run.device})", flush=True)
    try:
        run_checks(run, spec, dtype=args.dtype, only=only)
    except CheckFailed as e:
        print(f"CHECK FAILED: {e}", flush=True)
        run.close(table=False)
        raise SystemExit(1)
    for params in cases:
        run_case(run, spec, params, dtype=args.dtype, only=only, warmup=args.warmup,
                 repeats=repeats or args.repeats, memory=not args.no_memory, variants=args.variants)


def time_provider(run: Run, op: str, provider: str, case: Dict[str, Any], fn, *, work: Optional[float] = None,
                  unit: str = "", warmup: int = 1, repeats: int = 3, dtype: str = "float32", notes: str = "",
                  peak_bytes: Optional[int] = None, mem_counted: str = "") -> Row:
    """A single-provider row (the data-layer benchmarks): warm-up, repeats, median; memory as the
    caller measured it (``mem_counted`` says what)."""
    t = time_interleaved([Provider(provider, fn)], device=run.device, warmup=warmup, repeats=repeats)[provider]
    row = Row(op=op, provider=provider, case=dict(case), dtype=dtype, device=run.device, threads=run.threads,
              warmup=warmup, times=t, work=work, unit=unit, peak_mem_bytes=peak_bytes, mem_counted=mem_counted,
              notes=notes)
    print(f"  {op:22s} {provider:14s} median {row.median:9.4f} s (min {min(t):.4f}, max {max(t):.4f}, n={len(t)})",
          flush=True)
    run.add(row)
    return row
