"""The openai package and curl against `moe-ep serve` (loopback, a port the server picks).

Usage: check_openai_client.py MOE_EP SOURCE_DIR WORK_DIR NRANKS [MPIRUN]

On the tiny chat model (the tiny model with a vocabulary covering the Qwen3-layout test
tokenizer): chat and completion answers, streaming and not, through the openai package and
through curl equal `moe-ep generate` (--chat for chat) for the same prompts on the same rank
count; 16 concurrent streams each equal their solo answer; SIGTERM to rank 0 ends the server with
exit 0. Every wait is bounded; exits non-zero on the first difference.
"""

import concurrent.futures
import json
import os
import re
import signal
import subprocess
import sys
import time

import openai

MAX_NEW = 12
CHAT_PROMPTS = ["Hello there", "What is 2 + 2?", "Écris un poème court."]
COMPLETION_PROMPTS = ["The quick brown fox", "def fib(n):", "東京は"]


def launcher(exe, nranks, mpirun):
    if nranks == 1:
        return [exe]
    return [mpirun, "--allow-run-as-root", "--oversubscribe", "--quiet", "-np", str(nranks),
            "-x", "OPENBLAS_NUM_THREADS=1", exe]


def model_flags(work, source):
    tiny = open(os.path.join(source, "configs/models/tiny.yaml")).read()
    path = os.path.join(work, "chat_model.yaml")
    with open(path, "w") as f:
        f.write(tiny.replace("vocab_size: 512", "vocab_size: 4224"))
    return ["--model", path, "--tokenizer",
            os.path.join(source, "tests/fixtures/tokenizer/qwen3_string_merges")]


def generate(cmd, flags, work, prompts, chat):
    """Each prompt alone through `moe-ep generate` (greedy)."""
    texts = []
    for i, p in enumerate(prompts):
        pfile, out = os.path.join(work, "prompt.txt"), os.path.join(work, f"gen{i}.json")
        with open(pfile, "w") as f:
            f.write(p + "\n")
        subprocess.run(cmd + ["generate", "--quiet"] + flags +
                       ["--prompts-file", pfile, "--max-new-tokens", str(MAX_NEW), "--json", out] +
                       (["--chat"] if chat else []), check=True, timeout=120,
                       stdout=subprocess.DEVNULL)
        texts.append(json.load(open(out))["texts"][0])
    return texts


class Server:
    def __init__(self, cmd, flags, work):
        self.err_path = os.path.join(work, "server.err")
        self.proc = subprocess.Popen(cmd + ["serve", "--port", "0"] + flags,
                                     stdout=subprocess.DEVNULL, stderr=open(self.err_path, "w"),
                                     start_new_session=True)
        self.port = 0
        until = time.time() + 60
        while time.time() < until and self.proc.poll() is None and not self.port:
            m = re.search(r"serving .* on http://127\.0\.0\.1:(\d+)", open(self.err_path).read())
            if m:
                self.port = int(m.group(1))
            time.sleep(0.05)
        if not self.port:
            self.kill()
            sys.exit(f"the server did not start:\n{open(self.err_path).read()}")
        self.url = f"http://127.0.0.1:{self.port}"

    def rank0_pid(self):
        """The process serving HTTP: the one started, or mpirun's child of rank 0."""
        for line in subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)],
                                   capture_output=True, text=True).stdout.split():
            try:
                env = open(f"/proc/{line}/environ", "rb").read()
            except OSError:
                continue
            if b"OMPI_COMM_WORLD_RANK=0\0" in env:
                return int(line)
        return self.proc.pid

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)


def expect_equal(what, got, want):
    if got != want:
        sys.exit(f"{what}: got {got!r}, want {want!r}")
    print(f"ok  {what}: {got!r}")


def curl(url, body):
    r = subprocess.run(["curl", "-sS", "--max-time", "60", "-N", url, "-H",
                        "Content-Type: application/json", "-d", json.dumps(body)],
                       capture_output=True, text=True, timeout=90)
    if r.returncode != 0:
        sys.exit(f"curl {url}: {r.stderr}")
    return r.stdout


def sse_text(raw, chat):
    """The text of an SSE answer; checks that it ends with data: [DONE]."""
    events = [e[len("data: "):] for e in raw.split("\n\n") if e.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        sys.exit(f"the stream does not end with data: [DONE]: {raw[-300:]!r}")
    text = ""
    for e in events[:-1]:
        c = json.loads(e)["choices"][0]
        text += (c["delta"].get("content") or "") if chat else c["text"]
    return text


def main():
    exe, source, work, nranks = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    mpirun = sys.argv[5] if len(sys.argv) > 5 else "mpirun"
    os.makedirs(work, exist_ok=True)
    cmd, flags = launcher(exe, nranks, mpirun), model_flags(work, source)
    want_chat = generate(cmd, flags, work, CHAT_PROMPTS, True)
    want_text = generate(cmd, flags, work, COMPLETION_PROMPTS, False)

    server = Server(cmd, flags, work)
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=60,
                               max_retries=0)
        expect_equal("/v1/models", [m.id for m in client.models.list().data], ["tiny"])
        for p, want in zip(CHAT_PROMPTS, want_chat):
            messages = [{"role": "user", "content": p}]
            r = client.chat.completions.create(model="tiny", messages=messages,
                                               max_tokens=MAX_NEW, temperature=0)
            expect_equal(f"openai chat {p!r}", r.choices[0].message.content, want)
            if r.usage.completion_tokens > MAX_NEW:
                sys.exit(f"usage: {r.usage}")
            s = client.chat.completions.create(model="tiny", messages=messages,
                                               max_tokens=MAX_NEW, temperature=0, stream=True)
            text = "".join(c.choices[0].delta.content or "" for c in s if c.choices)
            expect_equal(f"openai chat stream {p!r}", text, want)
            raw = curl(server.url + "/v1/chat/completions",
                       {"messages": messages, "max_tokens": MAX_NEW, "temperature": 0})
            expect_equal(f"curl chat {p!r}", json.loads(raw)["choices"][0]["message"]["content"],
                         want)
        for p, want in zip(COMPLETION_PROMPTS, want_text):
            r = client.completions.create(model="tiny", prompt=p, max_tokens=MAX_NEW,
                                          temperature=0)
            expect_equal(f"openai completion {p!r}", r.choices[0].text, want)
            s = client.completions.create(model="tiny", prompt=p, max_tokens=MAX_NEW,
                                          temperature=0, stream=True)
            expect_equal(f"openai completion stream {p!r}",
                         "".join(c.choices[0].text for c in s if c.choices), want)
            raw = curl(server.url + "/v1/completions",
                       {"prompt": p, "max_tokens": MAX_NEW, "temperature": 0, "stream": True})
            expect_equal(f"curl completion stream {p!r}", sse_text(raw, False), want)

        # 16 concurrent streams, each equal to its answer alone (different prompts and lengths,
        # so sequences join and leave the batch at different steps).
        jobs = [(p + " " * (i % 3), 4 + i % 9) for i, p in
                enumerate((CHAT_PROMPTS + COMPLETION_PROMPTS) * 3)][:16]

        def one(job):
            s = client.completions.create(model="tiny", prompt=job[0], max_tokens=job[1],
                                          temperature=0, stream=True)
            return "".join(c.choices[0].text for c in s if c.choices)

        alone = [one(j) for j in jobs]
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            together = list(pool.map(one, jobs, timeout=120))
        for i, (a, t) in enumerate(zip(alone, together)):
            expect_equal(f"concurrent stream {i} (max_tokens {jobs[i][1]})", t, a)

        os.kill(server.rank0_pid(), signal.SIGTERM)
        code = server.proc.wait(timeout=60)
        if code != 0:
            sys.exit(f"serve exited {code} after SIGTERM:\n{open(server.err_path).read()}")
        print(f"ok  SIGTERM: exit 0 on {nranks} rank(s)")
    finally:
        if server.proc.poll() is None:
            server.kill()


if __name__ == "__main__":
    main()
