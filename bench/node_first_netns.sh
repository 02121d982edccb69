#!/usr/bin/env bash
# Flat vs node-first exchange on the two-"host" rehearsal (tests/cluster/netns_cluster.sh: 2 x 2
# ranks, TCP between the hosts, shared memory inside one): inter-node rows and bytes measured by
# `run --json` next to the placement analysis' prediction from the same run's routing trace, and
# prefill / decode times side by side (the exchanges alternate, REPS rounds, medians).
# Needs root. Usage: bench/node_first_netns.sh [build dir, default build/release] [REPS, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
build="$(realpath "${1:-build/release}")"
reps="${2:-3}"
exe="$build/launch/moe-ep"
out=bench/results/node_first_netns
mkdir -p "$out"
cluster="$(mktemp -d)/cluster"
net=tests/cluster/netns_cluster.sh
trap '$net down "$cluster"; rm -rf "$(dirname "$cluster")"' EXIT
$net up "$cluster" 2 2
export OPENBLAS_NUM_THREADS=1
mpi=("$net" mpirun "$cluster" --quiet -x OPENBLAS_NUM_THREADS=1 -np 4)
args=(--config configs/bench/mid.yaml --set threads=1 --set compare_sgemm=false
      --set workload.num_sequences=8 --set workload.prompt_len=32 --set workload.decode_steps=8)
for ((i = 1; i <= reps; ++i)); do
  for x in flat hierarchical; do
    trace=()
    [[ $x == flat && $i == 1 ]] && trace=(--trace-out "$out/trace.safetensors")
    "${mpi[@]}" "$exe" run --quiet "${args[@]}" --exchange $x "${trace[@]}" \
        --json "$out/${x}_$i.json" >/dev/null
  done
done
"$exe" place --trace "$out/trace.safetensors" --ranks 4 --strategy contiguous --ranks-per-node 2 \
    --model configs/models/mid.yaml --out "$out/contiguous.yaml" --json "$out/analysis.json" >/dev/null
rm -f "$out/trace.safetensors" "$out/contiguous.yaml"
/usr/bin/python3 - "$out" "$reps" <<'PY'
import json, statistics as st, sys
out, reps = sys.argv[1], int(sys.argv[2])
nodes = json.load(open(f"{out}/analysis.json"))["nodes"]
rows = {}
print("| exchange | inter-node rows | inter-node MB | intra-node rows | collectives/layer | prefill tok/s | decode tok/s |")
print("|---|---:|---:|---:|---:|---:|---:|")
for x in ("flat", "hierarchical"):
    runs = [json.load(open(f"{out}/{x}_{i}.json")) for i in range(1, reps + 1)]
    t = runs[0]["metrics"]["traffic"]
    rows[x] = t["rows_sent_inter_node"]
    pre = st.median(r["prefill_tokens_per_s"] for r in runs)
    dec = st.median(r["decode_tokens_per_s"] for r in runs)
    print(f"| {x} | {t['rows_sent_inter_node']} | {t['bytes_sent_inter_node'] / 1e6:.2f} | "
          f"{t['rows_sent_intra_node']} | {t['max_collectives_per_layer']['decode']} | {pre:.1f} | {dec:.1f} |")
print(f"\ninter-node rows flat / node-first: measured {rows['flat'] / rows['hierarchical']:.3f}, "
      f"predicted by the analysis {nodes['inter_node_dedup']:.3f} "
      f"(node-first rows predicted {nodes['node_first']['inter_node_rows']}, measured {rows['hierarchical']}; "
      f"flat predicted {nodes['flat']['inter_node_rows']}, measured {rows['flat']})")
PY
