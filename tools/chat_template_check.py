#!/usr/bin/env python3
"""Renders conversations with transformers' own chat-template engine and records the ids, so a
Rust test (rust/tokenizer/tests/chat_template.rs) can check kormo's renderer against them
without Python. CPU only; no model download (the tokenizer is built from the folder).

    tools/chat_template_check.py [FOLDER]            (default tests/golden/chat_template)

FOLDER holds tokenizer.json and tokenizer_config.json as kormo writes them (the chat template
is kormo_tokenizer::chat::CHAT_TEMPLATE) and conversations.json (cases: messages,
add_generation_prompt, optional enable_thinking). The script loads the folder with
AutoTokenizer, renders every case with apply_chat_template (as text, then as ids; the two must
agree with tokenizing the text without added special tokens) and writes
FOLDER/transformers_ids.json with the rendered text, the ids and the versions of Python,
transformers, tokenizers and jinja2.

To re-record after changing the template or the cases (needs `pip install transformers jinja2`):

    cargo build -p kormo-tokenizer
    target/debug/kormo-tokenizer train --vocab-size 420 --out tests/golden/chat_template \\
        --source chat=1:tests/golden/chat_template/corpus.txt
    python3 tools/chat_template_check.py
"""
import json
import os
import platform
import sys

import jinja2
import tokenizers
import transformers
from transformers import AutoTokenizer


def ids_of(encoded):
    """apply_chat_template(tokenize=True) returns a list or, in newer versions, a BatchEncoding."""
    if isinstance(encoded, list):
        return encoded
    return list(encoded["input_ids"])


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "golden", "chat_template")
    with open(os.path.join(folder, "conversations.json"), encoding="utf-8") as f:
        cases = json.load(f)["cases"]
    tok = AutoTokenizer.from_pretrained(folder)
    results = []
    for case in cases:
        kwargs = {"add_generation_prompt": case["add_generation_prompt"]}
        if "enable_thinking" in case:
            kwargs["enable_thinking"] = case["enable_thinking"]
        text = tok.apply_chat_template(case["messages"], tokenize=False, **kwargs)
        ids = ids_of(tok.apply_chat_template(case["messages"], tokenize=True, **kwargs))
        direct = tok(text, add_special_tokens=False)["input_ids"]
        if ids != direct:
            sys.exit(f"{case['name']}: apply_chat_template ids differ from tokenizing its text")
        results.append({"name": case["name"], "text": text, "ids": ids})
        print(f"{case['name']}: {len(ids)} ids")
    record = {
        "versions": {
            "python": platform.python_version(),
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "jinja2": jinja2.__version__,
        },
        "chat_template": tok.chat_template,
        "cases": results,
    }
    out = os.path.join(folder, "transformers_ids.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(record, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
