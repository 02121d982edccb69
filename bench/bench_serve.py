#!/usr/bin/env python3
"""Load generator for `moe-ep serve`: Poisson arrivals at given rates, streaming completions.

Prompt and output lengths are lognormal. Their means are the ShareGPT figures of the vLLM paper
(Kwon et al., "Efficient Memory Management for Large Language Model Serving with PagedAttention",
SOSP 2023, section 6.1: 161.31 input and 337.99 output tokens on average); the paper gives no
spread, so sigma is a stated choice (--sigma, default 1.0: median = mean / e^0.5). --scale
shrinks both means (the tiny test model serves in milliseconds; what is measured is the
scheduler). Prompts are sent as token ids (/v1/completions accepts them), so their lengths are
exact; outputs may end early at an end-of-sequence token (the reported tokens are the server's
usage).

Reports per (schedule, offered rate): requests/s and output tokens/s achieved, time to first
token (TTFT) and time per output token after the first (TPOT) p50/p90/p99, and errors; writes a
Markdown table, JSON and a PNG of latency against offered load.

  bench_serve.py --moe-ep build/release/launch/moe-ep --serve-args "--model M --tokenizer T" \\
      --schedules continuous,static --rates 2,4,8 --num-requests 200 --out bench/results/serve
  bench_serve.py --url http://127.0.0.1:8000 --rates 20 --num-requests 10000 --soak-pid PID
starts one `moe-ep serve` per schedule and runs each rate on them in turn (or uses a running
server with --url); --soak-pid
samples the server's resident memory and open descriptors every --soak-every requests.
"""

import argparse
import http.client
import json
import math
import os
import random
import re
import signal
import subprocess
import tempfile
import threading
import time

SHAREGPT_MEAN_IN, SHAREGPT_MEAN_OUT = 161.31, 337.99  # vLLM paper, section 6.1


def lognormal_lengths(rng, n, mean, sigma, lo, hi):
    mu = math.log(mean) - sigma * sigma / 2  # a lognormal's mean is exp(mu + sigma^2 / 2)
    return [max(lo, min(hi, int(round(rng.lognormvariate(mu, sigma))))) for _ in range(n)]


def one_request(host, port, prompt, max_tokens, result):
    """One streaming /v1/completions request; fills `result` (times relative to its start)."""
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                       "stream": True})
    t0 = time.perf_counter()
    try:
        conn = http.client.HTTPConnection(host, port, timeout=300)
        conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            result["error"] = f"HTTP {resp.status}"
            resp.read()
            return
        first = None
        for raw in resp:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                result["error"] = f"stream error {chunk['error'].get('code')}"
                return
            if first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                first = time.perf_counter()
            if chunk.get("usage"):
                result["tokens"] = chunk["usage"]["completion_tokens"]
        end = time.perf_counter()
        result["ttft"] = (first or end) - t0
        n = result.get("tokens", 0)
        result["tpot"] = (end - (first or end)) / (n - 1) if n > 1 else None
        result["e2e"] = end - t0
    except Exception as e:  # a failed connection is an error of the run, not of the script
        result["error"] = type(e).__name__
    finally:
        result["done"] = time.perf_counter()


def proc_sample(pid):
    rss_kb = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
    return {"rss_mb": rss_kb / 1024, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def run_load(host, port, rate, args, seed, soak_pid=None):
    rng = random.Random(seed)
    n = args.num_requests
    ins = lognormal_lengths(rng, n, SHAREGPT_MEAN_IN * args.scale, args.sigma, 1, args.max_in)
    outs = lognormal_lengths(rng, n, SHAREGPT_MEAN_OUT * args.scale, args.sigma, 1, args.max_out)
    results, threads, samples = [{} for _ in range(n)], [], []
    start = time.perf_counter()
    at = 0.0
    for i in range(n):
        at += rng.expovariate(rate)
        delay = start + at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        prompt = [rng.randrange(100, 4000) for _ in range(ins[i])]
        t = threading.Thread(target=one_request, args=(host, port, prompt, outs[i], results[i]))
        t.start()
        threads.append(t)
        if soak_pid and (i + 1) % args.soak_every == 0:
            samples.append({"requests": i + 1, **proc_sample(soak_pid)})
            print(f"  {i + 1} requests: {samples[-1]}", flush=True)
        threads = [t for t in threads if t.is_alive()]
    for t in threads:
        t.join(600)
    wall = max(r.get("done", start) for r in results) - start
    return summarize(rate, results, wall, ins, samples)


def pct(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(math.ceil(p / 100 * len(v))) - 1)]


def summarize(rate, results, wall, ins, samples):
    ok = [r for r in results if "error" not in r and "e2e" in r]
    errors = {}
    for r in results:
        if "error" in r:
            errors[r["error"]] = errors.get(r["error"], 0) + 1
    ttft = [r["ttft"] for r in ok]
    tpot = [r["tpot"] for r in ok if r.get("tpot") is not None]
    out = {"offered_rps": rate, "requests": len(results), "ok": len(ok), "errors": errors,
           "wall_s": wall, "achieved_rps": len(ok) / wall,
           "output_tok_s": sum(r.get("tokens", 0) for r in ok) / wall,
           "mean_prompt_tokens": sum(ins) / len(ins),
           "mean_output_tokens": sum(r.get("tokens", 0) for r in ok) / max(1, len(ok))}
    for name, vals in (("ttft", ttft), ("tpot", tpot)):
        for p in (50, 90, 99):
            out[f"{name}_p{p}_ms"] = pct(vals, p) * 1000
    if samples:
        out["soak"] = samples
    return out


class Server:
    """`moe-ep serve --port 0` started for one schedule; its port read from its log line."""

    def __init__(self, exe, serve_args, schedule, log):
        cmd = [exe, "serve", "--port", "0", "--schedule", schedule] + serve_args.split()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
        self.port, until = 0, time.time() + 60
        while not self.port and time.time() < until and self.proc.poll() is None:
            m = re.search(r"serving .* on http://127\.0\.0\.1:(\d+)", open(log).read())
            self.port = int(m.group(1)) if m else 0
            time.sleep(0.05)
        if not self.port:
            self.proc.kill()
            raise SystemExit(f"serve did not start:\n{open(log).read()}")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)


def table(rows):
    head = ("| schedule | offered req/s | achieved req/s | output tok/s | TTFT p50 / p90 / p99 ms "
            "| TPOT p50 / p90 / p99 ms | errors |\n|---|---|---|---|---|---|---|\n")
    return head + "".join(
        f"| {r['schedule']} | {r['offered_rps']:g} | {r['achieved_rps']:.2f} | "
        f"{r['output_tok_s']:.0f} | {r['ttft_p50_ms']:.1f} / {r['ttft_p90_ms']:.1f} / "
        f"{r['ttft_p99_ms']:.1f} | {r['tpot_p50_ms']:.2f} / {r['tpot_p90_ms']:.2f} / "
        f"{r['tpot_p99_ms']:.2f} | {sum(r['errors'].values())} |\n" for r in rows)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for i, sched in enumerate(sorted({r["schedule"] for r in rows})):
        rs = sorted((r for r in rows if r["schedule"] == sched), key=lambda r: r["offered_rps"])
        x = [r["offered_rps"] for r in rs]
        for ax, name in zip(axes, ("ttft", "tpot")):
            ax.plot(x, [r[f"{name}_p50_ms"] for r in rs], "o-", color=f"C{i}", label=f"{sched} p50")
            ax.plot(x, [r[f"{name}_p99_ms"] for r in rs], "s--", color=f"C{i}",
                    label=f"{sched} p99")
    for ax, title in zip(axes, ("time to first token", "time per output token")):
        ax.set_xlabel("offered load (requests/s)")
        ax.set_ylabel("ms")
        ax.set_yscale("log")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", help="a running server (one schedule, named by --label)")
    ap.add_argument("--label", default="server")
    ap.add_argument("--moe-ep", help="start `moe-ep serve` per schedule instead of --url")
    ap.add_argument("--serve-args", default="")
    ap.add_argument("--schedules", default="continuous,static")
    ap.add_argument("--rates", default="2,4,8", help="offered loads, requests/s")
    ap.add_argument("--num-requests", type=int, default=200)
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies both mean lengths")
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--max-in", type=int, default=1024)
    ap.add_argument("--max-out", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--soak-pid", type=int, help="sample this process's RSS and open fds")
    ap.add_argument("--soak-every", type=int, default=500)
    ap.add_argument("--out", help="prefix of the .md, .json and .png written")
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    rows = []
    if args.url:
        m = re.match(r"http://([^:/]+):(\d+)", args.url)
        for k, rate in enumerate(rates):
            rows.append({"schedule": args.label,
                         **run_load(m.group(1), int(m.group(2)), rate, args, args.seed + k,
                                    args.soak_pid)})
            print(table(rows[-1:]), flush=True)
    else:  # every schedule's server up at once, so each rate runs them side by side
        servers = {}
        try:
            for sched in args.schedules.split(","):
                log = os.path.join(tempfile.gettempdir(), f"bench_serve_{sched}.log")
                servers[sched] = Server(args.moe_ep, args.serve_args, sched, log)
            for k, rate in enumerate(rates):  # the same arrivals and lengths per schedule
                for sched, server in servers.items():
                    rows.append({"schedule": sched,
                                 **run_load("127.0.0.1", server.port, rate, args, args.seed + k)})
                    print(table(rows[-1:]), flush=True)
        finally:
            for server in servers.values():
                server.stop()
    print(table(rows))
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out + ".json", "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)
        with open(args.out + ".md", "w") as f:
            f.write(table(rows))
        if len(rates) > 1:
            plot(rows, args.out + ".png")


if __name__ == "__main__":
    main()
