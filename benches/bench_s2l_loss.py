"""Benchmark: ``s2l_loss`` forward + backward (gradients of p, q, scale and bias).

Providers (the same threads, warm-up and interleaved repeats for all; peak memory each in a fresh
process on the CPU, from torch's allocator counters on a GPU):
  naive    molphenix.ops._reference.s2l_loss + autograd: materialises B x B temporaries
  chunked  torch in row chunks (1024 on the CPU, 4096 on a GPU) with gradients by hand:
           O(chunk * B) memory
  ours     molphenix.ops.s2l_loss(..., backend=device) + backward: the fused tiled kernel
  ours-<mode>  (GPU, --variants) kernel knobs: -atomic, -1blk, -simple, -uSIMT
Useful FLOPs = 2 B^2 (3 D + E). Data: unit p, q (q a noisy copy of p) and u in the "input"
similarity space (control-like rows around the arctan window, a third "active"); see
molphenix.benchmark.cases. Correctness (float64 reference, small odd shape) is checked first and
a disagreement ends the run with exit status 1.

    python benches/bench_s2l_loss.py                      # B = 4096 and 16384, D = 256, E = 384
    python benches/bench_s2l_loss.py --quick --no-save
    python benches/bench_s2l_loss.py --sizes 8192x256x384 --providers ours,chunked
"""

from __future__ import annotations

from _harness import open_run, parse_sizes, parser, run_plan

from molphenix.benchmark.cases import S2L

DEFAULT = "4096x256x384,16384x256x384"
QUICK = "1024x64x32"


def main(argv=None) -> int:
    args = parser(__doc__.splitlines()[0], sizes="BxDxE", default_sizes=DEFAULT).parse_args(argv)
    cases = parse_sizes(args.sizes or (QUICK if args.quick else DEFAULT), ["B", "D", "E"])
    run = open_run(args, title="bench_s2l_loss")
    with run:
        return run_plan(run, [(S2L, c) for c in cases], args)


if __name__ == "__main__":
    raise SystemExit(main())
