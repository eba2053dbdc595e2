"""Benchmark: ``molphenix.eval.evaluate_embeddings``, and the retrieval ranks it is built on.

Cases (CPU, float32; definitions in ``molphenix.benchmark.cases_pipeline`` and
``molphenix.benchmark.cases``):
  evaluate_embeddings  Q queries x N candidates (N / 4 molecules x 4 doses), D = 256, match='pair',
                       1,000 bootstrap resamples: targets, ranks, recalls overall / active / per
                       dose with intervals. naive (backend='reference') vs ours (compiled ranks)
                       and ours-noboot (the same without the bootstrap: its share of the time).
  retrieval_ranks      the ranks alone at the same size: naive, chunked, ours, faiss.
Checked first: ours and naive give identical metrics dicts; the ranks as in bench_retrieval_ranks.
The same warm-up and interleaved repeats for every provider, peak memory in a fresh process.

    python benches/bench_evaluation.py --threads 2                  # Q = N = 10,000
    python benches/bench_evaluation.py --quick --no-save
"""

from __future__ import annotations

from _harness import open_run, parser, run_plan

from molphenix.benchmark.cases import RANKS
from molphenix.benchmark.cases_pipeline import EVALUATE


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=None, help="Q = N (default 10000; quick 1000)")
    p.add_argument("--dim", type=int, default=None, help="D (default 256; quick 64)")
    args = p.parse_args(argv)
    if args.device != "cpu":
        p.error("--device: the evaluation benchmark is CPU only")
    n = args.size or (1000 if args.quick else 10000)
    d = args.dim or (64 if args.quick else 256)
    plan = [(EVALUATE, {"Q": n, "N": n, "D": d}), (RANKS, {"Q": n, "N": n, "D": d})]
    run = open_run(args, title="benches/bench_evaluation.py")
    only = args.providers.split(",") if args.providers else None
    with run:
        # ours-noboot is a timing variant of ours: the checks run on the other providers
        return run_plan(run, plan, args, check_only=[x for x in only if x != "ours-noboot"] if only else None,
                        end_matmul=True)


if __name__ == "__main__":
    raise SystemExit(main())
