#!/usr/bin/env bash
# Builds the libFuzzer targets (preset `fuzz`, clang) — the safetensors header parser and the
# tokenizer.json loader — and runs them for N seconds in all (first argument, default 60; split
# between the targets). Exits non-zero when a fuzzer finds a crash, a leak, a timeout or an
# out-of-memory input; the input is left under build/fuzz/artifacts/.
set -euo pipefail

seconds="${1:-60}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

cmake --preset fuzz >/dev/null
cmake --build --preset fuzz --target fuzz_safetensors_header fuzz_tokenizer_json

artifacts="build/fuzz/artifacts/"
mkdir -p "$artifacts"

# fuzz_one TARGET SEEDS WORK_CORPUS SECONDS: the checked-in seeds stay as they are; the work
# corpus grows between runs.
fuzz_one() {
  local fuzzer="build/fuzz/tests/fuzz/$1" seeds="$2" work_corpus="$3" secs="$4"
  mkdir -p "$work_corpus"
  echo "fuzz: $fuzzer for ${secs}s (seeds: $seeds, corpus: $work_corpus)"
  "$fuzzer" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="$artifacts" "$work_corpus" "$seeds"
}

tokenizer_seconds=$(( seconds / 2 > 0 ? seconds / 2 : 1 ))
header_seconds=$(( seconds - tokenizer_seconds > 0 ? seconds - tokenizer_seconds : 1 ))
fuzz_one fuzz_safetensors_header tests/fuzz/corpus build/fuzz/corpus "$header_seconds"
fuzz_one fuzz_tokenizer_json tests/fuzz/corpus_tokenizer build/fuzz/corpus_tokenizer \
  "$tokenizer_seconds"
echo "fuzz: no crash in ${seconds}s"
