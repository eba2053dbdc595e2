#!/usr/bin/env bash
# Compile time of the CUDA kernels, per object: builds only the molphenix_cuda library in a fresh
# build directory, every nvcc call under /usr/bin/time (CMAKE_CUDA_COMPILER_LAUNCHER), and prints
# the wall and the CPU (user+sys, nvcc and its cicc/ptxas children) seconds of each object, the
# build's total wall time and the sum of CPU seconds. CPU seconds are the figure a loaded machine
# cannot hide; the load average is printed at start and end.
#   scripts/cuda_compile_times.sh ARCHS [JOBS] [SRC] [BUILD_DIR]
#   scripts/cuda_compile_times.sh 90-real 1
#   scripts/cuda_compile_times.sh "80-real;90-real;90-virtual" 2
# Env: PYTHON (for pybind11's CMake dir; default python).
set -u
archs=${1:?usage: $0 ARCHS [JOBS] [SRC] [BUILD_DIR]}
jobs=${2:-1}
src=${3:-$(cd "$(dirname "$0")/.." && pwd)}
b=${4:-$src/build/cuda-times}
py=${PYTHON:-python}
rm -rf "$b"; mkdir -p "$b"
tl="$b/nvcc.times"; : > "$tl"
echo "# src=$src (git $(git -C "$src" rev-parse --short HEAD 2>/dev/null || cat "$src/.sha" 2>/dev/null)) archs=$archs ninja -j$jobs"
echo "# $(nvcc --version | tail -1); host: $(nproc) cores,$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
cmake -S "$src" -B "$b" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSKBUILD_PROJECT_VERSION=0.1.0 \
  -Dpybind11_DIR="$("$py" -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v "$py")" \
  -DMOLPHENIX_WITH_CUDA=ON -DMOLPHENIX_CUDA_ARCHS="$archs" \
  "-DCMAKE_CUDA_COMPILER_LAUNCHER=/usr/bin/time;-a;-o;$tl;-f;%e %U %S %C" 2>&1 | grep -i "molphenix:\|error"
echo "# start $(date -u +%FT%TZ) $(uptime)"
t0=$(date +%s.%N)
ninja -C "$b" -j "$jobs" molphenix_cuda > "$b/ninja.out" 2>&1; rc=$?
t1=$(date +%s.%N)
echo "# ninja rc=$rc"
echo "# end   $(date -u +%FT%TZ) $(uptime)"
echo "total_wall_s $("$py" -c "print(round($t1-$t0,1))")"
"$py" - "$tl" <<'PY'
import re, sys
rows = []
for line in open(sys.argv[1]):
    p = line.split(None, 3)
    if len(p) < 4 or not re.match(r"^[0-9.]+$", p[0]):
        continue
    m = re.search(r"-c (\S+\.cu)\b", p[3]) or re.search(r"(\S+\.cu)", p[3])
    rows.append((float(p[0]), float(p[1]) + float(p[2]), m.group(1).split("/")[-1] if m else p[3][:60]))
print("total_cpu_s %.1f" % sum(r[1] for r in rows))
print("# per object: wall_s cpu_s (user+sys) file")
for w, c, f in sorted(rows, key=lambda r: -r[1]):
    print("%8.1f %8.1f  %s" % (w, c, f))
PY
exit $rc
