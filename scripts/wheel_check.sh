#!/usr/bin/env bash
# Build a manylinux wheel the way a downstream library consumes it, and smoke-test it in a fresh
# virtual environment with no torch and no CUDA runtime:
#   pip wheel . -> auditwheel repair -> new venv -> pip install wheel -> scripts/smoke_wheel.py
# Env: MOLPHENIX_WITH_CUDA (default OFF here: the CPU-only build), PYTHON (default python3).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
work=$(mktemp -d /tmp/molphenix-wheel.XXXXXX)
trap 'rm -rf "$work"' EXIT
export MOLPHENIX_WITH_CUDA=${MOLPHENIX_WITH_CUDA:-OFF}
echo "== pip wheel (MOLPHENIX_WITH_CUDA=$MOLPHENIX_WITH_CUDA)"
"$py" -m pip wheel "$root" --no-deps -w "$work/dist" -q
echo "== auditwheel repair"
"$py" -m auditwheel show "$work"/dist/molphenix-*.whl
"$py" -m auditwheel repair "$work"/dist/molphenix-*.whl -w "$work/wheelhouse"
whl=$(ls "$work"/wheelhouse/molphenix-*manylinux*.whl)
echo "repaired: $(basename "$whl")"
echo "== fresh venv without torch"
"$py" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --no-deps "$whl"
"$work/venv/bin/python" -m pip install -q numpy
(cd "$work" && "$work/venv/bin/python" "$root/scripts/smoke_wheel.py")
