#!/usr/bin/env python3
"""PyTorch reference of kormo's whole training step, for a same-session comparison with
`train --benchmark` on the device (tools/gpu_check.sh runs both).

The model is the KORMo/Llama decoder kormo trains (pre-norm RMSNorm eps 1e-5, GQA attention with
rotate-half RoPE theta 500000, SwiGLU FFN, untied embedding and LM head, no biases) at the
`proxy-1b` preset (rust/model/src/config.rs: hidden 1536, 18 layers, 12 query / 3 KV heads of
128, FFN 6144, vocab 125,184) and the pretraining micro-batch (4 x 4096 tokens). Attention is
SDPA (causal; PyTorch picks flash/cuDNN), the optimizer torch's fused AdamW (0.9/0.95, eps 1e-8,
wd 0.033 on linear weights). Precision is the usual PyTorch mixed-precision recipe, fp32
parameters under bf16 autocast, which is what kormo's bf16 weights + fp32 master copy replace.

One timed step = forward + backward + clip_grad_norm(1.0) + AdamW on one micro-batch (the same
unit `train --benchmark` times). Variants: eager and torch.compile. Tokens/s is the headline
number. MFU uses kormo's FLOP count itself, not a copy of its formula: --accounting takes the JSON
line `model_step --model proxy-1b --seq 4096 --flops-per-token` prints (rust/cuda/src/benchmark.rs:
6 x the matmul parameters, the embedding table only when tied, plus causal attention 6 * layers *
heads * head_dim * seq per token), and the script refuses it if its model's parameter count is
not kormo's; over the H100's dense bf16 peak (989 TFLOP/s) unless --peak is given.

--profile-csv PATH: after the torch.compile variant's timed steps, PROFILE_STEPS more compiled
steps run under torch.profiler (CUDA activity: kernels, copies, memsets), and the top 25 rows of
key_averages() by self CUDA time go to PATH as CSV (name, calls, self CUDA time, CUDA time,
self CUDA ms per step, % of the timed step time); gpu_check's torch-model step reports its top 10.

torch is imported only once the arguments are parsed, so --help works without it.

Usage: python3 bench/torch_model_reference.py --accounting "$(model_step --flops-per-token)"
       [--steps 5] [--warmup 2] [--peak 989e12] [--profile-csv PATH]
"""
import argparse
import csv
import json
import time

torch = F = None  # imported in main(), after the arguments
PROFILE_STEPS, PROFILE_ROWS = 2, 25

HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, FFN, VOCAB = 1536, 18, 12, 3, 128, 6144, 125_184
MICRO_BATCH, SEQ = 4, 4096
EPS, THETA = 1e-5, 500_000.0


def rope_tables(device):
    inv = 1.0 / (THETA ** (torch.arange(0, HEAD_DIM, 2, device=device, dtype=torch.float32) / HEAD_DIM))
    angles = torch.outer(torch.arange(SEQ, device=device, dtype=torch.float32), inv)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def rotate(x, cos, sin):
    half = HEAD_DIM // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def model_classes():
    """The decoder's module classes (defined once torch is imported)."""

    class RMSNorm(torch.nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(dim))

        def forward(self, x):
            xf = x.float()
            return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS)).to(x.dtype) * self.weight

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pre_attention_layernorm = RMSNorm(HIDDEN)
            self.q_proj = torch.nn.Linear(HIDDEN, HEADS * HEAD_DIM, bias=False)
            self.k_proj = torch.nn.Linear(HIDDEN, KV_HEADS * HEAD_DIM, bias=False)
            self.v_proj = torch.nn.Linear(HIDDEN, KV_HEADS * HEAD_DIM, bias=False)
            self.o_proj = torch.nn.Linear(HEADS * HEAD_DIM, HIDDEN, bias=False)
            self.pre_mlp_layernorm = RMSNorm(HIDDEN)
            self.gate_proj = torch.nn.Linear(HIDDEN, FFN, bias=False)
            self.up_proj = torch.nn.Linear(HIDDEN, FFN, bias=False)
            self.down_proj = torch.nn.Linear(FFN, HIDDEN, bias=False)

        def forward(self, x, cos, sin):
            b, t, _ = x.shape
            h = self.pre_attention_layernorm(x)
            q = self.q_proj(h).view(b, t, HEADS, HEAD_DIM).transpose(1, 2)
            k = self.k_proj(h).view(b, t, KV_HEADS, HEAD_DIM).transpose(1, 2)
            v = self.v_proj(h).view(b, t, KV_HEADS, HEAD_DIM).transpose(1, 2)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            x = x + self.o_proj(a.transpose(1, 2).reshape(b, t, HEADS * HEAD_DIM))
            h = self.pre_mlp_layernorm(x)
            return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))

    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = torch.nn.Embedding(VOCAB, HIDDEN)
            self.layers = torch.nn.ModuleList(Layer() for _ in range(LAYERS))
            self.norm = RMSNorm(HIDDEN)
            self.lm_head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)
            for p in self.parameters():
                if p.dim() == 2:
                    torch.nn.init.normal_(p, std=0.02)

        def forward(self, tokens, targets, cos, sin):
            x = self.embed_tokens(tokens)
            for layer in self.layers:
                x = layer(x, cos, sin)
            logits = self.lm_head(self.norm(x))
            return F.cross_entropy(logits.float().view(-1, VOCAB), targets.view(-1))

    return Decoder


def profile_steps(step, path, step_seconds):
    """PROFILE_STEPS calls of `step` under torch.profiler (CUDA activity); the top PROFILE_ROWS
    rows of key_averages() by self CUDA time to `path` as CSV. Times in microseconds; the % is of
    the timed steps' mean wall time (`step_seconds` per step, measured without the profiler)."""
    from torch.profiler import ProfilerActivity, profile

    def device_time(event, *names):  # torch >= 2.4 says device_*, older versions cuda_*
        for name in names:
            value = getattr(event, name, None)
            if value is not None:
                return float(value)
        return 0.0

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(PROFILE_STEPS):
            step()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        self_us = device_time(e, "self_device_time_total", "self_cuda_time_total")
        total_us = device_time(e, "device_time_total", "cuda_time_total")
        rows.append((e.key, e.count, self_us, total_us))
    rows.sort(key=lambda r: -r[2])
    all_self_us = sum(r[2] for r in rows)
    step_us = step_seconds * 1e6
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rank", "name", "calls", "self_cuda_us", "cuda_total_us", "self_cuda_ms_per_step", "percent_of_step"])
        for i, (name, calls, self_us, total_us) in enumerate(rows[:PROFILE_ROWS], 1):
            w.writerow([i, name, calls, f"{self_us:.1f}", f"{total_us:.1f}", f"{self_us / PROFILE_STEPS / 1e3:.3f}",
                        f"{100 * self_us / PROFILE_STEPS / step_us:.2f}"])
    print(f"torch.profiler: {PROFILE_STEPS} torch.compile steps, {len(rows)} kernels, {all_self_us / PROFILE_STEPS / 1e3:.1f} ms "
          f"of self CUDA time per step ({100 * all_self_us / PROFILE_STEPS / step_us:.0f}% of the timed step); top {min(len(rows), PROFILE_ROWS)} in {path}",
          flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--peak", type=float, default=989e12, help="dense bf16 peak FLOP/s of the device")
    parser.add_argument("--accounting", required=True,
                        help="the JSON line of `model_step --model proxy-1b --seq 4096 --flops-per-token` (kormo's FLOP count)")
    parser.add_argument("--profile-csv", metavar="PATH",
                        help=f"profile {PROFILE_STEPS} more torch.compile steps with torch.profiler and write the top {PROFILE_ROWS} kernels by self CUDA time to PATH as CSV")
    args = parser.parse_args()
    global torch, F
    import torch
    import torch.nn.functional as F
    Decoder = model_classes()
    accounting = json.loads(args.accounting)
    if (accounting.get("model"), accounting.get("seq")) != ("proxy-1b", SEQ):
        parser.error(f"--accounting is for {accounting.get('model')} at seq {accounting.get('seq')}, this script times proxy-1b at {SEQ}")
    flops_per_token = float(accounting["flops_per_token"])

    device = "cuda"
    torch.manual_seed(0)
    cos, sin = rope_tables(device)
    tokens = torch.randint(0, VOCAB, (MICRO_BATCH, SEQ), device=device)
    targets = torch.roll(tokens, -1, dims=1)
    tokens_per_step = MICRO_BATCH * SEQ
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")

    for variant in ("eager", "torch.compile"):
        try:
            model = Decoder().to(device)
            params = sum(p.numel() for p in model.parameters())
            if params != accounting["params"]:
                raise SystemExit(f"this model has {params} parameters, kormo's proxy-1b {accounting['params']}: not the same model")
            decay = [p for n, p in model.named_parameters() if p.dim() == 2 and "embed_tokens" not in n]
            no_decay = [p for n, p in model.named_parameters() if not (p.dim() == 2 and "embed_tokens" not in n)]
            opt = torch.optim.AdamW(
                [{"params": decay, "weight_decay": 0.033}, {"params": no_decay, "weight_decay": 0.0}],
                lr=7e-4, betas=(0.9, 0.95), eps=1e-8, fused=True,
            )
            forward = torch.compile(model) if variant == "torch.compile" else model

            def step():
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = forward(tokens, targets, cos, sin)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                return loss

            for _ in range(args.warmup):
                step()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            for _ in range(args.steps):
                loss = step()
            torch.cuda.synchronize()
            seconds = (time.perf_counter() - start) / args.steps
            tok_s = tokens_per_step / seconds
            mfu = tok_s * flops_per_token / args.peak
            print(
                f"| {variant} | {tok_s:,.0f} tok/s | {params / 1e9:.3f}B params | {MICRO_BATCH}x{SEQ} | {seconds * 1e3:.1f} ms/step "
                f"| MFU {100 * mfu:.1f}% | peak mem {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB "
                f"| loss {loss.item():.3f} |",
                flush=True,
            )
            if args.profile_csv and variant == "torch.compile":
                try:
                    profile_steps(step, args.profile_csv, seconds)
                except Exception as e:  # the timings above stand without the profile
                    print(f"torch.profiler failed: {str(e).splitlines()[0][:160] if str(e) else type(e).__name__}", flush=True)
            del model, opt, forward
            torch.cuda.empty_cache()
        except Exception as e:  # one failing variant must not hide the other
            print(f"| {variant} | failed: {str(e).splitlines()[0][:160] if str(e) else type(e).__name__} |", flush=True)


if __name__ == "__main__":
    main()
