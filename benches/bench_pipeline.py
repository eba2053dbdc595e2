"""Benchmark: issue 7's pipeline targets in one run (training step, evaluation, index search).

Cases (CPU, float32; the op definitions are in molphenix.benchmark.cases_pipeline, the ranks in
molphenix.benchmark.cases):
  train_step           B = 4096, molphenix-small (E = 384, F = 2048 Morgan bits), s2l loss with u
                       scaled to the training default soft-positive fraction (0.02); forward +
                       loss + backward + clip + AdamW. naive (loss backend='reference') vs ours.
  evaluate_embeddings  10,000 queries x 10,000 candidates (2,500 molecules x 4 doses), D = 256,
                       match='pair', 1,000 bootstrap resamples. naive vs ours (+ ours-noboot).
  retrieval_ranks      the ranks alone at the same size: naive, chunked, ours, faiss.
  ops_check_finite     the NaN/Inf scan of the 1,000,000 x 256 candidates that every
                       topk_retrieve / retrieval_ranks call runs (part of every Index.search).
  index_search         Index.search on 1,000,000 x 256 unit candidates vs faiss IndexFlatIP at
                       the same k: Q in {100, 1000}, k in {10, 10000 (1%)}; indexes built once.
Every provider of a case: the correctness check first (a failure ends the run, exit 1, nothing
timed), the same warm-up, interleaved repeats, peak memory in a fresh process.

    python benches/bench_pipeline.py --threads 2                 # about 15 minutes on 2 cores
    python benches/bench_pipeline.py --quick --no-save --threads 2
    python benches/bench_pipeline.py --only index_search,ops_check_finite
"""

from __future__ import annotations

from _harness import CheckFailed, open_run, parser

from molphenix.benchmark import run_case, run_checks
from molphenix.benchmark.cases import RANKS
from molphenix.benchmark.cases_pipeline import EVALUATE, FINITE_CHECK, INDEX_SEARCH, TRAIN_STEP


def plan(quick: bool, index_q, index_k):
    if quick:
        n_idx, d = 50_000, 256
        return [
            (TRAIN_STEP, {"B": 512, "E": 384, "F": 2048, "soft_frac": 0.02}, None),
            (EVALUATE, {"Q": 1000, "N": 1000, "D": 64}, None),
            (RANKS, {"Q": 1000, "N": 1000, "D": 64}, None),
            (FINITE_CHECK, {"N": n_idx, "D": d}, None),
            *[(INDEX_SEARCH, {"N": n_idx, "D": d, "Q": q, "k": k}, None) for q in (10, 100) for k in (10, 500)],
        ]
    n_idx, d = 1_000_000, 256
    return [
        (TRAIN_STEP, {"B": 4096, "E": 384, "F": 2048, "soft_frac": 0.02}, None),
        (EVALUATE, {"Q": 10000, "N": 10000, "D": 256}, None),
        (RANKS, {"Q": 10000, "N": 10000, "D": 256}, None),
        (FINITE_CHECK, {"N": n_idx, "D": d}, None),
        *[(INDEX_SEARCH, {"N": n_idx, "D": d, "Q": q, "k": k}, None) for q in index_q for k in index_k],
    ]


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--only", default=None,
                   help="comma-separated ops: train_step,evaluate_embeddings,retrieval_ranks,ops_check_finite,"
                        "index_search (default: all)")
    p.add_argument("--index-queries", default="100,1000", help="Q values of index_search (default 100,1000)")
    p.add_argument("--index-k", default="10,10000", help="k values of index_search (default 10,10000 = 1%%)")
    args = p.parse_args(argv)
    cases = plan(args.quick, [int(v) for v in args.index_queries.split(",")],
                 [int(v) for v in args.index_k.split(",")])
    if args.only:
        keep = set(args.only.split(","))
        cases = [c for c in cases if c[0].op in keep]
    only = args.providers.split(",") if args.providers else None
    run = open_run(args, title="benches/bench_pipeline.py")
    status = 0
    with run:
        for spec in dict.fromkeys(s for s, _, _ in cases):
            print(f"\n## check {spec.op}", flush=True)
            try:
                run_checks(run, spec, dtype=args.dtype,
                           only=[x for x in only if x != "ours-noboot"] if only else None)
            except CheckFailed as e:
                print(f"CHECK FAILED: {e}", flush=True)
                status = 1
        if status:
            print("# correctness check failed: nothing timed")
            return status
        for spec, params, _ in cases:
            print(flush=True)
            run_case(run, spec, params, dtype=args.dtype, only=only, warmup=args.warmup,
                     repeats=args.repeats, memory=not args.no_memory)
        print()
        run.measure_matmul(when="end")  # the log shows the drift
    return status


if __name__ == "__main__":
    raise SystemExit(main())
