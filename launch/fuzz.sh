#!/usr/bin/env bash
# Builds the libFuzzer target for the safetensors header parser (preset `fuzz`, clang) and runs
# it for N seconds (first argument, default 60). Exits non-zero when the fuzzer finds a crash,
# a leak, a timeout or an out-of-memory input; the input is left under build/fuzz/artifacts/.
set -euo pipefail

seconds="${1:-60}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

cmake --preset fuzz >/dev/null
cmake --build --preset fuzz --target fuzz_safetensors_header

fuzzer="build/fuzz/tests/fuzz/fuzz_safetensors_header"
work_corpus="build/fuzz/corpus"       # grows between runs; the checked-in seeds stay as they are
artifacts="build/fuzz/artifacts/"
mkdir -p "$work_corpus" "$artifacts"

echo "fuzz: $fuzzer for ${seconds}s (seeds: tests/fuzz/corpus, corpus: $work_corpus)"
"$fuzzer" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
  -print_final_stats=1 -artifact_prefix="$artifacts" "$work_corpus" tests/fuzz/corpus
echo "fuzz: no crash in ${seconds}s"
