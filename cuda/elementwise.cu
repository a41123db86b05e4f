// Whole-buffer elementwise ops of the CUDA Ops backend: fill, scale, copy (with bf16 <-> f32
// conversion) and add, over buffers of either dtype. Design: one grid-stride kernel with the op and
// the dtypes as arguments rather than one kernel per combination: these ops are rare (gradient
// zeroing, clipping, residual copies) and memory-bound, so the uniform branch costs nothing
// measurable, and one entry point keeps the launcher and the tests small.
#include "kormo_device.cuh"

using namespace kormo;

namespace {

__device__ __forceinline__ float load(kormo_devptr base, int32_t dtype, int64_t i) {
    return dtype == KORMO_DTYPE_F32 ? dev_ptr<const float>(base)[i] : to_f32(dev_ptr<const __nv_bfloat16>(base)[i]);
}

__device__ __forceinline__ void store(kormo_devptr base, int32_t dtype, int64_t i, float v) {
    if (dtype == KORMO_DTYPE_F32)
        dev_ptr<float>(base)[i] = v;
    else
        dev_ptr<__nv_bfloat16>(base)[i] = to_bf16(v);
}

}  // namespace

extern "C" __global__ void kormo_elementwise(KormoElementwiseArgs a) {
    KORMO_GRID_STRIDE(i, a.n) {
        float v;
        switch (a.op) {
            case KORMO_ELEMENTWISE_FILL: v = a.value; break;
            case KORMO_ELEMENTWISE_SCALE: v = a.value * load(a.dst, a.dst_dtype, i); break;
            case KORMO_ELEMENTWISE_COPY: v = load(a.src, a.src_dtype, i); break;
            default: v = load(a.dst, a.dst_dtype, i) + load(a.src, a.src_dtype, i); break;
        }
        store(a.dst, a.dst_dtype, i, v);
    }
}
