"""``Index.search`` on N x D candidates: this checkout against the starting commit's ``Index`` and
faiss ``IndexFlatIP``, in one run (same data, interleaved repeats, the harness's CSV and log).

Providers (every index built outside the timed call; its build and first search are timed once,
separately):

  before   ``molphenix.retrieval.Index`` as of commit ``--before`` (default ``a4fca65``, the commit
           this work started from), loaded from git: every search re-validates the N x D rows
           (a finiteness pass) and the kernel re-packs them (a copy of N x D).
  ours     ``Index`` of this checkout: rows validated at construction, packed for the CPU kernels
           by the first search and reused.
  faiss    ``faiss.IndexFlatIP`` on the same unit rows (exact inner product), float32.

Checks before timing: ``ours`` and ``before`` return identical ids and bitwise identical scores;
faiss returns the same scores to 1e-5 and the same ids wherever scores are not within 1e-5 of a tie.

    python benches/bench_index_before_after.py --threads 2 --results-dir benches/results/<run>
    python benches/bench_index_before_after.py --quick --no-save
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import types

import numpy as np
import torch

from _harness import HERE, open_run, parser

from molphenix.benchmark import Provider, Row, time_interleaved


def _before_index(commit: str):
    """The Index class of ``commit`` (its retrieval/index.py run against today's ops)."""
    src = subprocess.run(["git", "show", f"{commit}:python/molphenix/retrieval/index.py"],
                         cwd=HERE.parent, capture_output=True, text=True)
    if src.returncode != 0:
        return None, src.stderr.strip()
    mod = types.ModuleType("molphenix_index_before")
    mod.__file__ = f"<{commit}:python/molphenix/retrieval/index.py>"
    sys.modules[mod.__name__] = mod
    exec(compile(src.stdout, mod.__file__, "exec"), mod.__dict__)
    return mod.Index, ""


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--cases", default="1x10,10x10,100x10,1000x10,1000x1%",
                   help="comma-separated QxK (K as a count or a percentage of N)")
    p.add_argument("--before", default="a4fca65", help="commit of the 'before' Index")
    args = p.parse_args()
    if args.quick:
        args.n, args.cases = 20_000, "1x10,100x10,100x1%"
    run = open_run(args, title="Index.search before / after / faiss")
    import faiss

    from molphenix.retrieval import Index

    Before, why = _before_index(args.before)
    if Before is None:
        print(f"# 'before' skipped: {why}")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.n, args.dim, generator=g)
    t0 = time.perf_counter()
    ours = Index(x)
    t_ours = time.perf_counter() - t0
    print(f"# ours: Index(...) built in {t_ours:.2f} s (validation + normalisation) [load {_loadavg()}]")
    rows = ours.embeddings.numpy()
    before = None
    if Before is not None:
        t0 = time.perf_counter()
        before = Before(x)
        print(f"# before: Index(...) built in {time.perf_counter() - t0:.2f} s [load {_loadavg()}]")
    del x
    t0 = time.perf_counter()
    fi = faiss.IndexFlatIP(args.dim)
    fi.add(rows)
    print(f"# faiss: IndexFlatIP built in {time.perf_counter() - t0:.2f} s")
    q_all = torch.randn(max(int(c.split("x")[0]) for c in args.cases.split(",")), args.dim, generator=g)
    q_all = torch.nn.functional.normalize(q_all, dim=1)
    # first search of ours: packs the rows (once)
    t0 = time.perf_counter()
    ours.search(q_all[:1], k=1)
    first = time.perf_counter() - t0
    packed = ours.storage._packed
    print(f"# ours: first search (packs {args.n:,} rows once, {packed.nbytes / 2**20:.0f} MiB) "
          f"{first:.2f} s [load {_loadavg()}]")
    run.add(Row(op="index_first_search", provider="ours", case={"N": args.n, "D": args.dim, "Q": 1, "k": 1},
                dtype="float32", device="cpu", threads=run.threads, times=[first],
                peak_mem_bytes=packed.nbytes, mem_counted="bytes of the packed copy kept by the index",
                notes=f"the one-time pack; load {_loadavg()}"))
    # correctness before timing, on 20 queries at k = 50
    qc = q_all[:20]
    s_o, i_o = ours.search(qc, k=50)
    if before is not None:
        s_b, i_b = before.search(qc, k=50)
        assert torch.equal(s_o, s_b) and np.array_equal(i_o, i_b), "ours != before"
        print("check: ours == before (ids and scores bit for bit) on 20 queries, k = 50")
    s_f, i_f = fi.search(qc.numpy(), 50)
    gap = np.abs(s_f - s_o.numpy()).max()
    tie = np.abs(np.diff(s_o.numpy(), axis=1)) < 1e-5
    near = np.zeros_like(i_f, dtype=bool)
    near[:, 1:] |= tie
    near[:, :-1] |= tie
    differ = (i_f != i_o) & ~near
    assert gap < 1e-5 and not differ.any(), f"faiss disagrees: max score gap {gap}, {differ.sum()} ids"
    print(f"check: faiss scores within {gap:.1e}, ids equal away from near-ties")
    for spec in args.cases.split(","):
        qs, ks = spec.split("x")
        nq = int(qs)
        k = (max(1, (int(ks[:-1]) * args.n + 99) // 100) if ks.endswith("%") else int(ks))
        q = q_all[:nq].contiguous()
        qn = q.numpy()
        provs = [Provider("ours", lambda q=q, k=k: ours.search(q, k=k))]
        if before is not None:
            provs.append(Provider("before", lambda q=q, k=k: before.search(q, k=k)))
        provs.append(Provider("faiss", lambda qn=qn, k=k: fi.search(qn, k)))
        load = _loadavg()
        reps = args.repeats if nq * k < 5_000_000 else max(1, min(args.repeats, 3))
        times = time_interleaved(provs, device="cpu", warmup=args.warmup, repeats=reps)
        case = {"N": args.n, "D": args.dim, "Q": nq, "k": k}
        med = {name: float(np.median(t)) for name, t in times.items()}
        for name, t in times.items():
            notes = f"load at case start {load}; end {_loadavg()}"
            if name != "ours":
                notes += f"; ours is {med[name] / med['ours']:.2f}x faster"
            run.add(Row(op="index_search", provider=name, case=case, dtype="float32", device="cpu",
                        threads=run.threads, warmup=args.warmup, times=t, work=nq, unit="queries/s",
                        notes=notes))
        print(f"Q={nq:5d} k={k:6d}: " + ", ".join(f"{n} {m:.4f} s" for n, m in med.items())
              + f"  [load {load} -> {_loadavg()}]", flush=True)
    run.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
