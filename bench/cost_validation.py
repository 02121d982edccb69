#!/usr/bin/python3
"""Per-point error of `moe-ep predict` against `moe-ep run` (bench/validate_cost_model.sh).

Reads DIR/<point>_n<N>_{run,predict}.json (and _run2.json: the faster run counts), prints a
markdown table (prefill and mean decode step, measured vs predicted, error = predicted / measured
- 1), the mean absolute error and the worst point; then per point the run's phase totals (slowest
rank, prefill and decode together, of the faster run) next to predict's phases_run_total_s, and
the inter-node bytes a run counted next to predict's (where the run has nodes); writes
OUT/cost_validation.{json,md,png}."""
import glob
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


PHASES = ("attention", "router", "layout", "dispatch", "expert", "combine", "lm_head")


def main(src, out):
    rows = []
    pairs = {}  # point -> (faster run, prediction)
    for run_path in sorted(glob.glob(os.path.join(src, "*_run.json"))):
        pred_path = run_path.replace("_run.json", "_predict.json")
        if not os.path.exists(pred_path):
            continue
        run, pred = json.load(open(run_path)), json.load(open(pred_path))
        point = os.path.basename(run_path)[: -len("_run.json")]
        runs = [run]
        second = run_path.replace("_run.json", "_run2.json")
        if os.path.exists(second):
            runs.append(json.load(open(second)))
        # The faster of the runs, per step kind.
        measured = {"prefill": min(r["prefill_s"] for r in runs),
                    "decode step": min(sum(r["decode_step_s"]) / len(r["decode_step_s"])
                                       if r["decode_step_s"] else 0.0 for r in runs)}
        predicted = {"prefill": pred["prefill_s"], "decode step": pred["decode_step_s"]}
        pairs[point] = (min(runs, key=lambda r: r["prefill_s"] + sum(r["decode_step_s"])), pred)
        for what in ("prefill", "decode step"):
            if measured[what] <= 0:
                continue
            rows.append({"point": point, "ranks": run["ranks"], "what": what,
                         "measured_s": measured[what], "predicted_s": predicted[what],
                         "error": predicted[what] / measured[what] - 1})
    if not rows:
        sys.exit("cost_validation.py: no run/predict pairs in " + src)
    mae = sum(abs(r["error"]) for r in rows) / len(rows)
    worst = max(rows, key=lambda r: abs(r["error"]))
    lines = ["| point | ranks | step | measured s | predicted s | error |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['point']} | {r['ranks']} | {r['what']} | {r['measured_s']:.4f} | "
                     f"{r['predicted_s']:.4f} | {100 * r['error']:+.1f}% |")
    lines.append("")
    lines.append(f"mean absolute error {100 * mae:.1f}% over {len(rows)} points; worst "
                 f"{100 * worst['error']:+.1f}% ({worst['point']}, {worst['what']})")
    lines += ["", "Phases, whole run (s, slowest rank; measured / predicted):", "",
              "| point | " + " | ".join(PHASES) + " |", "|---|" + "---|" * len(PHASES)]
    bytes_lines = []
    for point, (run, pred) in sorted(pairs.items()):
        measured = run["metrics"]["phases"]
        cells = [f"{measured[ph]['max_s']:.3f} / {pred['phases_run_total_s'][ph]:.3f}"
                 for ph in PHASES]
        lines.append(f"| {point} | " + " | ".join(cells) + " |")
        traffic = run["metrics"]["traffic"]
        # One node: nothing crosses, nothing to compare.
        if "bytes_sent_inter_node" in traffic and "inter_node_bytes" in pred["prefill"] and (
                traffic["bytes_sent_inter_node"] > 0 or pred["prefill"]["inter_node_bytes"] > 0):
            predicted = (pred["prefill"]["inter_node_bytes"] +
                         pred["timed_decode_steps"] * pred["decode_step"]["inter_node_bytes"])
            bytes_lines.append(f"| {point} | {pred.get('exchange', '?')} | "
                               f"{traffic['bytes_sent_inter_node']:,} | {predicted:,.0f} | "
                               f"{predicted / max(1, traffic['bytes_sent_inter_node']) - 1:+.1%} |")
    if bytes_lines:
        lines += ["", "Inter-node bytes, whole run (all ranks):", "",
                  "| point | exchange | measured | predicted | error |", "|---|---|---|---|---|"]
        lines += bytes_lines
    text = "\n".join(lines)
    print(text)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "cost_validation.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(out, "cost_validation.json"), "w") as f:
        json.dump({"points": rows, "mean_abs_error": mae, "worst_error": worst["error"],
                   "worst_point": f"{worst['point']} {worst['what']}"}, f, indent=1)
    fig, ax = plt.subplots(figsize=(6, 5))
    for what, marker in (("prefill", "o"), ("decode step", "s")):
        for n, color in ((1, "tab:blue"), (2, "tab:orange"), (4, "tab:green")):
            pts = [r for r in rows if r["what"] == what and r["ranks"] == n]
            ax.scatter([r["measured_s"] for r in pts], [r["predicted_s"] for r in pts],
                       marker=marker, color=color, label=f"{what}, N={n}")
    lo = min(min(r["measured_s"], r["predicted_s"]) for r in rows) * 0.7
    hi = max(max(r["measured_s"], r["predicted_s"]) for r in rows) * 1.4
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    ax.plot([lo, hi], [lo * 1.2, hi * 1.2], "k:", lw=0.6)
    ax.plot([lo, hi], [lo / 1.2, hi / 1.2], "k:", lw=0.6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured (moe-ep run), s")
    ax.set_ylabel("predicted (moe-ep predict), s")
    ax.set_title(f"cost model on this machine: MAE {100 * mae:.1f}%, worst {100 * worst['error']:+.0f}%")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "cost_validation.png"), dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else sys.argv[1])
