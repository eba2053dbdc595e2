"""Benchmark: ``arctan_l2_similarity`` forward, and forward + backward, on the CPU.

Providers (all with the same thread count):
  reference  molphenix.ops._reference.arctan_l2_similarity (+ autograd for the backward)
  cpu        molphenix.ops.arctan_l2_similarity(..., backend="cpu"): tiled gemm_nt with the
             distance / arctan / threshold epilogue applied while the tile is in cache; backward
             recomputes each tile and runs two GEMMs per tile (all-zero tiles skipped)
and torch.mm's GFLOP/s (square 4096 fp32) as the machine's physical limit.
FLOPs = 2 N M E (forward), 6 N M E (forward + backward).

Data: control-like rows (squared distances around the arctan window) plus a third of "active"
rows far away, as in bench_s2l_loss.py. Cases run without threshold (every pair needs the arctan)
and with threshold 0.75. A correctness check (small odd shape, float64 reference) runs first.

    python benches/bench_arctan_l2_similarity.py             # N = M = 8192, E = 384
    python benches/bench_arctan_l2_similarity.py --quick     # seconds
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional

import torch

from _harness import finish, matmul_gflops, measure, parser, setup

import molphenix.ops as ops
from molphenix.ops import _reference

PROVIDERS = ("reference", "cpu")


def make_data(N: int, M: int, E: int, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    sigma = math.sqrt(0.3 * math.tan(math.pi / 16) / 2 / (2 * E))

    def rows(n):
        x = sigma * torch.randn(n, E, generator=g, dtype=torch.float64)
        active = torch.rand(n, generator=g) < 1 / 3
        x[active] += 0.5 * torch.randn(int(active.sum()), E, generator=g, dtype=torch.float64) / math.sqrt(E)
        return x.to(dtype).contiguous()

    return rows(N), rows(M)


def providers(a, b, threshold, threads, backward: bool) -> Dict[str, Callable[[], object]]:
    gout = torch.ones(a.shape[0], b.shape[0], dtype=a.dtype) if backward else None

    def run(fn):
        if not backward:
            return fn(a, b)
        aa, bb = a.detach().requires_grad_(), b.detach().requires_grad_()
        out = fn(aa, bb)
        out.backward(gout)
        return out.detach(), aa.grad, bb.grad

    return {
        "reference": lambda: run(lambda x, y: _reference.arctan_l2_similarity(x, y, threshold=threshold)),
        "cpu": lambda: run(lambda x, y: ops.arctan_l2_similarity(x, y, threshold=threshold,
                                                                 backend="cpu", num_threads=threads)),
    }


def check(selected, threads: int) -> None:
    a, b = make_data(301, 77, 19, seed=1)
    for thr in (None, 0.75):
        want = providers(a.double(), b.double(), thr, threads, True)["reference"]()
        for name, fn in providers(a, b, thr, threads, True).items():
            if name not in selected or name == "reference":
                continue
            got = fn()
            for what, g, w in zip(("out", "grad_a", "grad_b"), got, want):
                err = float((g.double() - w).abs().max() / w.abs().max().clamp_min(1e-12))
                if not err < 1e-4:
                    raise SystemExit(f"correctness check failed for {name} (threshold={thr}): "
                                     f"{what} relative error {err:.2e}")
            print(f"  check {name} threshold={thr}: ok")


def main(argv: Optional[list] = None) -> None:
    p = parser(__doc__.splitlines()[0], sizes="NxMxE", default_sizes=[(8192, 8192, 384)],
               quick_sizes=[(1024, 1024, 64)])
    args = p.parse_args(argv)
    threads, selected, cases = setup(args, PROVIDERS)
    print(f"arctan_l2_similarity, float32, {threads} threads")
    check(selected, threads)
    mm = matmul_gflops(1024 if args.quick else 4096)
    rows = []
    for N, M, E in cases:
        a, b = make_data(N, M, E)
        for backward in (False, True):
            for thr in (None, 0.75):
                op = "arctan_l2_similarity" + ("_fwd_bwd" if backward else "")
                case = {"N": N, "M": M, "E": E, "threshold": thr, "pass": "fwd+bwd" if backward else "fwd"}
                flops = (6.0 if backward else 2.0) * N * M * E
                print(f"case N={N} M={M} E={E} threshold={thr} {'fwd+bwd' if backward else 'fwd'}")
                for name, fn in providers(a, b, thr, threads, backward).items():
                    if name not in selected:
                        continue
                    # outputs: the N x M similarity (and the two gradients)
                    extra = N * M * 4 + ((N + M) * E * 4 if backward else 0)
                    rows.append(measure(op, name, case, fn, dtype="float32", threads=threads,
                                        flops=flops, work=N * M, work_unit="pairs/s",
                                        repeats=args.repeats, max_seconds=120, extra_bytes=extra))
    finish(rows, out=args.out, matmul=mm)


if __name__ == "__main__":
    main()
