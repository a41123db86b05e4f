// kormo_hopper.cuh: the Hopper (sm_90a) building blocks of kormo's warp-specialized kernels, as
// thin wrappers over their PTX (PTX ISA 8.x: "Asynchronous Warpgroup Level Matrix Multiply",
// "mbarrier", "cp.async.bulk.tensor", "setmaxnreg", "bar"):
// - mbarriers in shared memory: an arrival count plus a transaction byte count; a phase completes
//   when both reach zero, and waiters test the completion of the phase of a given parity;
// - TMA tile loads (cp.async.bulk.tensor) from a tensor map, completing their bytes on an mbarrier;
// - wgmma (warpgroup MMA, m64nNk16 bf16 -> f32): asynchronous; issued between wgmma_fence and
//   wgmma_commit, its accumulators (and register A operand) may be touched again only after the
//   wgmma_wait that retires its group. Shared operands are described by 64-bit matrix descriptors;
//   kormo uses one layout, the 128-byte swizzle (rows of 128 bytes, 16-byte chunk c of row r at
//   c ^ (r % 8), tiles 1024-byte aligned), which is also what TMA's SWIZZLE_128B writes;
// - named barriers (bar.sync / bar.arrive with an id and a thread count) and register
//   reallocation between warpgroups (setmaxnreg).
// The CPU emulator implements the same functions (cuda/emulator/kormo_hopper_emu.h) from the
// same documented semantics, so the kernels' descriptor, swizzle and barrier logic runs in CI.
#pragma once

#include "kormo_device.cuh"

// KORMO_SM90A: compiling the sm_90a cubin (the only pass where wgmma, setmaxnreg and TMA exist);
// the sm_80 cubin and the compute_90 PTX compile the Hopper kernels to a trap.
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define KORMO_SM90A 1
#endif

#ifdef KORMO_EMULATOR
#include "kormo_hopper_emu.h"
#else
namespace kormo {
namespace sm90 {

__device__ __forceinline__ uint32_t smem_u32(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

#ifdef KORMO_SM90A
__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t arrivals) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(arrivals) : "memory");
}
// Makes the initialised barriers visible to the other threads and to the async (TMA) proxy.
__device__ __forceinline__ void fence_barrier_init() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}
// One arrival, and `bytes` more transaction bytes the phase waits for.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(bytes) : "memory");
}
// Blocks until the phase of parity `parity` has completed.
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
    asm volatile(
        "{\n.reg .pred done;\nWAIT:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
        "@!done bra WAIT;\n}\n" ::"r"(smem_u32(bar)),
        "r"(parity)
        : "memory");
}

// TMA: the box of `map` at the coordinates (innermost first) into shared memory at dst; its bytes
// complete on `bar`. Out-of-range elements are written as zeros (and still count).
__device__ __forceinline__ void tma_load_4d(void* dst, const KormoTensorMap* map, uint64_t* bar, int c0, int c1, int c2,
                                            int c3) {
    asm volatile(
        "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, %6}], [%2];\n" ::"r"(
            smem_u32(dst)),
        "l"(map), "r"(smem_u32(bar)), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
        : "memory");
}
__device__ __forceinline__ void tma_load_1d(void* dst, const KormoTensorMap* map, uint64_t* bar, int c0) {
    asm volatile(
        "cp.async.bulk.tensor.1d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3}], [%2];\n" ::"r"(
            smem_u32(dst)),
        "l"(map), "r"(smem_u32(bar)), "r"(c0)
        : "memory");
}

__device__ __forceinline__ void named_bar_sync(int id, int threads) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_bar_arrive(int id, int threads) {
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

template <int N>
__device__ __forceinline__ void reg_alloc() {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void reg_dealloc() {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}

// Makes this thread's ordinary shared-memory stores visible to the async proxy (wgmma operands
// read through descriptors, TMA): between writing a tile and a barrier before a wgmma reads it.
__device__ __forceinline__ void fence_view_async_shared() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Waits until at most N of this warpgroup's committed wgmma groups are in flight.
template <int N>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving reads or writes of the registers of d across a wgmma fence,
// commit or wait (they are in flight in between).
template <int N>
__device__ __forceinline__ void fence_operand(float (&d)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
#endif  // KORMO_SM90A

}  // namespace sm90
}  // namespace kormo

#ifdef KORMO_SM90A
#include "generated/kormo_wgmma.cuh"
#endif
#endif  // KORMO_EMULATOR

namespace kormo {
namespace sm90 {

constexpr int kSwizzleRowBytes = 128;    // one swizzled row: 64 bf16
constexpr int kSwizzleAtomBytes = 1024;  // 8 rows: the period of the XOR pattern

// Shared-memory matrix descriptor with the 128-byte swizzle (PTX ISA "Matrix Descriptor Format"):
// start address, leading and stride byte offsets (each >> 4, 14 bits) and layout type 1 in bits
// 62-63. For a K-major operand (rows of K elements): `sbo` is the distance between groups of 8
// rows (1024 for consecutive rows of 128 bytes), `lbo` is unused. For an MN-major operand (rows
// of MN elements, one per k): `lbo` is the distance between 64-element column blocks and `sbo`
// between groups of 8 k-rows.
__device__ __forceinline__ uint64_t desc_sw128(const void* p, uint32_t lbo, uint32_t sbo) {
    uint64_t d = static_cast<uint64_t>((smem_u32(p) & 0x3FFFF) >> 4);
    d |= static_cast<uint64_t>((lbo >> 4) & 0x3FFF) << 16;
    d |= static_cast<uint64_t>((sbo >> 4) & 0x3FFF) << 32;
    d |= static_cast<uint64_t>(1) << 62;
    return d;
}

}  // namespace sm90
}  // namespace kormo
