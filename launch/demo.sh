#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine: install, build, then run the tiny model's
# workload on 2 ranks on the CPU (experts split across ranks, tokens exchanged by MPI).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
bash launch/build.sh release
launch/moe-ep-mpi 2 run --config configs/bench/tiny.yaml --json build/release/demo.json
echo "demo: JSON report in build/release/demo.json"
