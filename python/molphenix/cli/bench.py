"""``molphenix bench``: the compiled kernels against the pure-torch reference on generated data.

The same harness and op definitions as ``benches/`` (:mod:`molphenix.benchmark`,
:mod:`molphenix.benchmark.cases`): a correctness check of every provider first (a disagreement
raises :class:`molphenix.benchmark.CheckFailed`), then for each op the providers ``naive`` (the
reference) and ``ours`` (``backend=device``) with the same warm-up and interleaved repeats, peak
memory (a fresh process per provider on the CPU; skipped at ``tiny`` sizes) and torch.mm's rate
measured in the same run. Rows go to ``out`` (a CSV, ``benches/results`` layout) when given.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import torch

from molphenix.benchmark import Row, Run, run_case, run_checks
from molphenix.benchmark.cases import ARCTAN, RANKS, S2L, TOPK

SIZES = {
    "tiny": dict(s2l=(256, 64, 96), ret=(512, 1024, 64), topk=(128, 1024, 64), sim=(256, 96), mm=512),
    "quick": dict(s2l=(2048, 256, 384), ret=(8192, 8192, 256), topk=(1024, 8192, 256), sim=(2048, 384),
                  mm=2048),
    "full": dict(s2l=(8192, 256, 384), ret=(20000, 20000, 256), topk=(4096, 20000, 256), sim=(8192, 384),
                 mm=4096),
}
PROVIDERS = ["naive", "ours"]


def run(quick: bool = True, device: str = "cpu", threads: Optional[int] = None,
        out: Optional[Path] = None, seed: int = 0, tiny: bool = False) -> List[Row]:
    """Benchmark every op (naive vs ours); prints a markdown table and returns the rows."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' requested but torch sees no CUDA device")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")
    size = "tiny" if tiny else "quick" if quick else "full"
    sz = SIZES[size]
    r = Run(device=device, threads=threads or torch.get_num_threads(), csv_path=out,
            command=f"molphenix bench ({size})", title=f"molphenix bench ({size})")
    dtype = "float32"
    with r:
        r.measure_matmul(n=sz["mm"], dtype=torch.float32)
        for spec in (S2L, RANKS, TOPK, ARCTAN):
            run_checks(r, spec, dtype=dtype, only=PROVIDERS)
        b, d, e = sz["s2l"]
        q_, n_, d_ = sz["ret"]
        tq, tn, td = sz["topk"]
        n, e2 = sz["sim"]
        plan = [
            (S2L, {"B": b, "D": d, "E": e, "seed": seed}),
            (RANKS, {"Q": q_, "N": n_, "D": d_, "seed": seed}),
            (TOPK, {"Q": tq, "N": tn, "D": td, "fraction": 0.01, "seed": seed}),
            (ARCTAN, {"N": n, "M": n, "E": e2, "threshold": 0.75, "pass": "fwd", "seed": seed}),
        ]
        for spec, params in plan:
            run_case(r, spec, params, dtype=dtype, only=PROVIDERS, warmup=1, repeats=3, memory=not tiny)
    return r.rows
