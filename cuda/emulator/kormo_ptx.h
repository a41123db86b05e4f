// Emulator implementations of the tensor-core wrappers in kormo_device.cuh (mma.sync m16n8k16
// bf16 -> f32, ldmatrix .x4 with and without .trans, cp.async, ex2.approx), written from the PTX ISA's
// per-lane fragment layouts so that the kernels' fragment and index math is checked on the CPU.
// Warp collectives go through per-warp exchange buffers between two __syncwarp barriers, like
// __shfl_xor_sync in kormo_emulator.h: every lane of the warp must call them (as on the device).
// cp.async lands a thread's copies only at the cp_async_wait that retires their group, so reads
// before the wait see garbage; reads after it but before the following __syncthreads race.
#pragma once

#include <cstdio>
#include <cstdlib>

#include "cuda_bf16.h"
#include "kormo_emulator.h"

namespace kormo {
namespace ptx {

inline uint32_t emu_frag_exchange[32][32][6];     // [warp][lane]: a[0..3], b0, b1
inline const unsigned char* emu_row_exchange[32][32];  // [warp][lane]: ldmatrix row address

// Aborts unless [p, p + bytes) lies inside the launch's dynamic shared memory (every shared
// operand of the attention kernels does) and p is aligned to `bytes`.
inline void emu_check_smem(const char* what, const void* p, size_t bytes) {
    const uintptr_t addr = reinterpret_cast<uintptr_t>(p), lo = reinterpret_cast<uintptr_t>(kormo_emu_dynamic_smem);
    if (addr % bytes != 0 || addr < lo || addr + bytes > lo + kormo_emu_dynamic_smem_bytes) {
        std::fprintf(stderr, "%s: shared address %p (+%zu bytes) misaligned or outside the %zu-byte dynamic shared memory\n",
                     what, p, bytes, kormo_emu_dynamic_smem_bytes);
        std::abort();
    }
}

inline float emu_bf16_lo(uint32_t r) { return __bfloat162float(__nv_bfloat16{uint16_t(r & 0xffffu)}); }
inline float emu_bf16_hi(uint32_t r) { return __bfloat162float(__nv_bfloat16{uint16_t(r >> 16)}); }
inline float emu_bf16_half(uint32_t r, int half) { return half ? emu_bf16_hi(r) : emu_bf16_lo(r); }

// d += A B. Every lane publishes its fragments; then each lane rebuilds the elements of A and B
// it needs from the owners the PTX layout names and computes its own four outputs.
inline void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    const unsigned warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    uint32_t* mine = emu_frag_exchange[warp][lane];
    for (int i = 0; i < 4; ++i) mine[i] = a[i];
    mine[4] = b0;
    mine[5] = b1;
    __syncwarp();
    // A[row][k]: lane (row % 8) * 4 + (k % 8) / 2, register (row >= 8) + 2 (k >= 8), half k % 2.
    auto A = [&](int row, int k) {
        const uint32_t* owner = emu_frag_exchange[warp][(row % 8) * 4 + (k % 8) / 2];
        return emu_bf16_half(owner[(row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)], k % 2);
    };
    // B[k][col]: lane col * 4 + (k % 8) / 2, register b0 for k < 8 else b1, half k % 2.
    auto B = [&](int k, int col) {
        const uint32_t* owner = emu_frag_exchange[warp][col * 4 + (k % 8) / 2];
        return emu_bf16_half(owner[4 + (k >= 8 ? 1 : 0)], k % 2);
    };
    const int g = lane >> 2, t = lane & 3;
    float out[4];
    for (int i = 0; i < 4; ++i) {
        const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
        float acc = d[i];
        for (int k = 0; k < 16; ++k) acc += A(row, k) * B(k, col);
        out[i] = acc;
    }
    __syncwarp();
    for (int i = 0; i < 4; ++i) d[i] = out[i];
}

template <bool TRANS>
inline void emu_ldmatrix_x4(uint32_t (&r)[4], const void* row) {
    const unsigned warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    emu_check_smem("ldmatrix", row, 16);
    emu_row_exchange[warp][lane] = static_cast<const unsigned char*>(row);
    __syncwarp();
    auto element = [&](int matrix, int mrow, int mcol) {  // element (mrow, mcol) of 8x8 matrix `matrix`
        uint16_t bits;
        std::memcpy(&bits, emu_row_exchange[warp][matrix * 8 + mrow] + 2 * mcol, 2);
        return uint32_t(bits);
    };
    uint32_t out[4];
    for (int m = 0; m < 4; ++m) {
        if (TRANS)
            out[m] = element(m, 2 * (lane & 3), lane >> 2) | element(m, 2 * (lane & 3) + 1, lane >> 2) << 16;
        else
            out[m] = element(m, lane >> 2, 2 * (lane & 3)) | element(m, lane >> 2, 2 * (lane & 3) + 1) << 16;
    }
    __syncwarp();
    for (int m = 0; m < 4; ++m) r[m] = out[m];
}

inline void ldmatrix_x4(uint32_t (&r)[4], const void* row) { emu_ldmatrix_x4<false>(r, row); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) { emu_ldmatrix_x4<true>(r, row); }

// cp.async: the source is read at issue, but the shared-memory write is held back until a
// cp_async_wait<N> of the issuing thread retires its group (commit groups as in PTX), so a kernel
// that reads a tile before waiting for it sees the garbage pattern. The thread_local queue is
// emptied at the start of every block (kormo_emu_reset_thread_state).
struct EmuPendingCopy {
    unsigned char* dst;
    unsigned char bytes[16];
    int size;
    long group;
};
inline thread_local std::vector<EmuPendingCopy> emu_pending_copies;
inline thread_local long emu_committed_groups = 0;

inline void emu_cp_async(void* dst, const void* src, bool valid, int size) {
    EmuPendingCopy c{static_cast<unsigned char*>(dst), {}, size, emu_committed_groups};
    if (valid) std::memcpy(c.bytes, src, size);  // else zero-filled, as with src-size 0
    emu_pending_copies.push_back(c);
}

inline void cp_async_16(void* dst, const void* src, bool valid) {
    emu_check_smem("cp.async", dst, 16);
    if (reinterpret_cast<uintptr_t>(src) % 16 != 0) {
        std::fprintf(stderr, "cp.async: misaligned global source %p\n", src);
        std::abort();
    }
    emu_cp_async(dst, src, valid, 16);
}

inline void cp_async_4(void* dst, const void* src, bool valid) {
    emu_check_smem("cp.async", dst, 4);
    if (reinterpret_cast<uintptr_t>(src) % 4 != 0) {
        std::fprintf(stderr, "cp.async: misaligned 4-byte global source %p\n", src);
        std::abort();
    }
    emu_cp_async(dst, src, valid, 4);
}

inline void cp_async_commit() { ++emu_committed_groups; }

// Lands every copy of the committed groups except the newest N (copies not yet committed stay).
template <int N>
inline void cp_async_wait() {
    const long retire_below = emu_committed_groups - N;
    std::vector<EmuPendingCopy> keep;
    for (const EmuPendingCopy& c : emu_pending_copies) {
        if (c.group < retire_below)
            std::memcpy(c.dst, c.bytes, c.size);
        else
            keep.push_back(c);
    }
    emu_pending_copies.swap(keep);
}

inline void atomic_add_f32x2(float* dst, float a, float b) {
    if (reinterpret_cast<uintptr_t>(dst) % 8 != 0) {
        std::fprintf(stderr, "atomic_add_f32x2: %p is not 8-byte aligned\n", static_cast<void*>(dst));
        std::abort();
    }
    atomicAdd(dst, a);
    atomicAdd(dst + 1, b);
}

// ex2.approx.ftz: within 2^-22 relative of 2^x; flushing subnormal results is not modelled.
inline float exp2_approx(float x) { return std::exp2(x); }

inline uint32_t pack_bf16x2(float lo, float hi) {
    return uint32_t(__float2bfloat16_rn(lo).bits) | uint32_t(__float2bfloat16_rn(hi).bits) << 16;
}

}  // namespace ptx
}  // namespace kormo
