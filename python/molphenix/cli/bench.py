"""``molphenix bench``: kernel benchmarks on generated data (reference vs compiled kernels)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from molphenix import benchmark as B
from molphenix import ops
from molphenix.ops import _reference as R

SIZES = {
    "tiny": dict(s2l_b=256, s2l_d=64, s2l_e=96, ret_q=512, ret_n=1024, ret_d=64, topk_q=128,
                 topk_n=1024, sim_n=256, sim_e=96),
    True: dict(s2l_b=2048, s2l_d=256, s2l_e=384, ret_q=8192, ret_n=8192, ret_d=256, topk_q=1024,
               topk_n=8192, sim_n=2048, sim_e=384),
    False: dict(s2l_b=8192, s2l_d=256, s2l_e=384, ret_q=20000, ret_n=20000, ret_d=256, topk_q=4096,
                topk_n=20000, sim_n=8192, sim_e=384),
}


def run(quick: bool = True, device: str = "cpu", threads: Optional[int] = None,
        out: Optional[Path] = None, seed: int = 0, tiny: bool = False) -> List[B.Measurement]:
    """Benchmark every op against the reference; prints a markdown table, returns measurements."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' requested but torch sees no CUDA device")
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(seed)
    sz = SIZES["tiny"] if tiny else SIZES[bool(quick)]
    dtype = torch.float32
    compiled = device
    rows: List[B.Measurement] = []
    mm = B.matmul_gflops(512 if tiny else 2048 if quick else 4096, device=device)
    print(f"molphenix bench ({'tiny' if tiny else 'quick' if quick else 'full'}) on {B.machine_tag(device)}, "
          f"{threads} threads; torch.mm: {mm:.1f} GFLOP/s", flush=True)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype).to(device)

    def add(op, provider, case, fn, flops=None, work=None, unit=""):
        m = B.Measurement(op=op, provider=provider, case=case, dtype="float32", threads=threads,
                          device=device, flops=flops, work=work, work_unit=unit)
        m.times = B.time_call(fn, device=device, warmup=1, repeats=3)
        rows.append(m)
        print(f"  {op:22s} {provider:10s} {m.median:8.4f} s", flush=True)

    # --- s2l_loss forward + backward ---------------------------------------------------------
    b, d, e = sz["s2l_b"], sz["s2l_d"], sz["s2l_e"]
    p = torch.nn.functional.normalize(rand(b, d), dim=1)
    q = torch.nn.functional.normalize(rand(b, d), dim=1)
    u = rand(b, e) * 0.02
    case = dict(B=b, D=d, E=e)
    for prov in ("reference", compiled):
        def step(prov=prov):
            pp, qq = p.clone().requires_grad_(), q.clone().requires_grad_()
            loss = ops.s2l_loss(pp, qq, 10.0, -10.0, u, backend=prov, num_threads=threads)
            loss.backward()
            return loss
        add("s2l_loss", prov, case, step, flops=2.0 * b * b * (3 * d + e), work=b * b, unit="pairs/s")
    # check the kernel against the reference on this case
    ref = R.s2l_loss(p.double(), q.double(), 10.0, -10.0, u.double())
    got = ops.s2l_loss(p, q, 10.0, -10.0, u, backend=compiled, num_threads=threads)
    if not math.isclose(float(got), float(ref), rel_tol=1e-4, abs_tol=1e-4):
        raise RuntimeError(f"s2l_loss kernel disagrees with the reference: {float(got)} vs {float(ref)}")

    # --- retrieval_ranks -----------------------------------------------------------------------
    nq, nc, dd = sz["ret_q"], sz["ret_n"], sz["ret_d"]
    cand = rand(nc, dd)
    qu = cand[:nq] + 0.5 * rand(nq, dd)
    tgt = torch.arange(nq, device=device) % nc
    case = dict(Q=nq, N=nc, D=dd)
    res = {}
    for prov in ("reference", compiled):
        res[prov] = ops.retrieval_ranks(qu, cand, tgt, backend=prov, num_threads=threads)
        add("retrieval_ranks", prov, case,
            lambda prov=prov: ops.retrieval_ranks(qu, cand, tgt, backend=prov, num_threads=threads),
            flops=2.0 * nq * nc * dd, work=nq, unit="queries/s")
    mismatch = int((res["reference"].cpu() != res[compiled].cpu()).sum())

    # --- topk_retrieve -------------------------------------------------------------------------
    tq, tn = sz["topk_q"], sz["topk_n"]
    case = dict(Q=tq, N=tn, D=dd, k=max(1, tn // 100))
    for prov in ("reference", compiled):
        add("topk_retrieve", prov, case,
            lambda prov=prov: ops.topk_retrieve(qu[:tq], cand[:tn], fraction=0.01, backend=prov,
                                                num_threads=threads),
            flops=2.0 * tq * tn * dd, work=tq, unit="queries/s")

    # --- arctan_l2_similarity ----------------------------------------------------------------
    n, e = sz["sim_n"], sz["sim_e"]
    a = rand(n, e) * 0.05
    case = dict(N=n, M=n, E=e)
    for prov in ("reference", compiled):
        add("arctan_l2_similarity", prov, case,
            lambda prov=prov: ops.arctan_l2_similarity(a, a, threshold=0.75, backend=prov,
                                                       num_threads=threads),
            flops=2.0 * n * n * e, work=n * n, unit="pairs/s")

    print()
    print(B.markdown_table(rows, matmul=mm))
    print(f"\nretrieval ranks identical to the reference: {mismatch == 0} ({mismatch} mismatches)")
    if out is not None:
        B.append_csv(out, rows, matmul=mm)
        print(f"appended {len(rows)} rows to {out}")
    if mismatch:
        raise RuntimeError(f"retrieval_ranks kernel disagrees with the reference on {mismatch} queries")
    return rows
