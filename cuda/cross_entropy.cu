// Cross entropy over a large vocabulary (125K) with per-token loss weights and optional z-loss,
// writing dlogits in the same kernel. Design: one block per row. Each row is split at 16-byte
// boundaries into a scalar head (< 8 elements up to the first aligned address), a body of
// 16-byte vectors (8 bf16) and a scalar tail (< 8): any row stride and base address work, and a
// row whose logits and dlogits differ in alignment phase writes its gradient with 2-byte stores.
// Pass 1 keeps a per-thread online (max, sum of exp), updated without branches once per vector
// (max of the 8, one rescale, 8 exps relative to the new max), merged across the block; pass 2
// re-reads the row and writes w * grad_scale * (softmax - onehot) directly as bf16: no f32 copy
// of the softmax ever exists. Pass 2 walks each thread's vectors last to first, so the part of
// the 250 KB row that pass 1 read most recently (the likeliest to still be in L2) is re-read
// first. Loads are issued CE_LOADS_PER_STEP vectors at a time before they are used.
// dlogits may alias logits: each element is read and then written by the same thread (a step's
// loads all precede its stores), and the target logit is read by every thread before the block
// reductions, whose barriers order it before any write of pass 2.
#include "kormo_device.cuh"

using namespace kormo;

#define CE_LOADS_PER_STEP 4

namespace {

// A row of n bf16 starting at p: `head` scalar elements, then `nvec` aligned 16-byte vectors,
// then the scalar rest. A p that is not even 2-byte aligned never reaches a 16-byte boundary
// in whole elements: all scalar.
struct RowSplit {
    int64_t head;
    int64_t nvec;
};

__device__ __forceinline__ RowSplit split_row(const void* p, int64_t n) {
    const int64_t mis = static_cast<int64_t>(reinterpret_cast<uintptr_t>(p) & 15u);
    int64_t head = (mis & 1) ? n : ((16 - mis) & 15) / 2;
    head = head < n ? head : n;
    return {head, (n - head) / 8};
}

// Element index of the j-th scalar element of a split row: the head first, then the tail.
__device__ __forceinline__ int64_t scalar_index(const RowSplit& r, int64_t j) {
    return j < r.head ? j : r.head + 8 * r.nvec + (j - r.head);
}

// Online (max, sum of exp relative to max). A max of -inf shifts by 0 instead, so that a run of
// -inf logits adds exp(-inf) = 0 rather than exp(-inf - -inf) = NaN; NaN logits make s NaN.
struct OnlineSoftmax {
    float m = -INFINITY, s = 0.0f;

    __device__ __forceinline__ void add8(const float (&v)[8]) {
        float mx = v[0];
#pragma unroll
        for (int e = 1; e < 8; ++e) mx = fmaxf(mx, v[e]);
        const float mn = fmaxf(m, mx);
        const float shift = mn == -INFINITY ? 0.0f : mn;
        float sum = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; ++e) sum += __expf(v[e] - shift);
        s = s * __expf(m - shift) + sum;
        m = mn;
    }

    __device__ __forceinline__ void add1(float v) {
        const float mn = fmaxf(m, v);
        const float shift = mn == -INFINITY ? 0.0f : mn;
        s = s * __expf(m - shift) + __expf(v - shift);
        m = mn;
    }
};

}  // namespace

extern "C" __global__ void kormo_cross_entropy(KormoCrossEntropyArgs a) {
    __shared__ float scratch[32];
    const int64_t row = blockIdx.x;
    if (row >= a.rows) return;
    const int64_t n = a.vocab;
    const int64_t tid = threadIdx.x, bs = blockDim.x;
    const __nv_bfloat16* x = dev_ptr<const __nv_bfloat16>(a.logits) + row * a.logits_row_stride;
    __nv_bfloat16* dx = a.dlogits ? dev_ptr<__nv_bfloat16>(a.dlogits) + row * a.dlogits_row_stride : nullptr;
    const float w = dev_ptr<const float>(a.loss_weights)[row];
    const uint32_t target = dev_ptr<const uint32_t>(a.targets)[row];

    if (w == 0.0f) {  // ignored token: no loss, zero gradient, target not read
        if (dx) {
            const RowSplit d = split_row(dx, n);
            const uint4 zero = make_uint4(0u, 0u, 0u, 0u);  // bf16 +0.0 is all-zero bits
            for (int64_t k = tid; k < d.nvec; k += bs) store_16(dx + d.head + 8 * k, zero);
            for (int64_t j = tid; j < n - 8 * d.nvec; j += bs) dx[scalar_index(d, j)] = to_bf16(0.0f);
        }
        if (tid == 0) {
            dev_ptr<float>(a.loss)[row] = 0.0f;
            if (a.lse) dev_ptr<float>(a.lse)[row] = 0.0f;
        }
        return;
    }
    const bool target_ok = target < n;
    const float target_logit = target_ok ? to_f32(x[target]) : NAN;  // a bad target poisons the loss

    // Pass 1: online max / sum of exp over this thread's vectors and scalar elements.
    const RowSplit r = split_row(x, n);
    const __nv_bfloat16* xb = x + r.head;  // 16-byte aligned when r.nvec > 0
    OnlineSoftmax acc;
    {
        int64_t k = tid;
        for (; k + (CE_LOADS_PER_STEP - 1) * bs < r.nvec; k += CE_LOADS_PER_STEP * bs) {
            uint4 u[CE_LOADS_PER_STEP];
#pragma unroll
            for (int j = 0; j < CE_LOADS_PER_STEP; ++j) u[j] = load_16(xb + 8 * (k + j * bs));
#pragma unroll
            for (int j = 0; j < CE_LOADS_PER_STEP; ++j) {
                float f[8];
                unpack_bf16x8(u[j], f);
                acc.add8(f);
            }
        }
        for (; k < r.nvec; k += bs) {
            float f[8];
            unpack_bf16x8(load_16(xb + 8 * k), f);
            acc.add8(f);
        }
        for (int64_t j = tid; j < n - 8 * r.nvec; j += bs) acc.add1(to_f32(x[scalar_index(r, j)]));
    }
    const float row_max = block_max(acc.m, scratch);
    const float row_sum = block_sum(acc.m == -INFINITY ? 0.0f : acc.s * __expf(acc.m - row_max), scratch);
    const float lse = row_max + logf(row_sum);
    if (tid == 0) {
        dev_ptr<float>(a.loss)[row] = w * (lse - target_logit + a.z_loss * lse * lse);
        if (a.lse) dev_ptr<float>(a.lse)[row] = lse;
    }
    if (!dx) return;

    // Pass 2: dlogits = g * (p * (1 + 2 z lse) - onehot), d(z lse^2)/dlogit = 2 z lse p.
    const float g = w * *dev_ptr<const float>(a.grad_scale);
    const float p_factor = 1.0f + 2.0f * a.z_loss * lse;
    const int64_t tgt = static_cast<int64_t>(target);  // >= n (never matches) when bad
    const RowSplit d = split_row(dx, n);
    if (d.head != r.head) {  // logits and dlogits rows in different 16-byte phases: 2-byte path
        for (int64_t c = tid; c < n; c += bs) {
            const float p = __expf(to_f32(x[c]) - lse);
            dx[c] = to_bf16(g * (p * p_factor - (c == tgt ? 1.0f : 0.0f)));
        }
        return;
    }
    __nv_bfloat16* db = dx + r.head;
    // Vector k covers elements r.head + 8k .. +7. This thread owns k = tid + i * bs, i < count;
    // it walks them from the last to the first.
    const int64_t count = tid < r.nvec ? (r.nvec - tid + bs - 1) / bs : 0;
    auto grad8 = [&](int64_t k, uint4 u) {
        float f[8];
        unpack_bf16x8(u, f);
        const int64_t c0 = r.head + 8 * k;
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            const float p = __expf(f[e] - lse);
            f[e] = g * (p * p_factor - (c0 + e == tgt ? 1.0f : 0.0f));
        }
        store_16(db + 8 * k, pack_bf16x8(f));
    };
    int64_t i = count - 1;
    for (; i >= CE_LOADS_PER_STEP - 1; i -= CE_LOADS_PER_STEP) {
        uint4 u[CE_LOADS_PER_STEP];
#pragma unroll
        for (int j = 0; j < CE_LOADS_PER_STEP; ++j) u[j] = load_16(xb + 8 * (tid + (i - j) * bs));
#pragma unroll
        for (int j = 0; j < CE_LOADS_PER_STEP; ++j) grad8(tid + (i - j) * bs, u[j]);
    }
    for (; i >= 0; --i) grad8(tid + i * bs, load_16(xb + 8 * (tid + i * bs)));
    for (int64_t j = tid; j < n - 8 * r.nvec; j += bs) {
        const int64_t c = scalar_index(r, j);
        const float p = __expf(to_f32(x[c]) - lse);
        dx[c] = to_bf16(g * (p * p_factor - (c == tgt ? 1.0f : 0.0f)));
    }
}
