"""Benchmark: ``molphenix train`` end to end, samples/s from the run's own ``train_log.csv``.

One ``molphenix train`` process per provider (``ours``: the default backend, the compiled ops;
``naive``: ``MOLPHENIX_BACKEND=reference``), the same dataset, model, loss, batch size, seed and
steps, validation only after the last step (``eval_every: 0``). Each step's time is
``n / samples_per_s`` of its log row (data assembly, both encoders, loss, backward, clip and
AdamW; checkpoints and validation are outside it), n the samples that step took: the trainer caps
the batch at the epoch size of a small dataset, so ``B`` in the CSV is the batch actually taken
(``B_requested`` beside it). The first ``--skip`` steps are warm-up. The
row's peak memory is the process's whole resident-set high-water mark (``ru_maxrss`` from
``wait4``: the dataset, the model and the interpreter included), not an increase over a baseline
as in the op cases. Rows go into the same CSV layout and results directory as the other benches.

    python benches/bench_train_e2e.py --data DATASET --threads 2 --results-dir benches/results/<run>
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

from _harness import Row, open_run, parser

MEM_NOTE = "whole-process peak RSS (ru_maxrss of the train process: dataset, model, interpreter included)"


def train_once(data: Path, out: Path, env_extra: dict, args) -> dict:
    cfg = out.parent / f"{out.name}.json"
    cfg.write_text(json.dumps({"eval_every": 0, "checkpoint_every": 3600}))
    cmd = [sys.executable, "-m", "molphenix", "train", "--data", str(data), "--out", str(out),
           "--config", str(cfg), "--batch-size", str(args.batch_size), "--steps", str(args.steps),
           "--threads", str(args.threads), "--seed", "0", "--no-progress", "--overwrite"]
    env = dict(os.environ, **env_extra)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    text = proc.stdout.read()
    _, status, ru = os.wait4(proc.pid, 0)
    rc = os.waitstatus_to_exitcode(status)
    with (out / "train_log.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {"rc": rc, "rows": rows, "maxrss_kb": ru.ru_maxrss, "output": text, "cmd": " ".join(cmd)}


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="dataset directory (molphenix simulate or the schema)")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--skip", type=int, default=1, help="first steps not counted (warm-up)")
    p.add_argument("--loss", default="s2l")
    args = p.parse_args(argv)
    run = open_run(args, title="benches/bench_train_e2e.py", matmul=False)
    args.threads = run.threads
    tmp = Path(tempfile.mkdtemp(prefix="molphenix-train-e2e-"))
    status = 0
    with run:
        print(f"dataset {args.data}; batch {args.batch_size}; {args.steps} steps ({args.skip} warm-up); "
              f"loss {args.loss}; threads {run.threads}", flush=True)
        for name, env in (("ours", {}), ("naive", {"MOLPHENIX_BACKEND": "reference"})):
            res = train_once(args.data, tmp / name, env, args)
            print(f"  {name}: {res['cmd']} (env {env or 'default'}) -> exit {res['rc']}", flush=True)
            for line in res["output"].strip().splitlines()[-5:]:
                print(f"    | {line}", flush=True)
            if res["rc"] != 0:
                status = 1
                continue
            seen = [0] + [int(r["samples_seen"]) for r in res["rows"]]
            sizes = [b - a for a, b in zip(seen, seen[1:])]  # the batch actually taken per step
            steps = list(zip(sizes, res["rows"]))[args.skip:]
            times = [n / float(r["samples_per_s"]) for n, r in steps]
            batch = statistics.median(n for n, _ in steps)
            fracs = [float(r["soft_pos_frac"]) for r in res["rows"] if r["soft_pos_frac"]]
            for r in res["rows"]:
                print(f"    step {r['step']}: samples_per_s {r['samples_per_s']}, loss {r['loss']}, "
                      f"soft_pos_frac {r['soft_pos_frac']}", flush=True)
            row = Row(op="train_e2e", provider=name,
                      case={"B": int(batch), "B_requested": args.batch_size, "steps": args.steps,
                            "skip": args.skip, "loss": args.loss, "model": "molphenix-small",
                            "data": args.data.name},
                      dtype="float32", device="cpu", threads=run.threads, warmup=args.skip, times=times,
                      work=float(batch), unit="samples/s", peak_mem_bytes=res["maxrss_kb"] * 1024,
                      mem_counted=MEM_NOTE,
                      notes=("molphenix train; step time = samples taken / samples_per_s of train_log.csv; "
                             f"soft_pos_frac median {statistics.median(fracs):.4f}" if fracs else "molphenix train"))
            print(f"  {name:8s} median step {row.median:.3f} s -> {row.throughput:.1f} samples/s; "
                  f"process peak RSS {res['maxrss_kb'] / 1024:.0f} MB", flush=True)
            run.add(row)
    shutil.rmtree(tmp, ignore_errors=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
