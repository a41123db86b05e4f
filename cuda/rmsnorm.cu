// RMSNorm forward/backward (bf16 storage, f32 math).
//
// Design: forward runs one block per row (256 threads striding the hidden width). It optionally
// adds the residual first and writes the sum out (the fused pre-norm residual add), then saves
// rstd for the backward. Backward runs a fixed grid of blocks striding over rows; each block keeps
// its share of dweight in shared memory (f32 [hidden]) and writes one partial row, which
// kormo_rmsnorm_dweight_reduce sums column by column: no atomics, deterministic.
// Performance plan: 16-byte vector loads and keeping the row in registers (one read of x instead
// of two) once the kernels are validated on a device.
#include "kormo_device.cuh"

using namespace kormo;

extern "C" __global__ void kormo_rmsnorm_fwd(KormoRmsNormFwdArgs a) {
    __shared__ float scratch[32];
    const int64_t row = blockIdx.x;
    if (row >= a.rows) return;
    const __nv_bfloat16* x = dev_ptr<const __nv_bfloat16>(a.x) + row * a.x_row_stride;
    const __nv_bfloat16* res =
        a.residual ? dev_ptr<const __nv_bfloat16>(a.residual) + row * a.residual_row_stride : nullptr;
    __nv_bfloat16* res_out =
        a.residual_out ? dev_ptr<__nv_bfloat16>(a.residual_out) + row * a.residual_row_stride : nullptr;
    const __nv_bfloat16* w = dev_ptr<const __nv_bfloat16>(a.weight);
    __nv_bfloat16* y = dev_ptr<__nv_bfloat16>(a.y) + row * a.y_row_stride;

    // The normalised value is the bf16-rounded sum when it is stored, so the backward (which reads
    // the stored sum) differentiates exactly what the forward normalised.
    float sumsq = 0.0f;
    for (int64_t c = threadIdx.x; c < a.hidden; c += blockDim.x) {
        float h = to_f32(x[c]);
        if (res) h = to_f32(to_bf16(h + to_f32(res[c])));
        if (res_out) res_out[c] = to_bf16(h);
        sumsq += h * h;
    }
    const float total = block_sum(sumsq, scratch);
    const float rstd = rsqrtf(total / static_cast<float>(a.hidden) + a.eps);
    if (threadIdx.x == 0) dev_ptr<float>(a.rstd)[row] = rstd;
    for (int64_t c = threadIdx.x; c < a.hidden; c += blockDim.x) {
        float h = to_f32(x[c]);
        if (res) h = to_f32(to_bf16(h + to_f32(res[c])));
        y[c] = to_bf16(h * rstd * to_f32(w[c]));
    }
}

// Dynamic shared memory: hidden floats (this block's dweight share).
extern "C" __global__ void kormo_rmsnorm_bwd(KormoRmsNormBwdArgs a) {
    KORMO_DYNAMIC_SMEM(float, dweight_share);
    __shared__ float scratch[32];
    const __nv_bfloat16* w = dev_ptr<const __nv_bfloat16>(a.weight);
    const float* rstd_all = dev_ptr<const float>(a.rstd);
    for (int64_t c = threadIdx.x; c < a.hidden; c += blockDim.x) dweight_share[c] = 0.0f;
    const float inv_hidden = 1.0f / static_cast<float>(a.hidden);

    for (int64_t row = blockIdx.x; row < a.rows; row += gridDim.x) {
        const __nv_bfloat16* h = dev_ptr<const __nv_bfloat16>(a.h) + row * a.h_row_stride;
        const __nv_bfloat16* dy = dev_ptr<const __nv_bfloat16>(a.dy) + row * a.dy_row_stride;
        const __nv_bfloat16* dres =
            a.dresidual ? dev_ptr<const __nv_bfloat16>(a.dresidual) + row * a.dy_row_stride : nullptr;
        __nv_bfloat16* dh = dev_ptr<__nv_bfloat16>(a.dh) + row * a.dh_row_stride;
        const float rstd = rstd_all[row];

        // mean over the row of xhat * (w*dy), xhat = h*rstd
        float dot = 0.0f;
        for (int64_t c = threadIdx.x; c < a.hidden; c += blockDim.x) {
            const float xhat = to_f32(h[c]) * rstd;
            const float g = to_f32(dy[c]);
            dot += xhat * g * to_f32(w[c]);
            dweight_share[c] += g * xhat;  // column c is only ever touched by this thread
        }
        const float mean_dot = block_sum(dot, scratch) * inv_hidden;
        for (int64_t c = threadIdx.x; c < a.hidden; c += blockDim.x) {
            const float xhat = to_f32(h[c]) * rstd;
            float d = rstd * (to_f32(dy[c]) * to_f32(w[c]) - xhat * mean_dot);
            if (dres) d += to_f32(dres[c]);
            dh[c] = to_bf16(d);
        }
    }
    float* partial = dev_ptr<float>(a.dweight_partial) + static_cast<int64_t>(blockIdx.x) * a.hidden;
    for (int64_t c = threadIdx.x; c < a.hidden; c += blockDim.x) partial[c] = dweight_share[c];
}

extern "C" __global__ void kormo_rmsnorm_dweight_reduce(KormoRmsNormDweightReduceArgs a) {
    const float* partial = dev_ptr<const float>(a.dweight_partial);
    float* dweight = dev_ptr<float>(a.dweight);
    KORMO_GRID_STRIDE(c, a.hidden) {
        float sum = a.accumulate ? dweight[c] : 0.0f;
        for (int64_t r = 0; r < a.partial_rows; ++r) sum += partial[r * a.hidden + c];
        dweight[c] = sum;
    }
}
