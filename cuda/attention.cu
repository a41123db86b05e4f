// Attention backward helpers shared by every variant: the per-row delta = rowsum(dO * O) that
// the FA2 backward needs (computed once instead of per key tile), the zeroing of the f32 dQ
// accumulator (skipped when dq_accum is 0: the deterministic mode writes dQ without it), and its
// final conversion to bf16. The variant kernels themselves (forward and
// backward per head dim x mask) are generated into cuda/generated/ from
// cuda/include/kormo_attention.cuh.
#include "kormo_device.cuh"

using namespace kormo;

// One warp per (token, query head): delta[h, t] = sum_d dO[t,h,d] * O[t,h,d]; dq_accum[t,h,:] = 0
// when dq_accum != 0.
extern "C" __global__ void kormo_attention_bwd_prepare(KormoAttentionBwdArgs a) {
    const int64_t total_tokens = a.batch * a.seq_len;
    const int64_t warps_total = total_tokens * a.heads_q;
    const int lane = threadIdx.x & 31;
    const int64_t first_warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
    const int64_t warp_stride = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
    for (int64_t w = first_warp; w < warps_total; w += warp_stride) {
        const int64_t t = w / a.heads_q;
        const int64_t h = w % a.heads_q;
        const __nv_bfloat16* o = dev_ptr<const __nv_bfloat16>(a.o) + t * a.o_token_stride + h * a.o_head_stride;
        const __nv_bfloat16* dout = dev_ptr<const __nv_bfloat16>(a.dout) + t * a.o_token_stride + h * a.o_head_stride;
        float* dq_accum = a.dq_accum ? dev_ptr<float>(a.dq_accum) + (t * a.heads_q + h) * a.head_dim : nullptr;
        float dot = 0.0f;
        for (int d = lane; d < a.head_dim; d += 32) {
            dot += to_f32(o[d]) * to_f32(dout[d]);
            if (dq_accum) dq_accum[d] = 0.0f;
        }
        dot = warp_sum(dot);
        if (lane == 0) dev_ptr<float>(a.delta)[h * total_tokens + t] = dot;
    }
}

// dq[t, h, d] = bf16(dq_accum[t, h, d]) (the softmax scale was applied when accumulating).
extern "C" __global__ void kormo_attention_bwd_finish(KormoAttentionBwdArgs a) {
    const int64_t total = a.batch * a.seq_len * a.heads_q * a.head_dim;
    const float* dq_accum = dev_ptr<const float>(a.dq_accum);
    __nv_bfloat16* dq = dev_ptr<__nv_bfloat16>(a.dq);
    KORMO_GRID_STRIDE(idx, total) {
        const int64_t d = idx % a.head_dim;
        const int64_t h = (idx / a.head_dim) % a.heads_q;
        const int64_t t = idx / (a.head_dim * a.heads_q);
        dq[t * a.q_token_stride + h * a.q_head_stride + d] = to_bf16(dq_accum[idx]);
    }
}
