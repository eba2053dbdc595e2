"""``python -m molphenix.benchmark --memory-child ...``: the harness's per-provider memory process."""

import sys

from molphenix.benchmark import memory_child_main

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-child":
        raise SystemExit(memory_child_main(sys.argv[2:]))
    raise SystemExit("usage: python -m molphenix.benchmark --memory-child SPEC PARAMS PROVIDER DTYPE THREADS "
                     "(internal; run benches/run_all.py or `molphenix bench` instead)")
