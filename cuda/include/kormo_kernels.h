/* kormo_kernels.h: the one argument header for every hand-written kormo kernel.
 *
 * Design:
 * - Each kernel takes exactly one argument: a plain C struct passed BY VALUE. The same struct is
 *   generated into Rust by bindgen (rust/cuda/src/bindings.rs), so host and device agree on the
 *   layout by construction, and a layout test pins sizes/offsets without needing bindgen.
 * - Device pointers are `kormo_devptr` (uint64_t), the driver API's CUdeviceptr, so the host side
 *   never needs a pointer type of the device address space. A field documented "optional" may be 0.
 * - Every tensor carries explicit element strides (in elements, not bytes); the innermost dimension
 *   is always contiguous. Sizes are int64_t so realistic products (tokens x vocab) never overflow.
 * - Token ids, targets, document ids and positions are uint32 (as in kormo_model::Batch).
 * - Storage dtype is bf16 ("bf16" in the comments below) unless a field says f32; every kernel
 *   accumulates in f32.
 * - Scalars that change every step without the host knowing them (learning rate after a schedule
 *   evaluated on device, gradient clip scale) are read from device memory so no host sync is needed.
 * - Entry points are extern "C" so their symbol names are stable: the Rust loader and
 *   cuda/expected_kernels.txt use these names. Attention has several compiled variants
 *   (head dim x mask); their names come from cuda/generated/attention_variants.h (the X-macro
 *   list written by cuda/generate_instantiations.py).
 */
#ifndef KORMO_KERNELS_H
#define KORMO_KERNELS_H

#include <stdint.h>

typedef uint64_t kormo_devptr;

/* ---------------------------------------------------------------- RMSNorm
 * Forward: h = x (+ residual when residual != 0); residual_out = h (when != 0);
 *          y = h * rsqrt(mean(h^2) + eps) * weight;  rstd[row] = rsqrt(mean(h^2) + eps) (f32).
 * Rows are tokens; `hidden` is the normalised width. One block per row. */
typedef struct KormoRmsNormFwdArgs {
    kormo_devptr x;            /* bf16 [rows, hidden], row stride x_row_stride */
    kormo_devptr residual;     /* optional bf16 [rows, hidden], row stride residual_row_stride */
    kormo_devptr residual_out; /* optional bf16 [rows, hidden]: x + residual, row stride residual_row_stride */
    kormo_devptr weight;       /* bf16 [hidden] */
    kormo_devptr y;            /* bf16 [rows, hidden], row stride y_row_stride */
    kormo_devptr rstd;         /* f32 [rows], saved for backward */
    int64_t rows;
    int64_t hidden;
    int64_t x_row_stride;
    int64_t residual_row_stride;
    int64_t y_row_stride;
    float eps;
    int32_t _pad0;
} KormoRmsNormFwdArgs;

/* Backward of y = rmsnorm(h) * weight, h being the normalised input (x, or x + residual):
 *   dh = rstd * (weight*dy - h*rstd * mean(h*rstd * weight*dy)) (+ dresidual when != 0)
 * dh is the gradient of x and of residual alike (the sum feeds both), so the fused variant needs
 * one output. dresidual may alias dh (dh += the rmsnorm gradient, in place): each element is read
 * and then written by the same thread. dweight: each block writes the sum over its rows of dy*h*rstd to
 * dweight_partial[blockIdx.x, :] (f32 [gridDim.x, hidden]); kormo_rmsnorm_dweight_reduce then sums
 * those rows. Grid: at most `partial_rows` blocks, each striding over rows. */
typedef struct KormoRmsNormBwdArgs {
    kormo_devptr h;              /* bf16 [rows, hidden], row stride h_row_stride */
    kormo_devptr dy;             /* bf16 [rows, hidden], row stride dy_row_stride */
    kormo_devptr dresidual;      /* optional bf16 [rows, hidden], gradient arriving on the residual stream, row stride dy_row_stride */
    kormo_devptr weight;         /* bf16 [hidden] */
    kormo_devptr rstd;           /* f32 [rows] from the forward */
    kormo_devptr dh;             /* bf16 [rows, hidden], row stride dh_row_stride */
    kormo_devptr dweight_partial;/* f32 [partial_rows, hidden] (contiguous) */
    int64_t rows;
    int64_t hidden;
    int64_t h_row_stride;
    int64_t dy_row_stride;
    int64_t dh_row_stride;
    int64_t partial_rows;        /* == gridDim.x of the backward launch */
} KormoRmsNormBwdArgs;

/* dweight[c] = (accumulate ? dweight[c] : 0) + sum_r partial[r, c]. One thread per column. */
typedef struct KormoRmsNormDweightReduceArgs {
    kormo_devptr dweight_partial; /* f32 [partial_rows, hidden] */
    kormo_devptr dweight;         /* f32 [hidden] */
    int64_t partial_rows;
    int64_t hidden;
    int32_t accumulate;
    int32_t _pad0;
} KormoRmsNormDweightReduceArgs;

/* ---------------------------------------------------------------- SwiGLU
 * out = silu(gate) * up, elementwise over [rows, cols]; backward gives dgate and dup from dout.
 * gate/up may be two halves of one fused projection output: pass the halves' pointers and the
 * fused row stride. */
typedef struct KormoSwigluArgs {
    kormo_devptr gate;   /* bf16 [rows, cols], row stride in_row_stride */
    kormo_devptr up;     /* bf16 [rows, cols], row stride in_row_stride */
    kormo_devptr out;    /* fwd: bf16 [rows, cols] out; bwd: dout (input). Row stride out_row_stride */
    kormo_devptr dgate;  /* bwd only: bf16 [rows, cols], row stride in_row_stride */
    kormo_devptr dup;    /* bwd only: bf16 [rows, cols], row stride in_row_stride */
    int64_t rows;
    int64_t cols;
    int64_t in_row_stride;
    int64_t out_row_stride;
} KormoSwigluArgs;

/* ---------------------------------------------------------------- RoPE
 * Rotary embedding, rotate-half convention (pairs (i, i + head_dim/2), as HF Llama):
 *   angle = position[token] * theta^(-2i/head_dim)
 *   y[i] = x[i] cos - x[i+half] sin;  y[i+half] = x[i+half] cos + x[i] sin
 * The backward is the inverse rotation (sin negated) applied to dy: kormo_rope_bwd.
 * x and y may alias (in place). Layout [tokens, heads, head_dim]. */
typedef struct KormoRopeArgs {
    kormo_devptr x;          /* bf16, strides token_stride / head_stride */
    kormo_devptr y;          /* bf16, same strides as x */
    kormo_devptr positions;  /* uint32 [tokens]: position of each token inside its document */
    int64_t tokens;
    int64_t heads;
    int64_t head_dim;        /* even */
    int64_t token_stride;
    int64_t head_stride;
    float theta;
    int32_t _pad0;
} KormoRopeArgs;

/* ---------------------------------------------------------------- Attention
 * Masked flash attention over packed rows: `batch` rows of `seq_len` tokens; token t of row b is
 * element b*seq_len + t of every token-indexed tensor. Query i attends key j of the same row iff
 * j <= i (causal) and, for the document-masked variants, doc_ids[i] == doc_ids[j] (with
 * cross_lingual, or (doc_ids[i] ^ doc_ids[j]) has bit 31 set: another language). doc_ids (bits 0-30
 * with cross_lingual) must be non-decreasing inside a row (documents are contiguous spans,
 * numbered in order): the kernels skip tiles using that order, except under cross_lingual,
 * where earlier tiles may hold visible documents and only the causal bound applies. GQA: query head h reads kv head h / (heads_q / heads_kv).
 * lse (f32 [heads_q, batch*seq_len]) holds the natural-log sum of exp of the scaled scores, saved for
 * the backward. Strides are in elements: token stride and head stride per tensor. */
typedef struct KormoAttentionFwdArgs {
    kormo_devptr q;        /* bf16 [tokens, heads_q, head_dim] */
    kormo_devptr k;        /* bf16 [tokens, heads_kv, head_dim] */
    kormo_devptr v;        /* bf16 [tokens, heads_kv, head_dim] */
    kormo_devptr o;        /* bf16 [tokens, heads_q, head_dim] */
    kormo_devptr lse;      /* f32 [heads_q, tokens] */
    kormo_devptr doc_ids;  /* uint32 [tokens]; read only by the doc-masked variants */
    int64_t batch;
    int64_t seq_len;
    int64_t heads_q;
    int64_t heads_kv;
    int64_t q_token_stride, q_head_stride;
    int64_t k_token_stride, k_head_stride;
    int64_t v_token_stride, v_head_stride;
    int64_t o_token_stride, o_head_stride;
    float softmax_scale;   /* usually 1/sqrt(head_dim) */
    int32_t head_dim;      /* must equal the variant's compiled head dim */
    int32_t cross_lingual; /* doc-masked variants: bit 31 of a doc id is its document's language and a
                              query also sees earlier documents of the other language (XLDA) */
    int32_t _pad0;
} KormoAttentionFwdArgs;

/* Backward. Three launches in order:
 *  1. kormo_attention_bwd_prepare: delta[h, t] = sum_d dO*O (f32 [heads_q, tokens]); zeroes dq_accum.
 *  2. kormo_attention_bwd_<variant>: one block per (64-key tile, kv head, row); accumulates dK, dV
 *     for its keys over every query head of the group, and adds dQ contributions into dq_accum with
 *     f32 atomics.
 *  3. kormo_attention_bwd_finish: dq = bf16(dq_accum).
 * Deterministic backward (no atomics, bitwise the same for any block schedule), three launches:
 *  1. kormo_attention_bwd_prepare with dq_accum = 0 (delta only).
 *  2. kormo_attention_bwd_dkdv_<variant>: step 2 above without dQ.
 *  3. kormo_attention_bwd_dq_<variant>: one block per (64-query tile, query head, row) sums its
 *     queries' dQ over the key tiles in a fixed order and writes dq (bf16) directly. */
typedef struct KormoAttentionBwdArgs {
    kormo_devptr q, k, v, o, dout;  /* bf16, as in the forward (dout strides = o strides) */
    kormo_devptr lse;               /* f32 [heads_q, tokens] from the forward */
    kormo_devptr delta;             /* f32 [heads_q, tokens] scratch written by step 1 */
    kormo_devptr dq_accum;          /* f32 [tokens, heads_q, head_dim] contiguous scratch */
    kormo_devptr dq;                /* bf16, q strides */
    kormo_devptr dk;                /* bf16, k strides */
    kormo_devptr dv;                /* bf16, v strides */
    kormo_devptr doc_ids;           /* uint32 [tokens] */
    int64_t batch;
    int64_t seq_len;
    int64_t heads_q;
    int64_t heads_kv;
    int64_t q_token_stride, q_head_stride;
    int64_t k_token_stride, k_head_stride;
    int64_t v_token_stride, v_head_stride;
    int64_t o_token_stride, o_head_stride;
    float softmax_scale;
    int32_t head_dim;
    int32_t cross_lingual;          /* as in KormoAttentionFwdArgs */
    int32_t _pad0;
} KormoAttentionBwdArgs;

/* Hopper (sm_90a) forward: the same attention as KormoAttentionFwdArgs, its tiles brought in by
 * the tensor memory accelerator (TMA). A tensor map is the 128-byte descriptor of a global tensor
 * and its tile ("box") shape: on a device the CUDA driver encodes it (cuTensorMapEncodeTiled); the
 * CPU emulator writes its own readable form into the same bytes. The kernel takes the struct as a
 * __grid_constant__ parameter, so the maps stay in parameter space where TMA reads them.
 *   q, k, v:  4-D bf16 maps of dims {head_dim, heads, seq_len, batch} (strides: head, token, row)
 *             with the 128-byte swizzle (head dim 128: two boxes per tile); boxes of {64, 1, 128, 1}
 *             for k and v, {64, heads_per_block, 128 / heads_per_block, 1} for q;
 *   doc_ids:  1-D uint32 map over the batch*seq_len tokens, boxes of 128 (doc-masked variants). */
typedef struct KormoTensorMap {
    uint64_t opaque[16] __attribute__((aligned(64))); /* 64-byte aligned, as CUtensorMap */
} KormoTensorMap;

typedef struct KormoAttentionFwdSm90Args {
    KormoTensorMap q_map;
    KormoTensorMap k_map;
    KormoTensorMap v_map;
    KormoTensorMap doc_map;
    KormoAttentionFwdArgs a;
    int32_t heads_per_block; /* query heads of one GQA group per block (q_map's box); divides 128 */
    int32_t _pad0;
} KormoAttentionFwdSm90Args;

/* Hopper (sm_90a) backward, the step between kormo_attention_bwd_prepare and _finish (or, for
 * the deterministic backward, the dK/dV pass before the dQ pass): one block per (128-key tile,
 * kv head, row). Maps as for the forward, with 64-row boxes for the query-side tiles:
 *   q_map, dout_map: 4-D bf16 {head_dim, heads_q, seq_len, batch}, boxes {64, 1, 64, 1}, swizzled;
 *   k_map, v_map:    4-D bf16 {head_dim, heads_kv, seq_len, batch}, boxes {64, 1, 128, 1}, swizzled;
 *   lse_map, delta_map: 1-D f32 over heads_q*tokens, boxes of 64;
 *   q_doc_map / k_doc_map: 1-D uint32 over tokens, boxes of 64 / 128 (doc-masked variants). */
typedef struct KormoAttentionBwdSm90Args {
    KormoTensorMap q_map;
    KormoTensorMap k_map;
    KormoTensorMap v_map;
    KormoTensorMap dout_map;
    KormoTensorMap lse_map;
    KormoTensorMap delta_map;
    KormoTensorMap q_doc_map;
    KormoTensorMap k_doc_map;
    KormoAttentionBwdArgs a;
} KormoAttentionBwdSm90Args;

/* ---------------------------------------------------------------- Cross entropy
 * Per row r with weight w = loss_weights[r] and z = z_loss:
 * loss[r] = w * (lse_r - logit[r, target_r] + z * lse_r^2) and, in the same kernel,
 * dlogits[r, :] = w * grad_scale * (softmax(logits[r]) * (1 + 2 z lse_r) - onehot(target_r)).
 * grad_scale is read from device memory (e.g. 1 / total loss weight of the step). dlogits may alias
 * logits (the row is fully read before it is overwritten). Rows with w == 0 get zero gradient and
 * zero loss. One block per row. */
typedef struct KormoCrossEntropyArgs {
    kormo_devptr logits;       /* bf16 [rows, vocab], row stride logits_row_stride */
    kormo_devptr targets;      /* uint32 [rows], each < vocab when its weight is non-zero */
    kormo_devptr loss_weights; /* f32 [rows] */
    kormo_devptr grad_scale;   /* f32 [1], device scalar */
    kormo_devptr loss;         /* f32 [rows]: weighted loss per row */
    kormo_devptr lse;          /* optional f32 [rows] */
    kormo_devptr dlogits;      /* optional bf16 [rows, vocab], row stride dlogits_row_stride */
    int64_t rows;
    int64_t vocab;
    int64_t logits_row_stride;
    int64_t dlogits_row_stride;
    float z_loss;              /* 0 disables the z-loss term */
    int32_t _pad0;
} KormoCrossEntropyArgs;

/* ---------------------------------------------------------------- Embedding
 * Forward: out[t, :] = table[tokens[t], :]. Backward: dtable[tokens[t], :] += dout[t, :] (dtable is
 * f32 and is NOT cleared: the caller zeroes it once per accumulation window), by
 * kormo_embedding_bwd with f32 atomics (summation order depends on scheduling) or by
 * kormo_embedding_bwd_owned without (each dtable element has one owning thread, which adds its
 * tokens in increasing t: bitwise reproducible; any grid of x owners times y column groups,
 * blocks of at most 1024 threads). */
typedef struct KormoEmbeddingArgs {
    kormo_devptr tokens;     /* uint32 [num_tokens], each < vocab */
    kormo_devptr table;      /* fwd: bf16 [vocab, dim]; bwd: f32 dtable [vocab, dim]; row stride table_row_stride */
    kormo_devptr rows;       /* fwd: bf16 out; bwd: bf16 dout. [num_tokens, dim], row stride rows_row_stride */
    int64_t num_tokens;
    int64_t vocab;
    int64_t dim;
    int64_t table_row_stride;
    int64_t rows_row_stride;
} KormoEmbeddingArgs;

/* ---------------------------------------------------------------- AdamW
 * One launch per tensor (contiguous, n elements). With g = grad * (*clip_scale):
 *   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
 *   master -= lr * ( (m / bias_correction1) / (sqrt(v / bias_correction2) + eps) + wd * master )
 *   weight = bf16(master)        (when weight != 0)
 * lr and clip_scale live in device memory. wd is applied only when apply_weight_decay != 0
 * (norm weights and, by recipe, embeddings are excluded by the caller's per-tensor flag). */
typedef struct KormoAdamwArgs {
    kormo_devptr master;     /* f32 [n] */
    kormo_devptr grad;       /* f32 [n] */
    kormo_devptr exp_avg;    /* f32 [n] */
    kormo_devptr exp_avg_sq; /* f32 [n] */
    kormo_devptr weight;     /* optional bf16 [n], written from master */
    kormo_devptr lr;         /* f32 [1] */
    kormo_devptr clip_scale; /* f32 [1]: multiplier of the gradient, 1 when not clipping */
    int64_t n;
    float beta1;
    float beta2;
    float eps;
    float weight_decay;
    float bias_correction1;  /* 1 - beta1^step, computed by the host (step is known there) */
    float bias_correction2;  /* 1 - beta2^step */
    int32_t apply_weight_decay;
    int32_t _pad0;
} KormoAdamwArgs;

/* Gradient-norm clipping without a host sync: kormo_grad_sumsq adds sum(grad^2) of one tensor into
 * *sumsq (f32 atomics; the caller zeroes it once per step); kormo_clip_scale then writes
 * *clip_scale = max_norm / (norm + 1e-6) when norm = sqrt(*sumsq) > max_norm, else 1 (torch's
 * clip_grad_norm_ rule), with a single thread. */
typedef struct KormoGradSumsqArgs {
    kormo_devptr grad;   /* f32 [n] */
    kormo_devptr sumsq;  /* f32 [1] */
    int64_t n;
} KormoGradSumsqArgs;

/* Deterministic form of kormo_grad_sumsq (no atomics): kormo_grad_sumsq_partial runs `blocks`
 * blocks, each writing the sum of squares of its grid-stride share of grad to partial[block];
 * kormo_grad_sumsq_reduce (one block) then adds sum(partial) into *sumsq in a fixed order. Both
 * take the same struct; the result is bitwise the same for any block schedule. */
typedef struct KormoGradSumsqPartialArgs {
    kormo_devptr grad;    /* f32 [n] */
    kormo_devptr partial; /* f32 [blocks] scratch */
    kormo_devptr sumsq;   /* f32 [1] */
    int64_t n;
    int64_t blocks;       /* grid of kormo_grad_sumsq_partial, >= 1 */
} KormoGradSumsqPartialArgs;

typedef struct KormoClipScaleArgs {
    kormo_devptr sumsq;      /* f32 [1] */
    kormo_devptr clip_scale; /* f32 [1] */
    float max_norm;          /* <= 0 disables clipping (scale 1) */
    int32_t _pad0;
} KormoClipScaleArgs;

/* ---------------------------------------------------------------- Elementwise
 * Whole-buffer ops of the Ops backend (fill, scale, copy with dtype conversion, add) over n
 * elements, each buffer bf16 or f32 (field values from KormoDtype), math in f32, the store rounded
 * to dst's dtype:
 *   FILL:  dst[i] = value            SCALE: dst[i] = value * dst[i]
 *   COPY:  dst[i] = src[i]           ADD:   dst[i] = dst[i] + src[i]
 * COPY with different dtypes is the conversion the CUDA backend uses when a buffer changes dtype.
 * dst and src must not overlap unless they are the same buffer with the same dtype. */
typedef enum KormoDtype { KORMO_DTYPE_BF16 = 0, KORMO_DTYPE_F32 = 1 } KormoDtype;
typedef enum KormoElementwiseOp {
    KORMO_ELEMENTWISE_FILL = 0,
    KORMO_ELEMENTWISE_SCALE = 1,
    KORMO_ELEMENTWISE_COPY = 2,
    KORMO_ELEMENTWISE_ADD = 3
} KormoElementwiseOp;

typedef struct KormoElementwiseArgs {
    kormo_devptr dst;    /* [n] of dst_dtype */
    kormo_devptr src;    /* [n] of src_dtype; COPY and ADD only */
    int64_t n;
    int32_t op;          /* a KormoElementwiseOp */
    int32_t dst_dtype;   /* a KormoDtype */
    int32_t src_dtype;   /* a KormoDtype */
    float value;         /* FILL and SCALE */
} KormoElementwiseArgs;

#endif /* KORMO_KERNELS_H */
