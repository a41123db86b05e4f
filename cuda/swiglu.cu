// SwiGLU: out = silu(gate) * up, and its backward, elementwise over [rows, cols] (bf16 in/out,
// f32 math). Design: one grid-stride loop over rows*cols; gate/up may be the two halves of a fused
// projection (shared row stride). Memory bound; performance plan: 16-byte vectors per thread.
#include "kormo_device.cuh"

using namespace kormo;

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + __expf(-x)); }

extern "C" __global__ void kormo_swiglu_fwd(KormoSwigluArgs a) {
    const __nv_bfloat16* gate = dev_ptr<const __nv_bfloat16>(a.gate);
    const __nv_bfloat16* up = dev_ptr<const __nv_bfloat16>(a.up);
    __nv_bfloat16* out = dev_ptr<__nv_bfloat16>(a.out);
    KORMO_GRID_STRIDE(idx, a.rows * a.cols) {
        const int64_t r = idx / a.cols, c = idx % a.cols;
        const float g = to_f32(gate[r * a.in_row_stride + c]);
        const float u = to_f32(up[r * a.in_row_stride + c]);
        out[r * a.out_row_stride + c] = to_bf16(g * sigmoid(g) * u);
    }
}

// d/dg silu(g) = s * (1 + g * (1 - s)), s = sigmoid(g)
extern "C" __global__ void kormo_swiglu_bwd(KormoSwigluArgs a) {
    const __nv_bfloat16* gate = dev_ptr<const __nv_bfloat16>(a.gate);
    const __nv_bfloat16* up = dev_ptr<const __nv_bfloat16>(a.up);
    const __nv_bfloat16* dout = dev_ptr<const __nv_bfloat16>(a.out);
    __nv_bfloat16* dgate = dev_ptr<__nv_bfloat16>(a.dgate);
    __nv_bfloat16* dup = dev_ptr<__nv_bfloat16>(a.dup);
    KORMO_GRID_STRIDE(idx, a.rows * a.cols) {
        const int64_t r = idx / a.cols, c = idx % a.cols;
        const int64_t in = r * a.in_row_stride + c;
        const float g = to_f32(gate[in]);
        const float u = to_f32(up[in]);
        const float d = to_f32(dout[r * a.out_row_stride + c]);
        const float s = sigmoid(g);
        dgate[in] = to_bf16(d * u * s * (1.0f + g * (1.0f - s)));
        dup[in] = to_bf16(d * g * s);
    }
}
