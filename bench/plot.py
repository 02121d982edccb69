#!/usr/bin/python3
"""Turns bench/results/*.json into PNGs: time per phase of `moe-ep run` for 1 and 2 ranks, and
dispatch+combine vs raw MPI_Alltoallv. Usage: /usr/bin/python3 bench/plot.py [results dir]"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "results")


def load(name):
    path = os.path.join(out, name)
    return json.load(open(path)) if os.path.exists(path) else None


runs = [r for r in (load("mid_1rank.json"), load("mid_2rank.json")) if r]
if runs:
    phases = ["attention", "router", "layout", "dispatch", "expert", "combine", "lm_head"]
    fig, ax = plt.subplots(figsize=(7, 4))
    bottom = [0.0] * len(runs)
    for p in phases:
        vals = [r["metrics"]["phases"][p]["max_s"] for r in runs]
        ax.bar([f"{r['ranks']} rank(s)" for r in runs], vals, bottom=bottom, label=p)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylabel("seconds (max over ranks), prefill + decode")
    ax.set_title("moe-ep run, mid model, time per phase")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "phases.png"), dpi=120)

disp = [d for d in (load("dispatch_2rank.json"), load("dispatch_4rank.json")) if d]
if disp:
    # One bar pair per (ranks, case): dispatch+combine next to the raw exchange of the same bytes.
    labels, ours, raw = [], [], []
    for d in disp:
        for c in d["cases"]:
            labels.append(f"N{d['ranks']} T{c['tokens_per_rank']}\nH{c['hidden']} k{c['top_k']}")
            ours.append(c["time_us"])
            raw.append(c["raw_us"])
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(labels)), 4))
    w = 0.4
    idx = range(len(labels))
    ax.bar([i - w / 2 for i in idx], ours, w, label="dispatch+combine")
    ax.bar([i + w / 2 for i in idx], raw, w, label="raw MPI_Alltoallv")
    ax.set_xticks(list(idx), labels, fontsize=6)
    ax.set_ylabel("microseconds per layer exchange")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "dispatch.png"), dpi=120)
print("plots written to", out)
