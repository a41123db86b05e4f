// AdamW step over one tensor (f32 master weights and moments, bf16 working copy written back),
// plus the two kernels that make gradient-norm clipping sync-free.
// Design: everything that changes per step without the host's knowledge (lr after the schedule,
// the clip scale) is read from device memory, so a whole optimizer step is launched without a
// host round trip. Decoupled weight decay (AdamW), bias corrections precomputed by the host.
// The sum of squares has two forms: kormo_grad_sumsq adds each block's sum into one f32 with an
// atomic (the order of the blocks' additions, hence the rounding, depends on scheduling), and the
// deterministic pair kormo_grad_sumsq_partial + kormo_grad_sumsq_reduce (CudaOps' deterministic
// mode): each block writes its sum to its own slot, then one block adds the slots in a fixed tree
// order. Within a block, both sum a fixed set of elements per thread (the grid depends on n only)
// through block_sum's fixed tree, so the pair's result depends on nothing but the data and n.
#include "kormo_device.cuh"

using namespace kormo;

extern "C" __global__ void kormo_adamw_step(KormoAdamwArgs a) {
    float* master = dev_ptr<float>(a.master);
    const float* grad = dev_ptr<const float>(a.grad);
    float* m = dev_ptr<float>(a.exp_avg);
    float* v = dev_ptr<float>(a.exp_avg_sq);
    __nv_bfloat16* weight = a.weight ? dev_ptr<__nv_bfloat16>(a.weight) : nullptr;
    const float lr = *dev_ptr<const float>(a.lr);
    const float clip = *dev_ptr<const float>(a.clip_scale);
    const float wd = a.apply_weight_decay ? a.weight_decay : 0.0f;
    KORMO_GRID_STRIDE(i, a.n) {
        const float g = grad[i] * clip;
        const float mi = a.beta1 * m[i] + (1.0f - a.beta1) * g;
        const float vi = a.beta2 * v[i] + (1.0f - a.beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        const float denom = sqrtf(vi / a.bias_correction2) + a.eps;
        float p = master[i];
        p -= lr * ((mi / a.bias_correction1) / denom + wd * p);
        master[i] = p;
        if (weight) weight[i] = to_bf16(p);
    }
}

extern "C" __global__ void kormo_grad_sumsq(KormoGradSumsqArgs a) {
    __shared__ float scratch[32];
    const float* grad = dev_ptr<const float>(a.grad);
    float local = 0.0f;
    KORMO_GRID_STRIDE(i, a.n) local += grad[i] * grad[i];
    const float total = block_sum(local, scratch);
    if (threadIdx.x == 0) atomicAdd(dev_ptr<float>(a.sumsq), total);
}

extern "C" __global__ void kormo_grad_sumsq_partial(KormoGradSumsqPartialArgs a) {
    __shared__ float scratch[32];
    const float* grad = dev_ptr<const float>(a.grad);
    float local = 0.0f;
    KORMO_GRID_STRIDE(i, a.n) local += grad[i] * grad[i];
    const float total = block_sum(local, scratch);
    if (threadIdx.x == 0) dev_ptr<float>(a.partial)[blockIdx.x] = total;
}

// One block: *sumsq += the partial sums of the kormo_grad_sumsq_partial launch, in a fixed order.
extern "C" __global__ void kormo_grad_sumsq_reduce(KormoGradSumsqPartialArgs a) {
    __shared__ float scratch[32];
    if (blockIdx.x != 0) return;
    const float* partial = dev_ptr<const float>(a.partial);
    float local = 0.0f;
    for (int64_t i = threadIdx.x; i < a.blocks; i += blockDim.x) local += partial[i];
    const float total = block_sum(local, scratch);
    if (threadIdx.x == 0) *dev_ptr<float>(a.sumsq) += total;
}

extern "C" __global__ void kormo_clip_scale(KormoClipScaleArgs a) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    // torch's clip_grad_norm_ (and kormo_optim::clip_grad_norm): scale only when the norm exceeds
    // max_norm; a non-finite norm fails the comparison and leaves the gradients unscaled.
    const float norm = sqrtf(*dev_ptr<const float>(a.sumsq));
    *dev_ptr<float>(a.clip_scale) = a.max_norm > 0.0f && norm > a.max_norm ? a.max_norm / (norm + 1e-6f) : 1.0f;
}
