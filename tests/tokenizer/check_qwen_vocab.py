#!/usr/bin/env python3
# The tokenizer on the real Qwen2/Qwen3 vocabulary, against the `tokenizers` library itself.
# qwen.tiktoken (151,643 byte-level BPE ranks, shipped in PyPI's dashscope wheel) becomes a
# tokenizer.json the way transformers' tiktoken converter builds Qwen2's (merges derived from the
# ranks), with Qwen3's normalizer, pre-tokenizer, decoder and added tokens; then
# `moe-ep tokenize` must give tokenizers' ids for the fixture texts and the Unicode cases, and
# `moe-ep detokenize` must drop ids above the tokenizer (Qwen3's embedding has 151,936 rows) as
# tokenizers does. Exits 77 (skipped) when tokenizers or qwen.tiktoken is not installed: .ci/run
# installs both into build/test-venv, the interpreter that runs this.
"""usage: check_qwen_vocab.py MOE_EP SOURCE_DIR WORK_DIR"""

import base64
import glob
import json
import os
import subprocess
import sys
import sysconfig

SKIP = 77


def find_tiktoken():
    paths = glob.glob(os.path.join(sysconfig.get_paths()["purelib"], "dashscope", "resources",
                                   "qwen.tiktoken"))
    return paths[0] if paths else None


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build_tokenizer(tiktoken_path, source_dir):
    """Qwen3's tokenizer from the ranks: vocab and merges as transformers' TikTokenConverter."""
    from tokenizers import AddedToken, models
    sys.path.insert(0, os.path.join(source_dir, "tests", "fixtures"))
    from make_tokenizer_fixtures import QWEN3_ADDED, qwen3_tokenizer
    ranks = {}
    with open(tiktoken_path, "rb") as f:
        for line in f:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    byte_char = bytes_to_unicode()
    to_str = lambda b: "".join(byte_char[x] for x in b)
    vocab = {to_str(t): r for t, r in ranks.items()}
    merges = []
    for token, rank in ranks.items():
        if len(token) == 1:
            continue
        local = []
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            if left in ranks and right in ranks:
                local.append((left, right, rank))
        local.sort(key=lambda m: (ranks[m[0]], ranks[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: m[2])
    model = models.BPE(vocab=vocab, merges=[(to_str(a), to_str(b)) for a, b, _ in merges],
                       fuse_unk=False, byte_fallback=False)
    tok = qwen3_tokenizer(model)
    for content, special in QWEN3_ADDED:
        t = AddedToken(content, single_word=False, lstrip=False, rstrip=False, normalized=False,
                       special=special)
        (tok.add_special_tokens if special else tok.add_tokens)([t])
    return tok


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd[:3])} ... exited {r.returncode}: {r.stderr.strip()}")
    return r.stdout


def main():
    moe_ep, source_dir, work = sys.argv[1:4]
    try:
        import tokenizers  # noqa: F401
    except ImportError:
        print("SKIP: the tokenizers package is not installed (.ci/run installs it)")
        return SKIP
    tiktoken = find_tiktoken()
    if tiktoken is None:
        print("SKIP: dashscope's qwen.tiktoken is not installed (.ci/run installs it)")
        return SKIP
    os.makedirs(work, exist_ok=True)
    tok = build_tokenizer(tiktoken, source_dir)
    tok.save(os.path.join(work, "tokenizer.json"))
    assert tok.get_vocab_size() == 151669, tok.get_vocab_size()

    texts = []
    with open(os.path.join(source_dir, "tests/fixtures/tokenizer/texts.jsonl"), encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if "bytes_hex" not in rec and not any(c in rec["text"] for c in "\r\n"):
                texts.append(rec["text"])
    # Marks that Unicode 9.0 does not know (tokenizers' NFC keeps them in place), marks it does,
    # and text that NFC composes.
    texts += ["\u1ac1\u0334", "a\u1ac1\u0334b", "x \u1ac1\u0334\u0301 y", "\u0334\u1ac1",
              "e\u0301\u0334", "cafe\u0301", "\u1e9b\u0323", "\U0001e944\u0334", "\u0d3b\u0d4d"]
    with open(os.path.join(work, "lines.txt"), "w", encoding="utf-8", newline="\n") as f:
        for t in texts:
            f.write(t + "\n")
    out = run([moe_ep, "tokenize", "--tokenizer", work, "--file", os.path.join(work, "lines.txt")])
    got = [json.loads(line) for line in out.splitlines()]
    wrong = [(t, tok.encode(t).ids, g) for t, g in zip(texts, got) if tok.encode(t).ids != g]
    if len(got) != len(texts) or wrong:
        for t, want, g in wrong[:5]:
            print(f"FAIL: {t!r}: tokenizers {want}, moe-ep {g}")
        sys.exit(f"FAIL: {len(wrong)} of {len(texts)} texts differ ({len(got)} lines back)")

    ids = tok.encode("Hello, world").ids
    with_extra = [151669] + ids[:1] + [151935, 151700] + ids[1:] + [151643]
    want = tok.decode(with_extra, skip_special_tokens=False)
    got_text = run([moe_ep, "detokenize", "--tokenizer", work,
                    "--ids", ",".join(map(str, with_extra))])
    if got_text != want + "\n":
        sys.exit(f"FAIL: detokenize {with_extra}: tokenizers {want!r}, moe-ep {got_text!r}")
    print(f"PASS: {len(texts)} texts tokenize as tokenizers {tokenizers.__version__} does on "
          f"the Qwen vocabulary (151,643 ranks + 26 added); ids 151669..151935 are dropped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
