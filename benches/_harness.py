"""The benches' side of the one benchmark harness: the command line every ``benches/bench_*.py``
shares, where results go, and the rule that saved rows come from a committed tree.

:mod:`molphenix.benchmark` measures (correctness checks, interleaved timing, peak memory, the
torch.mm yardstick, the CSV layout ``CSV_FIELDS``); the op and pipeline definitions ("specs") are
in :mod:`molphenix.benchmark.cases` and :mod:`molphenix.benchmark.cases_pipeline`. This module
adds only what a script in a checkout needs::

    from _harness import open_run, parser, run_plan

    args = parser("what this measures").parse_args()
    with open_run(args, title="bench_x") as run:
        status = run_plan(run, [(SPEC, {"B": 4096})], args)

Results layout (``benches/results/``, see ``benches/README.md``):

* ``<machine>.csv``: every CPU row measured on that machine, appended run after run;
* ``<machine>/<start>-<script>[-<tag>].log``: the raw log of each of those runs (everything it
  printed: command, conditions, checks, cases, load average at start and end);
* ``<machine>-<date>/``: a dated folder per GPU run (``results.csv`` beside ``run.log`` and the
  other logs of ``scripts/gpu_validate.sh``); ``--results-dir`` asks for one on the CPU too.

Saving needs a committed tree: a run refuses to start when tracked or untracked files outside the
results folders differ from ``HEAD`` (``--allow-dirty`` records the rows as ``<sha>-dirty``
instead; ``benches/make_tables.py`` never publishes such rows).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, TextIO, Tuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
try:  # prefer the installed package; fall back to the checkout (with a dev-built _C)
    import molphenix  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT / "python"))

from molphenix.benchmark import (  # noqa: E402
    CheckFailed,
    Provider,
    Row,
    Run,
    Tee,
    machine_tag,
    run_case,
    run_checks,
    time_interleaved,
)

__all__ = ["parser", "open_run", "run_plan", "parse_sizes", "time_provider", "tree_state", "machine_table",
           "CheckFailed", "Row", "RESULTS", "Tee"]

RESULTS = HERE / "results"
#: outputs, not code: changes here do not make a tree dirty
RESULT_DIRS = ("benches/results", "experiments/results")


# ------------------------------------------------------------------------------------------------
# the command line

def parser(description: str, *, sizes: str = "", default_sizes: str = "") -> argparse.ArgumentParser:
    """The options every bench script shares (add its own to the returned parser)."""
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
                   help="a dated folder for results.csv and run.log (the GPU default: "
                        "benches/results/<machine>-<date>); CPU default: append to benches/results/<machine>.csv "
                        "and log to benches/results/<machine>/")
    p.add_argument("--tag", default="", help="a word added to the log's file name (e.g. s2l)")
    p.add_argument("--no-save", action="store_true", help="print only")
    p.add_argument("--allow-dirty", action="store_true",
                   help="save even with uncommitted changes; the rows are then marked <sha>-dirty")
    p.add_argument("--mem-cap-gb", type=float, default=None,
                   help="skip providers whose estimated memory exceeds this (CPU default 9)")
    if sizes:
        p.add_argument("--sizes", default=None, help=f"comma-separated {sizes} cases (default {default_sizes})")
    return p


def parse_sizes(text: str, names: Sequence[str]) -> List[Dict[str, int]]:
    """``"4096x256x384,16384x256x384"`` with names B, D, E -> a list of case dicts."""
    out = []
    for item in text.split(","):
        try:
            vals = [int(v) for v in item.lower().split("x")]
        except ValueError:
            vals = []
        if len(vals) != len(names):
            print(f"error: --sizes: {item!r} is not {'x'.join(names)} (integers)", file=sys.stderr)
            raise SystemExit(2)
        out.append(dict(zip(names, vals)))
    return out


# ------------------------------------------------------------------------------------------------
# the checkout

def _git(*args: str, root: Path = ROOT) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def tree_state(root: Path = ROOT) -> Tuple[str, List[str]]:
    """(``HEAD``'s 12-character sha or ``""`` without git history, the paths that differ from it:
    modified, staged or untracked, outside the results folders; ignored files such as the built
    extension do not count)."""
    sha = (_git("rev-parse", "--verify", "-q", "--short=12", "HEAD", root=root) or "").strip()
    if not sha:
        return "", []
    status = _git("status", "--porcelain", "--untracked-files=all", "--", ".",
                  *[f":(exclude){d}" for d in RESULT_DIRS], root=root)
    paths = [line[3:] for line in (status or "").splitlines() if line.strip()]
    return sha, paths


def machine_table(device: str = "cpu", root: Path = RESULTS) -> Tuple[Path, Path]:
    """(``<root>/<machine>.csv``, ``<root>/<machine>/``): the machine's table and its log folder."""
    m = machine_tag(device)
    return root / f"{m}.csv", root / m


class BenchRun(Run):
    """A :class:`molphenix.benchmark.Run` whose printed output is also copied to ``log_path``
    (the raw log beside the machine's table); closing the run closes the log."""

    def __init__(self, *, log_path: Optional[Path] = None, **kw: Any):
        self.log_path = log_path
        self._raw: Optional[TextIO] = None
        self._outer = sys.stdout
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            self._raw = log_path.open("a")
            sys.stdout = Tee(self._outer, self._raw)  # type: ignore[assignment]
        try:
            super().__init__(**kw)
        except BaseException:
            self._close_raw()
            raise

    def _close_raw(self) -> None:
        if self._raw is not None:
            sys.stdout.flush()
            sys.stdout = self._outer
            self._raw.close()
            self._raw = None

    def close(self, *, table: bool = True) -> None:
        try:
            super().close(table=table)
            if self.log_path is not None:
                print(f"# raw log: {self.log_path}")
        finally:
            self._close_raw()


def _extension_line() -> str:
    try:
        import molphenix

        info = molphenix.build_info()
        path = info.get("extension_path") or ""
        when = ""
        if path and os.path.exists(path):
            real = os.path.realpath(path)
            stamp = _dt.datetime.fromtimestamp(os.path.getmtime(real), _dt.timezone.utc)
            when = f" (file {real}, modified {stamp.isoformat(timespec='seconds')})"
        return (f"# compiled extension: {info.get('extension')}; simd {info.get('simd_level')}; "
                f"cuda {info.get('cuda')}{when}")
    except Exception as e:  # the log says so rather than failing the run
        return f"# compiled extension: unknown ({type(e).__name__}: {e})"


def open_run(args: argparse.Namespace, *, title: str, matmul: bool = True) -> BenchRun:
    """Start a run: refuse an uncommitted tree when saving (exit status 2), choose where the rows
    and the raw log go, log the conditions, and measure torch.mm's rate first (``matmul``)."""
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("error: --device: cuda asked but torch sees no CUDA device", file=sys.stderr)
            raise SystemExit(2)
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    sha, dirty = tree_state()
    save = not args.no_save
    if save and dirty and not getattr(args, "allow_dirty", False):
        shown = ", ".join(dirty[:5]) + (f" and {len(dirty) - 5} more" if len(dirty) > 5 else "")
        print(f"error: the working tree differs from HEAD {sha} ({shown}); saved rows must come from a "
              "committed tree: commit first, or pass --allow-dirty (rows marked -dirty) or --no-save",
              file=sys.stderr)
        raise SystemExit(2)
    script = Path(sys.argv[0]).stem or "bench"
    cap = args.mem_cap_gb if args.mem_cap_gb is not None else (None if args.device == "cuda" else 9.0)
    kw: Dict[str, Any] = dict(device=args.device, threads=args.threads, title=title,
                              mem_cap_bytes=int(cap * 2**30) if cap else None)
    log_path = None
    if not save:
        pass
    elif args.results_dir is not None or args.device == "cuda":
        from molphenix.benchmark import default_results_dir

        kw["results_dir"] = args.results_dir or default_results_dir(args.device, RESULTS)
    else:
        table, logs = machine_table(args.device)
        start = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
        name = f"{start}-{script}" + (f"-{args.tag}" if getattr(args, "tag", "") else "")
        log_path = logs / f"{name}.log"
        n = 2
        while log_path.exists():
            log_path = logs / f"{name}-{n}.log"
            n += 1
        kw["csv_path"] = table
    run = BenchRun(log_path=log_path, **kw)
    if sha and dirty:
        if not run.sha.endswith("-dirty"):
            run.sha = f"{run.sha}-dirty"
        print(f"# git: the tree differs from HEAD in {len(dirty)} path(s) ({', '.join(dirty[:5])}); "
              f"rows are marked {run.sha}")
    elif sha:
        print(f"# git: clean tree at {sha}")
    else:
        print(f"# git: no history here; rows carry {run.sha}")
    print(_extension_line(), flush=True)
    if matmul:
        run.measure_matmul()
    return run


# ------------------------------------------------------------------------------------------------
# running

def run_plan(run: Run, plan: Sequence[tuple], args: argparse.Namespace, *, big_warmup: Optional[int] = None,
             check_only: Optional[Sequence[str]] = None, end_matmul: bool = False) -> int:
    """Every spec's correctness check first (a failure: ``CHECK FAILED`` in the log, nothing
    timed, status 1), then every case in order. ``plan``: ``(spec, params)`` or ``(spec, params,
    big)`` items; a big case (one call takes tens of seconds) gets ``big_warmup`` warm-up calls
    per provider instead of ``args.warmup``. ``check_only``: providers for the checks (default
    the ``--providers`` subset). Returns the exit status."""
    only = args.providers.split(",") if args.providers else None
    status = 0
    for spec in dict.fromkeys(item[0] for item in plan):
        print(f"\n## check {spec.op} ({args.dtype}, {run.threads} threads, device {run.device})", flush=True)
        try:
            run_checks(run, spec, dtype=args.dtype, only=check_only if check_only is not None else only)
        except CheckFailed as e:
            print(f"CHECK FAILED: {e}", flush=True)
            status = 1
    if status:
        print("# correctness check failed: nothing timed", flush=True)
        return status
    for item in plan:
        spec, params = item[0], item[1]
        big = len(item) > 2 and bool(item[2])
        warmup = big_warmup if (big and big_warmup is not None) else args.warmup
        print(flush=True)
        run_case(run, spec, params, dtype=args.dtype, only=only, warmup=warmup, repeats=args.repeats,
                 memory=not args.no_memory, variants=args.variants)
    if end_matmul:
        print()
        run.measure_matmul(when="end")  # the log shows the drift
    return status


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
