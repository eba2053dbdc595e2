"""Benchmark: ``topk_retrieve`` (exact top-k listing, k = 5% of N by default).

Providers (the same threads, warm-up and interleaved repeats for all):
  naive    molphenix.ops._reference.topk_retrieve (materialises Q x N; skipped where it does not
           fit the run's memory cap)
  chunked  torch per block of queries: torch.topk(q_blk @ c.T, k) (ties in no defined order)
  ours     molphenix.ops.topk_retrieve(..., backend=device): exact, ties by lower index
  faiss    faiss.IndexFlatIP built and searched with the same k (CPU, float32)
FLOPs = 2 Q N D (the GEMM part; selection and the Q x k output come on top). The check before
timing: ours must equal the reference (indices and scores); chunked and faiss must be a top-k up
to near-ties, verified on float64 scores.

    python benches/bench_topk_retrieve.py                  # Q = N = 50,000, D = 256, k = 2,500
    python benches/bench_topk_retrieve.py --quick --no-save
"""

from __future__ import annotations

from _harness import open_run, parse_sizes, parser, run_plan

from molphenix.benchmark.cases import TOPK

DEFAULT = "50000x50000x256"
QUICK = "2000x2000x64"


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0], sizes="QxNxD", default_sizes=DEFAULT)
    p.add_argument("--fraction", type=float, default=0.05, help="k = ceil(fraction * N)")
    args = p.parse_args(argv)
    cases = [dict(c, fraction=args.fraction)
             for c in parse_sizes(args.sizes or (QUICK if args.quick else DEFAULT), ["Q", "N", "D"])]
    run = open_run(args, title="bench_topk_retrieve")
    with run:
        return run_plan(run, [(TOPK, c) for c in cases], args)


if __name__ == "__main__":
    raise SystemExit(main())
