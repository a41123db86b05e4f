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

// 16-byte vectors of 8 bf16 (element 0 in the low half of .x). p must be 16-byte aligned: callers
// check it (misaligned vector accesses fault on the device; the emulator traps). The emulator
// goes through memcpy so the host compiler's strict aliasing cannot reorder the accesses.
__device__ __forceinline__ bool is_aligned_16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

#ifdef KORMO_EMULATOR
__device__ __forceinline__ float f32_from_bits(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
__device__ __forceinline__ uint32_t bf16x2_bits(float lo, float hi) {
    return uint32_t(to_bf16(lo).bits) | (uint32_t(to_bf16(hi).bits) << 16);
}
__device__ __forceinline__ uint4 load_16(const void* p) {
    if (!is_aligned_16(p)) __builtin_trap();
    uint4 v;
    std::memcpy(&v, p, 16);
    return v;
}
__device__ __forceinline__ void store_16(void* p, uint4 v) {
    if (!is_aligned_16(p)) __builtin_trap();
    std::memcpy(p, &v, 16);
}
#else
__device__ __forceinline__ float f32_from_bits(uint32_t u) { return __uint_as_float(u); }
__device__ __forceinline__ uint32_t bf16x2_bits(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}
__device__ __forceinline__ uint4 load_16(const void* p) { return *reinterpret_cast<const uint4*>(p); }
__device__ __forceinline__ void store_16(void* p, uint4 v) { *reinterpret_cast<uint4*>(p) = v; }
#endif

// The 8 bf16 of a 16-byte vector as floats, and back (round to nearest even).
__device__ __forceinline__ void unpack_bf16x8(uint4 v, float (&f)[8]) {
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        f[2 * k] = f32_from_bits(w[k] << 16);
        f[2 * k + 1] = f32_from_bits(w[k] & 0xffff0000u);
    }
}
__device__ __forceinline__ uint4 pack_bf16x8(const float (&f)[8]) {
    return make_uint4(bf16x2_bits(f[0], f[1]), bf16x2_bits(f[2], f[3]), bf16x2_bits(f[4], f[5]), bf16x2_bits(f[6], f[7]));
}

// Grid-stride loop helper over [0, n) with 64-bit indices.
#define KORMO_GRID_STRIDE(i, n)                                                            \
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
         i += static_cast<int64_t>(gridDim.x) * blockDim.x)

}  // namespace kormo

// ---------------------------------------------------------------------------------------------
// Tensor-core building blocks for the attention kernels (sm_80+): one warp-wide MMA shape,
// ldmatrix fragment loads and cp.async copies. Fragment layouts are the PTX ISA's ("Matrix
// Fragments for mma.m16n8k16 with floating point type"); with groupID g = lane >> 2 and
// threadID_in_group t = lane & 3, packed bf16x2 registers (low half = lower column/row index):
//   A 16x16 (row major): a[0] = A[g][2t..2t+1]   a[1] = A[g+8][2t..]   a[2] = A[g][2t+8..]   a[3] = A[g+8][2t+8..]
//   B 16x8  (col major): b[0] = B[2t..2t+1][g]   b[1] = B[2t+8..2t+9][g]
//   C/D 16x8 (f32):      c[0], c[1] = C[g][2t], C[g][2t+1];   c[2], c[3] = C[g+8][2t], C[g+8][2t+1]
// ldmatrix.x4: lane l gives the shared address of row (l & 7) of 8x8 matrix (l >> 3) (16 bytes
// each); register r[m] of lane l then holds row (l >> 2), columns 2 (l & 3) .. +1 of matrix m,
// or with .trans rows 2 (l & 3) .. +1 of column (l >> 2). The CPU emulator implements the same
// functions in cuda/emulator/kormo_ptx.h from these documented layouts.
#ifdef KORMO_EMULATOR
#include "kormo_ptx.h"
#else
namespace kormo {
namespace ptx {

// d += A B for one m16n8k16 tile, bf16 inputs, f32 accumulation.
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(row)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(row)));
}

// 16-byte asynchronous global -> shared copy; !valid writes 16 zero bytes and reads nothing
// (src must still be a mapped address: callers pass the tile's first row).
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(valid ? 16 : 0)
                 : "memory");
}

// 4-byte variant (cp.async.ca: 4-byte aligned sources, e.g. f32 / uint32 rows of any length).
__device__ __forceinline__ void cp_async_4(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(valid ? 4 : 0)
                 : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Waits until at most N of this thread's committed groups are still in flight. Other threads'
// copies become visible only after a following __syncthreads.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// 2^x with the hardware approximation (max relative error 2^-22, subnormal results flushed
// to 0; 2^-inf = 0), as the attention softmax wants it: no range reduction around it.
__device__ __forceinline__ float exp2_approx(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// dst[0] += a, dst[1] += b in global memory (dst 8-byte aligned): one vector atomic on sm_90+,
// two scalar ones before.
__device__ __forceinline__ void atomic_add_f32x2(float* dst, float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    atomicAdd(reinterpret_cast<float2*>(dst), make_float2(a, b));
#else
    atomicAdd(dst, a);
    atomicAdd(dst + 1, b);
#endif
}

// Two floats as packed bf16x2 (round to nearest even): lo in the low half.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

}  // namespace ptx
}  // namespace kormo
#endif
