"""An end-to-end screen of a million-molecule library on this machine, in one run.

Steps (each a row of the machine's table with the load average when it ran; everything printed
goes to the raw log):

  train       a small run to embed with (molphenix-small: Morgan 2048 counts -> D = 256; trained
              briefly on simulated data: only its shape matters for speed)
  embed       ``molphenix embed-library`` on the library file (one concentration: one row per
              molecule), wall time and molecules/s end to end (file read, featurize, embed,
              write), peak memory of the command and its worker processes together (RSS summed
              over the process tree, sampled every 0.2 s; PSS too), size on disk
  resume      the same command killed with SIGKILL (the whole process group) half way, then run
              again: time of the rerun, and the result compared byte for byte with the full run
  embed-2m    the same at 2M molecules (peak memory flat in the library size)
  open        ``Index.load`` of the library in a fresh process (median of 5)
  search      10,000 queries, k = 100: ``Index.search`` against faiss ``IndexFlatIP`` (exact) and
              faiss ``IndexHNSWFlat`` (approximate: build time, search time and recall@k against
              the exact lists at two efSearch values), interleaved repeats
  float16     the library stored as float16: size, open time, the change of the top-k scores and
              the recall@k of its lists against float32
  retrieve    ``molphenix retrieve`` of 10,000 simulated wells against the library, streamed to
              Parquet: wall time and peak memory

The whole screen, library generation included, is one command (commit first: the rows are
appended to ``benches/results/<machine>.csv``, the raw log goes to ``benches/results/<machine>/``)::

    nohup python benches/bench_screening.py --threads 2 --work /tmp/screen > /tmp/screen.out 2>&1 &

Without ``--library`` it writes the test library with ``scripts/make_screening_library.py``:
``--n-2m`` (default 2,000,000) molecules into ``WORK/lib-2000000.smi`` (kept, and reused by a later
run while its record matches; the record, with the file's sha256, is printed into the raw log),
whose first ``--n`` (default 1,000,000) lines are ``WORK/lib-1000000.smi`` (the first N lines of a
larger library are the N-molecule library). ``--n-2m 0`` skips the 2M
step. A smoke run: ``--n 20000 --n-2m 0 --chunk-rows 2000 --queries 1000 --no-save``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from _harness import HERE, open_run, parser

from molphenix.benchmark import Provider, Row, time_interleaved

PY = sys.executable
ENV = dict(os.environ, PYTHONPATH=str(HERE.parent / "python") + os.pathsep + os.environ.get("PYTHONPATH", ""))


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _tree(pid: int) -> List[int]:
    """``pid`` and all its descendants (from /proc: every process's parent)."""
    children: Dict[int, List[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])  # after "pid (comm) state"
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _rss_pss(pids: List[int]) -> tuple:
    rss = pss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            pass
    return rss, pss


class Monitor:
    """Peak RSS / PSS of a process and all its descendants, summed, sampled every ``dt`` s."""

    def __init__(self, pid: int, dt: float = 0.2) -> None:
        self.pid, self.dt = pid, dt
        self.peak_rss = self.peak_pss = 0
        self.peak_procs = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = _tree(self.pid) if Path(f"/proc/{self.pid}").exists() else []
            rss, pss = _rss_pss(pids)
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.peak_procs = max(self.peak_procs, len(pids))
            self._stop.wait(self.dt)

    def stop(self) -> None:
        self._stop.set()
        self._t.join()


def run_cmd(cmd: List[str], *, kill_when=None, log: Optional[Path] = None) -> Dict[str, float]:
    """Run ``cmd`` (its own process group), monitoring memory; ``kill_when()`` True -> SIGKILL."""
    t0 = time.perf_counter()
    fh = open(log, "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, env=ENV, start_new_session=True, stdout=fh, stderr=subprocess.STDOUT)
    mon = Monitor(proc.pid)
    killed = False
    while proc.poll() is None:
        if kill_when is not None and not killed and kill_when():
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
        time.sleep(0.1)
    mon.stop()
    if log:
        fh.close()
    return {"wall": time.perf_counter() - t0, "rc": proc.returncode, "rss": mon.peak_rss,
            "pss": mon.peak_pss, "procs": mon.peak_procs, "killed": killed}


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def shards_bytes(path: Path):
    from molphenix.retrieval import Index

    ix = Index.load(path)
    import hashlib

    h = hashlib.sha256()
    for b in ix.storage.blocks:
        h.update(b.numpy().tobytes())
    hi = hashlib.sha256("\n".join(ix.ids.tolist()).encode()).hexdigest()
    return h.hexdigest(), hi


def make_library(work: Path, n: int, n2: int) -> tuple:
    """(the n-molecule file, the n2-molecule file or None): the test library, written once
    (``scripts/make_screening_library.py``) into ``work`` and reused while its record matches."""
    import json

    big = max(n, n2)
    path = work / f"lib-{big}.smi"
    rec = Path(str(path) + ".json")
    if not (path.is_file() and rec.is_file() and json.loads(rec.read_text()).get("n") == big):
        print(f"# writing the test library: {big:,} molecules -> {path} [load {load()}]", flush=True)
        t0 = time.perf_counter()
        subprocess.run([PY, str(HERE.parent / "scripts" / "make_screening_library.py"), "--n", str(big),
                        "--out", str(path)], env=ENV, check=True)
        print(f"# test library written in {time.perf_counter() - t0:.0f} s [load {load()}]", flush=True)
    else:
        print(f"# test library {path} (exists; its record: n = {big:,})")
    if n == big:
        return path, None
    head = work / f"lib-{n}.smi"
    with open(path) as src, open(head, "w") as dst:
        for i, line in enumerate(src):
            if i == n:
                break
            dst.write(line)
    return head, path


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--library", type=Path, default=None,
                   help="the molecules file to screen (default: the test library, see --n)")
    p.add_argument("--library-2m", type=Path, default=None, help="a second, larger file for the flat-memory check")
    p.add_argument("--n", type=int, default=1_000_000, help="molecules of the test library (without --library)")
    p.add_argument("--n-2m", type=int, default=2_000_000,
                   help="molecules of the larger test library (without --library; 0: no flat-memory step)")
    p.add_argument("--work", type=Path, required=True, help="scratch directory (libraries, the run)")
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--chunk-rows", type=int, default=10_000, help="embed-library --chunk-rows")
    p.add_argument("--skip", default="", help="comma-separated steps to skip: embed, resume, embed-2m, "
                   "open and search (together: the rest too), hnsw, float16, retrieve")
    p.add_argument("--workers", type=int, default=None, help="embed-library --workers (default: its own)")
    args = p.parse_args(argv)
    if args.n < 1 or args.n_2m < 0 or args.chunk_rows < 1 or args.queries < 1 or args.k < 1:
        p.error("--n, --chunk-rows, --queries, --k: expected positive integers; --n-2m: >= 0")
    skip = set(filter(None, args.skip.split(",")))
    with open_run(args, title="end-to-end screen of a library", matmul=True) as run:
        return _screen(run, args, skip)


def _screen(run, args, skip) -> int:
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    if args.library is None:
        args.library, lib2m = make_library(work, args.n, args.n_2m if args.n_2m > args.n else args.n)
        if args.library_2m is None:
            args.library_2m = lib2m
    nmol = sum(1 for _ in open(args.library))
    print(f"# library {args.library}: {nmol:,} molecules")
    for f in (args.library, args.library_2m):
        meta = Path(str(f) + ".json") if f is not None else None
        if meta is not None and meta.is_file():
            print(f"# library record ({f.name}): {meta.read_text().strip()}")

    # -- the run --------------------------------------------------------------------------------
    runp = work / "run"
    if not (runp / "checkpoints" / "last.pt").is_file():
        from molphenix.data import simulate
        from molphenix.train import TrainConfig, fit

        t0 = time.perf_counter()
        simulate(work / "data", n_molecules=850, seed=0, progress=False)  # about 10,000 treated wells
        fit(TrainConfig(data=str(work / "data"), out=str(runp), steps=20, batch_size=256,
                        progress=False, eval_every=20), log=lambda m: None)
        print(f"# trained {runp} in {time.perf_counter() - t0:.0f} s")
    base = [PY, "-m", "molphenix", "embed-library", "--run", str(runp), "--concentrations", "10",
            "--chunk-rows", str(args.chunk_rows)]
    if args.threads is not None:
        base += ["--threads", str(args.threads)]
    if args.workers is not None:
        base += ["--workers", str(args.workers)]

    def embed_row(op, res, n, out, notes=""):
        size = du(out) if out.exists() else 0
        print(f"{op}: {n:,} molecules in {res['wall']:.1f} s = {n / res['wall']:,.0f} mol/s; peak RSS "
              f"{res['rss'] / 2**30:.2f} GiB (PSS {res['pss'] / 2**30:.2f} GiB) over {res['procs']} "
              f"processes; {size / 2**20:.0f} MiB on disk; rc {res['rc']} [load {load()}] {notes}",
              flush=True)
        run.add(Row(op=op, provider="embed-library", case={"molecules": n, "D": 256, "threads": run.threads},
                    dtype="float32", device="cpu", threads=run.threads, times=[res["wall"]], work=n,
                    unit="molecules/s", peak_mem_bytes=res["rss"],
                    mem_counted="peak RSS summed over the command and its worker processes "
                                f"(PSS {res['pss'] / 2**20:.0f} MiB); disk {size / 2**20:.0f} MiB",
                    status="ok" if res["rc"] == 0 else f"rc {res['rc']}",
                    notes=f"{notes}; load at end {load()}"))

    # -- embed 1M -------------------------------------------------------------------------------
    lib = work / "lib-1m"
    if "embed" not in skip:
        shutil.rmtree(lib, ignore_errors=True)
        print(f"\n## embed-library, {nmol:,} molecules [load {load()}]", flush=True)
        res = run_cmd(base + ["--molecules", str(args.library), "--out", str(lib)], log=work / "embed-1m.log")
        print((work / "embed-1m.log").read_text()[-2000:])
        embed_row("embed_library", res, nmol, lib, "full run")
        full_wall = res["wall"]
    else:
        full_wall = None

    # -- SIGKILL half way, then the same command ---------------------------------------------------
    if "resume" not in skip:
        killed = work / "lib-1m-killed"
        shutil.rmtree(killed, ignore_errors=True)
        nchunks = (nmol + args.chunk_rows - 1) // args.chunk_rows
        chunks = killed / ".embed" / "chunks"

        def half():
            return chunks.is_dir() and sum(1 for _ in chunks.glob("c*.json")) >= nchunks // 2

        print(f"\n## SIGKILL at half of {nchunks} chunks, then the same command [load {load()}]", flush=True)
        first = run_cmd(base + ["--molecules", str(args.library), "--out", str(killed)], kill_when=half,
                        log=work / "killed-1.log")
        done = sum(1 for _ in chunks.glob("c*.json")) if chunks.is_dir() else 0
        print(f"killed after {first['wall']:.1f} s with {done} chunk records; manifest: "
              f"{(killed / 'manifest.json').exists()}")
        again = run_cmd(base + ["--molecules", str(args.library), "--out", str(killed)], log=work / "killed-2.log")
        print((work / "killed-2.log").read_text()[-1500:])
        same = shards_bytes(killed) == shards_bytes(lib) if lib.exists() else None
        embed_row("embed_library_resume", again, nmol, killed,
                  f"rerun after SIGKILL at {done}/{nchunks} chunks; bitwise equal to the full run: {same}; "
                  f"full run {full_wall and round(full_wall, 1)} s")

    # -- 2M -------------------------------------------------------------------------------------
    if args.library_2m is not None and "embed-2m" not in skip:
        n2 = sum(1 for _ in open(args.library_2m))
        lib2 = work / "lib-2m"
        shutil.rmtree(lib2, ignore_errors=True)
        print(f"\n## embed-library, {n2:,} molecules [load {load()}]", flush=True)
        res = run_cmd(base + ["--molecules", str(args.library_2m), "--out", str(lib2)], log=work / "embed-2m.log")
        print((work / "embed-2m.log").read_text()[-1500:])
        embed_row("embed_library", res, n2, lib2, "full run, 2M")
        shutil.rmtree(lib2, ignore_errors=True)

    from molphenix.retrieval import Index

    if {"open", "search"} <= skip:
        return 0

    # -- open -----------------------------------------------------------------------------------
    def open_time(path: Path) -> List[float]:
        code = ("import time, sys; from molphenix.retrieval import Index; t = time.perf_counter(); "
                "ix = Index.load(sys.argv[1]); dt = time.perf_counter() - t; print(dt, len(ix))")
        out = []
        for _ in range(5):
            r = subprocess.run([PY, "-c", code, str(path)], env=ENV, capture_output=True, text=True, check=True)
            out.append(float(r.stdout.split()[0]))
        return out

    t = open_time(lib)
    print(f"\n## open: Index.load({lib.name}) in a fresh process: median {np.median(t) * 1e3:.1f} ms "
          f"({', '.join(f'{x * 1e3:.1f}' for x in t)} ms) [load {load()}]")
    run.add(Row(op="library_open", provider="Index.load", case={"N": nmol, "D": 256, "storage": "float32"},
                dtype="float32", device="cpu", threads=run.threads, times=t,
                notes=f"fresh process, page cache warm; load {load()}"))

    # -- search ---------------------------------------------------------------------------------
    ix = Index.load(lib)
    g = torch.Generator().manual_seed(1)
    q = torch.nn.functional.normalize(torch.randn(args.queries, 256, generator=g), dim=1)
    k = args.k
    t0 = time.perf_counter()
    ix.search(q[:1], k=1)
    pack = time.perf_counter() - t0
    print(f"\n## search: first Index.search packs the rows once: {pack:.2f} s [load {load()}]")
    run.add(Row(op="library_first_search", provider="ours", case={"N": nmol, "D": 256, "Q": 1, "k": 1},
                dtype="float32", device="cpu", threads=run.threads, times=[pack],
                notes=f"reads the memory-mapped rows and packs them for the kernels; load {load()}"))
    import faiss

    rows = ix.embeddings.numpy()
    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(256)
    flat.add(rows)
    print(f"faiss IndexFlatIP built in {time.perf_counter() - t0:.1f} s")
    qn = q.numpy()
    exact = {}

    def ours_fn():
        exact["ours"] = ix.search(q, k=k)
        return exact["ours"]

    def flat_fn():
        exact["faiss"] = flat.search(qn, k)
        return exact["faiss"]

    la = load()
    times = time_interleaved([Provider("ours", ours_fn), Provider("faiss", flat_fn)], warmup=0,
                             repeats=2)
    med = {n: float(np.median(v)) for n, v in times.items()}
    # Index.search returns the library's ids, faiss row positions: compare positions
    pos = {v: i for i, v in enumerate(ix.ids.tolist())}
    ids_o = np.vectorize(pos.__getitem__, otypes=[np.int64])(np.asarray(exact["ours"][1], dtype=object))
    del pos
    ids_f = exact["faiss"][1]
    agree = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids_o, ids_f)]))
    print(f"search {args.queries:,} queries x k = {k}: ours {med['ours']:.2f} s, faiss IndexFlatIP "
          f"{med['faiss']:.2f} s ({med['faiss'] / med['ours']:.2f}x); lists agree {agree:.5f} "
          f"[load {la} -> {load()}]", flush=True)
    for name in ("ours", "faiss"):
        run.add(Row(op="library_search", provider=name if name == "ours" else "faiss-IndexFlatIP",
                    case={"N": nmol, "D": 256, "Q": args.queries, "k": k}, dtype="float32", device="cpu",
                    threads=run.threads, times=times[name], work=args.queries, unit="queries/s",
                    notes=f"exact; load {la} -> {load()}; ours {med['faiss'] / med['ours']:.2f}x faiss; "
                          f"lists agree {agree:.5f} (mean fraction of common ids per query)"))

    # -- HNSW -----------------------------------------------------------------------------------
    if "hnsw" not in skip:
        t0 = time.perf_counter()
        hn = faiss.IndexHNSWFlat(256, 32, faiss.METRIC_INNER_PRODUCT)
        hn.add(rows)
        build = time.perf_counter() - t0
        print(f"\n## faiss IndexHNSWFlat (M = 32, efConstruction {hn.hnsw.efConstruction}): built in "
              f"{build:.0f} s [load {load()}]", flush=True)
        run.add(Row(op="hnsw_build", provider="faiss-IndexHNSWFlat", case={"N": nmol, "D": 256, "M": 32},
                    dtype="float32", device="cpu", threads=run.threads, times=[build], notes=f"load {load()}"))
        for ef in (128, 512):
            hn.hnsw.efSearch = ef
            la = load()
            tt = []
            for _ in range(2):
                t0 = time.perf_counter()
                _, ih = hn.search(qn, k)
                tt.append(time.perf_counter() - t0)
            recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ih, ids_o)]))
            print(f"HNSW efSearch {ef}: {np.median(tt):.2f} s for {args.queries:,} queries, recall@{k} "
                  f"{recall:.4f} [load {la} -> {load()}]", flush=True)
            run.add(Row(op="library_search", provider=f"faiss-HNSW-ef{ef}",
                        case={"N": nmol, "D": 256, "Q": args.queries, "k": k}, dtype="float32",
                        device="cpu", threads=run.threads, times=tt, work=args.queries, unit="queries/s",
                        notes=f"approximate: recall@{k} {recall:.4f} vs exact; load {la} -> {load()}"))
        del hn

    # -- float16 storage ------------------------------------------------------------------------
    if "float16" not in skip:
        lib16 = work / "lib-1m-f16"
        shutil.rmtree(lib16, ignore_errors=True)
        t0 = time.perf_counter()
        ix.save(lib16, storage="float16", columns={c: ix.column(c) for c in ("molecule_id", "smiles", "concentration_um")})
        print(f"\n## float16: written in {time.perf_counter() - t0:.1f} s; {du(lib16) / 2**20:.0f} MiB on "
              f"disk vs {du(lib) / 2**20:.0f} MiB [load {load()}]")
        t16 = open_time(lib16)
        ix16 = Index.load(lib16)
        s16, i16 = ix16.search(q, k=k)
        s32, i32 = exact["ours"]
        dmax = float(np.abs(s16.numpy() - s32.numpy()).max())
        rec = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(i16, i32)]))
        top1 = float(np.mean(i16[:, 0] == i32[:, 0]))
        print(f"float16 vs float32, {args.queries:,} queries x k = {k}: max |score change| {dmax:.2e}, "
              f"recall@{k} {rec:.5f}, same top-1 {top1:.4f}; open {np.median(t16) * 1e3:.1f} ms")
        run.add(Row(op="library_open", provider="Index.load", case={"N": nmol, "D": 256, "storage": "float16"},
                    dtype="float16", device="cpu", threads=run.threads, times=t16,
                    notes=f"disk {du(lib16) / 2**20:.0f} MiB vs {du(lib) / 2**20:.0f} MiB (float32); "
                          f"top-{k} vs float32: max |score change| {dmax:.2e}, recall {rec:.5f}, top-1 {top1:.4f}"))
        shutil.rmtree(lib16, ignore_errors=True)
    ix = flat = rows = None  # free them before the retrieve commands

    # -- streamed retrieve ----------------------------------------------------------------------
    if "retrieve" not in skip:
        import pyarrow.parquet as pq

        wells = work / "data" / "wells.parquet"
        nw = int((~pq.read_table(wells, columns=["is_control"]).column("is_control").to_numpy()).sum())
        for flag in (["--k", str(k)], ["--top-fraction", "0.001"]):
            out = work / "hits.parquet"
            out.unlink(missing_ok=True)
            la = load()
            res = run_cmd([PY, "-m", "molphenix", "retrieve", "--run", str(runp), "--wells", str(work / "data"),
                           "--library", str(lib), *flag, "--out", str(out)], log=work / "retrieve.log")
            text = (work / "retrieve.log").read_text()
            print(f"\n## retrieve {' '.join(flag)}: {nw:,} wells: {res['wall']:.1f} s, peak RSS "
                  f"{res['rss'] / 2**30:.2f} GiB, output {out.stat().st_size / 2**20 if out.exists() else 0:.0f} MiB; "
                  f"rc {res['rc']} [load {la} -> {load()}]\n{text.strip()[-600:]}", flush=True)
            run.add(Row(op="retrieve", provider="molphenix retrieve", case={"wells": nw, "N": nmol, "flag": " ".join(flag)},
                        dtype="float32", device="cpu", threads=run.threads, times=[res["wall"]], work=nw,
                        unit="wells/s", peak_mem_bytes=res["rss"], mem_counted="peak RSS of the command",
                        status="ok" if res["rc"] == 0 else f"rc {res['rc']}", notes=f"load {la} -> {load()}"))
            out.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
