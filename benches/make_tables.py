"""The README's benchmark table, generated from committed benchmark runs.

    python benches/make_tables.py RUN [RUN ...]                       # print the markdown
    python benches/make_tables.py RUN [RUN ...] --update README.md    # rewrite the README's table
    python benches/make_tables.py --check README.md                   # exit 1 unless it is up to date

A RUN is the raw log of a CPU run, ``benches/results/<machine>/<start>-<script>.log``, whose rows
are read from the machine's table ``benches/results/<machine>.csv`` (the rows with the log's
command and load average, measured after the log's start), or a dated folder holding
``results.csv`` (a GPU run). Rows use the layout of ``molphenix.benchmark.CSV_FIELDS``; where a
(op, case, dtype, provider) was measured more than once the latest row wins.

The table sits between ``<!-- bench-table START -->`` and ``<!-- bench-table END -->`` (a second
one, e.g. the GPU's, between ``<!-- bench-table:gpu START -->`` and its END, with ``--table gpu``);
the line after START lists the runs it was made from, so ``--check`` regenerates every table of
the file from the runs it lists.
Only rows measured on a committed tree are published: a row whose commit is ``-dirty`` or
unknown stops ``--update`` and ``--check`` (``--allow-dirty`` prints such a table, for history).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- bench-table START -->", "<!-- bench-table END -->"  # the default table's markers
MARKER_RE = re.compile(r"<!-- bench-table(?::(\w[\w-]*))? START -->")
RUNS_RE = re.compile(r"^<!-- runs: (.*) -->$")
ORDER = ["ours", "naive", "chunked", "faiss"]
OP_ORDER = ["s2l_loss", "arctan_l2_similarity", "retrieval_ranks", "topk_retrieve"]


class TableError(Exception):
    """A run cannot be read or may not be published."""


def _resolve(p: Path) -> Path:
    return p if p.is_absolute() or p.exists() else ROOT / p


def log_header(path: Path) -> Dict[str, str]:
    """The first run header of a raw log: start time, command, load average at start, git line."""
    head: Dict[str, str] = {}
    with _resolve(path).open() as fh:
        for i, line in enumerate(fh):
            if i > 40:
                break
            line = line.rstrip("\n")
            m = re.match(r"^# .+?: (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00)$", line)
            if m and "start" not in head:
                head["start"] = m.group(1)
            elif line.startswith("# command: ") and "command" not in head:
                head["command"] = line[len("# command: "):]
            elif line.startswith("# load average at start (1/5/15 min): ") and "load" not in head:
                head["load"] = line.split(": ", 1)[1]
    missing = {"start", "command", "load"} - set(head)
    if missing:
        raise TableError(f"{path}: not a benchmark log (no {', '.join(sorted(missing))} in its header)")
    return head


def load_run(run: Path) -> List[Dict[str, str]]:
    """The rows of one run (each with ``_run``: the run's path as given)."""
    real = _resolve(run)
    if real.is_dir():
        csv_path = real / "results.csv"
        if not csv_path.exists():
            raise TableError(f"{run}: a run folder must hold results.csv")
        with csv_path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    else:
        if not real.exists():
            raise TableError(f"{run}: no such log or folder")
        head = log_header(run)
        table = real.parent.parent / f"{real.parent.name}.csv"
        if not table.exists():
            raise TableError(f"{run}: the machine's table {table.name} is not beside its folder")
        with table.open(newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r["command"] == head["command"]
                    and r["load_avg_start"] == head["load"] and r["timestamp"] >= head["start"]]
    if not rows:
        raise TableError(f"{run}: no rows")
    return [dict(r, _run=run.as_posix()) for r in rows]


def load(runs: List[Path]) -> List[Dict[str, str]]:
    rows: List[Dict[str, str]] = []
    for run in runs:
        rows += load_run(run)
    latest: Dict[tuple, Dict[str, str]] = {}
    rows = sorted(rows, key=lambda r: r["timestamp"])
    keep = [r for r in rows if r["op"] == "matmul"]  # every yardstick measurement stays
    for r in rows:
        if r["op"] != "matmul":
            latest[(r["op"], r["case"], r["dtype"], r["provider"])] = r
    return keep + list(latest.values())


def uncommitted(rows: List[Dict[str, str]]) -> List[str]:
    """The commits of rows that were not measured on a committed tree."""
    return sorted({r["git_sha"] or "(none)" for r in rows
                   if not r["git_sha"] or r["git_sha"].endswith("-dirty") or r["git_sha"] == "unknown"})


def _case_text(op: str, case: Dict) -> str:
    c = dict(case)
    if op == "arctan_l2_similarity":
        thr = c.pop("threshold", None)
        ps = c.pop("pass", "fwd")
        n, m = c.pop("N"), c.pop("M")
        head = f"N=M={n:,}" if n == m else f"N={n:,}, M={m:,}"
        return f"{ps}, {head}, E={c.pop('E')}, " + ("no threshold" if thr is None else f"threshold {thr}")
    if op in ("retrieval_ranks", "topk_retrieve") and c.get("Q") == c.get("N"):
        q = c.pop("Q")
        c.pop("N")
        return ", ".join([f"Q=N={q:,}"] + [f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in c.items()])
    return ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in c.items())


def _sec(x: float) -> str:
    return f"{x:.3g}"


def _sha(s: str) -> str:
    base = s[:-len("-dirty")] if s.endswith("-dirty") else s
    return f"`{base[:7]}`" + ("-dirty" if s.endswith("-dirty") else "")


def table(rows: List[Dict[str, str]], runs: List[Path]) -> str:
    mm = sorted((r for r in rows if r["op"] == "matmul"), key=lambda r: r["timestamp"])
    ops = [r for r in rows if r["op"] != "matmul"]
    first = ops[0] if ops else rows[0]
    mem = sorted({r["mem_counted"] for r in ops if r["mem_counted"]})
    stamps = sorted(r["timestamp"] for r in rows)
    shas = sorted({r["git_sha"] for r in rows})
    out = [f"<!-- runs: {' '.join(r.as_posix() for r in runs)} -->",
           f"{first['device_name']}, {first['threads']} threads for every provider, {first['dtype']}; "
           f"python {first['python']}, torch {first['torch']}, faiss {first['faiss'] or '-'}, molphenix "
           f"{first['molphenix']}; measured {stamps[0][:16]}Z to {stamps[-1][:16]}Z on commit "
           f"{', '.join(_sha(s) for s in shas)}. Runs (the rows are in the machine's table, "
           "`benches/results/<machine>.csv`; the raw log is the file named):", ""]
    for run in runs:
        rr = [r for r in rows if r["_run"] == run.as_posix()]
        if not rr:
            continue
        r = min(rr, key=lambda x: x["timestamp"])
        line = (f"- `{run.as_posix()}`: `{r['command']}`, load average {r['load_avg_start']} (1/5/15 min) "
                "at the start")
        m = [x for x in mm if x["_run"] == run.as_posix()]
        if m:
            line += "; torch.mm " + (m[0]["matmul_case"] or "") + ": " + ", ".join(
                f"{float(x['gflops']):.0f} GFLOP/s ({'start' if 'start' in x['notes'] else 'end'})" for x in m)
        out.append(line)
    out.append("")
    out.append("\"% of mm\" compares with torch.mm measured at the start of the same run.")
    out.append("")
    out.append("| op | case | provider | median s (min–max), warm-up+timed calls | time / ours | GFLOP/s (% of mm) "
               "| peak MB | git | status |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    groups: Dict[tuple, List[Dict[str, str]]] = {}
    for r in ops:
        groups.setdefault((r["op"], r["case"], r["dtype"]), []).append(r)

    def gkey(k):
        op, case, _ = k
        c = json.loads(case)
        nums = tuple(v for _, v in sorted(c.items()) if isinstance(v, (int, float)) and not isinstance(v, bool))
        return (OP_ORDER.index(op) if op in OP_ORDER else 99, op, c.get("pass", ""), str(c.get("threshold")), nums)

    for k in sorted(groups, key=gkey):
        op, case, _ = k
        g = sorted(groups[k], key=lambda r: (ORDER.index(r["provider"]) if r["provider"] in ORDER else
                                             0.5 if r["provider"].startswith("ours") else 9, r["provider"]))
        ours = next((float(r["median_s"]) for r in g if r["provider"] == "ours" and r["median_s"]), None)
        ctext = _case_text(op, json.loads(case))
        for r in g:
            if r["median_s"]:
                t = float(r["median_s"])
                timing = f"{_sec(t)} ({_sec(float(r['min_s']))}–{_sec(float(r['max_s']))}), {r['warmup']}+{r['repeats']}"
                ratio = "1" if r["provider"] == "ours" else (f"{t / ours:.2f}" if ours else "")
                gf = f"{float(r['gflops']):.0f} ({float(r['pct_of_matmul']):.0f}%)" if r["gflops"] and r["pct_of_matmul"] else ""
            else:
                timing, ratio, gf = "—", "", ""
            mb = f"{float(r['peak_mem_mb']):.0f}" if r["peak_mem_mb"] else "—"
            status = r["status"] if r["status"] != "ok" else ""
            out.append(f"| `{op}` | {ctext} | {r['provider']} | {timing} | {ratio} | {gf} | {mb} | {_sha(r['git_sha'])} "
                       f"| {status} |")
    out.append("")
    out.append("Every provider of a case: the same warm-up and number of timed calls, interleaved across the "
               "providers. Peak MB: " + "; ".join(mem) + ". The outputs' own size (gradients, ranks, top-k "
               "lists) is the CSV's `outputs_mb` column. Time / ours > 1: ours is faster by that factor.")
    return "\n".join(out)


def markers(name: str = "") -> tuple:
    """The START and END markers of the table called ``name`` ("" is the default table)."""
    tag = f"bench-table:{name}" if name else "bench-table"
    return f"<!-- {tag} START -->", f"<!-- {tag} END -->"


def tables_in(doc: str) -> List[str]:
    """The names of the tables in ``doc`` ("" for the default one)."""
    return [m.group(1) or "" for m in MARKER_RE.finditer(doc)]


def _block(doc: str, target: Path, name: str = "") -> tuple:
    start, end = markers(name)
    if start not in doc or end not in doc:
        raise TableError(f"{target}: no {start} ... {end} markers")
    head, rest = doc.split(start, 1)
    body, tail = rest.split(end, 1)
    return head, body, tail


def runs_of(doc: str, target: Path, name: str = "") -> List[Path]:
    """The runs the table ``name`` in ``doc`` says it was made from."""
    _, body, _ = _block(doc, target, name)
    lines = body.strip("\n").splitlines()
    m = RUNS_RE.match(lines[0]) if lines else None
    if not m or not m.group(1).split():
        raise TableError(f"{target}: the line after {markers(name)[0]} must be '<!-- runs: RUN ... -->'")
    return [Path(x) for x in m.group(1).split()]


def render(doc: str, target: Path, name: str, runs: List[Path], allow_dirty: bool = False) -> str:
    """``doc`` with the table ``name`` regenerated from ``runs``."""
    rows = load(runs)
    bad = uncommitted(rows)
    if bad and not allow_dirty:
        raise TableError(f"rows measured on an uncommitted tree ({', '.join(bad)}): a published table holds "
                         "only rows of a clean, committed tree (rerun after committing)")
    head, _, tail = _block(doc, target, name)
    start, end = markers(name)
    return head + start + "\n" + table(rows, runs) + "\n" + end + tail


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="*", help="raw logs under benches/results/<machine>/ or run folders")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--update", type=Path, help="rewrite the table between the markers in this file")
    g.add_argument("--check", type=Path,
                   help="exit 1 unless every table in this file equals the one generated from the runs it "
                        "lists (with RUN ...: only the --table one, from those runs)")
    ap.add_argument("--table", default="", metavar="NAME",
                    help="which table: markers <!-- bench-table:NAME START/END --> "
                         "(default: <!-- bench-table START -->)")
    ap.add_argument("--allow-dirty", action="store_true",
                    help="print a table with rows of uncommitted trees (never with --update or --check)")
    a = ap.parse_args(argv)
    if a.allow_dirty and (a.update or a.check):
        ap.error("--allow-dirty: only for printing; published tables hold committed rows only")
    if not a.runs and not a.check:
        ap.error("give at least one RUN (or --check FILE, which reads them from FILE)")
    target = a.update or a.check
    try:
        if target is None:
            rows = load(a.runs)
            bad = uncommitted(rows)
            if bad and not a.allow_dirty:
                raise TableError(f"rows measured on an uncommitted tree ({', '.join(bad)}); --allow-dirty "
                                 "prints them (history), a published table may not hold them")
            print(table(rows, a.runs))
            return 0
        doc = _resolve(target).read_text()
        if a.update:
            _resolve(target).write_text(render(doc, target, a.table, a.runs))
            print(f"{target}: table {a.table or '(default)'} regenerated from {' '.join(r.as_posix() for r in a.runs)}")
            return 0
        names = [a.table] if a.runs else tables_in(doc)
        if not names:
            raise TableError(f"{target}: no bench-table markers")
        status = 0
        for name in names:
            runs = a.runs or runs_of(doc, target, name)
            listed = " ".join(r.as_posix() for r in runs)
            if render(doc, target, name, runs) != doc:
                print(f"{target}: table {name or '(default)'} differs from the one generated from {listed} "
                      f"(python benches/make_tables.py {listed}{' --table ' + name if name else ''} "
                      f"--update {target})", file=sys.stderr)
                status = 1
            else:
                print(f"{target}: table {name or '(default)'} matches {listed}")
        return status
    except (TableError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

if __name__ == "__main__":
    raise SystemExit(main())
