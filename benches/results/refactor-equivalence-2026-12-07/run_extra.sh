#!/bin/bash
# usage: run_extra.sh <worktree> <outdir>  (needs <outdir>/sim from run_equiv.sh's simulate: uses $3 as the sim dir)
set -euo pipefail
WT=$1; OUT=$2; SIM=$3
. /work/main/.venv/bin/activate
cd "$WT"
export PYTHONPATH=python
mkdir -p "$OUT"
M="python -m molphenix"
echo "git: $(git rev-parse HEAD) $(git status --porcelain | wc -l) dirty files" >> "$OUT/commands.log"
run() { echo "+ $*" >> "$OUT/commands.log"; /usr/bin/time -f "%e s" -a -o "$OUT/commands.log" "$@"; }
echo '{"normalize": "tvn"}' > "$OUT/tvn.json"
echo '{"loss_kwargs": {"sim_space": "projected"}}' > "$OUT/projected.json"
run $M train --data "$SIM" --out "$OUT/run_cwcl" --loss cwcl --samples 8000 --seed 1 --threads 1 --no-progress
run $M train --data "$SIM" --out "$OUT/run_tvn" --config "$OUT/tvn.json" --samples 8000 --seed 2 --threads 1 --no-progress
run $M train --data "$SIM" --out "$OUT/run_projected" --config "$OUT/projected.json" --samples 8000 --seed 3 --threads 1 --no-progress
run $M evaluate --run "$OUT/run_tvn" --bootstrap 50
echo done-extra >> "$OUT/commands.log"
