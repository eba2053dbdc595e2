#!/usr/bin/env python
"""Write a deterministic screening library of N molecules as a SMILES file (``SMILES<TAB>id``).

Molecules are recombined from BRICS fragments of the SMILES bundled with RDKit
(:mod:`molphenix.data.recombine`): valid, canonical, distinct by InChIKey. The file depends only
on ``--seed``, ``--n`` and the RDKit version (the first N lines of a larger library are the
N-molecule library); its sha256 is printed and written beside it (``<out>.json``) with those
three, so a rerun can be checked against a recorded one.

    python scripts/make_screening_library.py --n 1000000 --out /tmp/screen-1m.smi
    python scripts/make_screening_library.py --n 1000000 --out /tmp/screen-1m.smi --check RECORD.json

(``RECORD.json``: the ``.json`` an earlier run wrote; ``benches/bench_screening.py`` prints the
record of the library it screens into its raw log.)
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
try:
    import molphenix  # noqa: F401
except ImportError:  # a checkout without an install
    sys.path.insert(0, str(HERE.parent / "python"))


def main(argv=None) -> int:
    from rdkit import __version__ as rdkit_version

    from molphenix.data.recombine import GENERATOR_VERSION, default_workers, recombined_molecules

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, required=True, help="number of molecules")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help=".smi or .smi.gz file to write")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all CPUs; the output does not depend on it)")
    p.add_argument("--source-limit", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--check", type=Path, default=None, help="a recorded .json: fail unless the sha256 matches")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error("--n: expected >= 1")
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    t0 = time.perf_counter()
    opener = gzip.open if out.name.endswith(".gz") else open
    n = 0
    with opener(tmp, "wt", encoding="utf-8") as fh:
        for mid, smi, _key in recombined_molecules(args.n, args.seed, workers=args.workers or default_workers(),
                                                   source_limit=args.source_limit):
            fh.write(f"{smi}\t{mid}\n")
            n += 1
            if n % 100000 == 0:
                print(f"{n} molecules, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    os.replace(tmp, out)
    # the sha256 of the uncompressed text (gzip headers carry a time stamp)
    h = hashlib.sha256()
    with opener(out, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    record = {"n": n, "seed": args.seed, "rdkit": rdkit_version, "generator_version": GENERATOR_VERSION,
              "sha256_text": h.hexdigest(), "file": out.name, "wall_s": round(time.perf_counter() - t0, 1)}
    (out.with_name(out.name + ".json")).write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record))
    if args.check is not None:
        want = json.loads(args.check.read_text())
        same = (want["n"], want["seed"], want["rdkit"], want["sha256_text"]) == (n, args.seed, rdkit_version, record["sha256_text"])
        if not same:
            print(f"CHECK FAILED: {record} differs from {args.check}: {want}", file=sys.stderr)
            return 1
        print(f"check ok: same as {args.check}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
