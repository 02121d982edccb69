#!/usr/bin/env bash
# One-shot check of the GPU path on a machine with one NVIDIA GPU (the lent H200: nvcc, cmake and
# PyTorch present; cuBLAS/NCCL possibly only as Python wheels; no MPI, yaml-cpp, OpenBLAS, fmt,
# GoogleTest or network; OS and glibc unknown).
#
#   bench/device_check.sh prepare   on a Debian 12 build machine (apt works): vendors fmt headers
#                                   and the GoogleTest source, and packs the Debian packages the
#                                   full build needs (OpenMPI with its runtime, yaml-cpp, OpenBLAS,
#                                   fmt, nlohmann-json, CLI11) into build/device_deps/prefix.tar.xz
#                                   (~15 MB). Carry build/device_deps with the call.
#   bench/device_check.sh [run]     on the GPU machine, from the repository root:
#     1. probe the machine (OS, glibc, GPU, cmake, the Python wheels' CUDA libraries);
#     2. FULL build: unpack the prefix into /tmp, configure the whole project with CUDA against
#        it (cuBLAS/NCCL from the toolkit or the wheels), build moe-ep and the GPU tests;
#        run ctest -L gpu (every CUDA op vs the CPU backend; the whole model on the GPU vs the CPU
#        and vs transformers' logits; 2 ranks sharing the GPU under the prefix's mpirun) and the
#        gpu_host unit tests; then `moe-ep run` of Qwen3-30B-A3B with synthetic weights (memory
#        measured against `moe-ep plan`);
#     3. if the full build cannot be made (e.g. a glibc older than Debian 12's), the STANDALONE
#        build of bench/gpu (kernels + op tests against the naive reference ops; no MPI);
#     4. gpu_bench: grouped vs dense GEMM, one Qwen3-30B-A3B layer, the 48-layer model at batch
#        1/8/64 with the HBM floor and a per-phase breakdown of one layer;
#     5. a summary table, printed last.
#
# Everything is logged under $OUT (default out/device_check). Environment knobs: OUT, BUILD_DIR,
# CUDA_ARCH (default: from nvidia-smi), SKIP_FULL=1 (standalone build only), SKIP_MODEL=1 (one
# layer only), JOBS, BUDGET_S (460 s for the whole run), ALLOW_NO_GPU=1 (rehearse the script on
# a build machine without a GPU: tests skip, no benchmark).
# Exit code: 0 all passed, 1 build or test failure, 2 setup problem (no GPU, no nvcc, no cuBLAS).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPS="$ROOT/build/device_deps"
MODE="${1:-run}"

# Debian 12 packages of the full build and of OpenMPI's runtime (libraries its plugins load).
PREFIX_PACKAGES=(
  libopenmpi3 libopenmpi-dev openmpi-bin openmpi-common libhwloc15 libevent-core-2.1-7
  libevent-pthreads-2.1-7 libpmix2 libfabric1 libucx0 libibverbs1 ibverbs-providers librdmacm1
  libnuma1 libpsm2-2 libpsm-infinipath1 libmunge2 libnl-3-200 libnl-route-3-200 libudev1
  libuuid1 libatomic1 libltdl7
  libyaml-cpp0.7 libyaml-cpp-dev libopenblas0-pthread libopenblas-pthread-dev libgfortran5
  libquadmath0 nlohmann-json3-dev libcli11-dev libfmt-dev libfmt9)

if [[ "$MODE" == "prepare" ]]; then
  set -e
  command -v patchelf >/dev/null || apt-get install -y -qq patchelf >/dev/null
  rm -rf "$DEPS"
  mkdir -p "$DEPS/fmt/include"
  cp -r /usr/include/fmt "$DEPS/fmt/include/"
  cp -r /usr/src/googletest "$DEPS/googletest"
  stage="$(mktemp -d)"
  (cd "$stage" && apt-get download "${PREFIX_PACKAGES[@]}" >/dev/null 2>&1)
  mkdir -p "$stage/prefix"
  for deb in "$stage"/*.deb; do dpkg -x "$deb" "$stage/prefix"; done
  P="$stage/prefix"
  # Not needed to build or run: documentation, static archives, LAPACK, Fortran/Java bindings.
  rm -rf "$P/usr/share/doc" "$P/usr/share/man" "$P/usr/share/lintian" "$P/etc/openmpi"
  find "$P" -name '*.a' -delete
  rm -f "$P"/usr/lib/x86_64-linux-gnu/openblas-pthread/liblapack*
  # libevent calls arc4random, new in glibc 2.36 (Debian 12). For an older glibc, drop the
  # symbol versions and let a small shim supply the two functions (glibc's own win when present).
  lib="$P/usr/lib/x86_64-linux-gnu"
  printf '%s\n' '#include <stddef.h>' '#include <stdint.h>' '#include <sys/random.h>' \
    'void arc4random_buf(void* p, size_t n) { char* c = p; while (n > 0) {' \
    '  ssize_t got = getrandom(c, n, 0); if (got > 0) { c += got; n -= (size_t)got; } } }' \
    'uint32_t arc4random(void) { uint32_t v; arc4random_buf(&v, sizeof v); return v; }' \
    >"$stage/arc4random.c"
  gcc -O2 -shared -fPIC -o "$lib/libmoe_arc4random.so" "$stage/arc4random.c"
  for f in "$lib"/libevent_core-2.1.so.7.*; do
    patchelf --clear-symbol-version arc4random --clear-symbol-version arc4random_buf \
      --add-needed libmoe_arc4random.so "$f"
  done
  tar -C "$P" -cJf "$DEPS/prefix.tar.xz" .
  rm -rf "$stage"
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

GPU=1
if ! nvidia-smi -L >/dev/null 2>&1; then
  # ALLOW_NO_GPU=1 rehearses the whole script on a build machine: tests skip, no benchmark.
  [[ "${ALLOW_NO_GPU:-0}" == 1 ]] || { say "no GPU visible (nvidia-smi failed)"; exit 2; }
  GPU=0
fi
GPU_NAME="none" GPU_MEM_MIB=0
if [[ $GPU == 1 ]]; then
  GPU_NAME="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
  GPU_MEM_MIB="$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1 | tr -d ' ')"
  [[ -n "${CUDA_ARCH:-}" ]] ||
    CUDA_ARCH="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')"
fi
[[ "${CUDA_ARCH:-}" =~ ^[0-9]+$ ]] || CUDA_ARCH=90

NVCC="$(command -v nvcc || true)"
for c in /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc; do
  [[ -z "$NVCC" && -x "$c" ]] && NVCC="$c"
done
[[ -n "$NVCC" ]] || { say "nvcc not found"; exit 2; }
CUDA_HOME="$(cd "$(dirname "$NVCC")/.." && pwd)"
NVCC_MAJOR="$("$NVCC" --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p')"
say "nvcc $NVCC (CUDA $NVCC_MAJOR), arch sm_$CUDA_ARCH, GPU $GPU_NAME, ${GPU_MEM_MIB} MiB"
SITE="$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null || true)"

# ------------------------------------------------------------------ cuBLAS and NCCL
# The toolkit's cuBLAS if it has the grouped GEMM API, else a Python wheel's (site-packages/
# nvidia/{cublas,cuXX}), preferring the major version of nvcc. NCCL likewise.
CUBLAS_ARGS=() NCCL_ARGS=()
add_lib_path() { export LD_LIBRARY_PATH="$1${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; }
has_grouped() { grep -q cublasGemmGroupedBatchedEx "$1/cublas_api.h" 2>/dev/null; }
if has_grouped "$CUDA_HOME/include" && ls "$CUDA_HOME"/lib*/libcublas.so* >/dev/null 2>&1; then
  say "cuBLAS from the toolkit ($CUDA_HOME)"
else
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
  add_lib_path "$(dirname "$best_lib")"
  # cuBLAS wheels may need the wheel's own runtime too (same site-packages tree).
  for d in $(find "$SITE/nvidia" -name 'libcudart.so*' -printf '%h\n' 2>/dev/null | sort -u); do
    export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"
  done
fi
if [[ -f "$CUDA_HOME/include/nccl.h" ]] && ls "$CUDA_HOME"/lib*/libnccl.so* >/dev/null 2>&1; then
  say "NCCL from the toolkit"
else
  nccl_hdr="$(find "${SITE:-/nonexistent}/nvidia" -name nccl.h 2>/dev/null | head -1)"
  nccl_lib="$(ls "$(dirname "${nccl_hdr:-/x/x}")"/../lib/libnccl.so* 2>/dev/null | head -1)"
  if [[ -n "$nccl_hdr" && -n "$nccl_lib" ]]; then
    say "NCCL from $nccl_lib"
    NCCL_ARGS=(-DMOE_NCCL_INCLUDE_DIR="$(dirname "$nccl_hdr")" -DMOE_NCCL_LIB="$nccl_lib")
    add_lib_path "$(dirname "$nccl_lib")"
  else
    say "no NCCL found: the full build is skipped"
    SKIP_FULL=1
  fi
fi

GEN=(-G "Unix Makefiles")
command -v ninja >/dev/null && GEN=(-G Ninja)
STATUS=0
summary=()
note() { summary+=("$*"); say "$*"; }

# ------------------------------------------------------------------ full build (prefix)
FULL=0
FULL_DIR="${BUILD_DIR:-/tmp/moe_gpu_build}/full"
PFX=/tmp/moe_prefix
full_build() {
  [[ -f "$DEPS/prefix.tar.xz" ]] || { note "full build: $DEPS/prefix.tar.xz missing (run '$0 prepare')"; return 1; }
  rm -rf "$PFX" && mkdir -p "$PFX" && tar -C "$PFX" -xJf "$DEPS/prefix.tar.xz" || return 1
  local arch=x86_64-linux-gnu
  local lib="$PFX/usr/lib/$arch"
  export OPAL_PREFIX="$PFX/usr" PMIX_MCA_mca_base_component_path="$lib/pmix2/lib/pmix" PATH="$PFX/usr/bin:$PATH"
  export LD_LIBRARY_PATH="$lib:$lib/openblas-pthread:$lib/openmpi/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export OMPI_MCA_btl=self,vader OMPI_MCA_pml=ob1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  # A smoke test of the prefix before the long build: does its MPI start here (glibc, plugins)?
  if ! run_logged "$OUT/prefix_smoke.log" 60 "$PFX/usr/bin/ompi_info" --version; then
    note "full build: the prefix's Open MPI does not start here (see prefix_smoke.log)"
    return 1
  fi
  say "full build: configure (sm_$CUDA_ARCH)"
  if ! run_logged "$OUT/full_configure.log" 300 cmake -S "$ROOT" -B "$FULL_DIR" "${GEN[@]}" \
      -DCMAKE_BUILD_TYPE=Release -DMOE_EP_CUDA=ON -DCMAKE_CUDA_COMPILER="$NVCC" \
      -DMOE_CUDA_ARCHITECTURES="${CUDA_ARCH}-real" -DCMAKE_PREFIX_PATH="$PFX/usr" \
      -DCMAKE_LIBRARY_ARCHITECTURE=$arch -Dfmt_DIR="$lib/cmake/fmt" \
      -Dyaml-cpp_DIR="$lib/cmake/yaml-cpp" -Dnlohmann_json_DIR="$PFX/usr/share/cmake/nlohmann_json" \
      -DCLI11_DIR="$PFX/usr/share/cmake/CLI11" -DMOE_GTEST_SOURCE_DIR="$DEPS/googletest" \
      -DMOE_OPENBLAS_LIBRARY="$lib/openblas-pthread/libopenblas.so.0" \
      -DMOE_OPENBLAS_INCLUDE_DIR="$PFX/usr/include/$arch/openblas-pthread" \
      -DMPI_C_COMPILER="$PFX/usr/bin/mpicc.openmpi" -DMPIEXEC_EXECUTABLE="$PFX/usr/bin/mpirun.openmpi" \
      "${CUBLAS_ARGS[@]}" "${NCCL_ARGS[@]}"; then
    note "full build: configure FAILED"; tail -20 "$OUT/full_configure.log" | tee -a "$LOG"; return 1
  fi
  say "full build: build"
  if ! run_logged "$OUT/full_build.log" 420 cmake --build "$FULL_DIR" -j "$JOBS" --target moe-ep \
      moe_test_gpu moe_test_gpu_forward moe_test_gpu_host moe_gpu_bench; then
    note "full build: build FAILED"; grep -E "error" "$OUT/full_build.log" | head -20 | tee -a "$LOG"
    return 1
  fi
  return 0
}
if [[ "${SKIP_FULL:-0}" != 1 ]] && full_build; then FULL=1; fi

# ------------------------------------------------------------------ standalone build (fallback)
SA_DIR="${BUILD_DIR:-/tmp/moe_gpu_build}/standalone"
if [[ $FULL == 0 ]]; then
  say "standalone build (bench/gpu: kernels + op tests against the reference ops, no MPI)"
  DEPS_ARGS=()
  [[ -d "$DEPS" ]] && DEPS_ARGS=(-DMOE_DEPS_DIR="$DEPS")
  if ! run_logged "$OUT/configure.log" 300 cmake -S "$ROOT/bench/gpu" -B "$SA_DIR" "${GEN[@]}" \
      -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_COMPILER="$NVCC" -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCH" \
      "${DEPS_ARGS[@]}" "${CUBLAS_ARGS[@]}"; then
    say "configure FAILED"; tail -30 "$OUT/configure.log" | tee -a "$LOG"; exit 1
  fi
  if ! run_logged "$OUT/build.log" 300 cmake --build "$SA_DIR" -j "$JOBS"; then
    say "build FAILED"; grep -E "error|Error" "$OUT/build.log" | head -30 | tee -a "$LOG"; exit 1
  fi
fi

# ------------------------------------------------------------------ tests
run_tests() {  # run_tests <binary> <name>: a gtest binary; skips count as failures with a GPU
  local bin="$1" name="$2"
  if [[ ! -x "$bin" ]]; then note "tests $name: not built"; STATUS=1; return; fi
  run_logged "$OUT/$name.log" 300 "$bin" --gtest_output="xml:$OUT/$name.xml"
  local rc=$? passed skipped failed
  passed="$(grep -c '^\[       OK \]' "$OUT/$name.log")"
  skipped="$(grep -cE '^\[  SKIPPED \] .* \([0-9]+ ms\)$' "$OUT/$name.log")"
  failed="$(grep -cE '^\[  FAILED  \] .* \([0-9]+ ms\)$' "$OUT/$name.log")"
  note "tests $name: rc $rc, $passed passed, $skipped skipped, $failed failed"
  [[ $rc -eq 0 ]] || STATUS=1
  # With a GPU a skip means CUDA could not use it (NCCL's two-GPU test is the one allowed skip).
  [[ $GPU == 0 || $skipped -le $3 ]] || STATUS=1
  grep -E '^\[  FAILED  \]' "$OUT/$name.log" | sort -u | head -20 | tee -a "$LOG"
}
if [[ $FULL == 1 ]]; then
  run_tests "$FULL_DIR/tests/gpu_host/moe_test_gpu_host" gpu_host_tests 0
  run_tests "$FULL_DIR/tests/gpu/moe_test_gpu" gpu_op_tests 0
  run_tests "$FULL_DIR/tests/gpu/moe_test_gpu_forward" gpu_model_tests 1
  BENCH="$FULL_DIR/tests/gpu/moe_gpu_bench"
else
  run_tests "$SA_DIR/moe_test_gpu_host" gpu_host_tests 0
  run_tests "$SA_DIR/moe_test_gpu" gpu_op_tests 0
  BENCH="$SA_DIR/gpu_bench"
fi

# ------------------------------------------------------------------ benchmarks
BENCH_LAYER_RC=skipped BENCH_MODEL_RC=skipped RUN_RC=skipped
if [[ $GPU == 1 ]]; then
  say "benchmark: one layer"
  run_logged "$OUT/bench_layer.log" 150 "$BENCH" --layers 1 --json "$OUT/bench_layer.json"
  BENCH_LAYER_RC=$?
  [[ $BENCH_LAYER_RC -eq 0 ]] || STATUS=1
  # The real runtime on the whole model: throughput and memory measured against `moe-ep plan`.
  left=$(( ${BUDGET_S:-460} - ( $(date +%s) - T0 ) ))
  if [[ $FULL == 1 && "${SKIP_MODEL:-0}" != 1 && "${GPU_MEM_MIB:-0}" -ge 100000 && $left -ge 150 ]]; then
    say "moe-ep run: Qwen3-30B-A3B, synthetic weights, batch 8 (limit 120 s)"
    run_logged "$OUT/run_qwen3.log" 120 "$FULL_DIR/launch/moe-ep" run \
      --config "$ROOT/configs/bench/qwen3-30b-a3b.yaml" --json "$OUT/run_qwen3.json"
    RUN_RC=$?
    [[ $RUN_RC -eq 0 ]] || STATUS=1
  fi
  # The 48-layer model at batch 1/8/64 (~85 GB) only with time left in the budget.
  left=$(( ${BUDGET_S:-460} - ( $(date +%s) - T0 ) ))
  if [[ "${SKIP_MODEL:-0}" != 1 && "${GPU_MEM_MIB:-0}" -ge 100000 && $left -ge 90 ]]; then
    say "benchmark: 48-layer model (limit ${left}s)"
    run_logged "$OUT/bench_model.log" "$left" "$BENCH" --layers 48 --model-only \
      --json "$OUT/bench_model.json"
    BENCH_MODEL_RC=$?
    [[ $BENCH_MODEL_RC -eq 0 ]] || STATUS=1
  fi
fi

# ------------------------------------------------------------------ summary (printed last)
{
  echo
  echo "================ moe-ep device check: $(date -u +%Y-%m-%d) | $GPU_NAME | sm_$CUDA_ARCH | $(( $(date +%s) - T0 )) s"
  echo "os: $(grep '^PRETTY_NAME=' /etc/os-release 2>/dev/null | cut -d= -f2) | $(ldd --version 2>/dev/null | head -1)"
  echo "build: $([[ $FULL == 1 ]] && echo "full (prefix)" || echo "standalone (no MPI)")"
  for t in "${summary[@]}"; do echo "$t"; done
  echo "bench (layer): rc $BENCH_LAYER_RC; moe-ep run (Qwen3): rc $RUN_RC; bench (48 layers): rc $BENCH_MODEL_RC"
  sed -n '/^HBM:/,$p' "$OUT/bench_layer.log" 2>/dev/null
  [[ -f "$OUT/run_qwen3.log" ]] && grep -E '^(prefill|decode|memory|vs plan)' "$OUT/run_qwen3.log"
  [[ -f "$OUT/bench_model.log" ]] && sed -n '/^Qwen3-30B-A3B, synthetic/,$p' "$OUT/bench_model.log"
  [[ $BENCH_LAYER_RC == 0 || $BENCH_LAYER_RC == skipped ]] || tail -5 "$OUT/bench_layer.log"
  [[ $RUN_RC == 0 || $RUN_RC == skipped ]] || tail -5 "$OUT/run_qwen3.log"
  [[ $BENCH_MODEL_RC == 0 || $BENCH_MODEL_RC == skipped ]] || tail -5 "$OUT/bench_model.log"
  echo "result: $([[ $STATUS -eq 0 ]] && echo PASS || echo FAIL) (logs in $OUT)"
} | tee -a "$LOG" | tee "$OUT/summary.txt"
exit $STATUS
