#!/usr/bin/env python3
"""Plots of a `moe-ep experiment` results.json (run with an interpreter that has matplotlib,
e.g. Debian's /usr/bin/python3 with python3-matplotlib):

  per_rank_load.png       (token, expert) pairs per rank, one panel per placement, for each
                          workload at the smallest rank count (held-out sample / the run)
  balancedness_vs_skew.png  balancedness against the zipf exponent (uniform = 0), a line per
                          placement, one panel per rank count
  cross_rank_bytes.png    bytes sent across ranks per placement, grouped by workload, one panel
                          per rank count

Usage: plot_experiment.py RESULTS.json OUT_DIR
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(results_path, out_dir):
    with open(results_path) as f:
        res = json.load(f)
    cells = res["cells"]
    if not cells:
        print("no cells to plot")
        return
    placements = list(dict.fromkeys(c["placement"] for c in cells))
    workloads = list(dict.fromkeys(c["workload"] for c in cells))
    ranks = sorted({c["ranks"] for c in cells})
    title = f'{res["name"]} ({res["mode"]})'
    written = []

    def save(fig, suptitle, name):
        fig.suptitle(suptitle, fontsize=9)
        fig.tight_layout()
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    # Per-rank load: smallest rank count, a row per workload, a column per placement.
    n = ranks[0]
    fig, axes = plt.subplots(len(workloads), len(placements), squeeze=False,
                             figsize=(2.6 * len(placements), 1.9 * len(workloads)))
    for i, w in enumerate(workloads):
        for j, p in enumerate(placements):
            ax = axes[i][j]
            cell = next((c for c in cells
                         if c["workload"] == w and c["placement"] == p and c["ranks"] == n), None)
            if cell is None:
                ax.axis("off")
                continue
            loads = cell["measured"]["pairs_per_rank"]
            ax.bar(range(len(loads)), loads, color="tab:blue")
            if loads:
                mean = sum(loads) / len(loads)
                ax.axhline(mean, color="tab:red", linewidth=0.8)
            ax.set_title(f"{p}\n{w}: bal {cell['measured']['mean_balancedness']:.3f}", fontsize=7)
            ax.tick_params(labelsize=6)
    save(fig, f"{title}: pairs per rank at {n} ranks (red: mean)", "per_rank_load.png")

    # Balancedness vs skew: zipf workloads at their exponent, uniform at 0 (drift and the others
    # are left out: their exponent is not the skew of one sample).
    def skew_of(c):
        if c["routing"].startswith("zipf(") and c.get("skew") is not None:
            return c["skew"]
        return 0.0 if c["routing"].startswith("uniform(") else None

    skewed = [dict(c, skew=skew_of(c)) for c in cells if skew_of(c) is not None]
    if skewed:
        fig, axes = plt.subplots(1, len(ranks), squeeze=False, figsize=(3.6 * len(ranks), 3.2))
        for k, r in enumerate(ranks):
            ax = axes[0][k]
            for p in placements:
                pts = sorted((c["skew"], c["measured"]["mean_balancedness"]) for c in skewed
                             if c["placement"] == p and c["ranks"] == r)
                if pts:
                    ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=p)
            ax.set_title(f"{r} ranks", fontsize=9)
            ax.set_xlabel("skew (zipf exponent)")
            ax.set_ylabel("balancedness (mean / max)")
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=6)
        save(fig, title, "balancedness_vs_skew.png")

    # Cross-rank bytes per placement, grouped by workload.
    fig, axes = plt.subplots(1, len(ranks), squeeze=False, figsize=(4.2 * len(ranks), 3.4))
    width = 0.8 / max(len(placements), 1)
    for k, r in enumerate(ranks):
        ax = axes[0][k]
        for j, p in enumerate(placements):
            ys = []
            for w in workloads:
                cell = next((c for c in cells if c["workload"] == w and c["placement"] == p
                             and c["ranks"] == r), None)
                ys.append(cell["measured"]["bytes_sent_remote"] / 1e9 if cell else 0)
            ax.bar([i + j * width for i in range(len(workloads))], ys, width, label=p)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(workloads))])
        ax.set_xticklabels(workloads, rotation=30, fontsize=7)
        ax.set_ylabel("GB across ranks")
        ax.set_title(f"{r} ranks", fontsize=9)
    axes[0][0].legend(fontsize=6)
    save(fig, f"{title}: cross-rank bytes (dispatch + combine)", "cross_rank_bytes.png")
    print("plots: " + ", ".join(written))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
