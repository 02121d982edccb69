#!/usr/bin/env python3
# Encode speed of the C++ tokenizer against the `tokenizers` package, single-threaded, on the
# same multi-language documents in the same run: writes the documents, runs bench_tokenizer
# (C++), times tokenizers' encode on each document, checks both gave the same ids (checksum).
"""Tokenizer encode speed, moe-ep vs tokenizers (one core each, same documents, same run).

    python3 -m pip install tokenizers
    python3 bench/bench_tokenizer.py [--bench-bin build/release/bench/bench_tokenizer]
        [--tokenizer tests/fixtures/tokenizer/qwen3_string_merges/tokenizer.json | --train-vocab N]
        [--mb 4] [--out bench/results/tokenizer.json]
"""

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time

os.environ["TOKENIZERS_PARALLELISM"] = "false"  # before tokenizers is imported
os.environ["RAYON_NUM_THREADS"] = "1"
import tokenizers  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EN = ("the of and to in is that for it as was with be by on not this are or from at which have an "
      "they you were her there been one all we their has would when if can more model expert token "
      "parallel tensor router layer weight memory kernel cache language attention decode").split()
RU = ("и в не на я быть он с что а по это она этот к но они мы как из у который то за свой весь "
      "год от так о для ты же все тот мочь вы человек такой модель эксперт слой память").split()
SYL = ["ka", "lo", "mi", "ser", "tan", "vo", "pre", "ing", "tion", "ex", "ra", "qu", "st", "an"]
RSYL = ["ка", "ло", "ми", "ст", "ра", "ние", "ов", "пре", "ть", "ен", "во", "за"]
CODE = ["def f(x):\n    return x * 2\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}\n",
        "if err != nil {\n\treturn err\n}\n", "SELECT id FROM t WHERE x >= 18;\n",
        "const y = {a: 1, 'b': [2, 3]}; // note\n"]
EMOJI = ["\U0001F600", "\U0001F680", "\U0001F44D\U0001F3FD", "\u2764\ufe0f", "\U0001F914"]


def word(rng, words, syllables):
    # common words plus a long tail of made-up ones, so the word cache does not see everything
    if rng.random() < 0.7:
        return rng.choice(words)
    return "".join(rng.choice(syllables) for _ in range(rng.randint(2, 4)))


def paragraph(rng):
    k = rng.randrange(10)
    if k < 4:
        s = " ".join(word(rng, EN, SYL) for _ in range(rng.randint(8, 40)))
        return s.capitalize() + ". "
    if k < 6:
        return " ".join(word(rng, RU, RSYL) for _ in range(rng.randint(8, 30))) + ". "
    if k < 8:
        return "".join(chr(rng.randint(0x4E00, 0x62FF)) for _ in range(rng.randint(10, 60))) + "。"
    if k == 8:
        return rng.choice(CODE) + "    " * rng.randint(0, 3)
    return (" ".join(str(rng.randint(0, 10 ** rng.randint(1, 9))) for _ in range(rng.randint(2, 8)))
            + " " + rng.choice(EMOJI) + "\n\n")


def make_docs(num_bytes, seed=2026):
    rng = random.Random(seed)
    docs, total = [], 0
    while total < num_bytes:
        d = "".join(paragraph(rng) for _ in range(rng.randint(3, 12)))
        docs.append(d)
        total += len(d.encode())
    return docs


def checksum(all_ids):
    return sum(sum((i + 1) * t for i, t in enumerate(ids)) for ids in all_ids) % (1 << 64)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bench-bin", default=os.path.join(ROOT, "build/release/bench/bench_tokenizer"))
    ap.add_argument("--tokenizer",
                    default=os.path.join(ROOT, "tests/fixtures/tokenizer/qwen3_string_merges/tokenizer.json"))
    ap.add_argument("--train-vocab", type=int, default=0,
                    help="instead of --tokenizer, train a Qwen3-layout BPE of this many tokens on the documents")
    ap.add_argument("--mb", type=float, default=4.0, help="megabytes of documents")
    ap.add_argument("--repeat", type=int, default=5, help="passes; best reported")
    ap.add_argument("--cpu", type=int, default=0, help="core both runs are pinned to")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/tokenizer.json"))
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="bench_tokenizer_")  # documents (MBs) stay out of the repo
    os.sched_setaffinity(0, {args.cpu})  # this process and the C++ child: one core
    docs = make_docs(int(args.mb * 1e6))
    docs_path = os.path.join(work, "docs.jsonl")
    with open(docs_path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
    num_bytes = sum(len(d.encode()) for d in docs)
    if args.train_vocab:
        sys.path.insert(0, os.path.join(ROOT, "tests/fixtures"))
        from make_tokenizer_fixtures import build_tokenizer  # the fixtures' Qwen3 layout
        args.tokenizer = os.path.join(work, "tokenizer.json")
        build_tokenizer(docs, args.train_vocab, []).save(args.tokenizer)

    cpp_json = os.path.join(work, "moe_ep.json")
    subprocess.run([args.bench_bin, "--tokenizer", args.tokenizer, "--docs", docs_path,
                    "--repeat", str(args.repeat), "--json", cpp_json], check=True)
    with open(cpp_json) as f:
        cpp = json.load(f)

    tok = tokenizers.Tokenizer.from_file(args.tokenizer)
    passes = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        all_ids = [tok.encode(d).ids for d in docs]
        passes.append(time.perf_counter() - t0)
    ref_best = min(passes)
    ref_tokens = sum(len(ids) for ids in all_ids)
    ref_sum = checksum(all_ids)

    same = ref_sum == cpp["checksum"] and ref_tokens == cpp["tokens"]
    ratio = ref_best / cpp["best_s"]
    print(f"{'impl':>12} {'docs':>6} {'bytes':>10} {'tokens':>10} {'best_s':>9} {'MB/s':>8}")
    print(f"{'moe-ep':>12} {len(docs):>6} {num_bytes:>10} {cpp['tokens']:>10} {cpp['best_s']:>9.4f} "
          f"{num_bytes / cpp['best_s'] / 1e6:>8.2f}")
    print(f"{'tokenizers':>12} {len(docs):>6} {num_bytes:>10} {ref_tokens:>10} {ref_best:>9.4f} "
          f"{num_bytes / ref_best / 1e6:>8.2f}")
    print(f"speed ratio moe-ep / tokenizers: {ratio:.2f}x   ids identical: {'yes' if same else 'NO'}")
    result = {"bytes": num_bytes, "docs": len(docs), "tokenizer": (f"trained, {args.train_vocab} tokens" if args.train_vocab
                                                        else os.path.relpath(args.tokenizer, ROOT)),
              "moe_ep": cpp, "tokenizers": {"version": tokenizers.__version__, "best_s": ref_best,
                                            "passes_s": passes, "tokens": ref_tokens, "checksum": ref_sum},
              "ratio": ratio, "ids_identical": same, "machine": platform.processor() or platform.machine(),
              "python": sys.version.split()[0]}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    shutil.rmtree(work)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
