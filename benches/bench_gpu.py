"""GPU benchmarks of the molphenix CUDA kernels: the same harness, op definitions and CSV layout as
the CPU benchmarks (``molphenix.benchmark``), at GPU sizes, bfloat16, with the kernel variants.

Providers per case: ``naive`` (the torch reference; skipped, with a row saying so, where it does
not fit the free GPU memory), ``chunked`` (torch in row blocks), ``ours`` (backend="cuda") and the
variants ``ours-simple`` (the 64x64 WMMA mainloop), and for S2L ``ours-atomic`` (float atomics for
dQ), ``ours-1blk`` (1 block/SM) and ``ours-uSIMT`` (u.v^T on fp32 SIMT). Every provider of a case:
the same warm-up and interleaved repeats (CUDA events), peak memory from torch's allocator
counters. torch.mm's bf16 rate (8192^3) is measured first in the same run ("% of mm"). Each op's
correctness check runs first: a failure is logged, that op is not timed, and the script exits 1
after the other ops ran. The big S2L batch (``--big-b``) runs ``ours`` alone, at the largest power
of two below it whose three calls fit ``--big-budget-s`` (estimated from the first case).

    python benches/bench_gpu.py --results-dir OUT [--quick]      # OUT/results.csv + OUT/run.log
    python benches/bench_gpu.py --device cpu --quick --no-save    # the same code path on the CPU
"""

from __future__ import annotations

import sys
import time
import traceback

from _harness import open_run, parser

from molphenix.benchmark import CheckFailed, run_case, run_checks
from molphenix.benchmark.cases import ARCTAN, RANKS, S2L, TOPK

SIZES = {
    "full": dict(s2l=(32768, 256, 384), ranks=(1_000_000, 1_000_000, 256), topk=(10_000, 1_000_000, 256),
                 arctan=(8192, 384)),
    "quick": dict(s2l=(4096, 256, 384), ranks=(20_000, 50_000, 256), topk=(1000, 50_000, 256), arctan=(2048, 384)),
    "cpu": dict(s2l=(512, 64, 32), ranks=(1000, 2000, 64), topk=(200, 2000, 64), arctan=(256, 64)),
}


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.set_defaults(device="cuda")
    p.add_argument("--only", default="s2l,topk,arctan,ranks", help="comma-separated: s2l,topk,arctan,ranks")
    p.add_argument("--big-b", type=int, default=1 << 20, help="the big S2L batch (ours only)")
    p.add_argument("--big-budget-s", type=float, default=60.0, help="time budget of the big S2L batch")
    args = p.parse_args(argv)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("no CUDA GPU: nothing to benchmark (use --device cpu to exercise this script)")
            return 0
    sz = SIZES["cpu" if args.device == "cpu" else "quick" if args.quick else "full"]
    big_b = min(args.big_b, 8 * sz["s2l"][0]) if (args.quick or args.device == "cpu") else args.big_b
    only = args.providers.split(",") if args.providers else None
    args.variants = True
    t_start = time.time()
    run = open_run(args, title="benches/bench_gpu.py")
    status = 0

    def step(spec, cases, warmup):
        nonlocal status
        try:
            run_checks(run, spec, dtype=args.dtype, only=only)
        except CheckFailed as e:
            print(f"CHECK FAILED: {e}", flush=True)
            status = 1
            return []
        rows = []
        for params in cases:
            rows += run_case(run, spec, params, dtype=args.dtype, only=only, warmup=warmup,
                             repeats=args.repeats, memory=not args.no_memory, variants=True)
        return rows

    with run:
        steps = [s for s in args.only.split(",") if s]
        for name in steps:
            print(f"\n## {name}", flush=True)
            try:
                if name == "s2l":
                    B, D, E = sz["s2l"]
                    rows = step(S2L, [{"B": B, "D": D, "E": E}], args.warmup)
                    ours = [r for r in rows if r.provider == "ours" and r.times]
                    if ours and big_b > B:
                        bb = big_b
                        while bb > B and 3 * ours[0].median * (bb / B) ** 2 > args.big_budget_s:
                            bb //= 2
                        est = ours[0].median * (bb / B) ** 2
                        print(f"big batch: B={big_b} asked, B={bb} fits the budget ({args.big_budget_s:.0f} s "
                              f"for 3 calls; about {est:.1f} s each)", flush=True)
                        if bb > B:
                            run_case(run, S2L, {"B": bb, "D": D, "E": E}, dtype=args.dtype, only=["ours"],
                                     warmup=0, repeats=args.repeats, memory=not args.no_memory)
                elif name == "topk":
                    Q, N, D = sz["topk"]
                    step(TOPK, [{"Q": Q, "N": N, "D": D, "fraction": 0.01}], args.warmup)
                elif name == "arctan":
                    N, E = sz["arctan"]
                    step(ARCTAN, [{"N": N, "M": N, "E": E, "threshold": 0.75, "pass": "fwd+bwd"}], args.warmup)
                elif name == "ranks":
                    Q, N, D = sz["ranks"]
                    # one call takes seconds at 1M x 1M: no warm-up call (the same for every provider)
                    step(RANKS, [{"Q": Q, "N": N, "D": D}], 0 if Q * N >= 1e11 else args.warmup)
                else:
                    print(f"unknown step {name!r}")
                    status = 1
            except Exception as e:  # one failing benchmark must not hide the others
                print(f"  FAILED: {type(e).__name__}: {e}", flush=True)
                traceback.print_exc(file=sys.stdout)
                status = 1
                if args.device == "cuda":
                    import torch

                    torch.cuda.empty_cache()
        print(f"\ntotal bench time {time.time() - t_start:.0f} s")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
