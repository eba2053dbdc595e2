"""Benchmark: ``arctan_l2_similarity`` forward, and forward + backward.

Providers (the same threads, warm-up and interleaved repeats for all):
  naive  molphenix.ops._reference.arctan_l2_similarity (+ autograd for the backward)
  ours   molphenix.ops.arctan_l2_similarity(..., backend=device): tiled GEMM with the distance /
         arctan / threshold epilogue in cache; the backward recomputes each tile
FLOPs = 2 N M E (forward), 6 N M E (forward + backward). Data: control-like rows around the arctan
window plus a third of "active" rows. Each size runs without a threshold and with 0.75, forward
and forward + backward. The check (float64 reference, small odd shape) runs first.

    python benches/bench_arctan_l2_similarity.py           # N = M = 8192, E = 384
    python benches/bench_arctan_l2_similarity.py --quick --no-save
"""

from __future__ import annotations

from _harness import open_run, parse_sizes, parser, run_plan

from molphenix.benchmark.cases import ARCTAN

DEFAULT = "8192x8192x384"
QUICK = "1024x1024x64"


def expand(sizes):
    return [dict(s, threshold=thr, **{"pass": ps}) for s in sizes for ps in ("fwd", "fwd+bwd")
            for thr in (None, 0.75)]


def main(argv=None) -> int:
    args = parser(__doc__.splitlines()[0], sizes="NxMxE", default_sizes=DEFAULT).parse_args(argv)
    cases = expand(parse_sizes(args.sizes or (QUICK if args.quick else DEFAULT), ["N", "M", "E"]))
    run = open_run(args, title="bench_arctan_l2_similarity")
    with run:
        return run_plan(run, [(ARCTAN, c) for c in cases], args)


if __name__ == "__main__":
    raise SystemExit(main())
