"""Benchmark: ``retrieval_ranks`` (rank of the true candidate among N).

Providers (the same threads, warm-up and interleaved repeats for all):
  naive    molphenix.ops._reference.retrieval_ranks (materialises Q x N; skipped, with a row
           saying so, where that does not fit the run's memory cap)
  chunked  torch per block of queries: S = q_blk @ c.T, rank = #(S >= S[i, t_i]) - 1
  ours     molphenix.ops.retrieval_ranks(..., backend=device): streamed GEMM tiles with a fused
           compare-and-count epilogue, O((Q + N) D) memory
  faiss    faiss.IndexFlatIP built and searched with k = 5% of N (CPU, float32); the rank is the
           target's position in the list, ranks >= k censored (faiss gives none beyond k)
FLOPs = 2 Q N D. Unit rows, metric "dot", target i = a noisy copy of query i. The check before
timing: ours must equal the reference; chunked and faiss may differ only by near-ties, verified on
float64 scores (every differing rank lies in the range the scores within the tolerance allow).

    python benches/bench_retrieval_ranks.py                # Q = N = 50,000, D = 256
    python benches/bench_retrieval_ranks.py --quick --no-save
"""

from __future__ import annotations

from _harness import open_run, parse_sizes, parser, run_plan

from molphenix.benchmark.cases import RANKS

DEFAULT = "50000x50000x256"
QUICK = "2000x2000x64"


def main(argv=None) -> int:
    args = parser(__doc__.splitlines()[0], sizes="QxNxD", default_sizes=DEFAULT).parse_args(argv)
    cases = parse_sizes(args.sizes or (QUICK if args.quick else DEFAULT), ["Q", "N", "D"])
    run = open_run(args, title="bench_retrieval_ranks")
    with run:
        return run_plan(run, [(RANKS, c) for c in cases], args)


if __name__ == "__main__":
    raise SystemExit(main())
