#!/usr/bin/env bash
# Memory-safety check of the C++ core: build the CPU kernels and the module with AddressSanitizer
# + UndefinedBehaviorSanitizer (MOLPHENIX_SANITIZE=address,undefined, no CUDA) and run the op tests
# against that build.
#
#   scripts/sanitize.sh                 # build + tests/ops (CPU tests; requires_cuda deselected)
#   scripts/sanitize.sh --quick         # build + a small subset (CI)
#   scripts/sanitize.sh -- tests/ops/test_s2l_loss.py -k grad    # build + these pytest arguments
#
# Env: PYTHON (an interpreter that has torch, numpy, pytest, hypothesis; default python),
#      MOLPHENIX_BUILD_DIR (default build/sanitize), JOBS (default 2),
#      MOLPHENIX_SANITIZE (default address,undefined), SANITIZE_LOG (also write the output there).
# Exit status: non-zero on a build failure, a test failure, or any sanitizer report (UBSan halts
# on the first error; ASan always does).
#
# How it runs: CPython is not built with ASan, so libasan (and libstdc++, see below) is
# LD_PRELOADed into the interpreter;
# leak detection is off (CPython and torch keep allocations alive until exit by design). The
# sanitized module is imported from a staging directory through a throw-away venv that sees the
# interpreter's site-packages (torch, ...) but not an installed molphenix: an editable install
# puts a finder in front of PYTHONPATH, so PYTHONPATH alone would import the wrong _C.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python}
bdir=${MOLPHENIX_BUILD_DIR:-$root/build/sanitize}
san=${MOLPHENIX_SANITIZE:-address,undefined}
mode=full
pytest_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) mode=quick; shift ;;
    --) shift; pytest_args=("$@"); mode=custom; break ;;
    *) echo "usage: $0 [--quick] [-- PYTEST_ARGS...]" >&2; exit 2 ;;
  esac
done
if [ -n "${SANITIZE_LOG:-}" ]; then
  mkdir -p "$(dirname "$SANITIZE_LOG")"
  exec > >(tee "$SANITIZE_LOG") 2>&1
fi
echo "== molphenix sanitizers: $san ($mode), $(date -u +%FT%TZ), git $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "== $(gcc --version | head -1); $(uname -m); $(nproc) cores; load: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -n "$(git -C "$root" status --short -- csrc 2>/dev/null)" ]; then
  echo "== uncommitted changes under csrc/ (built as they are):"
  git -C "$root" status --short -- csrc | sed 's/^/     /'
fi

echo "== build ($bdir)"
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
cmake -S "$root" -B "$bdir" "${gen[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSKBUILD_PROJECT_VERSION=0.1.0 \
  -Dpybind11_DIR="$("$py" -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v "$py")" \
  -DMOLPHENIX_WITH_CUDA=OFF -DMOLPHENIX_CUDA_ARCHS= -DMOLPHENIX_SANITIZE="$san" | grep "molphenix:" || true
cmake --build "$bdir" -j "${JOBS:-2}"
so=$(ls "$bdir"/csrc/_C*.so)

stage="$bdir/stage"
rm -rf "$stage" && mkdir -p "$stage"
cp -r "$root/python/molphenix" "$stage/molphenix"
rm -f "$stage"/molphenix/_C*.so
cp "$so" "$stage/molphenix/"
venv="$bdir/venv"
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv --without-pip "$venv"
fi
site=$("$py" -c "import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))")
vsite=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$stage" > "$vsite/00_molphenix_sanitize.pth"  # ahead of the interpreter's site-packages
echo "$site" > "$vsite/01_deps.pth"
vpy="$venv/bin/python"

asan=$(gcc -print-file-name=libasan.so)
# libstdc++ too: python does not link it, and without it at start-up ASan's __cxa_throw
# interceptor finds no real __cxa_throw and aborts at the first C++ exception (torch's autograd
# engine rethrowing a Python error, for instance).
stdcxx=$(gcc -print-file-name=libstdc++.so.6)
export LD_PRELOAD="$asan:$stdcxx${LD_PRELOAD:+:$LD_PRELOAD}"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1:allocator_may_return_null=1:print_summary=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1:print_summary=1}
export MOLPHENIX_REQUIRE_EXTENSION=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
echo "== LD_PRELOAD=$LD_PRELOAD"
echo "== ASAN_OPTIONS=$ASAN_OPTIONS"
echo "== UBSAN_OPTIONS=$UBSAN_OPTIONS"
"$vpy" - <<'PY'
import molphenix
info = molphenix.build_info()
assert info["extension"], info.get("extension_error")
print("== module:", info["extension_path"])
print("== simd:", info["simd_compiled"], "in use:", info["simd_level"], "| cuda:", info["cuda"])
PY

cd "$root"
case "$mode" in
  # Working-memory bounds (RSS of a child process) do not hold under ASan (shadow memory,
  # redzones, quarantine): those tests are left to the normal build.
  full) pytest_args=(tests/ops -m "not requires_cuda" --deselect tests/ops/test_cuda_ops.py
                     -k "not working_memory") ;;
  quick) pytest_args=(tests/ops/test_validation.py tests/ops/test_s2l_loss.py
                      tests/ops/test_retrieval_ranks.py tests/ops/test_topk_retrieve.py
                      tests/ops/test_arctan_l2_similarity.py -m "not requires_cuda and not slow"
                      -k "validation or small or tiny or empty or zero or weird or noncontig or ties or 7"
                      --deselect tests/ops/test_cuda_ops.py) ;;
esac
echo "== pytest ${pytest_args[*]}"
status=0
"$vpy" -m pytest -q -p no:cacheprovider "${pytest_args[@]}" || status=$?
echo "== pytest exit status: $status"
exit $status
