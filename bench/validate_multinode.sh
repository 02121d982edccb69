#!/usr/bin/env bash
# The cost model on two "nodes" (issue 21): tests/cluster/netns_cluster.sh makes two hosts of
# network namespaces (TCP over veth between them, shared memory inside each); calibrate measures
# compute on one rank and then the communicator across the 2 x 2 ranks (an intra-node and an
# inter-node link and each node's own collective, comm.measured with ranks_per_node); each point
# runs on the 2 x 2 ranks with each exchange (node-first, the default across nodes, and flat;
# twice each, the faster counts) next to `moe-ep predict --ranks 4 --exchange E` with that
# profile, and bench/cost_validation.py prints the error table into
# bench/results/multinode_validation/.
# Needs root. Usage: bench/validate_multinode.sh [build dir, default build/release]
set -euo pipefail
cd "$(dirname "$0")/.."
build="$(realpath "${1:-build/release}")"
exe="$build/launch/moe-ep"
out=bench/results/multinode_validation  # relative: the JSON files name their inputs as given
cluster="$(mktemp -d)/cluster"
mkdir -p "$out"
net=tests/cluster/netns_cluster.sh
trap '$net down "$cluster"; rm -rf "$(dirname "$cluster")"' EXIT
$net up "$cluster" 2 2
mpi=("$net" mpirun "$cluster" --quiet -x OPENBLAS_NUM_THREADS=1 -np 4)
export OPENBLAS_NUM_THREADS=1

points=(
  "mid_8x32|mid|configs/bench/mid.yaml|workload.num_sequences=8 workload.prompt_len=32 workload.decode_steps=8"
  "tiny_64x32|tiny|configs/bench/tiny.yaml|workload.num_sequences=64 workload.prompt_len=32 workload.decode_steps=8"
)
for model in mid tiny; do
  hw="$out/hardware_netns_$model.yaml"
  "$exe" calibrate --out "$hw" --model "configs/models/$model.yaml" --name "netns-2x2-$model"
  "${mpi[@]}" "$exe" calibrate --out "$hw" --merge
done
rm -f "$out"/*_n4_run.json "$out"/*_n4_run2.json "$out"/*_n4_predict.json
for p in "${points[@]}"; do
  IFS='|' read -r name model cfg sets <<<"$p"
  args=(--config "$cfg" --set threads=1 --set compare_sgemm=false)
  for s in $sets; do args+=(--set "$s"); done
  for exchange in hierarchical flat; do
    point="$out/${name}_${exchange}_n4"
    "${mpi[@]}" "$exe" run --quiet "${args[@]}" --exchange $exchange --json "${point}_run.json" >/dev/null
    "${mpi[@]}" "$exe" run --quiet "${args[@]}" --exchange $exchange --json "${point}_run2.json" >/dev/null
    "$exe" predict "${args[@]}" --ranks 4 --exchange $exchange \
        --hardware "$out/hardware_netns_$model.yaml" --json "${point}_predict.json" >/dev/null
    echo "done $name $exchange"
  done
done
/usr/bin/python3 bench/cost_validation.py "$out" "$out"
