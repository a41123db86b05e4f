#!/usr/bin/env python3
"""Side-by-side benchmark of kormo-tokenizer and Hugging Face `tokenizers` on the same corpus.

  compare_hf.py KORMO_BIN WORK_DIR VOCAB_SIZE THREADS EN.txt KO.txt

Measures, for both: training time (same files, same pre-tokenizer, same vocabulary size,
min_frequency 2; `tokenizers` on THREADS rayon threads, kormo with --threads THREADS), then
encode throughput of kormo's trained tokenizer.json loaded in both (1 thread and THREADS
threads, best of 3, fresh caches), tokens and bytes per token per language, and that both
produce the same ids. Documents are the blank-line separated blocks of each file, as kormo's
reader splits them. Prints a Markdown table.
"""
import json
import os
import subprocess
import sys
import time


# White_Space, what Rust's str::trim strips (Python's str.strip also strips U+001C..U+001F).
WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"


def documents(path):
    """Documents exactly as kormo_tokenizer::documents reads a text file."""
    docs, cur = [], []
    for line in open(path, encoding="utf-8", newline="").read().split("\n"):
        line = line.rstrip("\r\n")
        if line.strip(WHITE_SPACE):
            cur.append(line + "\n")
        elif cur:
            docs.append("".join(cur))
            cur = []
    if cur:
        docs.append("".join(cur))
    return docs


HF_ENCODE = r"""
import json, sys, time
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
docs = json.load(open(sys.argv[2], encoding="utf-8"))
best = float("inf")
for _ in range(3):
    fresh = Tokenizer.from_file(sys.argv[1])  # cold cache, like kormo's fresh encoders
    t = time.perf_counter()
    # encode_batch_fast (tokenizers >= 0.20) skips computing offsets: the fastest path.
    encode = getattr(fresh, "encode_batch_fast", fresh.encode_batch)
    out = encode(docs, add_special_tokens=False)
    best = min(best, time.perf_counter() - t)
print(json.dumps({"seconds": best, "tokens": sum(len(e.ids) for e in out), "ids_head": [e.ids for e in out[:50]]}))
"""

HF_TRAIN = r"""
import sys, time
from tokenizers import Tokenizer, Regex, models, pre_tokenizers, decoders, trainers
QWEN2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2), behavior="isolated"),
                                             pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=int(sys.argv[1]), min_frequency=2, show_progress=False,
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    special_tokens=["<|BOS|>", "<|EOT|>", "<|BOT|>", "<think>", "</think>"])
t = time.perf_counter()
tok.train(sys.argv[3:], trainer)
print(time.perf_counter() - t, tok.get_vocab_size())
tok.save(sys.argv[2])
"""


def hf_env(threads):
    env = dict(os.environ)
    env["RAYON_NUM_THREADS"] = str(threads)
    env["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
    return env


def main():
    kormo, work, vocab, threads, en, ko = sys.argv[1:7]
    threads = int(threads)
    os.makedirs(work, exist_ok=True)
    rows = []

    t = time.perf_counter()
    out = subprocess.run([kormo, "train", "--source", f"all=1:{en},{ko}", "--vocab-size", vocab,
                          "--threads", str(threads), "--out", os.path.join(work, "kormo")],
                         capture_output=True, text=True, check=True)
    kormo_train = time.perf_counter() - t
    kormo_info = json.loads(out.stdout)
    hf = subprocess.run([sys.executable, "-c", HF_TRAIN, vocab, os.path.join(work, "hf.json"), en, ko],
                        capture_output=True, text=True, check=True, env=hf_env(threads))
    hf_train, hf_vocab = hf.stdout.split()
    rows.append(("train (whole run, incl. reading) s", f"{kormo_train:.2f} ({kormo_info['vocab_size']} tokens)",
                 f"{float(hf_train):.2f} ({hf_vocab} tokens)"))

    tj = os.path.join(work, "kormo", "tokenizer.json")
    for lang, path in (("English", en), ("Korean", ko)):
        docs = documents(path)
        docs_json = os.path.join(work, f"{lang}.json")
        json.dump(docs, open(docs_json, "w", encoding="utf-8"), ensure_ascii=False)
        size = sum(len(d.encode("utf-8")) for d in docs)
        k = json.loads(subprocess.run([kormo, "bench", "--tokenizer", tj, "--threads", str(threads), path],
                                      capture_output=True, text=True, check=True).stdout)
        results = {}
        for n in (1, threads):
            r = subprocess.run([sys.executable, "-c", HF_ENCODE, tj, docs_json], capture_output=True, text=True,
                               check=True, env=hf_env(n))
            results[n] = json.loads(r.stdout)
        same = results[1]["tokens"] == k["tokens"]
        kormo_ids = json.loads(subprocess.run([kormo, "encode", "--tokenizer", tj, "--json"], input=docs[0],
                                              capture_output=True, text=True, check=True).stdout)
        same = same and kormo_ids == results[1]["ids_head"][0]
        rows.append((f"{lang} ({size / 1e6:.2f} MB) encode MB/s, 1 thread", f"{k['threads_1_mb_per_s']:.1f}",
                     f"{size / results[1]['seconds'] / 1e6:.1f}"))
        rows.append((f"{lang} encode MB/s, {threads} threads", f"{k[f'threads_{threads}_mb_per_s']:.1f}",
                     f"{size / results[threads]['seconds'] / 1e6:.1f}"))
        rows.append((f"{lang} bytes/token (same ids: {same})", f"{k['bytes_per_token']:.3f}",
                     f"{size / results[1]['tokens']:.3f}"))

    print("| measurement | kormo | tokenizers |")
    print("| --- | --- | --- |")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")


if __name__ == "__main__":
    main()
