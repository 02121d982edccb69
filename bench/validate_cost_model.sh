#!/usr/bin/env bash
# Cost-model validation on this machine (issue 11): calibrate (1 rank: compute; 2 and 4 ranks:
# communicator, merged into one profile), then for N = 1, 2, 4 over a sweep of compute-bound
# (mid model) and exchange/host-bound (tiny model, many tokens) points run `moe-ep run --json` and
# `moe-ep predict --json` side by side; bench/cost_validation.py prints the per-point error table
# and writes bench/results/cost_validation.{json,md,png}. One BLAS thread per rank.
# Usage: bench/validate_cost_model.sh [build dir, default build/release]
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build/release}"
exe="$build/launch/moe-ep"
out=bench/results/cost_validation
mkdir -p "$out"
export OPENBLAS_NUM_THREADS=1
mpi=(mpirun --allow-run-as-root --oversubscribe --quiet -x OPENBLAS_NUM_THREADS)
# The CPU backend's efficiency depends on the shapes (small GEMMs and attention heads pay fixed
# costs), so the profile is measured at the shapes of each model the sweep runs: one profile per
# model, each with the communicator measured at 2 and 4 ranks.
for model in mid tiny; do
  hw=bench/results/hardware_this_machine_$model.yaml
  start=$(date +%s)
  "$exe" calibrate --out "$hw" --model "configs/models/$model.yaml" --name "cpu-2core-$model" \
      --json "$out/calibrate_samples_$model.json"
  "${mpi[@]}" -np 2 "$exe" calibrate --out "$hw" --merge
  "${mpi[@]}" -np 4 "$exe" calibrate --out "$hw" --merge
  echo "calibrate ($model shapes): $(( $(date +%s) - start )) s"
done

# name | run config | overrides (compute-bound: mid; exchange/host-bound: tiny with many tokens)
points=(
  "mid_8x128|configs/bench/mid.yaml|workload.num_sequences=8 workload.prompt_len=128 workload.decode_steps=8"
  "mid_8x32|configs/bench/mid.yaml|workload.num_sequences=8 workload.prompt_len=32 workload.decode_steps=8"
  "mid_16x64_zipf|configs/bench/mid.yaml|workload.num_sequences=16 workload.prompt_len=64 workload.decode_steps=6 workload.routing.kind=zipf"
  "tiny_16x128|configs/bench/tiny.yaml|workload.num_sequences=16 workload.prompt_len=128 workload.decode_steps=8"
  "tiny_64x32|configs/bench/tiny.yaml|workload.num_sequences=64 workload.prompt_len=32 workload.decode_steps=8"
)
for p in "${points[@]}"; do
  IFS='|' read -r name cfg sets <<<"$p"
  hw=bench/results/hardware_this_machine_${name%%_*}.yaml
  args=(--config "$cfg" --set threads=1 --set compare_sgemm=false)
  for s in $sets; do args+=(--set "$s"); done
  for n in 1 2 4; do
    if [ "$n" = 1 ]; then launch=("$exe"); else launch=("${mpi[@]}" -np "$n" "$exe"); fi
    # Twice: the table keeps the faster of the two (calibrate keeps the best of three rounds, so
    # both sides see the machine at its least disturbed).
    "${launch[@]}" run --quiet "${args[@]}" --json "$out/${name}_n${n}_run.json" >/dev/null
    "${launch[@]}" run --quiet "${args[@]}" --json "$out/${name}_n${n}_run2.json" >/dev/null
    "$exe" predict "${args[@]}" --ranks "$n" --hardware "$hw" \
        --json "$out/${name}_n${n}_predict.json" >/dev/null
    echo "done $name N=$n"
  done
done
/usr/bin/python3 bench/cost_validation.py "$out" bench/results
