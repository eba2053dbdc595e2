"""Benchmark: training throughput, one step in process and ``molphenix train`` end to end.

Two sections, both ``ours`` (the loss on the compiled ops) vs ``naive`` (the same loss on the
pure-torch reference ops); everything else (data, model, optimiser) is the same code:

  step  op ``train_step``: one optimisation step of molphenix-small (E = 384 phenomic inputs,
        F = 2048 Morgan bits, doses), s2l in the input similarity space with u scaled to the
        training default soft-positive fraction (0.02): forward of both encoders, loss (with its
        soft-positive statistic), backward, gradient clip, AdamW, clamp (case in
        ``molphenix.benchmark.cases_pipeline``). Checked first: loss and every parameter gradient,
        ours vs naive. Interleaved repeats, peak memory in a fresh process per provider.
  cli   op ``train_e2e``: ``molphenix train`` in one process per provider (``naive``:
        ``MOLPHENIX_BACKEND=reference``), the same dataset, batch, seed and steps, validation only
        after the last step. Each step's time is n / samples_per_s of its ``train_log.csv`` row
        (data assembly, encoders, loss, backward, clip, AdamW), n the samples it took (the
        trainer caps the batch at a small dataset's epoch: ``B`` is the batch taken,
        ``B_requested`` beside it). The first ``--skip`` steps are warm-up. Peak memory: the
        process's whole resident-set high-water mark (dataset, model, interpreter included).
        The dataset: ``--data DIR``, or a simulation of ``--molecules`` molecules made first in a
        temporary folder. The two processes run one after the other, not interleaved.

    python benches/bench_training.py --threads 2                  # B = 4096; cli on 6,000 molecules
    python benches/bench_training.py --quick --no-save
    python benches/bench_training.py --only cli --data DATASET --batch-size 4096 --steps 4
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _harness import Row, open_run, parser, run_plan

from molphenix.benchmark.cases_pipeline import TRAIN_STEP

SECTIONS = ("step", "cli")
MEM_NOTE = "whole-process peak RSS (ru_maxrss of the train process: dataset, model, interpreter included)"


def _train_once(data: Path, out: Path, env_extra: dict, args) -> dict:
    cfg = out.parent / f"{out.name}.json"
    cfg.write_text(json.dumps({"eval_every": 0, "checkpoint_every": 3600}))
    cmd = [sys.executable, "-m", "molphenix", "train", "--data", str(data), "--out", str(out),
           "--config", str(cfg), "--batch-size", str(args.batch_size), "--steps", str(args.steps),
           "--threads", str(args.threads), "--seed", "0", "--no-progress", "--overwrite", "--loss", args.loss]
    proc = subprocess.Popen(cmd, env=dict(os.environ, **env_extra), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    text = proc.stdout.read()
    _, status, ru = os.wait4(proc.pid, 0)
    rc = os.waitstatus_to_exitcode(status)
    rows = []
    if (out / "train_log.csv").exists():
        with (out / "train_log.csv").open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    return {"rc": rc, "rows": rows, "maxrss_kb": ru.ru_maxrss, "output": text, "cmd": " ".join(cmd)}


def _simulate(out: Path, molecules: int) -> None:
    cmd = [sys.executable, "-m", "molphenix", "simulate", "--out", str(out), "--molecules", str(molecules),
           "--seed", "0", "--no-progress"]
    print(f"dataset: {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def _cli_section(run, args, tmp: Path) -> int:
    data = args.data
    if data is None:
        data = tmp / f"sim{args.molecules}"
        _simulate(data, args.molecules)
    print(f"\n## train_e2e: dataset {data}; batch {args.batch_size}; {args.steps} steps ({args.skip} warm-up); "
          f"loss {args.loss}; threads {run.threads}", flush=True)
    status = 0
    for name, env in (("ours", {}), ("naive", {"MOLPHENIX_BACKEND": "reference"})):
        res = _train_once(data, tmp / name, env, args)
        print(f"  {name}: {res['cmd']} (env {env or 'default'}) -> exit {res['rc']}", flush=True)
        for line in res["output"].strip().splitlines()[-5:]:
            print(f"    | {line}", flush=True)
        if res["rc"] != 0 or len(res["rows"]) <= args.skip:
            print(f"  {name}: FAILED (exit {res['rc']}, {len(res['rows'])} logged steps)", flush=True)
            status = 1
            continue
        seen = [0] + [int(r["samples_seen"]) for r in res["rows"]]
        sizes = [b - a for a, b in zip(seen, seen[1:])]  # the batch actually taken per step
        steps = list(zip(sizes, res["rows"]))[args.skip:]
        times = [n / float(r["samples_per_s"]) for n, r in steps]
        batch = statistics.median(n for n, _ in steps)
        fracs = [float(r["soft_pos_frac"]) for r in res["rows"] if r.get("soft_pos_frac")]
        for r in res["rows"]:
            print(f"    step {r['step']}: samples_per_s {r['samples_per_s']}, loss {r['loss']}, "
                  f"soft_pos_frac {r.get('soft_pos_frac', '')}", flush=True)
        notes = "molphenix train; step time = samples taken / samples_per_s of train_log.csv"
        if fracs:
            notes += f"; soft_pos_frac median {statistics.median(fracs):.4f}"
        row = Row(op="train_e2e", provider=name,
                  case={"B": int(batch), "B_requested": args.batch_size, "steps": args.steps, "skip": args.skip,
                        "loss": args.loss, "model": "molphenix-small", "data": Path(data).name},
                  dtype="float32", device="cpu", threads=run.threads, warmup=args.skip, times=times,
                  work=float(batch), unit="samples/s", peak_mem_bytes=res["maxrss_kb"] * 1024,
                  mem_counted=MEM_NOTE, notes=notes)
        print(f"  {name:8s} median step {row.median:.3f} s -> {row.throughput:.1f} samples/s; "
              f"process peak RSS {res['maxrss_kb'] / 1024:.0f} MB", flush=True)
        run.add(row)
    return status


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(SECTIONS), help="comma-separated: step,cli (default both)")
    p.add_argument("--batch-size", type=int, default=None, help="B of both sections (default 4096; quick 512)")
    p.add_argument("--data", type=Path, default=None, help="cli: dataset directory (default: simulate one)")
    p.add_argument("--molecules", type=int, default=None,
                   help="cli: molecules of the simulated dataset (default 6000; quick 300)")
    p.add_argument("--steps", type=int, default=None, help="cli: training steps (default 4; quick 3)")
    p.add_argument("--skip", type=int, default=1, help="cli: first steps not counted (warm-up)")
    p.add_argument("--loss", default="s2l", help="cli: the loss (default s2l)")
    args = p.parse_args(argv)
    only = [s for s in args.only.split(",") if s]
    bad = [s for s in only if s not in SECTIONS]
    if bad:
        p.error(f"--only: unknown section(s) {', '.join(bad)}; expected step and/or cli")
    if args.device != "cpu":
        p.error("--device: the training benchmarks are CPU only")
    args.batch_size = args.batch_size or (512 if args.quick else 4096)
    args.molecules = args.molecules or (300 if args.quick else 6000)
    args.steps = args.steps or (3 if args.quick else 4)
    if args.data is not None and not args.data.is_dir():
        p.error(f"--data: {args.data} is not a directory")
    run = open_run(args, title="benches/bench_training.py", matmul="step" in only)
    args.threads = run.threads
    status = 0
    tmp = Path(tempfile.mkdtemp(prefix="molphenix-bench-training-"))
    try:
        with run:
            if "step" in only:
                params = {"B": args.batch_size, "E": 384, "F": 2048, "soft_frac": 0.02}
                status = run_plan(run, [(TRAIN_STEP, params)], args)
            if "cli" in only and status == 0:
                status = _cli_section(run, args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
