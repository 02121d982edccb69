#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine (CI runs exactly this; README.md gives it to
# new users). Stages, in order:
#   1. format: every C++/CUDA source must match .clang-format.
#   2. release build (CUDA parts compile and link when nvcc is present; .ci/run compiles them for
#      one architecture) and EVERY ctest label: unit, mpi (gpu tests skip without a device).
#   3. AddressSanitizer + UBSan build (CPU only: the preset has no CUDA; -O1 with line tables) of
#      tests/ and what they need (libraries, moe-ep, the MPI workers; not the benchmarks), then
#      every unit test and the mpi tests in ASAN_MPI_TESTS below: one per distinct code path under
#      MPI (the communicator and dispatcher at an even and an odd world size, the HF checkpoint
#      loaders and forward on 2 ranks, dedup, replicas and the memory report, the bf16 model at
#      1/2/4 ranks, trace record/replay and bad traces, rebalancing, ranks without sequences or
#      experts and the graph-safe step, the server's step loop on 2 ranks). The unit label holds
#      the one-process serve tests (bad inputs, idle and vanished clients, SIGTERM, the openai
#      client). The other mpi tests run the same code at more world
#      sizes, placements or command-line variants (stage 2 runs them all) or only check how a job
#      ends (fault injection, a stuck rank). MOE_TEST_ASAN_ALL=1 runs every test here.
#   4. libFuzzer (safetensors header parser, tokenizer.json loader) for MOE_FUZZ_SECONDS (60).
# Cost on a fresh clone, 2 cores, no compiler cache (CPU seconds; a quiet machine takes about half
# of that in wall time): release build 380 (tests 136, benchmarks 71, the library's CLI, I/O and
# analysis units 66), ASan build 545, fuzz build 33; wall time of the tests: release 60-90 s,
# ASan unit 34 s, ASan mpi 13 s. MOE_TEST_QUICK=1 stops after stage 2. Compilers go through
# ccache when it is installed (set at the first configure of a build directory): a rerun reuses
# every unchanged object. A unity build's units include their sources by absolute path, so another
# clone reuses only the objects compiled one file each (-DMOE_EP_UNITY_BUILD=OFF shares them all,
# and a cold build then takes longer).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh  # python3-venv and curl among them
# The Python the client tests name (tests/CMakeLists.txt: build/test-venv): the openai package
# (serve tests), tokenizers and dashscope's qwen.tiktoken (the real Qwen vocabulary), from PyPI;
# without this venv those tests are skipped.
python3 -m venv build/test-venv
build/test-venv/bin/pip install -q --disable-pip-version-check openai==3.63.0 tokenizers==0.23.3
build/test-venv/bin/pip install -q --disable-pip-version-check --no-deps dashscope==2.0.2
export OPENBLAS_NUM_THREADS=1
if command -v ccache >/dev/null; then
  export CMAKE_C_COMPILER_LAUNCHER=ccache CMAKE_CXX_COMPILER_LAUNCHER=ccache
  export CMAKE_CUDA_COMPILER_LAUNCHER=ccache CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}"
fi

# The mpi tests that also run under the sanitizers: ctest -R patterns matched from the start of
# the name (parameterised gtest names end in a comment), each must match a test.
ASAN_MPI_TESTS=(
  'parallel_mpi_np[34]'
  'AllFixtures/HfFixture\..*_2ranks'
  'MultiRank\.DedupSendsFewerBytesThanOneRowPerTokenExpert'
  'MultiRank\.RunMemoryMatchesThePlanWithReplicas'
  'Fixtures/Bf16Ranks\..*moe128'
  'RoutingCli\.RecordThenReplayIsBitForBitOnAnyRankCount'
  'RoutingCli\.EachBadTraceEndsTheJobWithOneClearLine'
  'RoutingCli\.ForwardLogitsAcrossRebalancesEqualOneRankLogits'
  'EdgeRanks\..*'
  'ExchangeCli\.RunJsonCountsCollectivesAndHalvesBytesWithBf16Rows'
  'serve_openai_client_2ranks'
)

echo "== format check"
bash launch/format.sh
jobs="$(nproc)"

echo "== release build"
bash launch/build.sh release
echo "== release tests"
ctest --preset release -j "$jobs"

if [ "${MOE_TEST_QUICK:-0}" != "1" ]; then
  echo "== asan build (tests and what they need)"
  cmake --preset asan >/dev/null
  cmake --build --preset asan -j "$jobs" --target tests/all
  export ASAN_OPTIONS=detect_leaks=0
  if [ "${MOE_TEST_ASAN_ALL:-0}" = "1" ]; then
    echo "== asan tests (all)"
    ctest --preset asan -j "$jobs"
  else
    echo "== asan tests (unit)"
    ctest --preset asan -j "$jobs" -L unit
    regex=""
    for p in "${ASAN_MPI_TESTS[@]}"; do
      n="$(ctest --preset asan -N -L mpi -R "^($p)" | sed -n 's/^Total Tests: //p')"
      [ "${n:-0}" -gt 0 ] || { echo "asan: no mpi test matches '$p' (renamed?)"; exit 1; }
      regex="${regex:+$regex|}$p"
    done
    echo "== asan tests (mpi: one per code path)"
    ctest --preset asan -j "$jobs" -L mpi -R "^($regex)"
  fi
  echo "== fuzz (safetensors header parser, tokenizer.json loader)"
  bash launch/fuzz.sh "${MOE_FUZZ_SECONDS:-60}"
fi
echo "== all tests passed"
