#!/usr/bin/env python3
"""Checks a kormo Hugging Face export against transformers (run on the device machine, whose
Python has torch and transformers; nothing here needs a GPU, but CUDA is used when present).

    tools/hf_transformers_check.py EXPORT_DIR REFERENCE_JSON [--atol 1e-4]

EXPORT_DIR is a folder written by `hf export` (either flavour, f32 or bf16); REFERENCE_JSON is
`hf logits --model EXPORT_DIR --tokens ... --out REFERENCE_JSON` (kormo's own CPU logits for a
token sequence). The script loads the folder with transformers and compares logits:

* LlamaForCausalLM folders: AutoModelForCausalLM.from_pretrained, float32, eager attention.
* KORMoForCausalLM folders: with transformers' own KORMo class when the installed version has
  model_type "kormo"; in any case also as LlamaForCausalLM with the two norms renamed, the
  equivalence kormo's export relies on.

For an f32 export the logits must agree within --atol (default 1e-4); a bf16 export is run in
float32 too, so the same bound holds. Prints one line per check and exits 1 on a mismatch.
Also checks that tokenizer.json loads with `tokenizers` and that `generate` runs greedily.
"""
import argparse
import json
import os
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM


def compare(name, model, tokens, reference, atol, device):
    model = model.to(device).eval()
    with torch.no_grad():
        logits = model(torch.tensor([tokens], device=device)).logits[0].double().cpu()
    worst = (logits - reference).abs().max().item()
    ok = worst <= atol
    print(f"{'PASS' if ok else 'FAIL'} {name} on {device}: max |transformers - kormo| = {worst:.3e} (atol {atol:g})")
    return ok


def as_llama(folder, config):
    """A KORMo folder loaded as LlamaForCausalLM: same config keys, norms renamed."""
    from safetensors.torch import load_file

    cfg = dict(config)
    cfg["model_type"] = "llama"
    cfg["architectures"] = ["LlamaForCausalLM"]
    model = LlamaForCausalLM(LlamaConfig(**cfg)).float()
    index = os.path.join(folder, "model.safetensors.index.json")
    files = sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index) else ["model.safetensors"]
    state = {}
    for f in files:
        for k, v in load_file(os.path.join(folder, f)).items():
            k = k.replace(".pre_attention_layernorm.", ".input_layernorm.").replace(".pre_mlp_layernorm.", ".post_attention_layernorm.")
            state[k] = v.float()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("rotary_emb.inv_freq") and not (cfg.get("tie_word_embeddings") and m == "lm_head.weight")]
    if missing or unexpected:
        raise SystemExit(f"{folder}: missing {missing}, unexpected {unexpected}")
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("reference")
    parser.add_argument("--atol", type=float, default=1e-4)
    args = parser.parse_args()

    reference = json.load(open(args.reference))
    tokens = reference["tokens"]
    expected = torch.tensor(reference["logits"], dtype=torch.float64)
    config = json.load(open(os.path.join(args.folder, "config.json")))
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, devices {devices}")
    ok = True
    if config["model_type"] == "llama":
        model = AutoModelForCausalLM.from_pretrained(args.folder, torch_dtype=torch.float32, attn_implementation="eager")
        for device in devices:
            ok &= compare("LlamaForCausalLM", model, tokens, expected, args.atol, device)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(args.folder, torch_dtype=torch.float32, attn_implementation="eager")
            for device in devices:
                ok &= compare("KORMoForCausalLM (transformers)", model, tokens, expected, args.atol, device)
        except (ValueError, KeyError) as e:
            print(f"SKIP KORMoForCausalLM: this transformers cannot load model_type 'kormo' ({type(e).__name__}: {str(e)[:120]})")
        model = as_llama(args.folder, config)
        for device in devices:
            ok &= compare("KORMo folder as LlamaForCausalLM (norms renamed)", model, tokens, expected, args.atol, device)

    # The tokenizer loads and generation runs (greedy, a few tokens).
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(args.folder, "tokenizer.json"))
    print(f"PASS tokenizer.json loads: {tok.get_vocab_size()} ids; 'hello 안녕' -> {tok.encode('hello 안녕').ids[:12]}")
    with torch.no_grad():
        out = model.to("cpu").generate(torch.tensor([tokens[:4]]), max_new_tokens=4, do_sample=False)
    print(f"PASS generate: {out[0].tolist()}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
