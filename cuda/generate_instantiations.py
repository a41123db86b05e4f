#!/usr/bin/env python3
"""Writes every mechanically derived kernel file from one list of attention variants.

Outputs (all checked in; `--check` exits 1 naming any file that differs from what it would write):
  cuda/generated/attention_<variant>.cu  one translation unit per (head dim x mask): extern "C"
                                         forward and backward entry points over the templates in
                                         cuda/include/kormo_attention.cuh, with static_asserts
                                         that pin the shared-memory sizes written below
  cuda/generated/attention_variants.h    X-macro list of the variants (for C/C++ users)
  cuda/generated/kormo_wgmma.cuh         the wgmma shapes the sm_90a kernels use, as inline-PTX
                                         wrappers (one operand per accumulator register: 64 for
                                         n128, too many to write by hand)
  cuda/generated/kormo_all.cu            the single translation unit the fatbin is built from: it
                                         includes every cuda/*.cu and generated variant, so one
                                         `nvcc -fatbin` call (Bazel genrule or build.rs) yields one
                                         module for the loader
  cuda/generated/kernel_list.inc         KORMO_KERNEL(name) per kernel (X-macro for cuda/emulator)
  cuda/expected_kernels.txt              every extern "C" kernel: the ones found in cuda/*.cu
                                         plus the generated ones (the fatbin content test reads it)
  rust/cuda/src/kernel_names.rs          the same names and the launch facts for Rust

The shared-memory formulas below mirror FwdSmem/BwdSmem in kormo_attention.cuh; the generated
static_asserts make nvcc fail if the two ever disagree.
"""
import argparse
import os
import pathlib
import re
import sys

# abspath, not resolve(): under Bazel the script is a runfiles symlink, and the check must read the
# runfiles copies next to it, not the source tree the symlink points into.
ROOT = pathlib.Path(os.path.abspath(__file__)).parent.parent
CUDA = ROOT / "cuda"
GENERATED = CUDA / "generated"

HEAD_DIMS = (64, 128)
MASKS = (("causal", False), ("doc", True))  # (name, doc-id mask on top of causal)
TILE = 64  # keys per tile (both passes) and queries per backward block
FWD_ROWS = 128  # queries per forward block
THREADS = 128  # 4 warps per block, both passes
SM90_BLOCK_M = 128  # queries per sm_90a forward block (two consumer warpgroups of 64)
SM90_BLOCK_N = 128  # keys per sm_90a key tile
SM90_STAGES = 2  # K/V ring depth
SM90_THREADS = 384  # producer warpgroup + two consumer warpgroups
SM90_BWD_BLOCK_M = 64  # queries per step of the sm_90a backward
# (kind, n): "ss" = A and B from shared memory, both K-major; "ssmn" = A and B from shared
# memory, A M-major and B N-major; "rs" = A from registers, B N-major.
WGMMA_SHAPES = (("ss", SM90_BLOCK_N), ("ss", SM90_BWD_BLOCK_M), ("ssmn", 64), ("ssmn", 128), ("rs", 64), ("rs", 128))


def fwd_smem_bytes(d):
    # q bf16 [128][d], k, v bf16 [64][d] (all swizzled); k doc ids uint32 [64]
    return FWD_ROWS * d * 2 + 2 * TILE * d * 2 + TILE * 4


def bwd_smem_bytes(d):
    # k, v bf16 [64][d]; q, dout bf16 [2][64][d] (double-buffered); dS^T bf16 [64][64];
    # lse, delta, q doc ids 4 bytes x [2][64]
    return 6 * TILE * d * 2 + TILE * TILE * 2 + 3 * 2 * TILE * 4


def dq_smem_bytes(d):
    # q, dout bf16 [64][d]; k, v bf16 [2][64][d] (double-buffered); k doc ids uint32 [2][64]
    return 6 * TILE * d * 2 + 2 * TILE * 4


def sm90_fwd_smem_bytes(d):
    # q [d/64][128][64], k and v [stages][d/64][128][64] bf16 (128-byte swizzled rows); key doc
    # ids uint32 [stages][128]; mbarriers (128 bytes); block info (128 bytes); 1024 bytes of slack
    # to align the tiles to the swizzle pattern
    sub = SM90_BLOCK_N * 128
    return (d // 64) * sub * (1 + 2 * SM90_STAGES) + SM90_STAGES * SM90_BLOCK_N * 4 + 128 + 128 + 1024


def sm90_bwd_smem_bytes(d):
    # k, v [d/64][128][64] bf16; q, dout [stages][d/64][64][64] bf16; dS^T [128][64] bf16 (all
    # 128-byte swizzled rows); lse, delta, q doc ids 4 bytes x [stages][64]; k doc ids uint32
    # [128]; mbarriers (128 bytes); block info (128 bytes); 1024 bytes of alignment slack
    halves = d // 64
    return (2 * halves * SM90_BLOCK_N * 128 + 2 * SM90_STAGES * halves * SM90_BWD_BLOCK_M * 128
            + SM90_BLOCK_N * 128 + 3 * SM90_STAGES * SM90_BWD_BLOCK_M * 4 + SM90_BLOCK_N * 4 + 128 + 128 + 1024)


def variants():
    for d in HEAD_DIMS:
        for mask, doc in MASKS:
            name = f"hd{d}_{mask}"
            yield {
                "name": name,
                "head_dim": d,
                "doc": doc,
                "fwd": f"kormo_attention_fwd_{name}",
                "bwd": f"kormo_attention_bwd_{name}",
                "bwd_dkdv": f"kormo_attention_bwd_dkdv_{name}",
                "bwd_dq": f"kormo_attention_bwd_dq_{name}",
                "fwd_smem": fwd_smem_bytes(d),
                "bwd_smem": bwd_smem_bytes(d),
                "dq_smem": dq_smem_bytes(d),
                "fwd_sm90": f"kormo_attention_fwd_sm90_{name}",
                "fwd_sm90_smem": sm90_fwd_smem_bytes(d),
                "bwd_sm90": f"kormo_attention_bwd_sm90_{name}",
                "bwd_dkdv_sm90": f"kormo_attention_bwd_dkdv_sm90_{name}",
                "bwd_sm90_smem": sm90_bwd_smem_bytes(d),
            }


HEADER = "// Generated by cuda/generate_instantiations.py; do not edit.\n"


def variant_source(v):
    doc = "true" if v["doc"] else "false"
    d = v["head_dim"]
    return (
        HEADER
        + f"// Attention variant {v['name']}: head dim {d}, causal"
        + (" + document mask" if v["doc"] else " mask")
        + ".\n"
        + '#include "kormo_attention.cuh"\n'
        + '#include "kormo_attention_sm90.cuh"\n\n'
        + f"static_assert(kormo::attention::FwdSmem<{d}>::bytes == {v['fwd_smem']}, \"regenerate: fwd smem\");\n"
        + f"static_assert(kormo::attention::BwdSmem<{d}>::bytes == {v['bwd_smem']}, \"regenerate: bwd smem\");\n"
        + f"static_assert(kormo::attention::DqSmem<{d}>::bytes == {v['dq_smem']}, \"regenerate: dq smem\");\n"
        + f"static_assert(kormo::attention::kFwdRows == {FWD_ROWS} && kormo::attention::kTile == {TILE}, \"regenerate: tiles\");\n"
        + f"static_assert(kormo::attention::kThreads == {THREADS}, \"regenerate: threads\");\n"
        + f"static_assert(kormo::attention_sm90::FwdSmem<{d}>::bytes == {v['fwd_sm90_smem']}, \"regenerate: sm90 fwd smem\");\n"
        + f"static_assert(kormo::attention_sm90::BwdSmem<{d}>::bytes == {v['bwd_sm90_smem']}, \"regenerate: sm90 bwd smem\");\n"
        + f"static_assert(kormo::attention_sm90::kBlockM == {SM90_BLOCK_M} && kormo::attention_sm90::kBlockN == {SM90_BLOCK_N} "
        + f"&& kormo::attention_sm90::kStages == {SM90_STAGES} && kormo::attention_sm90::kThreads == {SM90_THREADS} "
        + f"&& kormo::attention_sm90::kBwdBlockM == {SM90_BWD_BLOCK_M}, \"regenerate: sm90\");\n\n"
        + f"extern \"C\" __global__ void __launch_bounds__(kormo::attention::kThreads)\n"
        + f"{v['fwd']}(KormoAttentionFwdArgs a) {{\n"
        + f"    kormo::attention::forward<{d}, {doc}>(a);\n}}\n\n"
        + f"extern \"C\" __global__ void __launch_bounds__(kormo::attention::kThreads)\n"
        + f"{v['bwd']}(KormoAttentionBwdArgs a) {{\n"
        + f"    kormo::attention::backward<{d}, {doc}>(a);\n}}\n\n"
        + "// The deterministic backward's two passes (dK and dV, then dQ without atomics).\n"
        + f"extern \"C\" __global__ void __launch_bounds__(kormo::attention::kThreads)\n"
        + f"{v['bwd_dkdv']}(KormoAttentionBwdArgs a) {{\n"
        + f"    kormo::attention::backward<{d}, {doc}, false>(a);\n}}\n\n"
        + f"extern \"C\" __global__ void __launch_bounds__(kormo::attention::kThreads)\n"
        + f"{v['bwd_dq']}(KormoAttentionBwdArgs a) {{\n"
        + f"    kormo::attention::backward_dq<{d}, {doc}>(a);\n}}\n\n"
        + "// Hopper forward (wgmma + TMA; a trap outside the sm_90a cubin).\n"
        + f"extern \"C\" __global__ void __launch_bounds__(kormo::attention_sm90::kThreads, 1)\n"
        + f"{v['fwd_sm90']}(const __grid_constant__ KormoAttentionFwdSm90Args p) {{\n"
        + f"    kormo::attention_sm90::forward<{d}, {doc}>(p);\n}}\n\n"
        + "// Hopper backward: dK, dV and dQ (f32 atomics into dq_accum), then without dQ (deterministic mode).\n"
        + f"extern \"C\" __global__ void __launch_bounds__(kormo::attention_sm90::kThreads, 1)\n"
        + f"{v['bwd_sm90']}(const __grid_constant__ KormoAttentionBwdSm90Args p) {{\n"
        + f"    kormo::attention_sm90::backward<{d}, {doc}, true>(p);\n}}\n\n"
        + f"extern \"C\" __global__ void __launch_bounds__(kormo::attention_sm90::kThreads, 1)\n"
        + f"{v['bwd_dkdv_sm90']}(const __grid_constant__ KormoAttentionBwdSm90Args p) {{\n"
        + f"    kormo::attention_sm90::backward<{d}, {doc}, false>(p);\n}}\n"
    )


def wgmma_function(kind, n):
    """The inline-PTX wrapper of one wgmma shape (bf16 x bf16 -> f32, m64 n{n} k16)."""
    regs = n // 2
    d_list = ", ".join(f"%{i}" for i in range(regs))
    if kind in ("ss", "ssmn"):
        sig = f"float (&d)[{regs}], uint64_t desc_a, uint64_t desc_b, bool accumulate"
        operands, pred = f"%{regs}, %{regs + 1}", regs + 2
        # scale-d, scale-a, scale-b, A transposed (M-major), B transposed (N-major)
        imm = "p, 1, 1, 0, 0" if kind == "ss" else "p, 1, 1, 1, 1"
        inputs = '"l"(desc_a), "l"(desc_b), "r"(static_cast<int>(accumulate))'
        doc = "A and B from shared memory, " + ("both K-major" if kind == "ss" else "A M-major, B N-major")
    else:
        sig = f"float (&d)[{regs}], const uint32_t (&a)[4], uint64_t desc_b, bool accumulate"
        operands = "{" + ", ".join(f"%{regs + i}" for i in range(4)) + "}, " + f"%{regs + 4}"
        pred = regs + 5
        imm = "p, 1, 1, 1"  # scale-d, scale-a, scale-b, B N-major
        inputs = '"r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(static_cast<int>(accumulate))'
        doc = "A from registers (the m16n8k16 A layout per warp), B from shared memory, N-major"
    outputs = ",\n          ".join(", ".join(f'"+f"(d[{i}])' for i in range(j, min(j + 8, regs))) for j in range(0, regs, 8))
    return (
        f"// d (+)= A B, m64n{n}k16: {doc}. accumulate = false overwrites d.\n"
        f"template <>\n__device__ __forceinline__ void wgmma_{kind}<{n}>({sig}) {{\n"
        f'    asm volatile(\n        "{{\\n.reg .pred p;\\nsetp.ne.b32 p, %{pred}, 0;\\n"\n'
        f'        "wgmma.mma_async.sync.aligned.m64n{n}k16.f32.bf16.bf16 {{{d_list}}}, {operands}, {imm};\\n}}\\n"\n'
        f"        : {outputs}\n        : {inputs});\n}}\n"
    )


def wgmma_header():
    out = [
        HEADER.rstrip("\n"),
        "// The wgmma shapes of the sm_90a kernels (WGMMA_SHAPES in the generator); included by",
        "// kormo_hopper.cuh outside the CPU emulator, which implements the same templates itself.",
        "#pragma once",
        "",
        "namespace kormo {",
        "namespace sm90 {",
        "",
        "template <int N>",
        "__device__ void wgmma_ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, bool accumulate);",
        "template <int N>",
        "__device__ void wgmma_ssmn(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, bool accumulate);",
        "template <int N>",
        "__device__ void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b, bool accumulate);",
        "",
    ]
    out += [wgmma_function(kind, n) for kind, n in WGMMA_SHAPES]
    out += ["}  // namespace sm90", "}  // namespace kormo", ""]
    return "\n".join(out)


def variants_header(vs):
    lines = [
        HEADER.rstrip("\n"),
        "// X(name, head_dim, doc_mask, fwd_smem_bytes, bwd_smem_bytes, dq_smem_bytes), one line per attention variant.",
        "#ifndef KORMO_ATTENTION_VARIANTS_H",
        "#define KORMO_ATTENTION_VARIANTS_H",
        "#define KORMO_ATTENTION_VARIANTS(X) \\",
    ]
    for v in vs:
        lines.append(f"    X({v['name']}, {v['head_dim']}, {int(v['doc'])}, {v['fwd_smem']}, {v['bwd_smem']}, {v['dq_smem']}) \\")
    lines.append("")
    lines.append("#endif")
    return "\n".join(lines) + "\n"


KERNEL_RE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\s*\(')


def hand_written_kernels():
    names = []
    for path in sorted(CUDA.glob("*.cu")):
        names.extend(KERNEL_RE.findall(path.read_text()))
    return names


def kernel_list(vs):
    names = hand_written_kernels()
    for v in vs:
        names += [v["fwd"], v["bwd"], v["bwd_dkdv"], v["bwd_dq"], v["fwd_sm90"], v["bwd_sm90"], v["bwd_dkdv_sm90"]]
    return names


def rust_source(vs, names):
    out = [
        "//! Generated by cuda/generate_instantiations.py; do not edit.",
        "//! Every extern \"C\" kernel in the fatbin, and the launch facts of the attention variants.",
        "",
        "/// All kernel entry points, in cuda/expected_kernels.txt order.",
        "pub const KERNEL_NAMES: &[&str] = &[",
    ]
    out += [f'    "{n}",' for n in names]
    out += [
        "];",
        "",
        "/// Queries per forward block (grid x = ceil(seq_len / this)).",
        f"pub const ATTENTION_FWD_BLOCK_QUERIES: i64 = {FWD_ROWS};",
        "/// Keys per backward block (grid x = ceil(seq_len / this)).",
        f"pub const ATTENTION_BWD_BLOCK_KEYS: i64 = {TILE};",
        "/// Queries per block of the deterministic backward's dQ pass (grid x = ceil(seq_len / this)).",
        f"pub const ATTENTION_DQ_BLOCK_QUERIES: i64 = {TILE};",
        "/// Threads per block of both attention passes.",
        f"pub const ATTENTION_THREADS: u32 = {THREADS};",
        "/// Query rows per block of the sm_90a forward: (position, head) pairs of `sm90_heads_per_block` heads.",
        f"pub const ATTENTION_SM90_BLOCK_QUERIES: i64 = {SM90_BLOCK_M};",
        "/// Keys per tile of the sm_90a forward (the doc-id map's box).",
        f"pub const ATTENTION_SM90_BLOCK_KEYS: u32 = {SM90_BLOCK_N};",
        "/// Keys per block of the sm_90a backward (grid x = ceil(seq_len / this)).",
        f"pub const ATTENTION_SM90_BWD_BLOCK_KEYS: i64 = {SM90_BLOCK_N};",
        "/// Queries per step of the sm_90a backward (the query-side maps' box).",
        f"pub const ATTENTION_SM90_BWD_BLOCK_QUERIES: u32 = {SM90_BWD_BLOCK_M};",
        "/// Threads per block of the sm_90a kernels (producer warpgroup + two consumers).",
        f"pub const ATTENTION_SM90_THREADS: u32 = {SM90_THREADS};",
        "",
        "/// One compiled attention variant (head dim x mask).",
        "#[derive(Debug, Clone, Copy, PartialEq, Eq)]",
        "pub struct AttentionVariant {",
        "    pub head_dim: i32,",
        "    /// Document mask on top of the causal mask.",
        "    pub doc_mask: bool,",
        "    pub fwd: &'static str,",
        "    pub bwd: &'static str,",
        "    /// Dynamic shared memory of the forward kernel (ATTENTION_THREADS per block).",
        "    pub fwd_smem_bytes: u32,",
        "    /// Dynamic shared memory of the backward kernel (ATTENTION_THREADS per block).",
        "    pub bwd_smem_bytes: u32,",
        "    /// The deterministic backward: `bwd` without dQ (grid and shared memory as `bwd`) ...",
        "    pub bwd_dkdv: &'static str,",
        "    /// ... then dQ, one block per (query tile, query head, batch row).",
        "    pub bwd_dq: &'static str,",
        "    /// Dynamic shared memory of `bwd_dq` (ATTENTION_THREADS per block).",
        "    pub dq_smem_bytes: u32,",
        "    /// The Hopper forward (wgmma + TMA, ATTENTION_SM90_THREADS per block; sm_90a only).",
        "    pub fwd_sm90: &'static str,",
        "    /// Dynamic shared memory of `fwd_sm90`.",
        "    pub fwd_sm90_smem_bytes: u32,",
        "    /// The Hopper backward (dK, dV, dQ by f32 atomics) and its dK/dV-only twin (deterministic mode).",
        "    pub bwd_sm90: &'static str,",
        "    pub bwd_dkdv_sm90: &'static str,",
        "    /// Dynamic shared memory of `bwd_sm90` and `bwd_dkdv_sm90`.",
        "    pub bwd_sm90_smem_bytes: u32,",
        "}",
        "",
        "pub const ATTENTION_VARIANTS: &[AttentionVariant] = &[",
    ]
    for v in vs:
        out.append(
            f"    AttentionVariant {{ head_dim: {v['head_dim']}, doc_mask: {str(v['doc']).lower()}, "
            f"fwd: \"{v['fwd']}\", bwd: \"{v['bwd']}\", fwd_smem_bytes: {v['fwd_smem']}, "
            f"bwd_smem_bytes: {v['bwd_smem']}, bwd_dkdv: \"{v['bwd_dkdv']}\", bwd_dq: \"{v['bwd_dq']}\", "
            f"dq_smem_bytes: {v['dq_smem']}, fwd_sm90: \"{v['fwd_sm90']}\", "
            f"fwd_sm90_smem_bytes: {v['fwd_sm90_smem']}, bwd_sm90: \"{v['bwd_sm90']}\", "
            f"bwd_dkdv_sm90: \"{v['bwd_dkdv_sm90']}\", bwd_sm90_smem_bytes: {v['bwd_sm90_smem']} }},"
        )
    out += ["];", ""]
    return "\n".join(out)


def unity_source(vs):
    lines = [HEADER.rstrip("\n"), "// Build with: nvcc -fatbin -I cuda/include -I cuda ... cuda/generated/kormo_all.cu"]
    lines += [f'#include "{p.name}"' for p in sorted(CUDA.glob("*.cu"))]
    lines += [f'#include "generated/attention_{v["name"]}.cu"' for v in vs]
    return "\n".join(lines) + "\n"


def outputs():
    vs = list(variants())
    names = kernel_list(vs)
    files = {GENERATED / f"attention_{v['name']}.cu": variant_source(v) for v in vs}
    files[GENERATED / "kormo_all.cu"] = unity_source(vs)
    files[GENERATED / "attention_variants.h"] = variants_header(vs)
    files[GENERATED / "kormo_wgmma.cuh"] = wgmma_header()
    files[CUDA / "expected_kernels.txt"] = "".join(n + "\n" for n in names)
    files[GENERATED / "kernel_list.inc"] = (
        HEADER + "// KORMO_KERNEL(name) for every kernel (the CPU emulator's dispatch table).\n"
        + "".join(f"KORMO_KERNEL({n})\n" for n in names)
    )
    files[ROOT / "rust" / "cuda" / "src" / "kernel_names.rs"] = rust_source(vs, names)
    return files


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on any difference")
    args = parser.parse_args()
    files = outputs()
    stale_generated = [p for p in GENERATED.glob("*.cu") if p not in files]
    if args.check:
        bad = [str(p.relative_to(ROOT)) for p, text in files.items() if not p.exists() or p.read_text() != text]
        bad += [f"{p.relative_to(ROOT)} (no longer generated)" for p in stale_generated]
        if bad:
            print("out of date (run python3 cuda/generate_instantiations.py):", *bad, sep="\n  ")
            return 1
        print(f"generated files in sync ({len(files)} files)")
        return 0
    GENERATED.mkdir(exist_ok=True)
    for p in stale_generated:
        p.unlink()
    for p, text in files.items():
        p.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
