#!/usr/bin/python3
"""Draws `moe-ep plan --plot FILE.png`: left, memory held vs parameters active per token as top-k
grows (all experts sit in memory; only k of them compute per token); right, memory of the largest
rank (dense replica, expert shard, KV cache, buffers) as the number of ranks N grows.
Usage: /usr/bin/python3 bench/plot_plan.py PLAN.json OUT.png"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

GIB = 2.0 ** 30


def main(src, out):
    plan = json.load(open(src))
    model = plan["model"]["name"]
    total_gib = plan["total_bytes"] / GIB
    weights = plan["options"].get("weights_dtype", "bf16")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))

    act = plan["active"]
    ks = [a["top_k"] for a in act]
    active_gib = [a["active_bytes"] / GIB for a in act]
    x = range(len(ks))
    ax1.bar(x, [total_gib] * len(ks), color="#d9d9d9", label="held in memory (all experts)")
    ax1.bar(x, active_gib, color="tab:red", label=f"active per token ({weights} weights read)")
    for i, a in enumerate(act):
        ax1.text(i, active_gib[i] + total_gib * 0.01, f"{100 * a['share']:.1f}%", ha="center",
                 fontsize=8)
    ax1.set_xticks(list(x))
    ax1.set_xticklabels([f"k={k}" + ("\n(model)" if a["configured"] else "")
                         for k, a in zip(ks, act)])
    ax1.set_ylabel(f"GiB (weights {weights})")
    ax1.set_title(f"{model}: memory held vs parameters active per token")
    ax1.legend(loc="upper left", fontsize=8)

    ranks = plan["ranks"]
    ns = [r["num_ranks"] for r in ranks]
    parts = [("dense_replica_bytes", "dense replica", "tab:blue"),
             ("expert_shard_bytes", "expert shard", "tab:orange"),
             ("kv_cache_bytes", "KV cache", "tab:green"),
             ("activation_buffer_bytes", "activations", "tab:purple"),
             ("communication_bytes", "comm buffers", "tab:gray")]
    bottom = [0.0] * len(ns)
    xr = range(len(ns))
    for key, label, color in parts:
        vals = [r[key] / GIB for r in ranks]
        ax2.bar(xr, vals, bottom=bottom, color=color, label=label)
        bottom = [b + v for b, v in zip(bottom, vals)]
    gpu = plan["options"]["gpu_mem_gib"]
    ax2.axhline(gpu, color="k", ls="--", lw=0.8, label=f"GPU memory {gpu:g} GiB")
    ax2.set_xticks(list(xr))
    ax2.set_xticklabels([str(n) for n in ns])
    ax2.set_xlabel("ranks N (contiguous placement; largest rank)")
    ax2.set_ylabel("GiB per rank")
    o = plan["options"]
    ax2.set_title(f"per-rank memory, {weights} weights, batch {o['batch']} x context {o['context']}")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
