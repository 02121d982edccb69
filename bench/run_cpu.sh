#!/usr/bin/env bash
# CPU benchmarks of issues 2 and 3 (numbers, not tests): one-rank prefill/decode of the mid-size
# model next to a plain sgemm of the same shapes; the 1 -> 2 rank speedup of `moe-ep run`; and
# dispatch+combine vs a raw MPI_Alltoallv of the same bytes on 2 and 4 ranks.
# One BLAS thread per rank. Writes bench/results/*.json and prints a markdown table.
# Usage: bench/run_cpu.sh [build dir, default build/release]
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build/release}"
out=bench/results
mkdir -p "$out"
export OPENBLAS_NUM_THREADS=1
mpi=(mpirun --allow-run-as-root --oversubscribe --quiet -x OPENBLAS_NUM_THREADS)
exe="$build/launch/moe-ep"

"$exe" run --quiet --config configs/bench/mid.yaml --json "$out/mid_1rank.json" >"$out/mid_1rank.txt"
"${mpi[@]}" -np 2 "$exe" run --quiet --config configs/bench/mid.yaml --json "$out/mid_2rank.json" >"$out/mid_2rank.txt"
for n in 2 4; do
  "${mpi[@]}" -np "$n" "$build/bench/bench_dispatch" --tokens 128,512 --hidden 1024,2048 \
      --top-k 2,8 --experts 128 --iters 20 --json "$out/dispatch_${n}rank.json" \
      --csv "$out/dispatch_${n}rank.csv" >"$out/dispatch_${n}rank.txt"
done

/usr/bin/python3 - "$out" <<'PY'
import json, sys, os
out = sys.argv[1]
r1 = json.load(open(os.path.join(out, "mid_1rank.json")))
r2 = json.load(open(os.path.join(out, "mid_2rank.json")))
print("| run | ranks | prefill tok/s | prefill GFLOP/s | sgemm GFLOP/s/rank | % of sgemm | decode tok/s | decode step first/last ms |")
print("|---|---|---|---|---|---|---|---|")
for r in (r1, r2):
    n = r["ranks"]; per_rank = r["prefill_gflops"] / n
    pct = 100 * per_rank / r["sgemm_gflops_per_rank"] if r["sgemm_gflops_per_rank"] else 0
    steps = r["decode_step_s"]
    print(f"| mid | {n} | {r['prefill_tokens_per_s']:.1f} | {r['prefill_gflops']:.2f} | "
          f"{r['sgemm_gflops_per_rank']:.2f} | {pct:.0f}% | {r['decode_tokens_per_s']:.1f} | "
          f"{steps[0]*1e3:.1f} / {steps[-1]*1e3:.1f} |")
print(f"\nspeedup 1 -> 2 ranks: prefill {r1['prefill_s']/r2['prefill_s']:.2f}x, "
      f"decode {r1['decode_s']/r2['decode_s']:.2f}x, whole run (prefill+decode) "
      f"{(r1['prefill_s']+r1['decode_s'])/(r2['prefill_s']+r2['decode_s']):.2f}x\n")
print("| ranks | tokens/rank | hidden | top-k | size B/rank | dispatch+combine us | busbw GB/s | #wrong | raw us | ratio | mem us | / (raw+mem) |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for n in (2, 4):
    d = json.load(open(os.path.join(out, f"dispatch_{n}rank.json")))
    for c in d["cases"]:
        print(f"| {d['ranks']} | {c['tokens_per_rank']} | {c['hidden']} | {c['top_k']} | "
              f"{c['size_bytes']:.0f} | {c['time_us']:.1f} | {c['busbw_gb_s']:.3f} | "
              f"{c['wrong'] + c['raw_wrong']} | {c['raw_us']:.1f} | {c['ratio']:.3f} | "
              f"{c['mem_us']:.1f} | {c['ratio_to_raw_plus_mem']:.3f} |")
PY
