#!/usr/bin/python3
"""Plots the cost model's Qwen3-30B-A3B projections (bench_cost_projections --json) with the
model's validation error beside them: prefill and decode tokens/s vs GPUs per placement strategy
and routing, and the workstation comparison. Reads OUT/cost_validation.json when present.
Usage: /usr/bin/python3 bench/plot_projections.py bench/results/cost_projections.json OUT_DIR"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src, out):
    d = json.load(open(src))
    val_path = os.path.join(out, "cost_validation.json")
    note = "validation on this machine: not run"
    if os.path.exists(val_path):
        v = json.load(open(val_path))
        note = (f"validation on this machine: MAE {100 * v['mean_abs_error']:.0f}%, "
                f"worst {100 * v['worst_error']:+.0f}%")
    anchors = d.get("anchors", [])
    if anchors:
        within = sum(1 for a in anchors if abs(a["error"]) <= 0.30)
        note += f"; published anchors within 30%: {within}/{len(anchors)}"
    proj = d["projections"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    styles = {"contiguous": "o-", "round_robin": "s--", "load_balanced": "^-", "replicated": "d-"}
    for routing, color in (("uniform", "tab:blue"), ("zipf1.2", "tab:red")):
        for strat in styles:
            pts = [p for p in proj if p["routing"] == routing and p["placement"].startswith(strat)]
            if not pts:
                continue
            gpus = [p["gpus"] for p in pts]
            label = f"{routing} {strat}"
            axes[0].plot(gpus, [p["prefill_tokens_per_s"] for p in pts], styles[strat],
                         color=color, label=label, ms=4)
            axes[1].plot(gpus, [p["decode_tokens_per_s"] for p in pts], styles[strat],
                         color=color, label=label, ms=4)
            axes[2].plot(gpus, [1e3 * p["decode_batch1_step_s"] for p in pts], styles[strat],
                         color=color, label=label, ms=4)
    titles = ["prefill tokens/s (4 x 2048 tokens per GPU)",
              "decode tokens/s (128 sequences per GPU)",
              "decode step ms, 1 sequence per GPU (latency-bound)"]
    for ax, t in zip(axes, titles):
        ax.set_xscale("log", base=2)
        ax.set_xticks([8, 16, 32, 64, 128, 256])
        ax.set_xticklabels(["8", "16", "32", "64", "128", "256"])
        ax.set_xlabel("H100 GPUs (8 per node, NVLink + 400 Gb/s IB)")
        ax.set_title(t, fontsize=10)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Qwen3-30B-A3B projected by the cost model (moe-ep predict) — {note}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "cost_projections.png"), dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
