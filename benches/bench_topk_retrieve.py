"""Benchmark: ``topk_retrieve`` (exact top-k listing, k = 5% of N) on the CPU.

Providers (all with the same thread count):
  reference      molphenix.ops._reference.topk_retrieve (materialises Q x N; small cases only)
  chunked_torch  torch: per block of queries S = q_blk @ c.T, torch.topk(S, k) (O(block * N)
                 memory; ties are not guaranteed to be broken by index)
  cpu            molphenix.ops.topk_retrieve(..., backend="cpu"): streamed GEMM tiles with a
                 per-query threshold-filtered selection, exact, ties by lower index
  faiss          faiss.IndexFlatIP search with the same k
plus torch.mm's GFLOP/s (square 4096 fp32). FLOPs = 2 * Q * N * D (the GEMM part; the selection
and the sorted output of Q * k entries come on top).

    python benches/bench_topk_retrieve.py                  # Q = N = 50,000, D = 256, k = 2,500
    python benches/bench_topk_retrieve.py --quick
"""

from __future__ import annotations

from typing import Callable, Dict

import torch

from _harness import finish, matmul_gflops, measure, parser, setup
from bench_retrieval_ranks import make_data

import molphenix.ops as ops
from molphenix.ops import _reference, k_for_fraction

PROVIDERS = ("reference", "chunked_torch", "cpu", "faiss")
REFERENCE_MAX_PAIRS = 1e8


def chunked_torch_topk(q: torch.Tensor, c: torch.Tensor, k: int, block: int = 2048):
    scores = torch.empty(q.shape[0], k, dtype=q.dtype)
    idx = torch.empty(q.shape[0], k, dtype=torch.int64)
    ct = c.T
    for i0 in range(0, q.shape[0], block):
        s, i = torch.topk(q[i0:i0 + block] @ ct, k, dim=1, largest=True, sorted=True)
        scores[i0:i0 + block], idx[i0:i0 + block] = s, i
    return scores, idx


def faiss_topk(q: torch.Tensor, c: torch.Tensor, k: int):
    import faiss

    index = faiss.IndexFlatIP(c.shape[1])
    index.add(c.numpy())
    s, i = index.search(q.numpy(), k)
    return torch.from_numpy(s), torch.from_numpy(i)


def providers(q, c, k, threads) -> Dict[str, Callable]:
    return {
        "reference": lambda: _reference.topk_retrieve(q, c, k, metric="dot"),
        "chunked_torch": lambda: chunked_torch_topk(q, c, k),
        "cpu": lambda: ops.topk_retrieve(q, c, k, metric="dot", backend="cpu",
                                         num_threads=threads),
        "faiss": lambda: faiss_topk(q, c, k),
    }


def check(selected, threads: int) -> None:
    """cpu must equal the reference exactly (indices and scores); the others up to near-ties."""
    q, c, _ = make_data(300, 1700, 67, seed=1)
    k = 85
    ws, wi = _reference.topk_retrieve(q, c, k, metric="dot")
    for name, fn in providers(q, c, k, threads).items():
        if name not in selected or name == "reference":
            continue
        try:
            gs, gi = fn()
        except ImportError as e:
            print(f"  check {name}: skipped ({e})")
            continue
        if name == "cpu":
            ok = torch.equal(gi, wi) and torch.equal(gs, ws)
        else:
            ok = float((gi == wi).float().mean()) > 0.98 and torch.allclose(gs, ws, atol=1e-5)
        if not ok:
            raise SystemExit(f"correctness check failed for {name}: "
                             f"{int((gi != wi).sum())} of {gi.numel()} indices differ")
        print(f"  check {name}: ok")


def main(argv=None) -> None:
    p = parser(__doc__.splitlines()[0], sizes="QxNxD", default_sizes=[(10000, 10000, 256), (50000, 50000, 256)],
               quick_sizes=[(2000, 2000, 64)])
    p.add_argument("--fraction", type=float, default=0.05, help="k = ceil(fraction * N)")
    args = p.parse_args(argv)
    threads, selected, cases = setup(args, PROVIDERS)
    print(f"topk_retrieve, float32, metric=dot on normalised rows, {threads} threads")
    check(selected, threads)
    mm = matmul_gflops(1024 if args.quick else 4096)
    rows = []
    for Q, N, D in cases:
        q, c, _ = make_data(Q, N, D)
        k = k_for_fraction(args.fraction, N)
        case = {"Q": Q, "N": N, "D": D, "k": k}
        print(f"case Q={Q} N={N} D={D} k={k}")
        out_bytes = Q * k * (4 + 8)  # scores + indices are the op's output
        for name, fn in providers(q, c, k, threads).items():
            if name not in selected:
                continue
            if name == "reference" and Q * N > REFERENCE_MAX_PAIRS:
                print(f"  {'topk_retrieve':22s} {name:14s} skipped (Q x N too large)")
                continue
            if name == "faiss":
                try:
                    import faiss  # noqa: F401
                except ImportError:
                    print("  faiss not installed: skipped")
                    continue
            notes = {"faiss": "IndexFlatIP search (ties unordered)",
                     "chunked_torch": "block 2048 queries, torch.topk (ties unordered)",
                     "reference": "materialises Q x N, stable sort"}.get(name, "exact, ties by index")
            rows.append(measure("topk_retrieve", name, case, fn, dtype="float32", threads=threads,
                                flops=2.0 * Q * N * D, work=Q, work_unit="queries/s",
                                repeats=args.repeats, warmup=0 if Q * N > 1e9 else 1,
                                max_seconds=120, notes=notes, extra_bytes=out_bytes))
    finish(rows, out=args.out, matmul=mm)


if __name__ == "__main__":
    main()
