#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine: install, build (release, CUDA parts compile
# and link when nvcc is present), run every ctest label (unit, mpi; gpu tests skip without a
# device), then the same suite under AddressSanitizer + UBSan, then a short libFuzzer run; first of
# all, every C++ source must match .clang-format.
# MOE_TEST_QUICK=1 skips the sanitizer and fuzz stages.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
export OPENBLAS_NUM_THREADS=1

echo "== format check"
bash launch/format.sh
jobs="$(nproc)"

echo "== release build"
bash launch/build.sh release
echo "== release tests"
ctest --preset release -j "$jobs"

if [ "${MOE_TEST_QUICK:-0}" != "1" ]; then
  echo "== asan build"
  bash launch/build.sh asan
  echo "== asan tests"
  ASAN_OPTIONS=detect_leaks=0 ctest --preset asan -j "$jobs"
  echo "== fuzz (safetensors header parser, tokenizer.json loader)"
  bash launch/fuzz.sh "${MOE_FUZZ_SECONDS:-60}"
fi
echo "== all tests passed"
