#!/usr/bin/env python3
"""Independent float64 NumPy forward pass of an exported kormo model (Llama or KORMo naming).

Used by rust/hf/tests/numpy_reference.rs to check that a Hugging Face folder written by
`kormo-hf` means what kormo computes: it reads config.json and the safetensors files with its
own small parser (no `safetensors` or `transformers` package), runs the Llama architecture
as transformers defines it (pre-norm RMSNorm, rotate-half RoPE, causal GQA attention, SwiGLU,
final norm, LM head), and writes the logits.

    llama_ref.py MODEL_DIR TOKENS OUT
      TOKENS: comma-separated token ids (one sequence, positions 0..n-1)
      OUT:    logits [n, vocab] as little-endian float64

Needs NumPy (pinned in third_party/python/requirements.txt; the Bazel build's python3 has it).
"""
import json
import os
import struct
import sys

import numpy as np


def read_safetensors(path):
    """Tensors of one safetensors file as float64 arrays (F32 and BF16 only)."""
    with open(path, "rb") as f:
        data = f.read()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    base = 8 + header_len
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        raw = data[base + begin:base + end]
        if entry["dtype"] == "F32":
            values = np.frombuffer(raw, dtype="<f4").astype(np.float64)
        elif entry["dtype"] == "BF16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            values = bits.view(np.float32).astype(np.float64)
        else:
            raise ValueError(f"{path}: tensor {name}: unsupported dtype {entry['dtype']}")
        tensors[name] = values.reshape(entry["shape"])
    return tensors


def load(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    tensors = {}
    for name in files:
        tensors.update(read_safetensors(os.path.join(model_dir, name)))
    return config, tensors


def rms_norm(x, weight, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def forward(config, w, tokens):
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    eps = config["rms_norm_eps"]
    theta = config["rope_theta"]
    llama = config["model_type"] == "llama"
    attn_norm = "input_layernorm" if llama else "pre_attention_layernorm"
    mlp_norm = "post_attention_layernorm" if llama else "pre_mlp_layernorm"

    n = len(tokens)
    x = w["model.embed_tokens.weight"][tokens]
    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = np.outer(np.arange(n, dtype=np.float64), inv_freq)
    angles = np.concatenate([angles, angles], axis=-1)  # [n, head_dim]
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    causal = np.triu(np.full((n, n), -np.inf), k=1)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        a = rms_norm(x, w[p + attn_norm + ".weight"], eps)
        q = (a @ w[p + "self_attn.q_proj.weight"].T).reshape(n, heads, head_dim)
        k = (a @ w[p + "self_attn.k_proj.weight"].T).reshape(n, kv_heads, head_dim)
        v = (a @ w[p + "self_attn.v_proj.weight"].T).reshape(n, kv_heads, head_dim)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        group = heads // kv_heads
        k = np.repeat(k, group, axis=1)
        v = np.repeat(v, group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(head_dim) + causal
        scores -= scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        out = np.einsum("hqk,khd->qhd", probs, v).reshape(n, heads * head_dim)
        x = x + out @ w[p + "self_attn.o_proj.weight"].T
        m = rms_norm(x, w[p + mlp_norm + ".weight"], eps)
        gate = m @ w[p + "mlp.gate_proj.weight"].T
        up = m @ w[p + "mlp.up_proj.weight"].T
        x = x + (gate / (1.0 + np.exp(-gate)) * up) @ w[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if config.get("tie_word_embeddings") else w["lm_head.weight"]
    return x @ head.T


def main():
    if len(sys.argv) != 4:
        sys.stderr.write(__doc__)
        sys.exit(2)
    model_dir, tokens, out = sys.argv[1:]
    config, weights = load(model_dir)
    logits = forward(config, weights, [int(t) for t in tokens.split(",")])
    with open(out, "wb") as f:
        f.write(logits.astype("<f8").tobytes())


if __name__ == "__main__":
    main()
