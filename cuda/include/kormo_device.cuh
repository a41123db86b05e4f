// kormo_device.cuh: small device helpers shared by every kernel file (bf16 conversion, warp and
// block reductions). Kept tiny on purpose: each kernel file stays readable on its own.
#pragma once

#include <cuda_bf16.h>
#include <stdint.h>

#include "kormo_kernels.h"

// Dynamic shared memory of a kernel as a typed array. The CPU emulator (cuda/emulator/, used by
// rust/cuda/tests/emulated.rs) defines KORMO_EMULATOR and hands out a per-block buffer instead.
#ifdef KORMO_EMULATOR
#define KORMO_DYNAMIC_SMEM(type, name) type* name = reinterpret_cast<type*>(kormo_emu_dynamic_smem)
#else
#define KORMO_DYNAMIC_SMEM(type, name) extern __shared__ __align__(128) type name[]
#endif

namespace kormo {

template <typename T>
__device__ __forceinline__ T* dev_ptr(kormo_devptr p) {
    return reinterpret_cast<T*>(static_cast<uintptr_t>(p));
}

__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ __nv_bfloat16 to_bf16(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// Sum over the whole block; every thread gets the result. `scratch` holds >= 32 floats and may be
// reused right after the call returns (the trailing barrier protects it).
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int num_warps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float total = lane < num_warps ? scratch[lane] : 0.0f;
    total = warp_sum(total);
    __syncthreads();
    return total;
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int num_warps = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float total = lane < num_warps ? scratch[lane] : -INFINITY;
    total = warp_max(total);
    __syncthreads();
    return total;
}

// Grid-stride loop helper over [0, n) with 64-bit indices.
#define KORMO_GRID_STRIDE(i, n)                                                            \
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
         i += static_cast<int64_t>(gridDim.x) * blockDim.x)

}  // namespace kormo
