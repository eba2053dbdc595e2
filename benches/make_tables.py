"""The README's benchmark tables, generated from a committed results directory.

    python benches/make_tables.py benches/results/<run> [<run> ...]                # print the markdown
    python benches/make_tables.py benches/results/<run> ... --update README.md     # rewrite the table
    python benches/make_tables.py benches/results/<run> ... --check README.md      # exit 1 if it differs

Reads each directory's ``results.csv`` (the layout of ``molphenix.benchmark.CSV_FIELDS``); where
a (op, case, dtype, provider) was measured more than once the latest row wins. The table in
the README sits between ``<!-- bench-table START -->`` and ``<!-- bench-table END -->``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Dict, List

START, END = "<!-- bench-table START -->", "<!-- bench-table END -->"
ORDER = ["ours", "naive", "chunked", "faiss"]
OP_ORDER = ["s2l_loss", "arctan_l2_similarity", "retrieval_ranks", "topk_retrieve"]


def load(run_dirs: List[Path]) -> List[Dict[str, str]]:
    rows = []
    for d in run_dirs:
        with (d / "results.csv").open(newline="") as fh:
            rows += [dict(r, _dir=d.as_posix()) for r in csv.DictReader(fh)]
    latest: Dict[tuple, Dict[str, str]] = {}
    rows = sorted(rows, key=lambda r: r["timestamp"])
    keep = [r for r in rows if r["op"] == "matmul"]  # every yardstick measurement stays
    for r in rows:
        if r["op"] == "matmul":
            continue
        latest[(r["op"], r["case"], r["dtype"], r["provider"])] = r
    return keep + list(latest.values())


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


def table(rows: List[Dict[str, str]]) -> str:
    mm = sorted((r for r in rows if r["op"] == "matmul"), key=lambda r: r["timestamp"])
    ops = [r for r in rows if r["op"] != "matmul"]
    first = ops[0] if ops else rows[0]
    mem = sorted({r["mem_counted"] for r in ops if r["mem_counted"]})
    stamps = sorted(r["timestamp"] for r in rows)
    runs: Dict[str, Dict[str, str]] = {}  # one entry per run (its load average at start)
    for r in sorted(rows, key=lambda r: r["timestamp"]):
        runs.setdefault(r["load_avg_start"] + r["command"], r)
    out = [f"{first['device_name']}, {first['threads']} threads for every provider, {first['dtype']}; "
           f"python {first['python']}, torch {first['torch']}, faiss {first['faiss'] or '-'}, molphenix "
           f"{first['molphenix']}; measured {stamps[0][:16]}Z to {stamps[-1][:16]}Z; the git commit of each "
           "row is in the table. Runs (each directory holds `results.csv` and the raw `run.log`):"]
    out.append("")
    for r in runs.values():
        line = (f"- `{r['_dir']}`: `{r['command']}`, started {r['timestamp'][:16]}Z, load average "
                f"{r['load_avg_start']} (1/5/15 min)")
        m = [x for x in mm if x["load_avg_start"] + x["command"] == r["load_avg_start"] + r["command"]]
        if m:
            line += "; torch.mm " + (m[0]["matmul_case"] or "") + ": " + ", ".join(
                f"{float(x['gflops']):.0f} GFLOP/s ({'start' if 'start' in x['notes'] else 'end'})" for x in m)
        out.append(line)
    out.append("")
    out.append("\"% of mm\" compares with torch.mm measured at the start of the same run.")
    out.append("")
    out.append("| op | case | provider | median s (min–max), warm-up+timed calls | time / ours | GFLOP/s (% of mm) | peak MB | git | status |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    groups: Dict[tuple, List[Dict[str, str]]] = {}
    for r in ops:
        groups.setdefault((r["op"], r["case"], r["dtype"]), []).append(r)

    def gkey(k):
        op, case, _ = k
        c = json.loads(case)
        nums = tuple(v for _, v in sorted(c.items()) if isinstance(v, (int, float)) and not isinstance(v, bool))
        return (OP_ORDER.index(op) if op in OP_ORDER else 99, c.get("pass", ""), str(c.get("threshold")), nums)

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
            out.append(f"| `{op}` | {ctext} | {r['provider']} | {timing} | {ratio} | {gf} | {mb} | "
                       f"`{r['git_sha'][:7]}`{'-dirty' if r['git_sha'].endswith('-dirty') else ''} | {status} |")
    out.append("")
    out.append("Every provider of a case: the same warm-up and number of timed calls, interleaved across the "
               "providers. Peak MB: " + "; ".join(mem) + ". The outputs' own size (gradients, ranks, top-k "
               "lists) is the CSV's `outputs_mb` column. Time / ours > 1: ours is faster by that factor.")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dirs", type=Path, nargs="+")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--update", type=Path, help="rewrite the table between the markers in this file")
    g.add_argument("--check", type=Path, help="exit 1 unless this file's table equals the generated one")
    a = ap.parse_args(argv)
    text = table(load(a.run_dirs))
    dirs = " ".join(d.as_posix() for d in a.run_dirs)
    target = a.update or a.check
    if target is None:
        print(text)
        return 0
    doc = target.read_text()
    if START not in doc or END not in doc:
        print(f"{target}: no {START} ... {END} markers", file=sys.stderr)
        return 1
    head, rest = doc.split(START, 1)
    _, tail = rest.split(END, 1)
    new = head + START + "\n" + text + "\n" + END + tail
    if a.check:
        if new != doc:
            print(f"{target}: the benchmark table differs from the results in {dirs}", file=sys.stderr)
            return 1
        print(f"{target}: the benchmark table matches the results in {dirs}")
        return 0
    target.write_text(new)
    print(f"{target}: table regenerated from the results in {dirs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
