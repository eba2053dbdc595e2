#!/usr/bin/env bash
# Fast developer rebuild: CMake + Ninja into build/dev (or build/dev-cuda), then a symlink of the
# module into python/molphenix so `PYTHONPATH=python` (or an editable install) picks it up.
#   scripts/dev_build.sh            # CPU only
#   MOLPHENIX_WITH_CUDA=ON MOLPHENIX_CUDA_ARCHS=90-real scripts/dev_build.sh   # with CUDA
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cuda=${MOLPHENIX_WITH_CUDA:-OFF}
archs=${MOLPHENIX_CUDA_ARCHS:-90-real}
bdir=${MOLPHENIX_BUILD_DIR:-$root/build/dev-$(echo "$cuda" | tr A-Z a-z)}
py=${PYTHON:-python}
mkdir -p "$bdir"
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
if [ ! -f "$bdir/CMakeCache.txt" ]; then
  cmake -S "$root" -B "$bdir" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DSKBUILD_PROJECT_VERSION=0.1.0 \
    -Dpybind11_DIR="$($py -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v $py)" \
    -DMOLPHENIX_WITH_CUDA="$cuda" -DMOLPHENIX_CUDA_ARCHS="$archs" >/dev/null
fi
cmake --build "$bdir" -j "${JOBS:-2}"
so=$(ls "$bdir"/csrc/_C*.so)
ln -sf "$so" "$root/python/molphenix/$(basename "$so")"
echo "built $so"
