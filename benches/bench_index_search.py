"""Benchmark: ``molphenix.retrieval.Index.search`` on a million candidates vs faiss.

Cases (CPU, float32; definitions in ``molphenix.benchmark.cases_pipeline``):
  index_search      Index(metric='cosine').search on N unit candidates (default 1,000,000 x 256)
                    vs faiss IndexFlatIP.search at the same k, both indexes built once outside
                    the timed call (a user builds an index once and searches it many times):
                    every Q in --queries with every k in --k.
  ops_check_finite  the NaN/Inf scan of the N x D candidates that the ops' argument checks run
                    on every topk_retrieve / retrieval_ranks call (the part of a search that does
                    not depend on Q or k), beside torch.isfinite(x).all() and a one-pass sum screen.
Checked first: every provider's lists are a top-k of the float64 scores up to near-ties, and where
ours and faiss differ the float64 scores are tied. Same warm-up and interleaved repeats for every
provider, peak memory in a fresh process.

    python benches/bench_index_search.py --threads 2            # Q in {100, 1000}, k in {10, 10000}
    python benches/bench_index_search.py --quick --no-save
    python benches/bench_index_search.py --only index_search --queries 1000 --k 10000 --providers ours,faiss
"""

from __future__ import annotations

from _harness import open_run, parser, run_plan

from molphenix.benchmark.cases_pipeline import FINITE_CHECK, INDEX_SEARCH

OPS = ("ops_check_finite", "index_search")


def _ints(p, flag: str, text: str):
    try:
        vals = [int(v) for v in text.split(",") if v]
    except ValueError:
        vals = []
    if not vals or min(vals) < 1:
        p.error(f"{flag}: expected comma-separated positive integers, got {text!r}")
    return vals


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(OPS), help="comma-separated: ops_check_finite,index_search")
    p.add_argument("--candidates", type=int, default=None, help="N (default 1000000; quick 50000)")
    p.add_argument("--dim", type=int, default=256, help="D (default 256)")
    p.add_argument("--queries", default=None, help="Q values (default 100,1000; quick 10,100)")
    p.add_argument("--k", default=None, help="k values (default 10,10000; quick 10,500)")
    args = p.parse_args(argv)
    if args.device != "cpu":
        p.error("--device: the index benchmark is CPU only")
    only = [s for s in args.only.split(",") if s]
    bad = [s for s in only if s not in OPS]
    if bad:
        p.error(f"--only: unknown op(s) {', '.join(bad)}; expected some of {', '.join(OPS)}")
    n = args.candidates or (50_000 if args.quick else 1_000_000)
    qs = _ints(p, "--queries", args.queries or ("10,100" if args.quick else "100,1000"))
    ks = _ints(p, "--k", args.k or ("10,500" if args.quick else "10,10000"))
    plan = []
    if "ops_check_finite" in only:
        plan.append((FINITE_CHECK, {"N": n, "D": args.dim}))
    if "index_search" in only:
        plan += [(INDEX_SEARCH, {"N": n, "D": args.dim, "Q": q, "k": k}) for q in qs for k in ks]
    run = open_run(args, title="benches/bench_index_search.py")
    with run:
        return run_plan(run, plan, args, end_matmul=True)


if __name__ == "__main__":
    raise SystemExit(main())
