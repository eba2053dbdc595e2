"""Benchmark: the global-batch S2L loss over torch.distributed (gloo on localhost).

Two measurements, both on this machine, in one run:

  bytes   Bytes each rank sends for one S2L forward + backward, ``mode="ring"`` vs
          ``mode="allgather"``, counted by ``molphenix.distributed.communication_counter`` while
          the real call runs on W spawned ranks (the global batch split evenly), next to the
          formula (b = B / W rows per rank, element size s, u in float32):
            ring       p2p: s [(W - 1) b (D + E) + W b D]     ((q, u) blocks + gradient accumulators)
            allgather  collective: s (W - 1) b (D + E) + s 2 (W - 1) / W B D
                       (all-gather of (q, u); ring all-reduce of the [B, D] column gradient)
            both       + (W - 1) 136 bytes of float64 scalars (metadata and loss/gradient sums)
          A mismatch fails the run (exit status 1).
  time    Loss forward + backward at B global rows (default 4096), D = 256, E = 384, float32:
          one process with 1 and with 2 threads vs 2 processes with 1 thread each (ring and
          allgather), and the blocks a ring step computes on each rank timed alone (the same
          ops.s2l_loss calls without any communication: the step's compute floor here). Repeats are interleaved: every round runs each configuration once (the
          2-process job is spawned per round; its start-up is not timed; the step time is the
          slowest rank's, after a barrier). Median, min and max over the rounds.
  train   One training step (molphenix.train's loop body: heads in DDP with the trainer's summing
          hook, DistributedLoss, AdamW) at the same global B with 1 process (1 and 2 threads) vs
          2 processes x 1 thread; interleaved like ``time``. Skipped, with the reason, when
          molphenix.train has no data-parallel step.

Rows (the shared harness: appended to the machine's table, raw log beside it): op
``s2l_distributed_bytes`` (provider ring / allgather; the counted bytes and the formula in
``notes``, no time), ``s2l_loss_distributed`` and ``train_step_distributed`` (providers
``1proc-1thread``, ``1proc-2threads``, ``2proc-ring``, ``2proc-allgather``, ``2proc-blocks-only``;
``threads`` is per process). The machine is shared: ``uptime`` is recorded before and after every
section and after every round.

    python benches/bench_distributed.py
    python benches/bench_distributed.py --quick --no-save
    python benches/bench_distributed.py --only time,train --rounds 5 --train-rounds 5
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the test launcher: N spawned gloo ranks

import torch  # noqa: E402

from distributed._launch import run_ranks  # noqa: E402

from _harness import Row, open_run, parser  # noqa: E402

SCALARS = 136  # bytes of float64 scalars per peer: a 14-value metadata row + 3 sums (8 bytes each)


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except Exception:
        return "uptime: unavailable"


def _data(B: int, D: int, E: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    p = torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=1)
    q = torch.nn.functional.normalize(p + 0.7 * torch.randn(B, D, generator=g), dim=1)
    u = 0.05 * torch.randn(B, E, generator=g) if E else None
    return p, q, u


def _slice(x, rank, world):
    if x is None:
        return None
    b = x.shape[0] // world
    return x[rank * b:(rank + 1) * b]


# ------------------------------------------------------------------------------------------------
# bytes


def _bytes_body(configs):
    import torch.distributed as dist

    import molphenix.distributed as md

    rank, world = dist.get_rank(), dist.get_world_size()
    out = []
    for B, D, E in configs:
        p_all, q_all, u_all = _data(B, D, E)
        for mode in ("ring", "allgather"):
            p = _slice(p_all, rank, world).clone().requires_grad_(True)
            q = _slice(q_all, rank, world).clone().requires_grad_(True)
            u = _slice(u_all, rank, world)
            with md.communication_counter() as c:
                if u is None:
                    loss = md.siglip_loss(p, q, 10.0, -10.0, mode=mode)
                else:
                    loss = md.s2l_loss(p, q, 10.0, -10.0, u, mode=mode)
                loss.backward()
            out.append({"B": B, "D": D, "E": E, "mode": mode, **c})
    return out


def _formula(W: int, B: int, D: int, E: int, mode: str, s: int = 4) -> Dict[str, int]:
    b = B // W
    if mode == "ring":
        payload = s * ((W - 1) * b * (D + E) + W * b * D)
        return {"payload": payload, "total": payload + (W - 1) * SCALARS}
    gather = s * (W - 1) * b * D + 4 * (W - 1) * b * E  # q in its dtype, u in float32
    reduce = round(s * 2.0 * (W - 1) / W * B * D)
    return {"payload": gather + reduce, "total": gather + reduce + (W - 1) * SCALARS}


# ------------------------------------------------------------------------------------------------
# time


def _loss_step(p, q, u, mode=None):
    import molphenix.distributed as md
    from molphenix import ops

    p = p.detach().requires_grad_(True)
    q = q.detach().requires_grad_(True)
    if mode is None:
        loss = ops.s2l_loss(p, q, 10.0, -10.0, u)
    else:
        loss = md.s2l_loss(p, q, 10.0, -10.0, u, mode=mode)
    loss.backward()
    return float(loss.detach())


def _time_body(B, D, E, order, warmup):
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    p_all, q_all, u_all = _data(B, D, E)
    p, q, u = (_slice(x, rank, world) for x in (p_all, q_all, u_all))
    res = {}
    for mode in order:
        for _ in range(warmup):
            _loss_step(p, q, u, mode)
        dist.barrier()
        t0 = time.perf_counter()
        val = _loss_step(p, q, u, mode)
        t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)  # the step ends when the slowest rank is done
        res[mode] = (float(t), val)
    # what the ring step computes on one rank, alone: its rows against each rank's block
    # (the same work, no communication), timed on every rank at once after a barrier
    from molphenix import ops

    dist.barrier()
    t0 = time.perf_counter()
    for s in range(world):
        qs, us = _slice(q_all, s, world), _slice(u_all, s, world)
        pb, qb = p.detach().requires_grad_(True), qs.detach().requires_grad_(True)
        ops.s2l_loss(pb, qb, 10.0, -10.0, u, u_cols=us, diag_offset=(rank - s) * p.shape[0],
                     normalizer=B).backward()
    t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    res["compute"] = (float(t), float("nan"))
    return res


def _time_single(B, D, E, threads, warmup):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        p, q, u = _data(B, D, E)
        for _ in range(warmup):
            _loss_step(p, q, u)
        t0 = time.perf_counter()
        val = _loss_step(p, q, u)
        return time.perf_counter() - t0, val
    finally:
        torch.set_num_threads(old)


# ------------------------------------------------------------------------------------------------
# training step


def _train_supported() -> str:
    """'' when molphenix.train can run a data-parallel step, else the reason it cannot."""
    try:
        from molphenix.train import data_parallel_heads  # noqa: F401
    except Exception as e:  # pragma: no cover
        return f"molphenix.train has no data-parallel step to drive: {e}"
    return ""


def _train_step_fn(B: int, E: int = 384, F: int = 2048):
    """One training step as molphenix.train's loop takes it (heads in DDP with the trainer's
    summing hook, the loss in DistributedLoss, AdamW), on this rank's rows of a global batch B."""
    import torch.distributed as dist

    from molphenix.benchmark.cases import phenomic_rows
    from molphenix.distributed import DistributedLoss, get_rank, get_world_size
    from molphenix.losses import create_loss
    from molphenix.nn import create_model
    from molphenix.train import data_parallel_heads

    rank, world = get_rank(), get_world_size()
    g = torch.Generator().manual_seed(0)
    u = phenomic_rows(B, E, g).float()
    x = u * 10.0
    fp = torch.poisson(torch.full((B, F), 0.05), generator=g)
    conc = torch.tensor([0.1, 1.0, 3.0, 10.0])[torch.randint(0, 4, (B,), generator=g)]
    x, fp, conc, u = (_slice(t, rank, world) for t in (x, fp, conc, u))
    torch.manual_seed(0)
    model = create_model("molphenix-small", phenomic_dim=E, molecular_dim=F)
    loss_fn = create_loss("s2l")
    heads = data_parallel_heads(model, torch.device("cpu"))
    call = DistributedLoss(loss_fn) if world > 1 else loss_fn
    opt = torch.optim.AdamW(list(model.parameters()) + list(loss_fn.parameters()), lr=1e-4)

    def step() -> float:
        if world > 1:
            dist.barrier()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        p, q = heads(x, fp, conc)
        out = call(p, q, u)
        out.loss.backward()
        opt.step()
        loss_fn.clamp_parameters_()
        t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t)

    return step


def _train_body(B, warmup):
    step = _train_step_fn(B)
    for _ in range(warmup):
        step()
    return step()


def _train_single(B, threads, warmup):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train_body(B, warmup)
    finally:
        torch.set_num_threads(old)


# ------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = parser(__doc__.split("\n")[0])
    ap.add_argument("--B", type=int, default=4096, help="global batch of the timing section")
    ap.add_argument("--D", type=int, default=256)
    ap.add_argument("--E", type=int, default=384)
    ap.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default --repeats)")
    ap.add_argument("--train-rounds", type=int, default=None,
                    help="interleaved rounds of the train section (default --repeats)")
    ap.add_argument("--worlds", default="2,3,4", help="world sizes of the bytes section")
    ap.add_argument("--only", default=None, help="comma-separated subset of bytes,time,train")
    args = ap.parse_args(argv)
    if args.device != "cpu":
        ap.error("--device: this benchmark runs gloo ranks on the CPU")
    only = None if args.only is None else set(args.only.split(","))
    if only is not None and only - {"bytes", "time", "train"}:
        ap.error(f"--only: expected some of bytes,time,train, got {args.only!r}")
    args.rounds = args.rounds or args.repeats
    args.train_rounds = args.train_rounds or args.repeats
    if args.quick:
        args.B, args.D, args.E, args.rounds, args.train_rounds = 512, 64, 32, 1, 1

    run = open_run(args, title="benches/bench_distributed.py", matmul=False)
    with run:
        failed = _sections(run, args, only)
    return 1 if failed else 0


def _provider(config: str) -> str:
    """'1 process, 2 thread(s)' -> '1proc-2threads'; '2 processes x 1 thread, ring' -> '2proc-ring'."""
    if config.startswith("1 process"):
        return "1proc-2threads" if "2 thread" in config else "1proc-1thread"
    if "blocks only" in config:
        return "2proc-blocks-only"
    return "2proc-allgather" if "allgather" in config else "2proc-ring"


def _sections(run, args, only) -> bool:
    def log(msg: str = "") -> None:
        print(msg, flush=True)

    log("backend: gloo on localhost; every rank OMP_NUM_THREADS=1, torch.set_num_threads(1)")
    log(f"uptime (start): {_uptime()}")
    failed = False
    rows: List[Row] = []

    if only is None or "bytes" in only:
        configs = [(1024, 128, 64), (4096, 256, 384), (4096, 256, 0)]
        if args.quick:
            configs = [(256, 32, 16), (256, 32, 0)]
        log("")
        log("## bytes sent per rank for one S2L forward + backward (float32; E = 0: SigLIP, no u)")
        log("| W | B | D | E | mode | counted bytes/rank (rank 0) | formula | payload (formula) | "
            "all ranks, MB | ring / allgather |")
        log("|---|---|---|---|---|---|---|---|---|---|")
        for W in (int(w) for w in args.worlds.split(",")):
            # the global batch split evenly: B rounded down to a multiple of W
            res = run_ranks(_bytes_body, W, args=([((B // W) * W, D, E) for B, D, E in configs],),
                            timeout_s=600)
            by = {}
            for rank, per in enumerate(res):
                for r in per:
                    key = (r["B"], r["D"], r["E"], r["mode"])
                    f = _formula(W, r["B"], r["D"], r["E"], r["mode"])
                    if r["bytes"] != f["total"]:
                        failed = True
                        log(f"CHECK FAILED: W={W} rank={rank} {key}: counted {r['bytes']} != formula {f['total']}")
                    by.setdefault(key, []).append(r["bytes"])
            for (B, D, E, mode), counts in by.items():
                f = _formula(W, B, D, E, mode)
                other = by[(B, D, E, "allgather" if mode == "ring" else "ring")]
                ratio = (sum(counts) / sum(other)) if mode == "ring" else (sum(other) / sum(counts))
                log(f"| {W} | {B} | {D} | {E} | {mode} | {counts[0]} | {f['total']} | {f['payload']} | "
                    f"{sum(counts) / 1e6:.3f} | {ratio:.3f} |")
                rows.append(Row(
                    op="s2l_distributed_bytes", provider=mode, case={"W": W, "B": B, "D": D, "E": E},
                    dtype="float32", device="cpu", threads=1, warmup=0,
                    status="ok" if all(c == f["total"] for c in counts) else "CHECK FAILED",
                    notes=(f"bytes each rank sent for one S2L forward + backward: rank 0 {counts[0]}, "
                           f"min {min(counts)}, max {max(counts)} over the {W} ranks; formula {f['total']} "
                           f"(payload {f['payload']}); all ranks {sum(counts)}; no time measured")))
        log(f"uptime (after bytes): {_uptime()}")

    if only is None or "time" in only:
        B, D, E = args.B, args.D, args.E
        log("")
        log(f"## S2L forward + backward, B = {B} global, D = {D}, E = {E}, float32, "
            f"{args.rounds} interleaved rounds, warm-up {args.warmup}")
        times: Dict[str, List[float]] = {}
        values: Dict[str, float] = {}
        for rnd in range(args.rounds):
            order = ("ring", "allgather") if rnd % 2 == 0 else ("allgather", "ring")
            for threads in ((1, 2) if rnd % 2 == 0 else (2, 1)):
                t, v = _time_single(B, D, E, threads, args.warmup)
                times.setdefault(f"1 process, {threads} thread(s)", []).append(t)
                values[f"1 process, {threads} thread(s)"] = v
            res = run_ranks(_time_body, 2, args=(B, D, E, order, args.warmup), timeout_s=600)
            for mode in order:
                times.setdefault(f"2 processes x 1 thread, {mode}", []).append(res[0][mode][0])
                values[f"2 processes x 1 thread, {mode}"] = res[0][mode][1]
            times.setdefault("2 processes x 1 thread, blocks only (no communication)", []).append(
                res[0]["compute"][0])
            log(f"round {rnd}: " + ", ".join(f"{k}: {v[-1]:.3f} s" for k, v in times.items())
                + f"   uptime: {_uptime()}")
        agree = True
        ref = values["1 process, 1 thread(s)"]
        log("losses: " + ", ".join(f"{k}: {v!r}" for k, v in values.items()))
        for k, v in values.items():
            if abs(v - ref) > 1e-4 * max(1.0, abs(ref)):
                failed, agree = True, False
                log(f"CHECK FAILED: {k} loss {v} != single-process {ref}")
        log("")
        log("| configuration | median s | min s | max s | pairs/s (median) | vs 1 process, 1 thread |")
        log("|---|---|---|---|---|---|")
        base = statistics.median(times["1 process, 1 thread(s)"])
        for k, v in times.items():
            med = statistics.median(v)
            log(f"| {k} | {med:.3f} | {min(v):.3f} | {max(v):.3f} | {B * B / med:.3e} | {base / med:.2f}x |")
            rows.append(Row(
                op="s2l_loss_distributed", provider=_provider(k),
                case={"W": 2 if k.startswith("2") else 1, "B": B, "D": D, "E": E}, dtype="float32",
                device="cpu", threads=2 if "2 thread" in k else 1, warmup=args.warmup, times=list(v),
                flops=2.0 * B * B * (3 * D + E), work=float(B * B), unit="pairs/s",
                status="ok" if agree else "CHECK FAILED",
                notes=f"{k}; loss forward + backward over the global batch; threads per process"))
        log(f"losses agree across configurations (float32, within 1e-4 relative): "
            f"{'yes' if agree else 'no'}")
        log(f"uptime (after time): {_uptime()}")

    if only is None or "train" in only:
        log("")
        log("## training step, 1 vs 2 processes")
        reason = _train_supported()
        if reason:
            log(f"skipped: {reason}")
        else:
            B = args.B
            log(f"one step of molphenix.train's loop body at B = {B} global rows (molphenix-small, "
                f"E = 384, F = 2048 Morgan counts, S2L input space, AdamW): heads forward, loss, "
                f"backward (DDP with the trainer's summing hook), optimizer step; "
                f"{args.train_rounds} interleaved rounds, warm-up {args.warmup}")
            ttimes: Dict[str, List[float]] = {}
            for rnd in range(args.train_rounds):
                for threads in ((1, 2) if rnd % 2 == 0 else (2, 1)):
                    ttimes.setdefault(f"1 process, {threads} thread(s)", []).append(
                        _train_single(B, threads, args.warmup))
                res = run_ranks(_train_body, 2, args=(B, args.warmup), timeout_s=600)
                ttimes.setdefault("2 processes x 1 thread (ring)", []).append(res[0])
                log(f"round {rnd}: " + ", ".join(f"{k}: {v[-1]:.3f} s" for k, v in ttimes.items())
                    + f"   uptime: {_uptime()}")
            log("")
            log("| configuration | median s | min s | max s | samples/s (median) | vs 1 process, 1 thread |")
            log("|---|---|---|---|---|---|")
            base = statistics.median(ttimes["1 process, 1 thread(s)"])
            for k, v in ttimes.items():
                med = statistics.median(v)
                log(f"| {k} | {med:.3f} | {min(v):.3f} | {max(v):.3f} | {B / med:.1f} | {base / med:.2f}x |")
                rows.append(Row(
                    op="train_step_distributed", provider=_provider(k),
                    case={"W": 2 if k.startswith("2") else 1, "B": B, "E": 384, "F": 2048,
                          "model": "molphenix-small", "loss": "s2l"},
                    dtype="float32", device="cpu", threads=2 if "2 thread" in k else 1, warmup=args.warmup,
                    times=list(v), work=float(B), unit="samples/s",
                    notes=f"{k}; one step of molphenix.train's loop body (DDP heads, DistributedLoss, AdamW)"))
            log(f"uptime (after train): {_uptime()}")

    log("")
    log(f"uptime (end): {_uptime()}")
    log("status: " + ("FAILED" if failed else "ok"))
    for r in rows:
        run.add(r)
    return failed


if __name__ == "__main__":
    sys.exit(main())
