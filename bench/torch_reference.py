#!/usr/bin/env python3
"""PyTorch timings of the ops kormo's kernels implement, at the sizes of //cuda:bench
(rust/cuda/src/bin/bench.rs), for a same-session comparison on the device.

Per op: eager and torch.compile; attention through SDPA's flash and cuDNN backends (causal) and
flex_attention with a document mask (the varlen case). Output is a markdown table in the same
units as the Rust bench (time per call in microseconds; GB/s over ideal traffic or useful
TFLOP/s). Variants that fail (missing backend, compile error) print a row with the reason and
the script goes on. Usage: python3 bench/torch_reference.py [--quick]
"""
import argparse
import sys
import time

import torch
import torch.nn.functional as F

HIDDEN, HEADS_Q, HEADS_KV, HEAD_DIM, FFN, VOCAB = 4096, 32, 8, 128, 16384, 125_184
TOKENS = 8192
DOC_LEN = 2048
PEAK_BF16 = 989e12
DEV = "cuda"
BF16 = torch.bfloat16


def timed_us(fn, iters):
    fn()  # warm-up (and compilation)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / iters


def row(op, variant, shape, us, nbytes=None, flops=None):
    bw = f"{nbytes / (us * 1e-6) / 1e9:.0f} GB/s" if nbytes else ""
    tf = f"{flops / (us * 1e-6) / 1e12:.1f} TFLOP/s ({100 * flops / (us * 1e-6) / PEAK_BF16:.1f}% of peak)" if flops else ""
    print(f"| {op} | {variant} | {shape} | {us:.1f} | {bw} | {tf} |", flush=True)


def attempt(op, variant, shape, fn, iters, nbytes=None, flops=None):
    try:
        row(op, variant, shape, timed_us(fn, iters), nbytes, flops)
    except Exception as e:  # report and continue: one missing backend must not hide the rest
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        print(f"| {op} | {variant} | {shape} | failed: {reason} | | |", flush=True)


def rmsnorm(x, res, w, eps=1e-5):
    h = x + res
    hf = h.float()
    y = (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)).to(BF16) * w
    return h, y


def swiglu(g, u):
    return F.silu(g) * u


def rope(x, cos, sin):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations, no seq 32K attention")
    args = parser.parse_args()
    iters = 5 if args.quick else 20
    torch.manual_seed(0)
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  cuda {torch.version.cuda}\n")
    print("| op | variant | shape | time (us) | bandwidth | compute |")
    print("| --- | --- | --- | --- | --- | --- |")

    n = TOKENS * HIDDEN
    x, res = torch.randn(TOKENS, HIDDEN, device=DEV, dtype=BF16), torch.randn(TOKENS, HIDDEN, device=DEV, dtype=BF16)
    w = torch.randn(HIDDEN, device=DEV, dtype=BF16)
    shape = f"{TOKENS} x {HIDDEN}, fused residual"
    for variant, fn in (("eager", rmsnorm), ("compile", torch.compile(rmsnorm))):
        attempt("rmsnorm fwd", variant, shape, lambda: fn(x, res, w), iters, nbytes=4 * n * 2)
    del x, res

    g, u = torch.randn(TOKENS, FFN, device=DEV, dtype=BF16), torch.randn(TOKENS, FFN, device=DEV, dtype=BF16)
    for variant, fn in (("eager", swiglu), ("compile", torch.compile(swiglu))):
        attempt("swiglu fwd", variant, f"{TOKENS} x {FFN}", lambda: fn(g, u), iters, nbytes=3 * TOKENS * FFN * 2)
    del g, u

    q = torch.randn(TOKENS, HEADS_Q, HEAD_DIM, device=DEV, dtype=BF16)
    pos = (torch.arange(TOKENS, device=DEV) % 4096).float()
    inv_freq = 500000.0 ** (-torch.arange(0, HEAD_DIM, 2, device=DEV).float() / HEAD_DIM)
    ang = torch.outer(pos, inv_freq)[:, None, :]
    cos, sin = ang.cos().to(BF16), ang.sin().to(BF16)
    for variant, fn in (("eager", rope), ("compile", torch.compile(rope))):
        attempt("rope fwd (q)", variant, f"{TOKENS} x {HEADS_Q} x {HEAD_DIM}", lambda: fn(q, cos, sin), iters,
                nbytes=2 * q.numel() * 2)
    del q

    table = torch.randn(VOCAB, HIDDEN, device=DEV, dtype=BF16)
    tokens = torch.randint(0, VOCAB, (TOKENS,), device=DEV)
    attempt("embedding fwd", "eager", f"{TOKENS} tokens x {HIDDEN}", lambda: F.embedding(tokens, table), iters,
            nbytes=2 * TOKENS * HIDDEN * 2)
    del table

    logits = torch.randn(TOKENS, VOCAB, device=DEV, dtype=BF16).requires_grad_()
    targets = torch.randint(0, VOCAB, (TOKENS,), device=DEV)

    def ce_fwd_bwd(fn):
        def run():
            loss = fn(logits, targets)
            (g,) = torch.autograd.grad(loss, logits)
            return g
        return run

    ce = lambda l, t: F.cross_entropy(l.float(), t)
    for variant, fn in (("eager (fp32 upcast)", ce), ("compile", torch.compile(ce))):
        attempt("cross entropy + dlogits", variant, f"{TOKENS} x {VOCAB}", ce_fwd_bwd(fn), iters,
                nbytes=2 * TOKENS * VOCAB * 2)
    del logits

    nparam = 3 * HIDDEN * FFN
    p = torch.nn.Parameter(torch.randn(nparam, device=DEV))
    p.grad = torch.randn(nparam, device=DEV)
    for variant, kw in (("fused", {"fused": True}), ("foreach", {"foreach": True})):
        opt = torch.optim.AdamW([p], lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, **kw)
        attempt("adamw step (fp32 params)", variant, f"{nparam} params", opt.step, iters, nbytes=nparam * 28)
    del p, opt

    gemm_rows(iters)

    for batch, seq in ((2, 4096), (1, 32768)):
        if args.quick and seq > 4096:
            continue
        attention_rows(batch, seq, iters)


def gemm_rows(iters):
    """The GEMMs of one KORMo-10.8B decoder layer's linears, forward and both backward products,
    as bf16 torch.matmul (cuBLAS) at the bench's shapes: the counterpart of bench.rs's GEMM rows
    (kormo accumulates the weight gradient in f32; here it is a bf16 product)."""
    kv = HEADS_KV * HEAD_DIM
    linears = ((HIDDEN, HEADS_Q * HEAD_DIM), (HIDDEN, kv), (HIDDEN, kv), (HEADS_Q * HEAD_DIM, HIDDEN),
               (HIDDEN, FFN), (HIDDEN, FFN), (FFN, HIDDEN))
    tensors = [(torch.randn(TOKENS, i, device=DEV, dtype=BF16), torch.randn(o, i, device=DEV, dtype=BF16) * 0.02,
                torch.randn(TOKENS, o, device=DEV, dtype=BF16)) for i, o in linears]

    def layer():
        for x, w, dy in tensors:
            x @ w.t()
            dy @ w
            dy.t() @ x

    flops = sum(3 * 2 * TOKENS * i * o for i, o in linears)
    attempt("gemm: one decoder layer's linears, fwd+bwd", "torch.matmul (cuBLAS)",
            f"{TOKENS} tokens, 7 linears x 3 GEMMs", layer, iters, flops=flops)


def attention_rows(batch, seq, iters):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(batch, HEADS_Q, seq, HEAD_DIM, device=DEV, dtype=BF16, requires_grad=True)
    k = torch.randn(batch, HEADS_KV, seq, HEAD_DIM, device=DEV, dtype=BF16, requires_grad=True)
    v = torch.randn(batch, HEADS_KV, seq, HEAD_DIM, device=DEV, dtype=BF16, requires_grad=True)
    do = torch.randn(batch, HEADS_Q, seq, HEAD_DIM, device=DEV, dtype=BF16)
    causal_flops = 4.0 * HEAD_DIM * seq * (seq + 1) / 2 * batch * HEADS_Q
    shape = f"b{batch} s{seq} h{HEADS_Q}/{HEADS_KV} d{HEAD_DIM}"
    for name, backend in (("sdpa flash", SDPBackend.FLASH_ATTENTION), ("sdpa cudnn", SDPBackend.CUDNN_ATTENTION)):
        def fwd():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

        def fwd_bwd():
            out = fwd()
            return torch.autograd.grad(out, (q, k, v), do)

        attempt("attention fwd", name, shape + " causal", lambda: fwd(), iters, flops=causal_flops)
        attempt("attention fwd+bwd", name, shape + " causal", fwd_bwd, iters, flops=3.5 * causal_flops)

    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError as e:
        print(f"| attention | flex doc mask | {shape} | failed: {e} | | |")
        return
    doc = (torch.arange(seq, device=DEV) // DOC_LEN)

    def doc_causal(b, h, qi, kv):
        return (qi >= kv) & (doc[qi] == doc[kv])

    span = min(DOC_LEN, seq)
    doc_flops = 4.0 * HEAD_DIM * (seq // span) * span * (span + 1) / 2 * batch * HEADS_Q
    try:
        block_mask = create_block_mask(doc_causal, None, None, seq, seq, device=DEV)
    except Exception as e:
        print(f"| attention | flex doc mask | {shape} | failed: {str(e).splitlines()[0][:120]} | | |")
        return
    flex = torch.compile(flex_attention)

    def flex_fwd():
        return flex(q, k, v, block_mask=block_mask, enable_gqa=True)

    def flex_fwd_bwd():
        return torch.autograd.grad(flex_fwd(), (q, k, v), do)

    dshape = f"{shape} docs of {DOC_LEN}"
    attempt("attention fwd", "flex doc mask (compile)", dshape, flex_fwd, iters, flops=doc_flops)
    attempt("attention fwd+bwd", "flex doc mask (compile)", dshape, flex_fwd_bwd, iters, flops=3.5 * doc_flops)


if __name__ == "__main__":
    if not torch.cuda.is_available():
        print("skipped: no CUDA device")
        sys.exit(0)
    t0 = time.time()
    main()
    print(f"\n(total {time.time() - t0:.0f} s)")
