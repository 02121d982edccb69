#!/usr/bin/python3
"""Scaling tables and plots from `moe-ep experiment` run-mode folders (bench/run_scaling.sh).

Reads SRC/scaling_*/runs/*.json (one `moe-ep run --json` per cell), writes OUT/scaling.md and
OUT/scaling.json (prefill, decode, whole-run time per cell; strong-scaling speedup and efficiency
against N = 1 of the same series; weak-scaling efficiency T(1) / T(N)), and PNGs:
OUT/scaling_speedup.png (speedup and efficiency vs N) and OUT/scaling_phases.png (time per phase,
slowest rank, stacked, per series and N).
Usage: /usr/bin/python3 bench/plot_scaling.py SRC OUT"""
import glob
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PHASES = ["embed", "attention", "router", "layout", "dispatch", "expert", "combine", "dense_mlp",
          "lm_head"]


def load(src):
    cells = []
    for exp_dir in sorted(glob.glob(os.path.join(src, "scaling_*"))):
        exp = os.path.basename(exp_dir)
        for path in sorted(glob.glob(os.path.join(exp_dir, "runs", "*.json"))):
            r = json.load(open(path))
            stem = os.path.basename(path)[:-5]
            workload, rest = stem.split("_", 1) if "_" in stem else (stem, "")
            placement = rest.split("r_", 1)[1] if "r_" in rest else rest
            weak = exp.startswith("scaling_weak")
            series = ("weak" if weak else exp.replace("scaling_", "")) + f" {workload} {placement}"
            phases = {k: v["max_s"] for k, v in r["metrics"]["phases"].items() if k in PHASES}
            cells.append({"experiment": exp, "series": series, "ranks": r["ranks"],
                          "weak": weak, "prefill_s": r["prefill_s"], "decode_s": r["decode_s"],
                          "total_s": r["prefill_s"] + r["decode_s"], "phases": phases,
                          "prefill_tokens_per_s": r["prefill_tokens_per_s"],
                          "decode_tokens_per_s": r["decode_tokens_per_s"]})
    return cells


def main(src, out):
    cells = load(src)
    if not cells:
        sys.exit("plot_scaling.py: no runs under " + src)
    series = sorted({c["series"] for c in cells})
    base = {}
    for c in cells:
        if c["ranks"] == 1:
            base[c["series"]] = c
    lines = ["| series | N | prefill s | decode s | prefill+decode s | prefill speedup | "
             "whole-run speedup | efficiency |", "|---|---|---|---|---|---|---|---|"]
    for s in series:
        for c in sorted((c for c in cells if c["series"] == s), key=lambda c: c["ranks"]):
            b = base.get(s)
            if b:
                if c["weak"]:
                    c["efficiency"] = b["total_s"] / c["total_s"]
                    c["prefill_speedup"] = c["ranks"] * b["prefill_s"] / c["prefill_s"]
                    c["speedup"] = c["ranks"] * b["total_s"] / c["total_s"]
                else:
                    c["prefill_speedup"] = b["prefill_s"] / c["prefill_s"]
                    c["speedup"] = b["total_s"] / c["total_s"]
                    c["efficiency"] = c["speedup"] / c["ranks"]
            lines.append(f"| {s} | {c['ranks']} | {c['prefill_s']:.3f} | {c['decode_s']:.3f} | "
                         f"{c['total_s']:.3f} | {c.get('prefill_speedup', 0):.2f}x | "
                         f"{c.get('speedup', 0):.2f}x | {100 * c.get('efficiency', 0):.0f}% |")
    lines.append("")
    lines.append("Strong scaling: speedup = T(1) / T(N) of the same series, efficiency = speedup / N. "
                 "Weak scaling (fixed tokens per rank): speedup = N x T(1) / T(N) in throughput, "
                 "efficiency = T(1) / T(N). This machine has 2 cores: N = 4 time-shares them.")
    text = "\n".join(lines)
    print(text)
    os.makedirs(out, exist_ok=True)
    open(os.path.join(out, "scaling.md"), "w").write(text + "\n")
    json.dump(cells, open(os.path.join(out, "scaling.json"), "w"), indent=1)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for s in series:
        pts = sorted((c for c in cells if c["series"] == s and "speedup" in c),
                     key=lambda c: c["ranks"])
        if len(pts) < 2:
            continue
        ns = [c["ranks"] for c in pts]
        a1.plot(ns, [c["speedup"] for c in pts], "o-", label=s)
        a2.plot(ns, [100 * c["efficiency"] for c in pts], "o-", label=s)
    a1.plot([1, 4], [1, 4], "k:", lw=0.8, label="ideal")
    a1.axvline(2, color="gray", lw=0.5)
    a1.set_xlabel("ranks N (2 cores: N = 4 time-shares)")
    a1.set_ylabel("speedup (prefill + decode)")
    a1.set_title("speedup vs N")
    a1.legend(fontsize=7)
    a2.set_xlabel("ranks N")
    a2.set_ylabel("efficiency %")
    a2.set_title("parallel efficiency vs N")
    for a in (a1, a2):
        a.set_xticks([1, 2, 4])
    fig.tight_layout()
    fig.savefig(os.path.join(out, "scaling_speedup.png"), dpi=110)

    bars = [c for s in series for c in sorted((c for c in cells if c["series"] == s),
                                                key=lambda c: c["ranks"])]
    fig, ax = plt.subplots(figsize=(max(8, 0.55 * len(bars)), 5))
    bottom = [0.0] * len(bars)
    for p in PHASES:
        vals = [c["phases"].get(p, 0.0) for c in bars]
        if not any(vals):
            continue
        ax.bar(range(len(bars)), vals, bottom=bottom, label=p)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_xticks(range(len(bars)))
    ax.set_xticklabels([f"{c['series']}\nN={c['ranks']}" for c in bars], rotation=70, fontsize=6)
    ax.set_ylabel("seconds, slowest rank per phase (whole run)")
    ax.set_title("time per phase")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "scaling_phases.png"), dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else sys.argv[1])
