"""Benchmark: ``retrieval_ranks`` (rank of the true candidate among N) on the CPU.

Providers (all with the same thread count):
  reference      molphenix.ops._reference.retrieval_ranks (materialises Q x N; small cases only)
  chunked_torch  torch: per block of queries S = q_blk @ c.T, rank = #(S >= S[i, t_i]) - 1
                 (O(block * N) memory)
  cpu            molphenix.ops.retrieval_ranks(..., backend="cpu"): streamed GEMM tiles with a
                 fused compare-and-count epilogue, O((Q + N) * D) memory
  faiss          faiss.IndexFlatIP search with k = 5% of N, rank read from the result list
                 (faiss cannot give a rank beyond k: those queries get rank >= k, "censored")
and torch.mm's GFLOP/s (square 4096 fp32) as the machine's physical limit. FLOPs = 2 * Q * N * D.

Embeddings are L2-normalised float32 rows, metric "dot" (= cosine on these rows), so all
providers compute the same scores. A correctness check on a small case runs before any timing.

    python benches/bench_retrieval_ranks.py                 # Q = N = 50,000, D = 256
    python benches/bench_retrieval_ranks.py --quick         # seconds
    python benches/bench_retrieval_ranks.py --providers cpu,chunked_torch --sizes 20000x20000x256
"""

from __future__ import annotations

from typing import Callable, Dict

import numpy as np
import torch

from _harness import finish, matmul_gflops, measure, parser, setup

import molphenix.ops as ops
from molphenix.ops import _reference, k_for_fraction

PROVIDERS = ("reference", "chunked_torch", "cpu", "faiss")
# The reference materialises Q x N float32 (plus temporaries): keep it to small cases.
REFERENCE_MAX_PAIRS = 2.5e8


def make_data(Q: int, N: int, D: int, seed: int = 0):
    """Queries and noisy copies of them as candidates (target of query i is candidate i), so the
    rank distribution is that of a retrieval task (not of pure noise)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(Q, D, generator=g)
    c = torch.randn(N, D, generator=g)
    m = min(Q, N)
    c[:m] = q[:m] + 1.5 * c[:m]
    q = q / q.norm(dim=1, keepdim=True)
    c = c / c.norm(dim=1, keepdim=True)
    t = torch.arange(Q, dtype=torch.int64) % N
    return q.contiguous(), c.contiguous(), t


def chunked_torch_ranks(q: torch.Tensor, c: torch.Tensor, t: torch.Tensor, block: int = 2048):
    """Chunked matmul + compare. The target's score is read from the same product block, so ties
    are exact."""
    out = torch.empty(q.shape[0], dtype=torch.int64)
    ct = c.T
    for i0 in range(0, q.shape[0], block):
        s = q[i0:i0 + block] @ ct
        tgt = s.gather(1, t[i0:i0 + block, None])
        out[i0:i0 + block] = (s >= tgt).sum(1) - 1
    return out


def faiss_ranks(q: torch.Tensor, c: torch.Tensor, t: torch.Tensor, k: int):
    """faiss IndexFlatIP top-k search, then the target's position in the list (k = censored)."""
    import faiss

    index = faiss.IndexFlatIP(c.shape[1])
    index.add(c.numpy())
    _, idx = index.search(q.numpy(), k)
    hit = idx == t.numpy()[:, None]
    return torch.from_numpy(np.where(hit.any(1), hit.argmax(1), k).astype(np.int64))


def providers(q, c, t, k, threads) -> Dict[str, Callable[[], torch.Tensor]]:
    return {
        "reference": lambda: _reference.retrieval_ranks(q, c, t, metric="dot"),
        "chunked_torch": lambda: chunked_torch_ranks(q, c, t),
        "cpu": lambda: ops.retrieval_ranks(q, c, t, metric="dot", backend="cpu",
                                           num_threads=threads),
        "faiss": lambda: faiss_ranks(q, c, t, k),
    }


def check(selected, threads: int) -> None:
    """Every selected provider against the reference on a small case (faiss: below its k)."""
    q, c, t = make_data(700, 1300, 67, seed=1)
    k = k_for_fraction(0.05, c.shape[0])
    want = _reference.retrieval_ranks(q, c, t, metric="dot")
    for name, fn in providers(q, c, t, k, threads).items():
        if name not in selected or name == "reference":
            continue
        try:
            got = fn()
        except ImportError as e:
            print(f"  check {name}: skipped ({e})")
            continue
        if name == "faiss":
            # faiss orders ties arbitrarily and computes scores with its own BLAS: agree below k
            # up to near-ties.
            ok = float(((got == want) | (want >= k)).float().mean()) > 0.98
        else:
            ok = torch.equal(got, want)
        if not ok:
            raise SystemExit(f"correctness check failed for {name}: "
                             f"{int((got != want).sum())} of {len(want)} ranks differ")
        print(f"  check {name}: ok")


def main(argv=None) -> None:
    p = parser(__doc__.splitlines()[0], sizes="QxNxD", default_sizes=[(10000, 10000, 256), (50000, 50000, 256)],
               quick_sizes=[(2000, 2000, 64)])
    args = p.parse_args(argv)
    threads, selected, cases = setup(args, PROVIDERS)
    print(f"retrieval_ranks, float32, metric=dot on normalised rows, {threads} threads")
    check(selected, threads)
    mm = matmul_gflops(1024 if args.quick else 4096)
    rows = []
    for Q, N, D in cases:
        q, c, t = make_data(Q, N, D)
        k = k_for_fraction(0.05, N)
        case = {"Q": Q, "N": N, "D": D}
        flops = 2.0 * Q * N * D
        print(f"case Q={Q} N={N} D={D} (faiss k={k})")
        for name, fn in providers(q, c, t, k, threads).items():
            if name not in selected:
                continue
            if name == "reference" and Q * N > REFERENCE_MAX_PAIRS:
                print(f"  {'retrieval_ranks':22s} {name:14s} skipped (Q x N too large)")
                continue
            if name == "faiss":
                try:
                    import faiss  # noqa: F401
                except ImportError:
                    print("  faiss not installed: skipped")
                    continue
            notes = {"faiss": f"IndexFlatIP search k={k} (5% of N), ranks >= k censored",
                     "chunked_torch": "block 2048 queries",
                     "reference": "materialises Q x N"}.get(name, "")
            rows.append(measure("retrieval_ranks", name, case, fn, dtype="float32",
                                threads=threads, flops=flops, work=Q, work_unit="queries/s",
                                repeats=args.repeats, warmup=0 if Q * N > 1e9 else 1,
                                max_seconds=120, notes=notes))
    finish(rows, out=args.out, matmul=mm)


if __name__ == "__main__":
    main()
