#!/usr/bin/env python3
"""PyTorch timings of the ops kormo's kernels implement, at the sizes of //cuda:bench
(rust/cuda/src/bin/bench.rs), for a same-session comparison on the device.

Per op: eager and torch.compile. Attention over bench.rs's shape matrix (attention_shapes: seq
4K/8K/32K at 32,768 tokens per launch, heads 32/8 and 12/3 at head dim 128 and 64, causal and
packed documents of 2048 and 512 tokens), with the same shape text per row: SDPA's flash and
cuDNN backends (causal; an n/a row for document masks) and flex_attention (causal and document
masks). Output is a markdown table in the same units as the Rust bench (time per call in
microseconds; GB/s over ideal traffic or useful TFLOP/s, masked-out work not counted).
Variants that fail (missing backend, compile error) print a row with the reason and the script
goes on. Usage: python3 bench/torch_reference.py [--quick] [--attention-only | --no-attention]
"""
import argparse
import sys
import time

try:
    import torch
    import torch.nn.functional as F
except ImportError as e:  # --help and the shape helpers work without PyTorch; main() then exits 1
    torch = F = None
    TORCH_IMPORT_ERROR = e

HIDDEN, HEADS_Q, HEADS_KV, HEAD_DIM, FFN, VOCAB = 4096, 32, 8, 128, 16384, 125_184
TOKENS = 8192
PEAK_BF16 = 989e12
DEV = "cuda"
BF16 = torch.bfloat16 if torch else None


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
    parser.add_argument("--quick", action="store_true", help="5 timed iterations instead of 20, no seq 32K attention shapes")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--attention-only", action="store_true",
                       help="only the attention rows (SDPA flash / cuDNN, flex_attention at every attention shape)")
    which.add_argument("--no-attention", action="store_true",
                       help="no attention rows: only the memory-bound ops and the GEMMs (tools/gpu_check.sh runs the "
                            "two halves as separate steps, torch and torch-attention)")
    args = parser.parse_args()
    if torch is None:
        sys.exit(f"torch_reference: PyTorch is not installed ({TORCH_IMPORT_ERROR})")
    if not torch.cuda.is_available():
        print("skipped: no CUDA device")
        return
    iters = 5 if args.quick else 20
    torch.manual_seed(0)
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  cuda {torch.version.cuda}\n")
    print("| op | variant | shape | time (us) | bandwidth | compute |")
    print("| --- | --- | --- | --- | --- | --- |")
    if not args.attention_only:
        kernel_rows(iters)
        gemm_rows(iters)
    if not args.no_attention:
        attention_rows(args.quick, iters)


def kernel_rows(iters):
    """The memory-bound ops (rmsnorm, swiglu, rope, embedding, cross entropy, AdamW), eager and
    torch.compile, at bench.rs's shapes."""
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


# The attention shape matrix of bench.rs (attention_shapes), in the same order: (batch, seq) at
# 32,768 tokens per launch, (q heads, kv heads, head dim), masks (None: causal; L: packed
# documents of L tokens, document id = position in the row // L, causal within each).
ATTENTION_BATCH_SEQ = ((8, 4096), (4, 8192), (1, 32768))
ATTENTION_HEADS = ((32, 8, 128), (32, 8, 64), (12, 3, 128), (12, 3, 64))
ATTENTION_MASKS = (None, 2048, 512)


def attention_shapes(quick):
    """(batch, seq, heads_q, heads_kv, head_dim, doc_len or None) per shape; quick drops seq 32K."""
    return [(batch, seq, hq, hkv, d, mask) for batch, seq in ATTENTION_BATCH_SEQ if not (quick and seq > 8192)
            for hq, hkv, d in ATTENTION_HEADS for mask in ATTENTION_MASKS]


def shape_label(batch, seq, heads_q, heads_kv, head_dim, doc_len):
    """The rows' shape text; identical to bench.rs's AttnShape::label so a report can join them."""
    mask = "causal" if doc_len is None else f"docs of {doc_len}"
    return f"b{batch} s{seq} h{heads_q}/{heads_kv} d{head_dim} {mask}"


def visible_pairs_per_row(seq, doc_len):
    """Visible (query, key) pairs in one row: L(L+1)/2 per document of L tokens (causal within it),
    the partial last document counted exactly; doc_len None is one document of the whole row."""
    length = max(1, seq if doc_len is None else doc_len)
    full, rest = divmod(seq, length)
    return full * length * (length + 1) // 2 + rest * (rest + 1) // 2


def attention_fwd_flops(batch, seq, heads_q, heads_kv, head_dim, doc_len):
    """Useful forward FLOPs: 4 * head_dim per visible (query, key) pair (QK^T and PV), masked-out
    work not counted. Must agree with attention_flops in rust/cuda/src/bin/bench.rs (which counts
    2.5x this for a backward; the fwd+bwd rows here count 3.5x)."""
    return 4.0 * head_dim * visible_pairs_per_row(seq, doc_len) * batch * heads_q


def attention_rows(quick, iters):
    """SDPA flash and cuDNN (causal; n/a rows for document masks, which is_causal cannot express)
    and flex_attention (torch.compile'd, block mask built once per shape, enable_gqa) for every
    shape of attention_shapes, forward and forward+backward."""
    try:
        from torch._dynamo import config as dynamo_config
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        # Shapes and mask functions change from row to row: past dynamo's default recompile limit
        # (8) the compiled flex would fall back to eager flex, which materializes the scores.
        for knob in ("cache_size_limit", "recompile_limit"):
            if hasattr(dynamo_config, knob):
                setattr(dynamo_config, knob, 256)
        flex = torch.compile(flex_attention)
    except Exception as e:  # noqa: BLE001 (report and go on with SDPA)
        flex, flex_error = None, str(e).splitlines()[0][:120] if str(e) else type(e).__name__
    for shape in attention_shapes(quick):
        label, fwd_flops = shape_label(*shape), attention_fwd_flops(*shape)
        batch, seq, heads_q, heads_kv, head_dim, doc_len = shape
        q = torch.randn(batch, heads_q, seq, head_dim, device=DEV, dtype=BF16, requires_grad=True)
        k = torch.randn(batch, heads_kv, seq, head_dim, device=DEV, dtype=BF16, requires_grad=True)
        v = torch.randn(batch, heads_kv, seq, head_dim, device=DEV, dtype=BF16, requires_grad=True)
        do = torch.randn(batch, heads_q, seq, head_dim, device=DEV, dtype=BF16)
        sdpa_rows(q, k, v, do, label, doc_len, fwd_flops, iters)
        if flex is None:
            for op in ("attention fwd", "attention fwd+bwd"):
                print(f"| {op} | flex (compile) | {label} | failed: {flex_error} | | |", flush=True)
        else:
            flex_rows(flex, create_block_mask, q, k, v, do, label, doc_len, fwd_flops, iters)
        del q, k, v, do


def sdpa_rows(q, k, v, do, label, doc_len, fwd_flops, iters):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    for name, backend in (("sdpa flash", SDPBackend.FLASH_ATTENTION), ("sdpa cudnn", SDPBackend.CUDNN_ATTENTION)):
        if doc_len is not None:
            for op in ("attention fwd", "attention fwd+bwd"):
                print(f"| {op} | {name} | {label} | n/a: the backend takes is_causal only, no document mask | | |",
                      flush=True)
            continue

        def fwd(backend=backend):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

        def fwd_bwd(fwd=fwd):
            return torch.autograd.grad(fwd(), (q, k, v), do)

        attempt("attention fwd", name, label, fwd, iters, flops=fwd_flops)
        attempt("attention fwd+bwd", name, label, fwd_bwd, iters, flops=3.5 * fwd_flops)


def flex_rows(flex, create_block_mask, q, k, v, do, label, doc_len, fwd_flops, iters):
    seq = q.shape[2]
    if doc_len is None:
        def mask_mod(b, h, qi, kv):
            return qi >= kv
    else:
        doc = torch.arange(seq, device=DEV) // doc_len

        def mask_mod(b, h, qi, kv):
            return (qi >= kv) & (doc[qi] == doc[kv])
    try:
        block_mask = create_block_mask(mask_mod, None, None, seq, seq, device=DEV)
    except Exception as e:  # noqa: BLE001
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        for op in ("attention fwd", "attention fwd+bwd"):
            print(f"| {op} | flex (compile) | {label} | failed: block mask: {reason} | | |", flush=True)
        return

    def fwd():
        return flex(q, k, v, block_mask=block_mask, enable_gqa=True)

    def fwd_bwd():
        return torch.autograd.grad(fwd(), (q, k, v), do)

    attempt("attention fwd", "flex (compile)", label, fwd, iters, flops=fwd_flops)
    attempt("attention fwd+bwd", "flex (compile)", label, fwd_bwd, iters, flops=3.5 * fwd_flops)


if __name__ == "__main__":
    t0 = time.time()
    main()
    if torch is not None and torch.cuda.is_available():
        print(f"\n(total {time.time() - t0:.0f} s)")
