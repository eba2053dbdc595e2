"""Zero-shot quality with the FROZEN defaults, on datasets whose test splits were never read.

For each dataset directory, trains every method with ``TrainConfig(loss=method)`` (the per-loss
defaults of ``molphenix.train.TUNED_DEFAULTS``; nothing is tuned here), evaluates every split with
``molphenix.train.evaluate_run`` (best-validation checkpoint) and writes one CSV row per
(dataset, method, split, subset) plus a log. Run it only after the defaults are frozen: it reads
the test splits.

Usage:
    OMP_WAIT_POLICY=PASSIVE python experiments/quality_check.py --data NAME=DIR [--data NAME=DIR ...] \
        --work /tmp/quality --out experiments/results/quality-YYYY-MM-DD --methods s2l,clip --jobs 4

A run directory that already holds a finished run with the same config is reused (``fit`` says
"already finished"), e.g. the tuning runs of the selected configurations. ``--variant
NAME=LOSS:JSON`` names an ablation (a loss plus TrainConfig overrides) that ``--methods`` can list.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

_CHILD = r"""
import json, sys
from molphenix.train import TrainConfig, fit
from molphenix.train import evaluate_run
spec = json.loads(sys.argv[1])
run = fit(TrainConfig(data=spec["data"], out=spec["out"], loss=spec["loss"], threads=1, progress=False,
                      **spec["overrides"]))
m = evaluate_run(run, n_bootstrap=1000)
cfg = json.load(open(f"{run}/config.json"))
print("RESULT " + json.dumps({"metrics": m, "config": {k: cfg[k] for k in ("seed", "lr", "inactive_rate", "soft_positive_fraction", "weight_decay", "model_overrides", "loss_kwargs", "samples", "steps", "batch_size")}}))
"""


def run_one(name: str, data: str, method: str, work: Path, variants: dict) -> list[dict]:
    out = work / name / method
    out.parent.mkdir(parents=True, exist_ok=True)
    loss, overrides = variants.get(method, (method, {}))
    spec = {"data": data, "out": str(out), "loss": loss, "overrides": overrides}
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    p = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(spec)], capture_output=True, text=True, env=env)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not line:
        raise RuntimeError(f"{name}/{method} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    res = json.loads(line[0][7:])
    rows = []
    for split, m in res["metrics"].items():
        if not isinstance(m, dict):
            continue
        for subset in ("active", "all"):
            s = m[subset]
            rows.append({
                "dataset": name, "method": method, "split": split, "subset": subset,
                "n_candidates": m["n_candidates"], "n_queries": s["n_queries"],
                "top1": s["top1"], "top1_lo": (s.get("ci95") or {}).get("top1", [None, None])[0],
                "top1_hi": (s.get("ci95") or {}).get("top1", [None, None])[1],
                "top5": s["top5"], "chance_top1": s["chance"]["top1"], "chance_top5": s["chance"]["top5"],
                "mrr": s.get("mrr"), "config": json.dumps(res["config"], sort_keys=True),
            })
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", action="append", required=True, help="NAME=DIR")
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--methods", default="s2l,clip,siglip,cloome")
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--variant", action="append", default=[],
                    help='NAME=LOSS:JSON, an ablation usable in --methods, e.g. '
                         's2l-nosoft=s2l:{"loss_kwargs": {"sim_space": "none"}} (TrainConfig overrides)')
    args = ap.parse_args(argv)
    variants = {}
    for v in args.variant:
        name, rest = v.split("=", 1)
        loss, js = rest.split(":", 1)
        variants[name] = (loss, json.loads(js))
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    log = open(outdir / "quality.log", "a")

    def say(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        log.write(line + "\n")
        log.flush()

    datas = [d.split("=", 1) for d in args.data]
    jobs = [(n, d, m) for n, d in datas for m in args.methods.split(",")]
    say(f"jobs={len(jobs)} variants={json.dumps(variants, sort_keys=True)} load={os.getloadavg()}")
    csv_path = outdir / "quality.csv"
    failed = 0
    with ThreadPoolExecutor(args.jobs) as ex:
        futs = {ex.submit(run_one, n, d, m, Path(args.work), variants): (n, m) for n, d, m in jobs}
        for f in futs:
            n, m = futs[f]
            try:
                rows = f.result()
            except Exception as exc:
                say(f"FAILED {n}/{m}: {exc}")
                failed += 1
                continue
            new = not csv_path.exists()
            with open(csv_path, "a", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=list(rows[0]))
                if new:
                    w.writeheader()
                w.writerows(rows)
            for r in rows:
                if r["split"] == "unseen_molecules" and r["subset"] == "active":
                    say(f"{n}/{m}: unseen_molecules active top1 {r['top1']:.3f} [{r['top1_lo']:.3f}, "
                        f"{r['top1_hi']:.3f}] chance {r['chance_top1']:.3f} (n={r['n_queries']}) load={os.getloadavg()[0]:.1f}")
    if failed:
        say(f"{failed} run(s) FAILED (see above); the others are in the CSV")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
