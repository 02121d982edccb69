#!/usr/bin/env bash
# One-shot check of the GPU path on a machine with one NVIDIA GPU (the lent H200: nvcc, cmake and
# PyTorch present; cuBLAS possibly only as a Python wheel; no MPI, fmt, GoogleTest, network).
#
#   bench/device_check.sh prepare   on a build machine: vendors fmt headers and the GoogleTest
#                                   source into build/device_deps (~5 MB; carry that folder)
#   bench/device_check.sh [run]     on the GPU machine, from the repository root: probe the
#                                   machine, build bench/gpu (kernels/cuda + tests/gpu against the
#                                   naive reference ops + gpu_bench), run the gpu and gpu_host
#                                   tests, run the benchmark (one layer, then the whole 48-layer
#                                   model if memory allows) and print a summary table last.
#
# Everything is logged under $OUT (default out/device_check). Environment knobs: OUT, BUILD_DIR,
# CUDA_ARCH (default: from nvidia-smi), SKIP_MODEL=1 (one layer only), JOBS, BUDGET_S (460).
# Exit code: 0 all passed, 1 build or test failure, 2 setup problem (no GPU, no nvcc, no cuBLAS).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPS="$ROOT/build/device_deps"
MODE="${1:-run}"

if [[ "$MODE" == "prepare" ]]; then
  set -e
  rm -rf "$DEPS"
  mkdir -p "$DEPS/fmt/include"
  cp -r /usr/include/fmt "$DEPS/fmt/include/"
  cp -r /usr/src/googletest "$DEPS/googletest"
  echo "vendored into $DEPS ($(du -sh "$DEPS" | cut -f1)); pass carry=[\"build/device_deps\"]"
  exit 0
fi
[[ "$MODE" == "run" ]] || { echo "usage: $0 [prepare|run]" >&2; exit 2; }

OUT="${OUT:-$ROOT/out/device_check}"
BUILD_DIR="${BUILD_DIR:-/tmp/moe_gpu_build}"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 8)}"
mkdir -p "$OUT"
LOG="$OUT/device_check.log"
: >"$LOG"
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }
run_logged() {  # run_logged <logfile> <timeout_s> cmd...: output to logfile, status returned
  local log="$1" limit="$2"
  shift 2
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
}

# ------------------------------------------------------------------ probe
say "probe"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  grep -E '^(PRETTY_NAME|VERSION_ID)=' /etc/os-release 2>/dev/null
  ldd --version 2>/dev/null | head -1
  nvidia-smi -L 2>&1
  nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader 2>&1
  echo "nproc: $(nproc)"
  cmake --version 2>/dev/null | head -1
  ninja --version 2>/dev/null | sed 's/^/ninja /'
  python3 -c "import nvidia, os; print('python nvidia packages:', os.path.dirname(nvidia.__path__[0]))" 2>&1
} | tee "$OUT/probe.txt" | tee -a "$LOG"

if ! nvidia-smi -L >/dev/null 2>&1; then say "no GPU visible (nvidia-smi failed)"; exit 2; fi
GPU_NAME="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
GPU_MEM_MIB="$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1 | tr -d ' ')"
if [[ -z "${CUDA_ARCH:-}" ]]; then
  CUDA_ARCH="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')"
fi
[[ "$CUDA_ARCH" =~ ^[0-9]+$ ]] || CUDA_ARCH=90

NVCC="$(command -v nvcc || true)"
for c in /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc; do
  [[ -z "$NVCC" && -x "$c" ]] && NVCC="$c"
done
[[ -n "$NVCC" ]] || { say "nvcc not found"; exit 2; }
CUDA_HOME="$(cd "$(dirname "$NVCC")/.." && pwd)"
NVCC_MAJOR="$("$NVCC" --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p')"
say "nvcc $NVCC (CUDA $NVCC_MAJOR), arch sm_$CUDA_ARCH, GPU $GPU_NAME, ${GPU_MEM_MIB} MiB"

# ------------------------------------------------------------------ cuBLAS
# The toolkit's cuBLAS if it has the grouped GEMM API, else a Python wheel's (site-packages/
# nvidia/{cublas,cuXX}), preferring the major version of nvcc.
CUBLAS_ARGS=()
has_grouped() { grep -q cublasGemmGroupedBatchedEx "$1/cublas_api.h" 2>/dev/null; }
if has_grouped "$CUDA_HOME/include" && ls "$CUDA_HOME"/lib*/libcublas.so* >/dev/null 2>&1; then
  say "cuBLAS from the toolkit ($CUDA_HOME)"
else
  SITE="$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null || true)"
  best_lib="" best_inc=""
  if [[ -n "$SITE" ]]; then
    for hdr in $(find "$SITE/nvidia" -name cublas_api.h 2>/dev/null); do
      inc="$(dirname "$hdr")"
      has_grouped "$inc" || continue
      libdir="$(cd "$inc/../lib" 2>/dev/null && pwd)" || continue
      lib="$(ls "$libdir"/libcublas.so.* 2>/dev/null | grep -v Lt | sort | tail -1)"
      [[ -n "$lib" ]] || continue
      if [[ -z "$best_lib" || "$lib" == *".so.$NVCC_MAJOR"* ]]; then best_lib="$lib"; best_inc="$inc"; fi
    done
  fi
  if [[ -z "$best_lib" ]]; then say "no cuBLAS with cublasGemmGroupedBatchedEx found"; exit 2; fi
  say "cuBLAS from $best_lib"
  CUBLAS_ARGS=(-DMOE_CUBLAS_LIBRARY="$best_lib" -DMOE_CUBLAS_INCLUDE_DIR="$best_inc")
  export LD_LIBRARY_PATH="$(dirname "$best_lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  # cuBLAS wheels may need the wheel's own runtime too (same site-packages tree).
  for d in $(find "$SITE/nvidia" -name 'libcudart.so*' -printf '%h\n' 2>/dev/null | sort -u); do
    export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"
  done
fi

# ------------------------------------------------------------------ build
GEN=(-G "Unix Makefiles")
command -v ninja >/dev/null && GEN=(-G Ninja)
DEPS_ARGS=()
[[ -d "$DEPS" ]] && DEPS_ARGS=(-DMOE_DEPS_DIR="$DEPS")
[[ -d "$DEPS" ]] || say "warning: $DEPS missing (run '$0 prepare' on a build machine and carry it)"
say "configure + build (sm_$CUDA_ARCH, $JOBS jobs)"
if ! run_logged "$OUT/configure.log" 300 cmake -S "$ROOT/bench/gpu" -B "$BUILD_DIR" "${GEN[@]}" \
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_COMPILER="$NVCC" -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCH" \
    "${DEPS_ARGS[@]}" "${CUBLAS_ARGS[@]}"; then
  say "configure FAILED"; tail -30 "$OUT/configure.log" | tee -a "$LOG"; exit 1
fi
if ! run_logged "$OUT/build.log" 300 cmake --build "$BUILD_DIR" -j "$JOBS"; then
  say "build FAILED"; grep -E "error|Error" "$OUT/build.log" | head -30 | tee -a "$LOG"; exit 1
fi
say "build done"

# ------------------------------------------------------------------ tests
STATUS=0
summary_tests=()
run_tests() {  # run_tests <binary> <name>
  local bin="$BUILD_DIR/$1" name="$2"
  if [[ ! -x "$bin" ]]; then summary_tests+=("$name: not built"); STATUS=1; return; fi
  run_logged "$OUT/$name.log" 120 "$bin" --gtest_output="xml:$OUT/$name.xml"
  local rc=$?
  local passed skipped failed
  passed="$(grep -c '^\[       OK \]' "$OUT/$name.log")"
  # Count the per-test lines (with their time), not gtest's closing lists.
  skipped="$(grep -cE '^\[  SKIPPED \] .* \([0-9]+ ms\)$' "$OUT/$name.log")"
  failed="$(grep -cE '^\[  FAILED  \] .* \([0-9]+ ms\)$' "$OUT/$name.log")"
  summary_tests+=("$name: rc $rc, $passed passed, $skipped skipped, $failed failed")
  [[ $rc -eq 0 ]] || STATUS=1
  # On this machine a skip means CUDA could not use the GPU nvidia-smi showed: that is a failure.
  [[ $skipped -eq 0 ]] || STATUS=1
  grep -E '^\[  FAILED  \]' "$OUT/$name.log" | sort -u | head -20 | tee -a "$LOG"
}
say "tests"
run_tests moe_test_gpu_host gpu_host_tests
run_tests moe_test_gpu gpu_tests
say "${summary_tests[*]}"

# ------------------------------------------------------------------ benchmark
say "benchmark: one layer"
run_logged "$OUT/bench_layer.log" 150 "$BUILD_DIR/gpu_bench" --layers 1 --json "$OUT/bench_layer.json"
BENCH_LAYER_RC=$?
[[ $BENCH_LAYER_RC -eq 0 ]] || STATUS=1
BENCH_MODEL_RC=skipped
# The whole model needs ~85 GB; it runs only with time left in an 8-minute budget (BUDGET_S).
ELAPSED=$(( $(date +%s) - T0 ))
MODEL_LIMIT=$(( ${BUDGET_S:-460} - ELAPSED ))
if [[ "${SKIP_MODEL:-0}" != 1 && "${GPU_MEM_MIB:-0}" -ge 100000 && $MODEL_LIMIT -ge 90 ]]; then
  say "benchmark: 48-layer model (limit ${MODEL_LIMIT}s)"
  run_logged "$OUT/bench_model.log" "$MODEL_LIMIT" "$BUILD_DIR/gpu_bench" --layers 48 --model-only \
    --json "$OUT/bench_model.json"
  BENCH_MODEL_RC=$?
  [[ $BENCH_MODEL_RC -eq 0 ]] || STATUS=1
fi

# ------------------------------------------------------------------ summary (printed last)
{
  echo
  echo "================ moe-ep device check: $(date -u +%Y-%m-%d) | $GPU_NAME | sm_$CUDA_ARCH | $(( $(date +%s) - T0 )) s"
  echo "os: $(grep '^PRETTY_NAME=' /etc/os-release 2>/dev/null | cut -d= -f2) | $(ldd --version 2>/dev/null | head -1)"
  for t in "${summary_tests[@]}"; do echo "tests  $t"; done
  echo "bench (layer): rc $BENCH_LAYER_RC; bench (48 layers): rc $BENCH_MODEL_RC"
  sed -n '/^HBM:/,$p' "$OUT/bench_layer.log" 2>/dev/null
  [[ -f "$OUT/bench_model.log" ]] && sed -n '/^Qwen3-30B-A3B, synthetic/,$p' "$OUT/bench_model.log"
  [[ $BENCH_LAYER_RC == 0 ]] || tail -5 "$OUT/bench_layer.log" 2>/dev/null
  [[ $BENCH_MODEL_RC == 0 || $BENCH_MODEL_RC == skipped ]] || tail -5 "$OUT/bench_model.log"
  echo "result: $([[ $STATUS -eq 0 ]] && echo PASS || echo FAIL) (logs in $OUT)"
} | tee -a "$LOG" | tee "$OUT/summary.txt"
exit $STATUS
