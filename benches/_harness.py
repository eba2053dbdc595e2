"""The benchmark harness every ``benches/bench_*.py`` uses.

    from _harness import measure, parser, finish, matmul_gflops

* ``measure(...)`` runs a correctness-checked provider: warm-up, repeated timings (median and
  spread; CUDA events on GPU), and one extra call for the peak memory beyond what was allocated
  before it.
* ``finish(rows, ...)`` prints a markdown table and appends the rows, with their conditions
  (sizes, dtype, threads, versions, git sha, machine), to ``benches/results/<machine>.csv``.

All providers of one run use the same thread count (``torch.set_num_threads`` and the kernels'
``num_threads``), recorded per row.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

HERE = Path(__file__).resolve().parent
try:  # prefer the installed package; fall back to the checkout (with a dev-built _C)
    import molphenix  # noqa: F401
except ImportError:
    sys.path.insert(0, str(HERE.parent / "python"))

from molphenix.benchmark import (  # noqa: E402
    Measurement,
    append_csv,
    machine_tag,
    markdown_table,
    matmul_gflops,
    peak_memory_bytes,
    time_call,
)

__all__ = ["measure", "parser", "setup", "finish", "matmul_gflops", "Measurement", "results_path",
           "set_threads"]


def set_threads(n: Optional[int]) -> int:
    """Use ``n`` threads for torch, faiss and our kernels (default: all cores)."""
    n = n or os.cpu_count() or 1
    torch.set_num_threads(n)
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    try:  # faiss keeps its own OpenMP thread count
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:
        pass
    return n


def measure(op: str, provider: str, case: Dict[str, Any], fn: Callable[[], Any], *, dtype: str,
            threads: int, device: str = "cpu", flops: Optional[float] = None,
            work: Optional[float] = None, work_unit: str = "", warmup: int = 1, repeats: int = 5,
            max_seconds: Optional[float] = None, memory: bool = True, notes: str = "",
            extra_bytes: int = 0) -> Measurement:
    """Time ``fn`` (after warm-up) and measure its peak memory.

    ``extra_bytes`` is subtracted from the memory reading (e.g. the outputs and gradients that
    are part of the op's contract), so ``peak_mem`` is the working memory beyond inputs and
    outputs.
    """
    m = Measurement(op=op, provider=provider, case=dict(case), dtype=dtype, threads=threads,
                    device=device, flops=flops, work=work, work_unit=work_unit, notes=notes)
    m.times = time_call(fn, device=device, warmup=warmup, repeats=repeats, max_seconds=max_seconds)
    if memory:
        peak = peak_memory_bytes(fn, device=device)
        m.peak_mem_bytes = None if peak is None else max(0, peak - extra_bytes)
    print(f"  {op:22s} {provider:14s} {m.median:9.4f} s"
          + (f"  {m.gflops:8.1f} GFLOP/s" if m.gflops else "")
          + (f"  peak {m.peak_mem_bytes / 2**20:8.1f} MB" if m.peak_mem_bytes is not None else ""),
          flush=True)
    return m


def parser(description: str, *, sizes: str = "", default_sizes: Sequence[Sequence[int]] = (),
           quick_sizes: Sequence[Sequence[int]] = ()) -> argparse.ArgumentParser:
    """The common command line. ``sizes`` names the case layout (e.g. "BxDxE"); the defaults
    are used without ``--sizes`` (``quick_sizes`` with ``--quick``)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes (seconds), for smoke runs")
    p.add_argument("--threads", type=int, default=None, help="threads for every provider (default: all cores)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--providers", default=None, help="comma-separated subset of providers")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", type=Path, default=None,
                   help="CSV to append to (default benches/results/<machine>.csv; '-' for none)")
    if sizes:
        fmt = ",".join("x".join(map(str, c)) for c in default_sizes)
        p.add_argument("--sizes", default=None, help=f"comma-separated {sizes} cases (default {fmt})")
    p.set_defaults(_default_sizes=[tuple(c) for c in default_sizes],
                   _quick_sizes=[tuple(c) for c in quick_sizes])
    return p


def setup(args: argparse.Namespace, providers: Sequence[str]):
    """Threads (applied to torch and the kernels), the selected providers and the cases."""
    threads = set_threads(args.threads)
    selected = args.providers.split(",") if args.providers else list(providers)
    unknown = set(selected) - set(providers)
    if unknown:
        raise SystemExit(f"--providers: unknown {sorted(unknown)}; choose from {list(providers)}")
    if getattr(args, "sizes", None):
        cases = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    else:
        cases = args._quick_sizes if args.quick else args._default_sizes
    return threads, selected, cases


def results_path(device: str = "cpu") -> Path:
    return HERE / "results" / f"{machine_tag(device)}.csv"


def finish(rows: Sequence[Measurement], *, out: Optional[Path] = None, matmul: Optional[float] = None,
           device: str = "cpu") -> None:
    print()
    print(markdown_table(rows, matmul=matmul))
    if matmul:
        print(f"\ntorch.mm rate on this machine: {matmul:.1f} GFLOP/s")
    if str(out) == "-":
        return
    path = out or results_path(device)
    append_csv(path, rows, matmul=matmul)
    print(f"appended {len(rows)} rows to {path}")
