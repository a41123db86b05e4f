#!/usr/bin/env python3
"""Cost model of KORMo-10.8B training on a GPU cluster (produces the tables of docs/scaling.md).

Two kinds of scenario: ASSUMED kernel efficiencies (see ASSUMED below, with public anchors cited
in docs/scaling.md), and `measured`, built from a GPU check report's kernel-bench rows
(`--measured bench/results/<report>.md`): the bench times every kernel and cuBLASLt GEMM of one
KORMo-10.8B decoder layer at exactly this job's micro-batch (2 x 4096 tokens), so a layer's and
the head's forward+backward time is the sum of measured rows. Interconnect numbers stay external.
Run:  python3 tools/scaling_model.py [--scenario NAME] [--measured REPORT]
Only the Python standard library is used.
"""

import argparse

# ---- Model (exact: kormo_model::ModelConfig::kormo_10_8b) ---------------------------------
HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, FFN, VOCAB = 4096, 40, 32, 8, 128, 16384, 125_184
Q_DIM, KV_DIM = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
LAYER_PARAMS = (2 * HIDDEN  # two RMSNorm gains
                + 2 * HIDDEN * Q_DIM  # q, o
                + 2 * HIDDEN * KV_DIM  # k, v
                + 3 * HIDDEN * FFN)  # gate, up, down
EMBED_PARAMS = VOCAB * HIDDEN
HEAD_PARAMS = VOCAB * HIDDEN + HIDDEN  # lm_head + final norm
TOTAL_PARAMS = LAYERS * LAYER_PARAMS + EMBED_PARAMS + HEAD_PARAMS
assert TOTAL_PARAMS == 10_756_624_384

# ---- Job (the brief's setting) ------------------------------------------------------------
NODES, GPUS_PER_NODE = 16, 8
WORLD = NODES * GPUS_PER_NODE
MICRO_ROWS, SEQ, ACCUM = 2, 4096, 8
TOKENS_PER_MICRO = MICRO_ROWS * SEQ

# ---- Hardware and kernels: ASSUMED ----------------------------------------------------------
PEAK_TFLOPS = 989.0  # H200 dense bf16 (same tensor cores as H100 SXM)
HBM_GB = 141.0
SCENARIOS = {
    # Comparable to the best published stacks (Megatron-LM 7B: 47% MFU).
    "target": dict(matmul_eff=0.60, attn_tflops=300.0, elementwise_overhead=0.15),
    # Hand-written kernels well below cuBLAS/FlashAttention-2.
    "conservative": dict(matmul_eff=0.40, attn_tflops=150.0, elementwise_overhead=0.30),
}
NVLINK_BUS_GBPS = 360.0  # achieved NCCL all-gather bus bandwidth inside a node (anchor: 8xH100)
IB_BUS_GBPS = 46.0  # per GPU, one 400 Gb/s NIC each, achieved (anchor: 46-48 GB/s)
PARAM_BYTES = 2  # bf16 copy of the parameters is gathered
ACT_BYTES = 2  # bf16 activations


def attention_fwd_flops_per_token():
    # 4 * S * H * D per token for QK^T and PV (anchors.md), halved for causal masking.
    return 4 * SEQ * HEADS * HEAD_DIM / 2


def per_micro_layer(s):
    """(FLOPs, seconds) of one decoder layer, forward + backward, one micro-batch on one GPU."""
    matmul = 6 * (LAYER_PARAMS - 2 * HIDDEN) * TOKENS_PER_MICRO  # fwd 2x, bwd 4x
    attn = 3.5 * attention_fwd_flops_per_token() * TOKENS_PER_MICRO  # bwd = 2.5x fwd
    if "layer_s" in s:
        return matmul + attn, s["layer_s"]
    t = matmul / (s["matmul_eff"] * PEAK_TFLOPS * 1e12) + attn / (s["attn_tflops"] * 1e12)
    return matmul + attn, t * (1 + s["elementwise_overhead"])


def per_micro_head(s):
    flops = 6 * VOCAB * HIDDEN * TOKENS_PER_MICRO
    if "head_s" in s:
        return flops, s["head_s"]
    return flops, flops / (s["matmul_eff"] * PEAK_TFLOPS * 1e12) * (1 + s["elementwise_overhead"])


# One decoder layer and the head, forward + backward of one micro-batch, as sums of the kernel
# bench's rows: (row name, shape prefix, count). RoPE runs on q and k (k: 8 of 32 heads' width)
# forward and backward; the bench times the forward on q only, so the backward is taken equal
# to the forward (same traffic) and k as a quarter of q: that one row is scaled, not measured.
MEASURED_LAYER = [
    ("gemm: one decoder layer's linears, fwd+bwd", "", 1),
    ("attention fwd", "b2 s4096 h32/8 d128 causal", 1),
    ("attention bwd (prepare+main+finish)", "b2 s4096 h32/8 d128 causal", 1),
    ("rmsnorm fwd", "", 2),
    ("rmsnorm bwd (+dweight reduce)", "", 2),
    ("swiglu fwd", "", 1),
    ("swiglu bwd", "", 1),
    ("rope fwd (in place, q)", "", 2 * 1.25),
]
MEASURED_HEAD = [
    ("gemm lm_head fwd", "", 1),
    ("gemm lm_head bwd input", "", 1),
    ("gemm lm_head bwd weight (f32 +=)", "", 1),
    ("rmsnorm fwd", "", 1),
    ("rmsnorm bwd (+dweight reduce)", "", 1),
    ("cross entropy + dlogits (in place)", "", 1),
    ("embedding fwd", "", 1),
    ("embedding bwd (f32 atomics)", "", 1),
]


def measured_scenario(report, gemm_efficiency):
    """The `measured` scenario from a GPU check report: per-layer and head seconds. A report
    without GEMM rows (before they were added to the bench) gets its GEMM time from
    `gemm_efficiency` of the peak instead, and the scenario's name says so."""
    rows = []
    with open(report) as f:
        for line in f:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 3:
                try:
                    rows.append((cells[0], cells[1], float(cells[2]) * 1e-6))
                except ValueError:
                    pass

    have_gemm = any(n.startswith("gemm") for n, _, _ in rows)
    gemm_flops = {
        "gemm: one decoder layer's linears, fwd+bwd": 6 * (LAYER_PARAMS - 2 * HIDDEN) * TOKENS_PER_MICRO,
        "gemm lm_head fwd": 2 * VOCAB * HIDDEN * TOKENS_PER_MICRO,
        "gemm lm_head bwd input": 2 * VOCAB * HIDDEN * TOKENS_PER_MICRO,
        "gemm lm_head bwd weight (f32 +=)": 2 * VOCAB * HIDDEN * TOKENS_PER_MICRO,
    }

    def total(parts):
        seconds = 0.0
        for name, shape, count in parts:
            if not have_gemm and name in gemm_flops:
                seconds += count * gemm_flops[name] / (gemm_efficiency * PEAK_TFLOPS * 1e12)
                continue
            found = [t for n, sh, t in rows if n == name and sh.startswith(shape)]
            if not found:
                raise SystemExit(f"{report}: no kernel-bench row `{name}` {shape}")
            seconds += count * found[0]
        return seconds

    device = next((line.split(":", 1)[1].strip() for line in open(report) if line.startswith("- device:")), "unknown")
    source = f"{report} ({device})"
    if not have_gemm:
        source += f"; the report has no GEMM rows: GEMMs ASSUMED at {gemm_efficiency:.0%} of peak"
    return dict(layer_s=total(MEASURED_LAYER), head_s=total(MEASURED_HEAD), source=source)


def ring_time(bytes_total, ranks, bus_gbps):
    """NCCL ring all-gather / reduce-scatter of a `bytes_total` buffer over `ranks` ranks."""
    return bytes_total * (ranks - 1) / ranks / (bus_gbps * 1e9)


def strategies(grad_bytes):
    """Per strategy: (AG per layer, RS per layer, gathers per step, RS per step, cross-node
    all-reduce per step in seconds, shard count)."""
    layer_param = LAYER_PARAMS * PARAM_BYTES
    layer_grad = LAYER_PARAMS * grad_bytes
    out = {}
    out["full_shard"] = dict(ag=ring_time(layer_param, WORLD, IB_BUS_GBPS), rs=ring_time(layer_grad, WORLD, IB_BUS_GBPS),
                             gathers=2 * ACCUM, reduces=ACCUM, allreduce=0.0, shards=WORLD)
    out["shard_grad_op"] = dict(ag=ring_time(layer_param, WORLD, IB_BUS_GBPS), rs=ring_time(layer_grad, WORLD, IB_BUS_GBPS),
                                gathers=1, reduces=1, allreduce=0.0, shards=WORLD)
    # Hybrid: shard over the 8 GPUs of a node (NVLink), then all-reduce each GPU's gradient
    # shard across the 16 nodes once per step (ring all-reduce = RS + AG over the IB rail).
    shard_grad = TOTAL_PARAMS / GPUS_PER_NODE * grad_bytes
    out["hybrid"] = dict(ag=ring_time(layer_param, GPUS_PER_NODE, NVLINK_BUS_GBPS),
                         rs=ring_time(layer_grad, GPUS_PER_NODE, NVLINK_BUS_GBPS),
                         gathers=2 * ACCUM, reduces=ACCUM, allreduce=2 * ring_time(shard_grad, NODES, IB_BUS_GBPS),
                         shards=GPUS_PER_NODE)
    return out


def memory_gb(name, st, grad_bytes):
    shards = st["shards"]
    states = TOTAL_PARAMS * 12 / shards  # fp32 master + exp_avg + exp_avg_sq
    grad_shard = TOTAL_PARAMS * 4 / shards
    # Gathered units in flight: current + prefetched layer, plus the head/embedding unit.
    transient = 2 * LAYER_PARAMS * PARAM_BYTES + EMBED_PARAMS * PARAM_BYTES
    full = 0.0
    if name == "shard_grad_op":  # full bf16 weights kept, full fp32 gradients accumulated
        full = TOTAL_PARAMS * (PARAM_BYTES + grad_bytes)
        transient = 0.0
    # kormo_model's LayerActivations: x_in, normed_attn, x_mid, normed_mlp (hidden each), q and
    # attn_out (q_dim), k and v (kv_dim), gate, up and swiglu (ffn); per-token scalars ignored.
    per_token_layer = 4 * HIDDEN + 2 * Q_DIM + 2 * KV_DIM + 3 * FFN
    activations = per_token_layer * ACT_BYTES * TOKENS_PER_MICRO * LAYERS + TOKENS_PER_MICRO * VOCAB * 4
    parts = dict(states=states, grad_shard=grad_shard, gathered=transient + full, activations=activations)
    return {k: v / 1e9 for k, v in parts.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default=None, help="only this scenario")
    parser.add_argument("--measured", metavar="REPORT", help="add the `measured` scenario from a GPU check report")
    parser.add_argument("--gemm-efficiency", type=float, default=0.6,
                        help="with --measured, for a report without GEMM rows: assumed fraction of peak (default 0.6)")
    args = parser.parse_args()
    if args.measured:
        SCENARIOS["measured"] = measured_scenario(args.measured, args.gemm_efficiency)
    if args.scenario and args.scenario not in SCENARIOS:
        parser.error(f"unknown scenario {args.scenario!r} (one of {', '.join(sorted(SCENARIOS))})")
    print(f"# KORMo-10.8B on {NODES} x {GPUS_PER_NODE} GPUs: micro-batch {MICRO_ROWS} x {SEQ} tokens, {ACCUM} accumulation steps")
    print(f"parameters {TOTAL_PARAMS:,} (per layer {LAYER_PARAMS:,}; embedding {EMBED_PARAMS:,}; head+norm {HEAD_PARAMS:,})")
    print(f"global batch {MICRO_ROWS * ACCUM * WORLD} sequences = {TOKENS_PER_MICRO * ACCUM * WORLD / 1e6:.2f}M tokens per step\n")
    for name in [args.scenario] if args.scenario else sorted(SCENARIOS, reverse=True):
        s = SCENARIOS[name]
        layer_flops, layer_t = per_micro_layer(s)
        head_flops, head_t = per_micro_head(s)
        micro_flops = LAYERS * layer_flops + head_flops
        compute = ACCUM * (LAYERS * layer_t + head_t)
        if "source" in s:
            print(f"## scenario `{name}`: kernel times measured, {s['source']}\n")
        else:
            print(f"## scenario `{name}`: matmul {s['matmul_eff']:.0%} of peak, attention {s['attn_tflops']:.0f} TFLOP/s, "
                  f"elementwise +{s['elementwise_overhead']:.0%}\n")
        print("| quantity | value |\n| --- | --- |")
        print(f"| decoder layer fwd+bwd, one micro-batch | {layer_flops / 1e12:.2f} TFLOP, {layer_t * 1e3:.1f} ms |")
        print(f"| LM head fwd+bwd, one micro-batch | {head_flops / 1e12:.2f} TFLOP, {head_t * 1e3:.1f} ms |")
        print(f"| compute per step (8 micro-batches) | {compute:.2f} s |\n")
        for grad_name, grad_bytes in [("fp32", 4), ("bf16", 2)]:
            print(f"### gradients reduced in {grad_name}\n")
            print("| strategy | all-gather / layer | reduce-scatter / layer | per-layer comm vs compute (one micro-batch) "
                  "| cross-node all-reduce / step | data per GPU per step over IB / NVLink | step time | tokens/s/GPU | MFU |")
            print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
            for sname, st in strategies(grad_bytes).items():
                # Units in forward order: embedding (no compute), 40 layers, head. Each unit's
                # collectives overlap its neighbours' compute (prefetch), so a unit costs the
                # larger of its compute and its communication; the embedding's is exposed.
                units = [(0.0, EMBED_PARAMS)] + [(layer_t, LAYER_PARAMS)] * LAYERS + [(head_t, HEAD_PARAMS)]
                ranks, bus = (GPUS_PER_NODE, NVLINK_BUS_GBPS) if sname == "hybrid" else (WORLD, IB_BUS_GBPS)
                unit_comm = lambda n, gathers, reduces: (gathers * ring_time(n * PARAM_BYTES, ranks, bus)
                                                          + reduces * ring_time(n * grad_bytes, ranks, bus))
                if sname == "shard_grad_op":
                    comm_total = sum(unit_comm(n, 1, 1) for _, n in units)
                    step = compute + max(0.0, comm_total - compute) + unit_comm(EMBED_PARAMS, 1, 0) + unit_comm(HEAD_PARAMS, 0, 1)
                    per_layer = f"{(st['ag'] + st['rs']) * 1e3:.1f} ms once per step"
                else:
                    per_layer = f"{(2 * st['ag'] + st['rs']) * 1e3:.1f} ms vs {layer_t * 1e3:.1f} ms"
                    step = ACCUM * sum(max(t, unit_comm(n, 2, 1)) for t, n in units)
                    last_backward = LAYERS * layer_t * 2 / 3  # the all-reduce overlaps the last backward
                    step += max(0.0, st["allreduce"] - last_backward)
                moved = (st["gathers"] * TOTAL_PARAMS * PARAM_BYTES + st["reduces"] * TOTAL_PARAMS * grad_bytes) * (ranks - 1) / ranks
                if sname == "hybrid":
                    nvlink, ib = moved, 2 * TOTAL_PARAMS / GPUS_PER_NODE * grad_bytes * (NODES - 1) / NODES
                else:
                    nvlink, ib = 0.0, moved
                tokens = TOKENS_PER_MICRO * ACCUM / step
                mfu = ACCUM * micro_flops / step / (PEAK_TFLOPS * 1e12)
                ar = f"{st['allreduce'] * 1e3:.0f} ms" if st["allreduce"] else "-"
                print(f"| {sname} | {st['ag'] * 1e3:.1f} ms | {st['rs'] * 1e3:.1f} ms | {per_layer} | {ar} | "
                      f"{ib / 1e9:.1f} / {nvlink / 1e9:.1f} GB | {step:.2f} s | {tokens:,.0f} | {mfu:.0%} |")
            print()
        print("### memory per GPU (GB), gradients fp32, bf16 activations, no activation checkpointing\n")
        print("| strategy | fp32 master + AdamW moments | gradient shard | gathered weights / full grads | activations + logits | total |")
        print("| --- | --- | --- | --- | --- | --- |")
        for sname, st in strategies(4).items():
            m = memory_gb(sname, st, 4)
            total = sum(m.values())
            print(f"| {sname} | {m['states']:.1f} | {m['grad_shard']:.1f} | {m['gathered']:.1f} | {m['activations']:.1f} | "
                  f"{total:.1f} of {HBM_GB:.0f} |")
        print()


if __name__ == "__main__":
    main()
