"""A small benchmark harness shared by ``benches/`` and ``molphenix bench``.

Timing: warm-up calls, then repeated timings (CUDA events on GPU, ``perf_counter`` on CPU);
median, min, max. Memory: peak beyond what was allocated before the call -- on CUDA from torch's
allocator statistics, on CPU from the kernel's resident-set high-water mark (``VmHWM``, reset
through ``/proc/self/clear_refs`` before each measured call). Results are appended to a CSV with
the conditions (sizes, dtype, threads, versions, git sha, machine).
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import platform
import re
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

__all__ = [
    "Measurement",
    "time_call",
    "peak_memory_bytes",
    "matmul_gflops",
    "machine_tag",
    "append_csv",
    "markdown_table",
    "git_sha",
]

CSV_FIELDS = [
    "timestamp", "git_sha", "machine", "device", "op", "provider", "case", "dtype", "threads",
    "median_s", "min_s", "max_s", "repeats", "throughput", "throughput_unit", "gflops",
    "pct_of_matmul", "matmul_gflops", "peak_mem_mb", "speedup_vs_reference", "torch_version",
    "molphenix_version", "notes",
]


@dataclass
class Measurement:
    """One provider on one case."""

    op: str
    provider: str
    case: Dict[str, Any]
    dtype: str
    threads: int
    device: str
    times: List[float] = field(default_factory=list)
    peak_mem_bytes: Optional[int] = None
    flops: Optional[float] = None
    work: Optional[float] = None  # domain units per call (pairs, queries, ...)
    work_unit: str = ""
    notes: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")

    @property
    def gflops(self) -> Optional[float]:
        return None if not self.flops or not self.times else self.flops / self.median / 1e9

    @property
    def throughput(self) -> Optional[float]:
        return None if not self.work or not self.times else self.work / self.median


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn: Callable[[], Any], *, device: str = "cpu", warmup: int = 1, repeats: int = 5,
              max_seconds: Optional[float] = None) -> List[float]:
    """Seconds per call of ``fn`` for ``repeats`` calls after ``warmup`` calls.

    ``max_seconds`` stops repeating early (at least one timed call) for slow baselines.
    """
    for _ in range(warmup):
        fn()
    _sync(device)
    times: List[float] = []
    start_all = time.perf_counter()
    for _ in range(repeats):
        if device.startswith("cuda"):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        if max_seconds is not None and time.perf_counter() - start_all > max_seconds:
            break
    return times


def _read_status_kb(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_memory_bytes(fn: Callable[[], Any], *, device: str = "cpu") -> Optional[int]:
    """Peak memory of one call of ``fn`` beyond what was in use before it.

    The result of ``fn`` is kept until after the measurement, so outputs count (callers
    subtract outputs they consider part of the contract). Returns None where the platform gives
    no reading.
    """
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        del out
        return int(peak)
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
    except OSError:
        return None
    before = _read_status_kb("VmRSS")
    out = fn()
    hwm = _read_status_kb("VmHWM")
    del out
    if before is None or hwm is None:
        return None
    return max(0, (hwm - before) * 1024)


def matmul_gflops(n: int = 4096, *, dtype: torch.dtype = torch.float32, device: str = "cpu",
                  repeats: int = 3) -> float:
    """torch's own square matmul rate (the physical limit the kernels are compared against)."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    times = time_call(lambda: torch.mm(a, b), device=device, warmup=1, repeats=repeats)
    return 2.0 * n ** 3 / statistics.median(times) / 1e9


def git_sha() -> str:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5)
        sha = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty and sha else "") if sha else "unknown"
    except Exception:
        return "unknown"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_tag(device: str = "cpu") -> str:
    """A file-name-safe machine label, e.g. ``cpu-amd-epyc-2c`` or ``gpu-nvidia-h100-80gb-hbm3``."""
    if os.environ.get("MOLPHENIX_BENCH_MACHINE"):
        return os.environ["MOLPHENIX_BENCH_MACHINE"]
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name()
        return "gpu-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    model = re.sub(r"[^a-z0-9]+", "-", _cpu_model().lower()).strip("-")
    return f"cpu-{model}-{os.cpu_count()}c"


def append_csv(path: Path, rows: Sequence[Measurement], *, reference_provider: str = "reference",
               matmul: Optional[float] = None) -> None:
    """Append one row per measurement (creating the file with a header)."""
    from molphenix._version import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    sha = git_sha()
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    ref = {json.dumps(m.case, sort_keys=True): m.median for m in rows if m.provider == reference_provider}
    with path.open("a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        if new:
            w.writeheader()
        for m in rows:
            key = json.dumps(m.case, sort_keys=True)
            gf = m.gflops
            w.writerow({
                "timestamp": now, "git_sha": sha, "machine": machine_tag(m.device), "device": m.device,
                "op": m.op, "provider": m.provider, "case": key, "dtype": m.dtype, "threads": m.threads,
                "median_s": f"{m.median:.6g}", "min_s": f"{min(m.times):.6g}" if m.times else "",
                "max_s": f"{max(m.times):.6g}" if m.times else "", "repeats": len(m.times),
                "throughput": f"{m.throughput:.6g}" if m.throughput else "",
                "throughput_unit": m.work_unit, "gflops": f"{gf:.4g}" if gf else "",
                "pct_of_matmul": f"{100 * gf / matmul:.1f}" if gf and matmul else "",
                "matmul_gflops": f"{matmul:.4g}" if matmul else "",
                "peak_mem_mb": f"{m.peak_mem_bytes / 2**20:.1f}" if m.peak_mem_bytes is not None else "",
                "speedup_vs_reference": f"{ref[key] / m.median:.3g}" if key in ref and m.times else "",
                "torch_version": torch.__version__, "molphenix_version": __version__, "notes": m.notes,
            })


def markdown_table(rows: Sequence[Measurement], *, reference_provider: str = "reference",
                   matmul: Optional[float] = None) -> str:
    """A markdown table: case, provider, median, speed-up vs the reference, GFLOP/s, % of matmul,
    throughput and peak memory."""
    ref = {json.dumps(m.case, sort_keys=True): m.median for m in rows if m.provider == reference_provider}
    lines = ["| op | case | provider | threads | median s | vs reference | GFLOP/s | % of matmul | throughput | peak MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m in rows:
        key = json.dumps(m.case, sort_keys=True)
        case = ", ".join(f"{k}={v}" for k, v in m.case.items())
        gf = m.gflops
        sp = f"{ref[key] / m.median:.2f}x" if key in ref and m.times else ""
        tp = f"{m.throughput:.3g} {m.work_unit}" if m.throughput else ""
        mem = f"{m.peak_mem_bytes / 2**20:.0f}" if m.peak_mem_bytes is not None else ""
        lines.append(f"| {m.op} | {case} | {m.provider} | {m.threads} | {m.median:.4g} | {sp} | "
                     f"{gf:.1f} | {100 * gf / matmul:.0f}% | {tp} | {mem} |" if gf and matmul else
                     f"| {m.op} | {case} | {m.provider} | {m.threads} | {m.median:.4g} | {sp} | "
                     f"{'' if not gf else f'{gf:.1f}'} |  | {tp} | {mem} |")
    return "\n".join(lines)
