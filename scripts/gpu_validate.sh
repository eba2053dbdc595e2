#!/usr/bin/env bash
# One-shot GPU validation: build for this GPU, run the op tests (CUDA tests must all run), a
# compute-sanitizer memcheck subset and the GPU benchmarks. Everything lands in OUTDIR:
#   gpu_run.log     nvidia-smi, versions, git commit, stage summaries (the traceable run log)
#   build.log       the CMake/nvcc build
#   pytest.log      python -m pytest tests/ops (summary line copied into gpu_run.log)
#   sanitizer.log   compute-sanitizer --tool memcheck on the `small` CUDA tests
#   bench.log       benches/bench_gpu.py's output; results.csv its rows and run.log its raw log
#                   (the one benchmark layout of benches/results: molphenix.benchmark.CSV_FIELDS)
# Each stage has a time limit and the script goes on when one fails, so one run yields as much as
# possible. Usage:  scripts/gpu_validate.sh OUTDIR   (env: ARCH=90-real, PYTHON=python3,
# STAGES="build test sanitize bench", BENCH_ARGS=..., T_BUILD/T_CUDA_TESTS/T_OTHER_TESTS/
# T_SANITIZER/T_BENCH stage limits in seconds; the defaults sum to 570 s, under a 600 s slot;
# run 1 took 2.5 minutes in all, this one is expected at ~5)
set -uo pipefail
out=${1:?usage: scripts/gpu_validate.sh OUTDIR}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
py=${PYTHON:-python3}
arch=${ARCH:-90-real}
stages=${STAGES:-"build test sanitize bench"}
log="$out/gpu_run.log"
cd "$root"
export PYTHONPATH="$root/python${PYTHONPATH:+:$PYTHONPATH}"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16}

say() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$log"; }
has() { [[ " $stages " == *" $1 "* ]]; }

# The device copy of the tree may carry a .git without history (run 1): no git errors in the logs;
# MOLPHENIX_GIT_SHA (pass it from the host checkout) wins, then git, then "unknown".
sha=${MOLPHENIX_GIT_SHA:-$(git rev-parse --verify -q HEAD 2>/dev/null || echo "unknown (no git history in this copy)")}
export MOLPHENIX_GIT_SHA="$sha"
: > "$log"
say "molphenix GPU validation; outdir $out; commit $sha"
{
  echo "== git"; echo "$sha"; git status --short 2>/dev/null | head -20
  echo "== nvidia-smi"; nvidia-smi 2>&1
  echo "== nvcc"; nvcc --version 2>&1 | tail -2
  echo "== python / torch / cupy"
  $py - <<'EOF' 2>&1
import sys, platform
print("python", sys.version.split()[0], platform.platform())
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu",
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
except Exception as e:
    print("torch: import failed:", e)
try:
    import cupy
    print("cupy", cupy.__version__)
except Exception as e:
    print("cupy: import failed:", e)
EOF
  echo "== compute-sanitizer"; command -v compute-sanitizer 2>&1 || echo "not on PATH"
} >> "$log" 2>&1

# ---- build -----------------------------------------------------------------------------------
if has build; then
  say "build: MOLPHENIX_CUDA_ARCHS=$arch (dev build, ninja, $CMAKE_BUILD_PARALLEL_LEVEL jobs)"
  t0=$(date +%s)
  MOLPHENIX_WITH_CUDA=ON MOLPHENIX_CUDA_ARCHS="$arch" PYTHON=$py JOBS=$CMAKE_BUILD_PARALLEL_LEVEL \
    MOLPHENIX_BUILD_DIR="$root/build/gpu-validate" \
    timeout ${T_BUILD:-120} scripts/dev_build.sh > "$out/build.log" 2>&1
  rc=$?
  say "build: rc=$rc in $(( $(date +%s) - t0 )) s"
  if [ $rc -ne 0 ]; then tail -40 "$out/build.log" | tee -a "$log"; fi
  $py -c "import molphenix, json; print(json.dumps(molphenix.build_info(), default=str))" >> "$log" 2>&1
fi

# ---- tests -----------------------------------------------------------------------------------
if has test; then
  # test_cuda_ops.py runs the retrieval tests under both bf16/f16 engines (its `mainloop`
  # fixture sets MOLPHENIX_CUDA_MAINLOOP=fast and =simple); the other op tests use the default.
  say "tests: pytest tests/ops (CUDA tests first; both mainloops)"
  t0=$(date +%s)
  timeout ${T_CUDA_TESTS:-100} $py -m pytest tests/ops/test_cuda_ops.py -q -rfEs --durations=10 -p no:cacheprovider \
    > "$out/pytest_cuda.log" 2>&1
  rc=$?
  say "tests (CUDA): rc=$rc in $(( $(date +%s) - t0 )) s: $(tail -1 "$out/pytest_cuda.log")"
  grep -E "^(FAILED|ERROR)" "$out/pytest_cuda.log" | head -40 | tee -a "$log"
  t0=$(date +%s)
  timeout ${T_OTHER_TESTS:-90} $py -m pytest tests/ops -q -rfEs -p no:cacheprovider --ignore=tests/ops/test_cuda_ops.py \
    > "$out/pytest.log" 2>&1
  rc=$?
  say "tests (all ops, CPU+CUDA): rc=$rc in $(( $(date +%s) - t0 )) s: $(tail -1 "$out/pytest.log")"
  grep -E "^(FAILED|ERROR)" "$out/pytest.log" | head -40 | tee -a "$log"
fi

# ---- compute-sanitizer -------------------------------------------------------------------------
if has sanitize; then
  if command -v compute-sanitizer > /dev/null; then
    say "sanitizer: memcheck on the 'small' CUDA tests"
    t0=$(date +%s)
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout ${T_SANITIZER:-60} compute-sanitizer --tool memcheck \
      --target-processes all --error-exitcode 99 --print-limit 20 \
      $py -m pytest tests/ops/test_cuda_ops.py -q -x -k small -p no:cacheprovider \
      > "$out/sanitizer.log" 2>&1
    rc=$?
    say "sanitizer: rc=$rc in $(( $(date +%s) - t0 )) s: $(grep -E 'ERROR SUMMARY' "$out/sanitizer.log" | tail -1) / $(grep -E 'passed|failed' "$out/sanitizer.log" | tail -1)"
  else
    say "sanitizer: compute-sanitizer not found"
  fi
fi

# ---- benchmarks --------------------------------------------------------------------------------
if has bench; then
  say "bench: benches/bench_gpu.py"
  t0=$(date +%s)
  timeout ${T_BENCH:-200} $py benches/bench_gpu.py --results-dir "$out" ${BENCH_ARGS:-} > "$out/bench.log" 2>&1
  rc=$?
  say "bench: rc=$rc in $(( $(date +%s) - t0 )) s"
  cat "$out/bench.log" >> "$log"
fi
say "done"
