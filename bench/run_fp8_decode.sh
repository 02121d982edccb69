#!/usr/bin/env bash
# Decode speed with FP8 weights (e4m3 + 128 x 128 block scales, `--quantize fp8`) against the
# same synthetic bf16 weights, side by side: the mid model, one sequence (batch-1 decode reads
# every active weight once per token), bf16 and fp8 runs alternated, medians of the repetitions.
# Usage: bench/run_fp8_decode.sh [build dir, default build/release] [repetitions, default 5]
#        [threads, default 1]
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build/release}"
reps="${2:-5}"
threads="${3:-1}"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
export OPENBLAS_NUM_THREADS="$threads"
run() {  # $1: label, rest: extra flags
  local label=$1
  shift
  "$build/launch/moe-ep" run --quiet --config configs/bench/mid.yaml --threads "$threads" \
    --set workload.num_sequences=1 --set workload.prompt_len=16 --set workload.decode_steps=48 \
    --json "$out/run.json" "$@" >/dev/null
  /usr/bin/python3 -c "import json, sys; j = json.load(open(sys.argv[1])); \
m = j['memory_max_per_rank']; \
print(sys.argv[2], j['decode_tokens_per_s'], m['dense_replica_bytes'] + m['expert_shard_bytes'])" \
    "$out/run.json" "$label" >>"$out/all.txt"
}
for ((i = 0; i < reps; ++i)); do
  run bf16
  run fp8 --quantize fp8
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
/usr/bin/python3 - "$out/all.txt" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
tps = {k: [float(r[1]) for r in rows if r[0] == k] for k in ("bf16", "fp8")}
held = {r[0]: int(r[2]) for r in rows}
for k in ("bf16", "fp8"):
    print(f"{k:5s} weights {held[k] / 1e6:8.1f} MB  decode tok/s median {statistics.median(tps[k]):7.2f}"
          f"  runs {' '.join(f'{v:.1f}' for v in tps[k])}")
print(f"fp8 / bf16 decode speed: {statistics.median(tps['fp8']) / statistics.median(tps['bf16']):.2f}x")
PY
