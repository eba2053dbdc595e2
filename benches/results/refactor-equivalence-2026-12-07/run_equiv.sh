#!/bin/bash
# usage: run_equiv.sh <worktree> <outdir>
set -euo pipefail
WT=$1; OUT=$2
. /work/main/.venv/bin/activate
cd "$WT"
export PYTHONPATH=python
rm -rf "$OUT"; mkdir -p "$OUT"
M="python -m molphenix"
echo "git: $(git rev-parse HEAD) $(git status --porcelain | wc -l) dirty files" > "$OUT/commands.log"
run() { echo "+ $*" >> "$OUT/commands.log"; /usr/bin/time -f "%e s" -a -o "$OUT/commands.log" "$@"; }
run $M simulate --out "$OUT/sim" --molecules 300 --seed 0
run $M train --data "$OUT/sim" --out "$OUT/run_s2l" --samples 20000 --seed 0 --threads 1 --no-progress
run $M train --data "$OUT/sim" --out "$OUT/run_siglip" --loss siglip --samples 20000 --seed 0 --threads 1 --no-progress
run $M evaluate --run "$OUT/run_s2l" --bootstrap 100
run $M demo --quick --out "$OUT/demo" --seed 0 --threads 1
echo done >> "$OUT/commands.log"
