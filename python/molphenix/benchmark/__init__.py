"""The one benchmark harness of molphenix: ``benches/`` (CPU and GPU) and ``molphenix bench`` use it.

A *case* is one op at one set of sizes and one dtype; its *providers* are ``naive`` (the pure-torch
reference of :mod:`molphenix.ops.reference`), ``chunked`` (torch in row blocks), ``ours`` (the
compiled kernels; variants ``ours-<mode>``) and an external library by its own name (``faiss``).
The op definitions (data, providers, correctness checks) are in :mod:`molphenix.benchmark.cases`.

Every provider of a case is measured the same way:

* **correctness first**: :func:`run_checks` compares every provider with the float64 reference on
  a small case and raises :class:`CheckFailed` (the scripts then exit non-zero);
* **time**: the same number of warm-up calls, then ``repeats`` timed calls interleaved across
  providers (round robin, the starting provider rotating each round) so that they share the
  machine's noise; median, min and max (CUDA events on a GPU, ``perf_counter`` on the CPU);
* **memory** (:data:`MEM_CPU`, :data:`MEM_CUDA`): on the CPU a fresh subprocess per provider, which
  warms up on a small instance of the case, allocates the case's inputs, resets the kernel's
  resident-set high-water mark (``VmHWM``) and reports its increase over one call; on a GPU
  torch's allocator counters (peak minus what was allocated before the call). Never clamped.

Each row of the CSV (:data:`CSV_FIELDS`) carries the conditions: machine and device name, threads,
versions, git commit, the load average when the run started, and torch's own matmul rate measured
in the same run (``pct_of_matmul``). A run writes ``results.csv`` and its raw log ``run.log`` into
one directory (default ``benches/results/<machine>-<date>/``).
"""

from __future__ import annotations

import csv
import datetime as _dt
import gc
import importlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO

import torch

__all__ = [
    "CSV_FIELDS",
    "MEM_CPU",
    "MEM_CUDA",
    "CheckFailed",
    "Provider",
    "Case",
    "Row",
    "Run",
    "run_case",
    "run_checks",
    "matmul_rate",
    "machine_tag",
    "device_name",
    "git_sha",
    "markdown_table",
    "Tee",
    "default_results_dir",
]

CSV_FIELDS = [
    "timestamp", "git_sha", "machine", "device", "device_name", "op", "provider", "case", "dtype",
    "threads", "warmup", "repeats", "median_s", "min_s", "max_s", "throughput", "throughput_unit",
    "gflops", "pct_of_matmul", "matmul_gflops", "matmul_case", "peak_mem_mb", "outputs_mb",
    "mem_counted", "status", "notes", "load_avg_start", "python", "torch", "molphenix", "faiss",
    "cuda", "command",
]

MEM_CPU = ("peak RSS increase during one call in a fresh process, above that process's RSS with "
           "the inputs allocated (after a warm-up on a small instance; glibc returns freed memory: "
           "MALLOC_MMAP_THRESHOLD_=65536, malloc_trim before the baseline); outputs included")
MEM_CUDA = ("torch.cuda.max_memory_allocated during one call (peak stats reset) minus "
            "memory_allocated before it (inputs); outputs included")


class CheckFailed(RuntimeError):
    """A provider disagreed with the reference before timing: the benchmark run fails."""


# ------------------------------------------------------------------------------------------------
# the machine and the checkout

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str = "cpu") -> str:
    """The CPU model (with its core count) or the GPU name."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"{_cpu_model()} ({os.cpu_count()} cores)"


def machine_tag(device: str = "cpu") -> str:
    """A file-name-safe machine label, e.g. ``cpu-amd-epyc-2c`` or ``gpu-nvidia-h200``
    (``MOLPHENIX_BENCH_MACHINE`` overrides it)."""
    if os.environ.get("MOLPHENIX_BENCH_MACHINE"):
        return os.environ["MOLPHENIX_BENCH_MACHINE"]
    if device.startswith("cuda"):
        return "gpu-" + re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")
    model = re.sub(r"\((r|tm)\)|\bcpu\b|@.*$", "", _cpu_model().lower())
    model = re.sub(r"[^a-z0-9]+", "-", model).strip("-")
    model = re.sub(r"-?\d+-core-processor$|-processor$", "", model)
    return f"cpu-{model}-{os.cpu_count()}c"


_SHA: Optional[str] = None


def git_sha() -> str:
    """The checkout's commit (``-dirty`` when tracked files under csrc/, python/molphenix/ops,
    python/molphenix/benchmark, benches/ or CMakeLists.txt differ from it); ``MOLPHENIX_GIT_SHA`` when
    git gives none (a copied tree without history); else ``unknown``."""
    global _SHA
    if _SHA is not None:
        return _SHA
    sha = ""
    root = Path(__file__).resolve().parents[3]
    try:
        out = subprocess.run(["git", "rev-parse", "--verify", "-q", "--short=12", "HEAD"], cwd=root,
                             capture_output=True, text=True, timeout=10)
        sha = out.stdout.strip() if out.returncode == 0 else ""
        if sha:  # dirty: uncommitted changes to what the benchmarks run (kernels, ops, harness)
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "csrc",
                                    "python/molphenix/ops", "python/molphenix/benchmark", "benches",
                                    "CMakeLists.txt"], cwd=root, capture_output=True, text=True,
                                   timeout=10).stdout.strip()
            sha += "-dirty" if dirty else ""
    except Exception:
        sha = ""
    _SHA = sha or os.environ.get("MOLPHENIX_GIT_SHA", "") or "unknown"
    return _SHA


def _versions() -> Dict[str, str]:
    from molphenix._version import __version__

    try:
        import faiss

        fv = getattr(faiss, "__version__", "installed")
    except ImportError:
        fv = ""
    return {"python": platform.python_version(), "torch": torch.__version__, "molphenix": __version__,
            "faiss": fv, "cuda": torch.version.cuda or ""}


def _loadavg() -> str:
    try:
        return "/".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return ""


# ------------------------------------------------------------------------------------------------
# what is measured

@dataclass
class Provider:
    """One way of computing a case: ``fn()`` does the whole op (forward and, where the case says
    so, backward); ``env`` is set around each call (kernel knobs for ``ours-<mode>`` variants)."""

    name: str
    fn: Callable[[], Any]
    env: Dict[str, str] = field(default_factory=dict)
    notes: str = ""


@dataclass
class Case:
    """One op at one set of sizes: useful FLOPs and domain work per call (for GFLOP/s and
    throughput) and the size of the op's outputs (reported next to the peak memory)."""

    op: str
    sizes: Dict[str, Any]
    dtype: str
    flops: Optional[float] = None
    work: Optional[float] = None
    unit: str = ""
    outputs_bytes: int = 0


@dataclass
class Row:
    op: str
    provider: str
    case: Dict[str, Any]
    dtype: str
    device: str
    threads: int
    warmup: int = 0
    times: List[float] = field(default_factory=list)
    flops: Optional[float] = None
    work: Optional[float] = None
    unit: str = ""
    peak_mem_bytes: Optional[int] = None
    outputs_bytes: Optional[int] = None
    mem_counted: str = ""
    status: str = "ok"
    notes: str = ""

    @property
    def median(self) -> Optional[float]:
        return statistics.median(self.times) if self.times else None

    @property
    def gflops(self) -> Optional[float]:
        return self.flops / self.median / 1e9 if self.flops and self.times else None

    @property
    def throughput(self) -> Optional[float]:
        return self.work / self.median if self.work and self.times else None


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class _Env:
    """A variant's kernel settings for the duration of a call: given as ``MOLPHENIX_*`` variables,
    applied through ``molphenix.set_options`` (the kernels read no environment) and restored after;
    the variables themselves are set too (for any process started meanwhile)."""

    def __init__(self, env: Dict[str, str]):
        self.env, self.old, self.old_opts = env, {}, None

    def __enter__(self):
        if not self.env:
            return
        for k, v in self.env.items():
            self.old[k] = os.environ.get(k)
            os.environ[k] = v
        try:
            import molphenix
            from molphenix._options import settings_from_env
        except ImportError:  # an older molphenix: its kernels read the environment at each call
            return
        settings = settings_from_env(self.env)
        if settings:
            self.old_opts = molphenix.options()
            molphenix.set_options(**settings)

    def __exit__(self, *exc):
        if self.old_opts is not None:
            import molphenix

            molphenix.set_options(**self.old_opts)
            self.old_opts = None
        for k, v in self.old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self.old = {}


def _time_once(p: Provider, device: str) -> float:
    with _Env(p.env):
        if device.startswith("cuda"):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            out = p.fn()
            b.record()
            b.synchronize()
            del out
            return a.elapsed_time(b) / 1e3
        t0 = time.perf_counter()
        out = p.fn()
        dt = time.perf_counter() - t0
        del out
        return dt


def time_interleaved(providers: Sequence[Provider], *, device: str = "cpu", warmup: int = 1,
                     repeats: int = 3) -> Dict[str, List[float]]:
    """``warmup`` untimed calls of every provider, then ``repeats`` rounds; in each round every
    provider runs once, the starting provider rotating by one per round."""
    for _ in range(warmup):
        for p in providers:
            with _Env(p.env):
                p.fn()
            _sync(device)
    times: Dict[str, List[float]] = {p.name: [] for p in providers}
    n = len(providers)
    for r in range(repeats):
        for i in range(n):
            p = providers[(r + i) % n]
            times[p.name].append(_time_once(p, device))
    return times


def matmul_rate(device: str = "cpu", *, n: Optional[int] = None, dtype: Optional[torch.dtype] = None,
                warmup: int = 1, repeats: int = 3) -> Dict[str, Any]:
    """torch.mm on two square n x n matrices (default: 4096 float32 on the CPU, 8192 bfloat16 on a
    GPU): the machine's own GEMM rate, the yardstick of "% of mm"."""
    cuda = device.startswith("cuda")
    n = n or (8192 if cuda else 4096)
    dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    t = time_interleaved([Provider("torch.mm", lambda: torch.mm(a, b))], device=device, warmup=warmup,
                         repeats=repeats)["torch.mm"]
    del a, b
    flops = 2.0 * n ** 3
    return {"gflops": flops / statistics.median(t) / 1e9, "case": f"{n}^3 {str(dtype).replace('torch.', '')}",
            "times": t, "n": n, "dtype": str(dtype).replace("torch.", ""), "flops": flops}


# ------------------------------------------------------------------------------------------------
# peak memory

def _status_kb(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    """Hand freed heap memory back to the OS (glibc), so that memory freed before the baseline
    cannot be reused by the measured call without counting."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except Exception:
        pass


def _cpu_peak_of_call(fn: Callable[[], Any]) -> Dict[str, Any]:
    """RSS high-water mark increase of one call, in this process."""
    gc.collect()
    _malloc_trim()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
        method = "VmHWM"
    except OSError:
        method = "ru_maxrss"
    base_kb = _status_kb("VmRSS")
    if method == "ru_maxrss" or base_kb is None:
        import resource

        base_kb = base_kb or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = fn()
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        method = "ru_maxrss (upper bound: includes any earlier peak of the process)"
    else:
        out = fn()
        peak_kb = _status_kb("VmHWM")
    del out
    return {"peak_bytes": (peak_kb - base_kb) * 1024, "base_rss_bytes": base_kb * 1024, "method": method}


def cuda_peak_of_call(fn: Callable[[], Any]) -> int:
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del out
    return int(peak)


def _load_spec(ref: str):
    mod, _, attr = ref.partition(":")
    return getattr(importlib.import_module(mod), attr)


def memory_child_main(argv: Sequence[str]) -> int:
    """``python -m molphenix.benchmark --memory-child SPEC PARAMS PROVIDER DTYPE THREADS``:
    build the case in this fresh process and print the peak of one call of PROVIDER as JSON."""
    spec_ref, params_json, name, dtype, threads = argv
    threads_n = int(threads)
    torch.set_num_threads(threads_n)
    spec = _load_spec(spec_ref)
    params = json.loads(params_json)
    # warm-up on a small instance: thread pools and lazily initialised library state are not
    # part of the case's footprint
    _, small = spec.build(spec.small(params), device="cpu", dtype=dtype, threads=threads_n, only=[name])
    for p in small:
        with _Env(p.env):
            p.fn()
    del small
    gc.collect()
    _, provs = spec.build(params, device="cpu", dtype=dtype, threads=threads_n, only=[name])
    (p,) = provs
    with _Env(p.env):
        res = _cpu_peak_of_call(p.fn)
    print("MEMORY_RESULT " + json.dumps(res), flush=True)
    return 0


def _memory_in_child(spec_ref: str, params: Dict[str, Any], name: str, dtype: str, threads: int,
                     timeout: float) -> Dict[str, Any]:
    env = dict(os.environ)
    extra = [str(Path(__file__).resolve().parents[2])]  # the package's own root (source checkouts)
    extra += [p for p in sys.path if p and p.endswith("benches")]
    env["PYTHONPATH"] = os.pathsep.join(extra + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = str(threads)
    # every large allocation its own mapping, returned on free (no dynamic threshold): a buffer
    # freed before the baseline cannot stay resident and be reused by the measured call for free
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    cmd = [sys.executable, "-m", "molphenix.benchmark", "--memory-child", spec_ref, json.dumps(params),
           name, dtype, str(threads)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"memory child timed out after {timeout:.0f} s"}
    for line in res.stdout.splitlines():
        if line.startswith("MEMORY_RESULT "):
            return json.loads(line[len("MEMORY_RESULT "):])
    tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or [""]
    return {"error": f"memory child exit {res.returncode}: {tail[0][:200]}"}


# ------------------------------------------------------------------------------------------------
# a run: one directory, one CSV, one raw log

class Tee:
    """A text stream that writes to every stream it was given (stdout and a raw log)."""

    def __init__(self, *streams: TextIO):
        self.streams = streams

    def write(self, s: str) -> int:
        for st in self.streams:
            st.write(s)
        return len(s)

    def flush(self) -> None:
        for st in self.streams:
            st.flush()

    def isatty(self) -> bool:
        return False


def default_results_dir(device: str = "cpu", root: Optional[Path] = None) -> Path:
    """The dated folder ``<root>/<machine>-<YYYY-MM-DD>`` of a run that keeps its own CSV beside its
    raw log (a GPU run; CPU runs append to the machine's one table instead).

    Args:
        device: ``"cpu"`` or ``"cuda"`` (names the machine, see :func:`machine_tag`).
        root: The results folder (default: the checkout's ``benches/results``).

    Returns:
        The folder's path (not created).
    """
    root = root or Path(__file__).resolve().parents[3] / "benches" / "results"
    return root / f"{machine_tag(device)}-{_dt.date.today().isoformat()}"


class Run:
    """One benchmark run: the conditions, the matmul yardstick, rows appended to ``csv_path`` as
    they are measured, and (with ``results_dir``) everything printed copied to ``run.log``.

    ``results_dir`` holds ``results.csv`` and ``run.log``; ``csv_path`` alone (``molphenix bench
    --out``) appends rows to that CSV only; neither: nothing is written.
    """

    def __init__(self, *, device: str = "cpu", threads: Optional[int] = None,
                 results_dir: Optional[Path] = None, csv_path: Optional[Path] = None,
                 command: Optional[str] = None, title: str = "molphenix benchmark",
                 mem_cap_bytes: Optional[int] = None):
        self.device = device
        self.mem_cap_bytes = mem_cap_bytes  # providers estimated above it are skipped (row says so)
        self.threads = int(threads or os.cpu_count() or 1)
        torch.set_num_threads(self.threads)
        os.environ["OMP_NUM_THREADS"] = str(self.threads)  # for children and late-starting pools
        try:
            import faiss

            faiss.omp_set_num_threads(self.threads)
        except ImportError:
            pass
        self.rows: List[Row] = []
        self.matmul: Optional[Dict[str, Any]] = None
        self.command = command if command is not None else " ".join([Path(sys.argv[0]).name] + sys.argv[1:])
        self.load_start = _loadavg()
        self.versions = _versions()
        self.sha = git_sha()
        self.machine = machine_tag(device)
        self.device_name = device_name(device)
        self._log: Optional[TextIO] = None
        self._stdout = sys.stdout
        self.csv_path = csv_path
        self.results_dir = Path(results_dir) if results_dir else None
        if self.results_dir is not None:
            self.results_dir.mkdir(parents=True, exist_ok=True)
            self.csv_path = self.results_dir / "results.csv"
            self._log = (self.results_dir / "run.log").open("a")
            sys.stdout = Tee(self._stdout, self._log)  # type: ignore[assignment]
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        print(f"# {title}: {now}")
        print(f"# command: {self.command}")
        print(f"# machine: {self.machine} ({self.device_name}); device {device}; threads {self.threads}")
        print("# versions: " + ", ".join(f"{k} {v}" for k, v in self.versions.items() if v)
              + f"; git {self.sha}")
        print(f"# load average at start (1/5/15 min): {self.load_start}")
        try:
            up = subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
            print(f"# uptime: {up}")
        except Exception:
            pass
        if self.csv_path:
            print(f"# results: {self.csv_path}")
        sys.stdout.flush()

    # -- the yardstick
    def measure_matmul(self, *, when: str = "start", **kw) -> float:
        """torch.mm's rate, logged and written as a row; the first measurement is the yardstick
        of every later row's ``pct_of_matmul`` (a later one, e.g. at the end, only shows drift)."""
        m = matmul_rate(self.device, **kw)
        if self.matmul is None:
            self.matmul = m
        row = Row(op="matmul", provider="torch.mm", case={"M": m["n"], "N": m["n"], "K": m["n"]},
                  dtype=m["dtype"], device=self.device, threads=self.threads, warmup=kw.get("warmup", 1),
                  times=m["times"], flops=m["flops"],
                  notes=f"the machine's own GEMM rate, measured at the {when} of the run")
        print(f"torch.mm {m['case']} ({when}): {m['gflops']:.1f} GFLOP/s (median of {len(m['times'])}; "
              f"times {', '.join(f'{t:.4f}' for t in m['times'])} s)", flush=True)
        self.add(row)
        return m["gflops"]

    # -- rows
    def add(self, row: Row) -> None:
        self.rows.append(row)
        if self.csv_path:
            self._append(row)

    def _append(self, r: Row) -> None:
        path = Path(self.csv_path)  # type: ignore[arg-type]
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists() or path.stat().st_size == 0
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        mm = self.matmul["gflops"] if self.matmul else None
        gf = r.gflops
        with path.open("a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
            if new:
                w.writeheader()
            w.writerow({
                "timestamp": now, "git_sha": self.sha, "machine": self.machine, "device": r.device,
                "device_name": self.device_name, "op": r.op, "provider": r.provider,
                "case": json.dumps(r.case, sort_keys=True), "dtype": r.dtype, "threads": r.threads,
                "warmup": r.warmup, "repeats": len(r.times),
                "median_s": f"{r.median:.6g}" if r.times else "",
                "min_s": f"{min(r.times):.6g}" if r.times else "",
                "max_s": f"{max(r.times):.6g}" if r.times else "",
                "throughput": f"{r.throughput:.6g}" if r.throughput else "",
                "throughput_unit": r.unit, "gflops": f"{gf:.5g}" if gf else "",
                "pct_of_matmul": f"{100 * gf / mm:.1f}" if gf and mm else "",
                "matmul_gflops": f"{mm:.5g}" if mm else "",
                "matmul_case": self.matmul["case"] if self.matmul else "",
                "peak_mem_mb": f"{r.peak_mem_bytes / 2**20:.1f}" if r.peak_mem_bytes is not None else "",
                "outputs_mb": f"{r.outputs_bytes / 2**20:.1f}" if r.outputs_bytes is not None else "",
                "mem_counted": r.mem_counted, "status": r.status, "notes": r.notes,
                "load_avg_start": self.load_start, **self.versions, "command": self.command,
            })

    def close(self, *, table: bool = True) -> None:
        if table and self.rows:
            print()
            print(markdown_table(self.rows, matmul=self.matmul["gflops"] if self.matmul else None))
        print(f"# load average at end (1/5/15 min): {_loadavg()}")
        if self.csv_path:
            print(f"# wrote {len(self.rows)} rows to {self.csv_path}")
        sys.stdout.flush()
        if self._log is not None:
            sys.stdout = self._stdout
            self._log.close()
            self._log = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is not None:
            print(f"# run FAILED: {type(exc).__name__}: {exc}")
        self.close(table=exc is None)


# ------------------------------------------------------------------------------------------------
# running cases

def run_checks(run: Run, spec, *, dtype: str, only: Optional[Sequence[str]] = None) -> None:
    """The spec's correctness check for every selected provider; raises :class:`CheckFailed`."""
    for line in spec.check(device=run.device, dtype=dtype, threads=run.threads, only=only):
        print(f"  check {spec.op}: {line}", flush=True)


def _avail_bytes(device: str = "cpu") -> Optional[int]:
    if device.startswith("cuda"):
        try:
            return int(torch.cuda.mem_get_info()[0])
        except Exception:
            return None
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:
        try:
            with open("/proc/meminfo") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def run_case(run: Run, spec, params: Dict[str, Any], *, dtype: str, only: Optional[Sequence[str]] = None,
             warmup: int = 1, repeats: int = 3, memory: bool = True, mem_timeout: float = 600.0,
             variants: bool = False) -> List[Row]:
    """Time (interleaved) and measure the memory of every selected provider on one case."""
    case, provs = spec.build(params, device=run.device, dtype=dtype, threads=run.threads, only=only,
                             variants=variants)
    print(f"case {case.op} " + " ".join(f"{k}={v}" for k, v in case.sizes.items()) + f" {dtype}: "
          f"providers {', '.join(p.name for p in provs)}; warm-up {warmup}, {repeats} interleaved repeats",
          flush=True)
    rows: Dict[str, Row] = {}
    runnable: List[Provider] = []
    avail = _avail_bytes(run.device)
    for p in provs:
        row = Row(op=case.op, provider=p.name, case=dict(case.sizes), dtype=dtype, device=run.device,
                  threads=run.threads, warmup=warmup, flops=case.flops, work=case.work, unit=case.unit,
                  outputs_bytes=case.outputs_bytes, notes=p.notes)
        rows[p.name] = row
        need = spec.memory_estimate(params, p.name, dtype) if hasattr(spec, "memory_estimate") else None
        if need and run.mem_cap_bytes and need > run.mem_cap_bytes:
            row.status = (f"skipped: needs about {need / 2**30:.1f} GiB, over this run's cap of "
                          f"{run.mem_cap_bytes / 2**30:.1f} GiB")
        elif need and avail is not None and need * 1.3 > avail:
            row.status = (f"skipped: needs about {need / 2**30:.1f} GiB, "
                          f"{avail / 2**30:.1f} GiB available")
        if row.status != "ok":
            print(f"  {p.name:14s} {row.status}", flush=True)
            continue
        runnable.append(p)
    if runnable:
        try:
            times = time_interleaved(runnable, device=run.device, warmup=warmup, repeats=repeats)
        except torch.cuda.OutOfMemoryError as e:  # pragma: no cover - GPU only
            torch.cuda.empty_cache()
            # one provider did not fit: time the others, each alone in the rotation
            times = {}
            for p in runnable:
                try:
                    times.update(time_interleaved([p], device=run.device, warmup=warmup, repeats=repeats))
                except torch.cuda.OutOfMemoryError as e1:
                    torch.cuda.empty_cache()
                    rows[p.name].status = "OOM: " + str(e1).split("\n")[0][:120]
            del e
        for name, t in times.items():
            rows[name].times = t
    for p in runnable:
        row = rows[p.name]
        if not row.times or not memory:
            continue
        if run.device.startswith("cuda"):
            try:
                with _Env(p.env):
                    row.peak_mem_bytes = cuda_peak_of_call(p.fn)
                row.mem_counted = MEM_CUDA
            except torch.cuda.OutOfMemoryError:  # pragma: no cover
                torch.cuda.empty_cache()
        else:
            res = _memory_in_child(spec.ref, params, p.name, dtype, run.threads, mem_timeout)
            if "error" in res:
                row.mem_counted = res["error"]
            else:
                row.peak_mem_bytes = int(res["peak_bytes"])
                row.mem_counted = MEM_CPU + ("" if res["method"] == "VmHWM" else f" [{res['method']}]")
    for p in provs:
        r = rows[p.name]
        if r.times:
            mem = f"peak {r.peak_mem_bytes / 2**20:9.1f} MB" if r.peak_mem_bytes is not None else ""
            gf = f"{r.gflops:9.1f} GFLOP/s" if r.gflops else ""
            print(f"  {p.name:14s} median {r.median:9.4f} s (min {min(r.times):.4f}, max {max(r.times):.4f}, "
                  f"n={len(r.times)}) {gf} {mem}", flush=True)
        run.add(r)
    if run.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return [rows[p.name] for p in provs]


def markdown_table(rows: Sequence[Row], *, matmul: Optional[float] = None, baseline: str = "naive") -> str:
    """Case, provider, median (min-max), ratio of the baseline's time, GFLOP/s (% of mm),
    throughput, peak memory."""
    def key(r):
        return (r.op, json.dumps(r.case, sort_keys=True), r.dtype)

    base = {key(r): r.median for r in rows if r.provider == baseline and r.times}
    lines = [f"| op | case | dtype | provider | median s (min-max) | {baseline} / provider | GFLOP/s (% of mm) "
             "| throughput | peak MB | status |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        case = ", ".join(f"{k}={v}" for k, v in r.case.items())
        t = f"{r.median:.4g} ({min(r.times):.4g}-{max(r.times):.4g})" if r.times else "-"
        sp = f"{base[key(r)] / r.median:.2f}x" if key(r) in base and r.times else ""
        gf = r.gflops
        g = (f"{gf:.1f}" + (f" ({100 * gf / matmul:.0f}%)" if matmul else "")) if gf else ""
        tp = f"{r.throughput:.3g} {r.unit}" if r.throughput else ""
        mem = f"{r.peak_mem_bytes / 2**20:.0f}" if r.peak_mem_bytes is not None else ""
        lines.append(f"| {r.op} | {case} | {r.dtype} | {r.provider} | {t} | {sp} | {g} | {tp} | {mem} | {r.status} |")
    return "\n".join(lines)
