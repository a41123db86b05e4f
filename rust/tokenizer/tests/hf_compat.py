#!/usr/bin/env python3
"""Cross-checks kormo's tokenizer against Hugging Face `tokenizers` (driven by hf_compat.rs).

  hf_compat.py check TOKENIZER_JSON CASES_JSON
      Loads a tokenizer.json written by kormo, encodes every case's text and compares with
      kormo's ids (and, for texts without special tokens, the pre-tokenizer pieces); checks
      that decoding gives the text back. Prints mismatches; exit 1 if any.
  hf_compat.py train STYLE CORPUS_TXT VOCAB_SIZE OUT_JSON CASES_JSON
      Trains a tokenizer with `tokenizers` in STYLE "qwen2" (NFC normalizer, Qwen2 split +
      ByteLevel, as Qwen2's tokenizer.json has them) or "gpt2" (ByteLevel with its own regex),
      saves it, and writes its ids for every case's text into CASES_JSON for kormo to compare.
  hf_compat.py encode TOKENIZER_JSON TEXTS_JSON OUT_JSON
      Loads any tokenizer.json (a published one) and writes, for every text of TEXTS_JSON (a
      list of strings), its ids without and with the post-processor's special tokens and
      whether decoding gives the text back, and the text decoded with skip_special_tokens:
      {"version", "plain", "with_specials", "round_trips", "decoded_skipping_specials"}.
Needs `tokenizers` (pinned in third_party/python/requirements.txt; the Bazel build's python3 has it).
"""
import json
import sys

import tokenizers
from tokenizers import Tokenizer, Regex, models, normalizers, pre_tokenizers, decoders, trainers

QWEN2 = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def check(tokenizer_json, cases_json):
    tok = Tokenizer.from_file(tokenizer_json)
    cases = json.load(open(cases_json, encoding="utf-8"))
    bad = 0
    for i, case in enumerate(cases):
        text = case["text"]
        ids = tok.encode(text, add_special_tokens=False).ids
        problems = []
        if ids != case["ids"]:
            first = next((k for k, (a, b) in enumerate(zip(ids, case["ids"])) if a != b), min(len(ids), len(case["ids"])))
            problems.append(f"ids differ at {first}: hf {ids[max(0, first - 3):first + 4]} kormo {case['ids'][max(0, first - 3):first + 4]}")
        if "pieces" in case:
            pieces = [p for p, _ in tok.pre_tokenizer.pre_tokenize_str(text)]
            if pieces != case["pieces"]:
                diff = next((k for k, (a, b) in enumerate(zip(pieces, case["pieces"])) if a != b), None)
                problems.append(f"pieces differ at {diff}: hf {pieces[diff:diff + 3] if diff is not None else pieces[-3:]} kormo {case['pieces'][diff:diff + 3] if diff is not None else case['pieces'][-3:]}")
        if tok.decode(ids, skip_special_tokens=False) != text:
            problems.append("decode(encode(text)) != text")
        if problems:
            bad += 1
            if bad <= 10:
                print(f"case {i} {text[:60]!r}: " + "; ".join(problems))
    print(f"tokenizers {tokenizers.__version__}: {len(cases) - bad}/{len(cases)} cases identical")
    return 1 if bad else 0


def train(style, corpus, vocab_size, out_json, cases_json):
    tok = Tokenizer(models.BPE())
    if style == "qwen2":
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    elif style == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        raise SystemExit(f"unknown style {style!r}")
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=int(vocab_size), min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|BOS|>", "<|EOT|>", "<|BOT|>", "<think>", "</think>"])
    tok.train([corpus], trainer)
    tok.save(out_json)
    cases = json.load(open(cases_json, encoding="utf-8"))
    for case in cases:
        case["ids"] = tok.encode(case["text"], add_special_tokens=False).ids
    json.dump(cases, open(cases_json, "w", encoding="utf-8"), ensure_ascii=False)
    print(f"tokenizers {tokenizers.__version__}: trained {tok.get_vocab_size()} tokens")
    return 0


def encode(tokenizer_json, texts_json, out_json):
    tok = Tokenizer.from_file(tokenizer_json)
    texts = json.load(open(texts_json, encoding="utf-8"))
    plain = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    with_specials = [e.ids for e in tok.encode_batch(texts, add_special_tokens=True)]
    round_trips = [t == d for t, d in zip(texts, tok.decode_batch(plain, skip_special_tokens=False))]
    skipped = tok.decode_batch(plain, skip_special_tokens=True)
    json.dump({"version": tokenizers.__version__, "plain": plain, "with_specials": with_specials,
               "round_trips": round_trips, "decoded_skipping_specials": skipped},
              open(out_json, "w", encoding="utf-8"), ensure_ascii=False)
    print(f"tokenizers {tokenizers.__version__}: encoded {len(texts)} texts into {sum(map(len, plain))} ids with {tokenizer_json}")
    return 0


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "check" and len(sys.argv) == 4:
        sys.exit(check(*sys.argv[2:]))
    if cmd == "encode" and len(sys.argv) == 5:
        sys.exit(encode(*sys.argv[2:]))
    if cmd == "train" and len(sys.argv) == 7:
        sys.exit(train(*sys.argv[2:]))
    print(__doc__)
    sys.exit(2)
