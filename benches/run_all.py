"""Every op benchmark in one run: the README's cases, one raw log, one torch.mm yardstick
(measured at the start, and again at the end for the log); rows appended to the machine's table.

    python benches/run_all.py --threads 2 --arctan-threshold 0.75   # the README's CPU cases
    python benches/run_all.py --quick --no-save                     # seconds
    python benches/run_all.py --only s2l_loss,retrieval_ranks
    python benches/run_all.py --device cuda          # the same cases on a GPU (bf16); see bench_gpu.py

Cases (CPU, float32): s2l_loss B = 4096 and 16384 (D = 256, E = 384); retrieval_ranks and
topk_retrieve (k = 5%) at Q = N = 50,000, D = 256; arctan_l2_similarity N = M = 8192, E = 384
(forward and forward + backward, threshold none and 0.75). Every provider of a case gets the same
warm-up and the same interleaved repeats; the cases marked big (one call of the slowest provider
takes tens of seconds) run with ``--big-warmup`` (default 0) warm-up calls for every provider.
"""

from __future__ import annotations

from _harness import open_run, parser, run_plan
from bench_arctan_l2_similarity import expand

from molphenix.benchmark.cases import ARCTAN, RANKS, S2L, TOPK

FULL = [  # (spec, params, big)
    (S2L, {"B": 4096, "D": 256, "E": 384}, False),
    (S2L, {"B": 16384, "D": 256, "E": 384}, True),
    (RANKS, {"Q": 50000, "N": 50000, "D": 256}, True),
    (TOPK, {"Q": 50000, "N": 50000, "D": 256, "fraction": 0.05}, True),
    *[(ARCTAN, c, False) for c in expand([{"N": 8192, "M": 8192, "E": 384}])],
]
QUICK = [
    (S2L, {"B": 1024, "D": 64, "E": 32}, False),
    *[(ARCTAN, c, False) for c in expand([{"N": 1024, "M": 1024, "E": 64}])],
    (RANKS, {"Q": 2000, "N": 2000, "D": 64}, False),
    (TOPK, {"Q": 2000, "N": 2000, "D": 64, "fraction": 0.05}, False),
]


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--only", default=None, help="comma-separated ops (default: all)")
    p.add_argument("--big-warmup", type=int, default=0, help="warm-up calls in the big cases (every provider)")
    p.add_argument("--arctan-threshold", choices=["both", "none", "0.75"], default="both",
                   help="arctan_l2_similarity cases: without threshold, with 0.75, or both")
    args = p.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.arctan_threshold != "both":
        thr = None if args.arctan_threshold == "none" else 0.75
        plan = [x for x in plan if x[0] is not ARCTAN or x[1]["threshold"] == thr]
    if args.only:
        keep = set(args.only.split(","))
        unknown = keep - {x[0].op for x in FULL}
        if unknown:
            p.error(f"--only: unknown op(s) {', '.join(sorted(unknown))}; expected some of "
                    f"{', '.join(dict.fromkeys(x[0].op for x in FULL))}")
        plan = [x for x in plan if x[0].op in keep]
    run = open_run(args, title="benches/run_all.py")
    with run:
        return run_plan(run, plan, args, big_warmup=args.big_warmup, end_matmul=True)


if __name__ == "__main__":
    raise SystemExit(main())
