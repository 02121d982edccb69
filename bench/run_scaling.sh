#!/usr/bin/env bash
# Scaling sweeps (issue 11): every configs/experiments/scaling_*.yaml through `moe-ep experiment`
# (mode run: one `moe-ep run` per cell under mpirun), then bench/plot_scaling.py turns the runs'
# JSON into bench/results/scaling.{md,json} and PNGs (speedup and efficiency vs N, per-phase bars).
# Usage: bench/run_scaling.sh [build dir, default build/release] [results dir, default build/scaling]
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build/release}"
out="${2:-build/scaling}"
export OPENBLAS_NUM_THREADS=1
for cfg in configs/experiments/scaling_*.yaml; do
  name=$(basename "$cfg" .yaml)
  "$build/launch/moe-ep" experiment --config "$cfg" --out "$out/$name"
done
/usr/bin/python3 bench/plot_scaling.py "$out" bench/results
