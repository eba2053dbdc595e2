"""Benchmark: ``s2l_loss`` forward + backward (grads of p, q, scale, bias) on the CPU.

Providers (all with the same thread count):
  reference      molphenix.ops._reference.s2l_loss + autograd: materialises several B x B
                 float32 temporaries (about 10 GB at B = 16384)
  chunked_torch  open_clip-style: row chunks of 1024, z / soft labels / loss / dl/dz recomputed
                 per chunk with torch ops, gradients by two matmuls per chunk (O(chunk * B) memory)
  cpu            molphenix.ops.s2l_loss(..., backend="cpu") + backward: the fused tiled kernel
                 (loss and all gradients in one pass, O((B1 + B2) * (D + E) + threads * tile^2))
and torch.mm's GFLOP/s (square 4096 fp32) as the machine's physical limit.
Useful FLOPs = 2 * B^2 * (3 D + E): the logits GEMM, the u GEMM, and the two gradient GEMMs.

Data: L2-normalised p, q (q a noisy copy of p, so the positives score high); u in the
"input" similarity space of DESIGN.md: most rows control-like (squared distances around the
arctan window c tan(pi/16)), some "active" rows far away, so a realistic share of pairs needs the
arctan and survives the threshold. A correctness check (small odd shape, float64 reference) runs
before any timing.

    python benches/bench_s2l_loss.py                     # B = 4096 and 16384, D = 256, E = 384
    python benches/bench_s2l_loss.py --quick             # seconds
    python benches/bench_s2l_loss.py --sizes 8192x256x384 --providers cpu,chunked_torch
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Tuple

import torch

from _harness import finish, matmul_gflops, measure, parser, setup

import molphenix.ops as ops
from molphenix.ops import _reference

PROVIDERS = ("reference", "chunked_torch", "cpu")
# The reference materialises ~ 10 B1 x B2 float32 temporaries with autograd: cap its memory.
REFERENCE_MAX_PAIRS = 2.7e8 + 1
SCALE, BIAS = 10.0, -10.0
KW = dict(c=0.3, threshold=0.75, gamma=1.75, delta=0.75)


def make_data(B: int, D: int, E: int, seed: int = 0, dtype=torch.float32):
    """p, q (unit rows; q_i close to p_i) and u (control-like rows near the origin, a third of the
    rows 'active' at larger distances)."""
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(B, D, generator=g, dtype=torch.float64)
    q = p + 1.0 * torch.randn(B, D, generator=g, dtype=torch.float64)
    p = p / p.norm(dim=1, keepdim=True)
    q = q / q.norm(dim=1, keepdim=True)
    # control-like: d2 between two rows ~ 2 E sigma^2 = c tan(pi/16) / 2  (median in the window)
    sigma = math.sqrt(0.3 * math.tan(math.pi / 16) / 2 / (2 * E))
    u = sigma * torch.randn(B, E, generator=g, dtype=torch.float64)
    active = torch.rand(B, generator=g) < 1 / 3
    u[active] += 0.5 * torch.randn(int(active.sum()), E, generator=g, dtype=torch.float64) / math.sqrt(E)
    return (p.to(dtype).contiguous(), q.to(dtype).contiguous(), u.to(dtype).contiguous())


def chunked_torch_s2l(p: torch.Tensor, q: torch.Tensor, u: torch.Tensor, scale: float, bias: float,
                      chunk: int = 1024, c: float = 0.3, threshold: float = 0.75,
                      gamma: float = 1.75, delta: float = 0.75):
    """Loss and gradients (p, q, scale, bias) by row chunks: O(chunk * B) memory.

    Per chunk: z = scale <p, q> + bias, soft labels from u, loss, G = dl/dz / B, then
    dp_chunk = scale G q and dq += scale G^T p_chunk (what autograd would do, without keeping the
    graph of every chunk alive)."""
    B1 = p.shape[0]
    sq_u = (u * u).sum(1)
    dq = torch.zeros_like(q)
    dp = torch.empty_like(p)
    loss = torch.zeros((), dtype=torch.float64)
    dscale = torch.zeros((), dtype=torch.float64)
    dbias = torch.zeros((), dtype=torch.float64)
    for i0 in range(0, B1, chunk):
        i1 = min(B1, i0 + chunk)
        dots = p[i0:i1] @ q.T
        z = dots * scale + bias
        d2 = (sq_u[i0:i1, None] + sq_u[None, :] - 2.0 * (u[i0:i1] @ u.T)).clamp_min_(0.0)
        s = 1.0 - (4.0 / math.pi) * torch.atan(d2.div_(c))
        s = torch.where(s >= threshold, s, torch.zeros_like(s))
        rows = torch.arange(i0, i1)
        s[rows - i0, rows] = 1.0
        a = gamma + (1.0 - delta) * s  # w+ + w-
        loss += (a * torch.nn.functional.softplus(z) - s * z).sum(dtype=torch.float64)
        G = (a * torch.sigmoid(z) - s) / B1
        dscale += (G * dots).sum(dtype=torch.float64)
        dbias += G.sum(dtype=torch.float64)
        dp[i0:i1] = scale * (G @ q)
        dq.addmm_(G.T, p[i0:i1], alpha=scale)
    return loss / B1, dp, dq, dscale, dbias


def providers(p, q, u, threads) -> Dict[str, Callable[[], Tuple[torch.Tensor, ...]]]:
    def autograd_run(fn):
        pp = p.detach().requires_grad_()
        qq = q.detach().requires_grad_()
        sc = torch.tensor(SCALE, dtype=torch.float64, requires_grad=True)
        bi = torch.tensor(BIAS, dtype=torch.float64, requires_grad=True)
        loss = fn(pp, qq, sc, bi)
        loss.backward()
        return loss.detach(), pp.grad, qq.grad, sc.grad, bi.grad

    return {
        "reference": lambda: autograd_run(
            lambda pp, qq, sc, bi: _reference.s2l_loss(pp, qq, sc, bi, u, **KW)),
        "chunked_torch": lambda: chunked_torch_s2l(p, q, u, SCALE, BIAS),
        "cpu": lambda: autograd_run(
            lambda pp, qq, sc, bi: ops.s2l_loss(pp, qq, sc, bi, u, backend="cpu",
                                                num_threads=threads, **KW)),
    }


def check(selected, threads: int) -> None:
    """Every selected provider against the float64 reference on a small odd shape."""
    p, q, u = make_data(333, 37, 19, seed=1)
    want = [t.double() for t in providers(p.double(), q.double(), u.double(), threads)["reference"]()]
    for name, fn in providers(p, q, u, threads).items():
        if name not in selected or name == "reference":
            continue
        got = [t.double() for t in fn()]
        for what, g, w in zip(("loss", "grad_p", "grad_q", "grad_scale", "grad_bias"), got, want):
            err = float((g - w).abs().max() / w.abs().max().clamp_min(1e-12))
            if not err < 1e-4:
                raise SystemExit(f"correctness check failed for {name}: {what} relative error {err:.2e}")
        print(f"  check {name}: ok")


def main(argv: Optional[list] = None) -> None:
    p_ = parser(__doc__.splitlines()[0], sizes="BxDxE", default_sizes=[(4096, 256, 384), (16384, 256, 384)],
               quick_sizes=[(1024, 64, 32)])
    args = p_.parse_args(argv)
    threads, selected, cases = setup(args, PROVIDERS)
    print(f"s2l_loss forward+backward, float32, {threads} threads")
    check(selected, threads)
    mm = matmul_gflops(1024 if args.quick else 4096)
    rows = []
    for B, D, E in cases:
        p, q, u = make_data(B, D, E)
        case = {"B": B, "D": D, "E": E}
        flops = 2.0 * B * B * (3 * D + E)
        print(f"case B={B} D={D} E={E}")
        for name, fn in providers(p, q, u, threads).items():
            if name not in selected:
                continue
            if name == "reference" and B * B > REFERENCE_MAX_PAIRS:
                print(f"  {'s2l_loss':22s} {name:14s} skipped (B x B too large)")
                continue
            notes = {"chunked_torch": "row chunks of 1024, manual grads",
                     "reference": "naive, materialises B x B, autograd",
                     "cpu": "fused tiled kernel, autograd wrapper"}.get(name, "")
            big = B * B > 1e8
            rows.append(measure("s2l_loss", name, case, fn, dtype="float32", threads=threads,
                                flops=flops, work=B * B, work_unit="pairs/s",
                                repeats=1 if (big and name != "cpu") else args.repeats,
                                warmup=0 if (big and name != "cpu") else 1, max_seconds=120,
                                notes=notes, extra_bytes=2 * B * D * 4))
    finish(rows, out=args.out, matmul=mm)


if __name__ == "__main__":
    main()
