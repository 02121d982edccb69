#!/usr/bin/env bash
# Configures and builds a preset (default: release). CUDA parts build when nvcc is found, for the
# GPU architectures of kernels/cuda/CMakeLists.txt unless MOE_CUDA_ARCHITECTURES names others
# (CMake's syntax, e.g. MOE_CUDA_ARCHITECTURES=90-real for an H100 only; CI uses that; the
# build directory keeps the value until another is given).
set -euo pipefail
cd "$(dirname "$0")/.."
preset="${1:-release}"
args=()
if [ -n "${MOE_CUDA_ARCHITECTURES:-}" ]; then
  args+=("-DMOE_CUDA_ARCHITECTURES=$MOE_CUDA_ARCHITECTURES")
fi
cmake --preset "$preset" "${args[@]}" >/dev/null
cmake --build --preset "$preset" -j "$(nproc)"
