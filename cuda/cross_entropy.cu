// Cross entropy over a large vocabulary (125K) with per-token loss weights and optional z-loss,
// writing dlogits in the same kernel. Design: one block per row. Pass 1 keeps a per-thread online (max, sum of exp) over
// its strided columns, merged across the block; pass 2 re-reads the row (from L2 for 250 KB bf16
// rows) and writes w * grad_scale * (softmax - onehot) directly as bf16: no f32 copy of the
// softmax ever exists. dlogits may alias logits: each element is read and then written by the
// same thread, and the target logit is read before pass 2.
#include "kormo_device.cuh"

using namespace kormo;

extern "C" __global__ void kormo_cross_entropy(KormoCrossEntropyArgs a) {
    __shared__ float scratch[32];
    const int64_t row = blockIdx.x;
    if (row >= a.rows) return;
    const __nv_bfloat16* x = dev_ptr<const __nv_bfloat16>(a.logits) + row * a.logits_row_stride;
    __nv_bfloat16* dx = a.dlogits ? dev_ptr<__nv_bfloat16>(a.dlogits) + row * a.dlogits_row_stride : nullptr;
    const float w = dev_ptr<const float>(a.loss_weights)[row];
    const uint32_t target = dev_ptr<const uint32_t>(a.targets)[row];

    if (w == 0.0f) {  // ignored token: no loss, zero gradient, target not read
        if (dx)
            for (int64_t c = threadIdx.x; c < a.vocab; c += blockDim.x) dx[c] = to_bf16(0.0f);
        if (threadIdx.x == 0) {
            dev_ptr<float>(a.loss)[row] = 0.0f;
            if (a.lse) dev_ptr<float>(a.lse)[row] = 0.0f;
        }
        return;
    }
    const bool target_ok = target < a.vocab;
    const float target_logit = target_ok ? to_f32(x[target]) : NAN;  // a bad target poisons the loss

    float m = -INFINITY, s = 0.0f;
    for (int64_t c = threadIdx.x; c < a.vocab; c += blockDim.x) {
        const float v = to_f32(x[c]);
        if (v > m) {
            s = s * __expf(m - v) + 1.0f;
            m = v;
        } else {
            s += __expf(v - m);
        }
    }
    const float row_max = block_max(m, scratch);
    const float row_sum = block_sum(m == -INFINITY ? 0.0f : s * __expf(m - row_max), scratch);
    const float lse = row_max + logf(row_sum);
    if (threadIdx.x == 0) {
        dev_ptr<float>(a.loss)[row] = w * (lse - target_logit + a.z_loss * lse * lse);
        if (a.lse) dev_ptr<float>(a.lse)[row] = lse;
    }
    if (!dx) return;
    const float g = w * *dev_ptr<const float>(a.grad_scale);
    const float p_factor = 1.0f + 2.0f * a.z_loss * lse;  // d(z lse^2)/dlogit = 2 z lse p
    for (int64_t c = threadIdx.x; c < a.vocab; c += blockDim.x) {
        const float p = __expf(to_f32(x[c]) - lse);
        dx[c] = to_bf16(g * (p * p_factor - (c == static_cast<int64_t>(target) ? 1.0f : 0.0f)));
    }
}
