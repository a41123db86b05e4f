// Emulator implementations of the Hopper wrappers in kormo_hopper.cuh, written from the PTX ISA's
// descriptions so that the sm_90a kernels' barrier protocol, TMA boxes, descriptors and swizzle
// run on the CPU:
// - mbarrier: arrival count + transaction bytes; a phase completes when both reach zero. TMA
//   copies read global memory when issued but land in shared memory only when a thread's wait
//   returns for the phase they completed, so a kernel that reads a tile before waiting for its
//   barrier sees the previous contents (or the garbage fill).
// - TMA: the emulator's own tensor-map form (EmuTensorMap, written by kormo_emu_encode_tensor_map
//   on the host in place of the driver's opaque bytes): boxes of up to 5 dims, zeros outside the
//   tensor, the 128-byte swizzle applied to the destination address bits.
// - wgmma: queued per thread at issue (a register A operand is gathered from its warp then),
//   executed at the wgmma_wait that retires its group (the warp leaves the wait together), reading the shared operands then through
//   the descriptors (so overwriting an operand before the wait, or reading the accumulators
//   before it, gives wrong results). Each thread computes its own accumulator elements in the
//   m64nN layout (warp w of the warpgroup owns rows 16w..16w+15, as mma.m16n8's C layout).
// - named barriers: counting barriers per id; bar.arrive counts without waiting.
// Every wait gives up after 60 s with a message naming the barrier (a protocol deadlock fails
// the test instead of hanging it). Not modelled: timing, the async proxy's memory ordering.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <vector>

#include "cuda_bf16.h"
#include "kormo_emulator.h"

#define __grid_constant__

namespace kormo {
namespace sm90 {

[[noreturn]] inline void emu_fail(const char* what) {
    std::fprintf(stderr, "kormo emulator (sm90): %s\n", what);
    std::abort();
}

// A shared address is its offset in the launch's dynamic shared memory, which the emulator
// aligns to 1024 bytes: the low address bits (and so the swizzle) match the device's.
inline uint32_t smem_u32(const void* p) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p), lo = reinterpret_cast<uintptr_t>(kormo_emu_dynamic_smem);
    if (a < lo || a >= lo + kormo_emu_dynamic_smem_bytes) emu_fail("address outside the dynamic shared memory");
    return static_cast<uint32_t>(a - lo);
}

// The emulator's tensor map (fits KormoTensorMap's 128 bytes).
struct EmuTensorMap {
    uint64_t magic;
    uint64_t address;
    uint32_t rank, elem_bytes, swizzle_bytes, pad0;
    uint64_t dims[5];
    uint64_t strides[4];  // bytes between consecutive indices of dims 1 .. rank-1
    uint32_t box[5], pad1;
};
static_assert(sizeof(EmuTensorMap) <= sizeof(KormoTensorMap), "EmuTensorMap must fit a KormoTensorMap");
constexpr uint64_t kEmuTensorMapMagic = 0x414d544f4d524f4bull;  // "KORMOTMA"

struct EmuTmaCopy {
    uint32_t dst;
    std::vector<unsigned char> image;  // the destination bytes, swizzle applied
};

struct EmuMbarrier {
    int arrivals = -1;  // -1: never initialised
    int pending = 0;
    int64_t tx = 0;
    uint32_t phase = 0;
    std::vector<EmuTmaCopy> in_flight;  // copies of the current phase
    std::vector<EmuTmaCopy> landing;    // copies of the last completed phase, until a wait lands them
};

struct EmuNamedBarrier {
    int threads = 0, arrived = 0;
    uint64_t generation = 0;
};

// Per-block state, cleared when a new block starts (kormo_emu_block_serial changes).
struct EmuBlockState {
    std::mutex mutex;
    std::condition_variable cv;
    uint64_t serial = ~0ull;
    std::map<uint32_t, EmuMbarrier> mbarriers;
    std::map<int, EmuNamedBarrier> named;
};
inline EmuBlockState emu_block;

inline std::unique_lock<std::mutex> emu_lock() {
    std::unique_lock<std::mutex> lock(emu_block.mutex);
    if (emu_block.serial != kormo_emu_block_serial) {
        emu_block.mbarriers.clear();
        emu_block.named.clear();
        emu_block.serial = kormo_emu_block_serial;
    }
    return lock;
}

template <class Pred>
inline void emu_wait(std::unique_lock<std::mutex>& lock, const char* what, uint32_t which, Pred done) {
    if (!emu_block.cv.wait_for(lock, std::chrono::seconds(60), done)) {
        std::fprintf(stderr, "kormo emulator (sm90): %s %u never completed (deadlock in block (%u, %u, %u), thread %u)\n",
                     what, which, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x);
        std::abort();
    }
}

inline void emu_land(std::vector<EmuTmaCopy>& copies) {
    for (const EmuTmaCopy& c : copies) std::memcpy(kormo_emu_dynamic_smem + c.dst, c.image.data(), c.image.size());
    copies.clear();
}

inline EmuMbarrier& emu_mbar(uint64_t* bar) {
    const uint32_t at = smem_u32(bar);
    if (at % 8 != 0) emu_fail("mbarrier not 8-byte aligned");
    return emu_block.mbarriers[at];
}

inline EmuMbarrier& emu_live_mbar(uint64_t* bar) {
    EmuMbarrier& b = emu_mbar(bar);
    if (b.arrivals < 0) emu_fail("mbarrier used before mbar_init");
    return b;
}

// Completes the phase when every arrival and every expected byte is in.
inline void emu_maybe_complete(EmuMbarrier& b) {
    if (b.pending != 0 || b.tx != 0) return;
    emu_land(b.landing);  // the previous phase's copies, if nobody waited for them
    b.landing.swap(b.in_flight);
    b.phase += 1;
    b.pending = b.arrivals;
    emu_block.cv.notify_all();
}

inline void mbar_init(uint64_t* bar, uint32_t arrivals) {
    auto lock = emu_lock();
    EmuMbarrier& b = emu_mbar(bar);
    b = EmuMbarrier{};
    b.arrivals = b.pending = static_cast<int>(arrivals);
}
inline void fence_barrier_init() {}

inline void emu_arrive(uint64_t* bar, uint32_t tx_bytes) {
    auto lock = emu_lock();
    EmuMbarrier& b = emu_live_mbar(bar);
    if (b.pending == 0) emu_fail("mbarrier: more arrivals than its count in one phase");
    b.tx += tx_bytes;
    b.pending -= 1;
    emu_maybe_complete(b);
}
inline void mbar_arrive(uint64_t* bar) { emu_arrive(bar, 0); }
inline void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) { emu_arrive(bar, bytes); }

// The phase of parity p has completed iff the current phase's parity differs from p.
inline void mbar_wait(uint64_t* bar, uint32_t parity) {
    auto lock = emu_lock();
    EmuMbarrier& b = emu_live_mbar(bar);
    emu_wait(lock, "mbarrier at shared offset", smem_u32(bar), [&] { return (b.phase & 1u) != (parity & 1u); });
    emu_land(b.landing);
}

inline void emu_tma_load(void* dst, const KormoTensorMap* map, uint64_t* bar, const int* coord, uint32_t rank) {
    EmuTensorMap m;
    std::memcpy(&m, map, sizeof m);
    if (m.magic != kEmuTensorMapMagic) emu_fail("TMA: not an emulator tensor map (encode it with kormo_emu_encode_tensor_map)");
    if (m.rank != rank) emu_fail("TMA: the copy's rank differs from the tensor map's");
    const uint32_t at = smem_u32(dst);
    if (at % (m.swizzle_bytes ? 1024 : 128) != 0) emu_fail("TMA: destination misaligned (128 bytes; 1024 with the 128-byte swizzle)");
    uint64_t elements = 1;
    for (uint32_t d = 0; d < rank; ++d) elements *= m.box[d];
    EmuTmaCopy copy{at, std::vector<unsigned char>(elements * m.elem_bytes)};
    if (at + copy.image.size() > kormo_emu_dynamic_smem_bytes) emu_fail("TMA: box past the end of shared memory");
    uint32_t index[5] = {0, 0, 0, 0, 0};
    for (uint64_t e = 0; e < elements; ++e) {
        bool inside = true;
        uint64_t src = m.address;
        for (uint32_t d = 0; d < rank; ++d) {
            const int64_t c = static_cast<int64_t>(coord[d]) + index[d];
            inside = inside && c >= 0 && static_cast<uint64_t>(c) < m.dims[d];
            src += static_cast<uint64_t>(c) * (d == 0 ? m.elem_bytes : m.strides[d - 1]);
        }
        uint64_t off = e * m.elem_bytes;
        if (m.swizzle_bytes == 128) off ^= ((off >> 7) & 7) << 4;
        if (inside) std::memcpy(copy.image.data() + off, reinterpret_cast<const void*>(src), m.elem_bytes);
        for (uint32_t d = 0; d < rank && ++index[d] == m.box[d]; ++d) index[d] = 0;
    }
    auto lock = emu_lock();
    EmuMbarrier& b = emu_live_mbar(bar);
    b.tx -= static_cast<int64_t>(copy.image.size());
    b.in_flight.push_back(std::move(copy));
    emu_maybe_complete(b);
}

inline void tma_load_4d(void* dst, const KormoTensorMap* map, uint64_t* bar, int c0, int c1, int c2, int c3) {
    const int c[4] = {c0, c1, c2, c3};
    emu_tma_load(dst, map, bar, c, 4);
}
inline void tma_load_1d(void* dst, const KormoTensorMap* map, uint64_t* bar, int c0) { emu_tma_load(dst, map, bar, &c0, 1); }

inline void emu_named_bar(int id, int threads, bool wait) {
    if (id < 1 || id > 15 || threads % 32 != 0) emu_fail("named barrier: id 1..15 and a multiple of 32 threads");
    auto lock = emu_lock();
    EmuNamedBarrier& b = emu_block.named[id];
    if (b.arrived == 0) b.threads = threads;
    if (b.threads != threads) emu_fail("named barrier: thread count differs between arrivals of one phase");
    const uint64_t generation = b.generation;
    if (++b.arrived == b.threads) {
        b.arrived = 0;
        b.generation += 1;
        emu_block.cv.notify_all();
        return;
    }
    if (wait) emu_wait(lock, "named barrier", static_cast<uint32_t>(id), [&] { return b.generation != generation; });
}
inline void named_bar_sync(int id, int threads) { emu_named_bar(id, threads, true); }
inline void named_bar_arrive(int id, int threads) { emu_named_bar(id, threads, false); }

template <int N>
inline void reg_alloc() {}
template <int N>
inline void reg_dealloc() {}
template <int N>
inline void fence_operand(float (&)[N]) {}

// One queued wgmma: d (+)= A B for this thread's elements.
struct EmuWgmma {
    float* d;
    int n;
    bool accumulate;
    bool a_in_registers;
    uint64_t desc_a;
    float a_rows[2][16];  // register A: this thread's rows g and g + 8 of its warp's 16
    uint64_t desc_b;
    bool b_mn_major;
    bool a_mn_major = false;
};
inline thread_local std::vector<EmuWgmma> emu_wgmma_open;
inline thread_local std::vector<std::vector<EmuWgmma>> emu_wgmma_groups;

// Element (mn, k) of a shared operand with the 128-byte swizzle (see desc_sw128).
inline float emu_desc_element(uint64_t desc, bool mn_major, int mn, int k) {
    if ((desc >> 62) != 1 || ((desc >> 49) & 7) != 0) emu_fail("wgmma: only the 128-byte swizzle with base offset 0 is emulated");
    const uint32_t start = static_cast<uint32_t>(desc & 0x3FFF) << 4;
    const uint32_t lbo = static_cast<uint32_t>((desc >> 16) & 0x3FFF) << 4;
    const uint32_t sbo = static_cast<uint32_t>((desc >> 32) & 0x3FFF) << 4;
    uint32_t off = mn_major ? start + (mn % 64) * 2 + (mn / 64) * lbo + (k % 8) * 128 + (k / 8) * sbo
                            : start + (mn % 8) * 128 + (mn / 8) * sbo + k * 2;
    off ^= ((off >> 7) & 7) << 4;
    if (off + 2 > kormo_emu_dynamic_smem_bytes) emu_fail("wgmma: operand element outside the dynamic shared memory");
    uint16_t bits;
    std::memcpy(&bits, kormo_emu_dynamic_smem + off, 2);
    return __bfloat162float(__nv_bfloat16{bits});
}

inline void emu_wgmma_execute(const EmuWgmma& op) {
    const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
    for (int nb = 0; nb < op.n / 8; ++nb) {
        for (int e = 0; e < 4; ++e) {
            const int h = e >> 1, row = 16 * warp + g + 8 * h, col = nb * 8 + 2 * t + (e & 1);
            float acc = op.accumulate ? op.d[nb * 4 + e] : 0.0f;
            for (int k = 0; k < 16; ++k) {
                const float a = op.a_in_registers ? op.a_rows[h][k] : emu_desc_element(op.desc_a, op.a_mn_major, row, k);
                acc += a * emu_desc_element(op.desc_b, op.b_mn_major, col, k);
            }
            op.d[nb * 4 + e] = acc;
        }
    }
}

inline void fence_view_async_shared() {}
inline void wgmma_fence() {}
inline void wgmma_commit() {
    emu_wgmma_groups.push_back(std::move(emu_wgmma_open));
    emu_wgmma_open.clear();
}
// wgmma.wait_group is .sync.aligned: the warp's lanes leave it together, so once one lane goes
// on (e.g. to release a stage for the warp) no lane's retired wgmma still reads its operands.
template <int N>
inline void wgmma_wait() {
    while (emu_wgmma_groups.size() > static_cast<size_t>(N)) {
        for (const EmuWgmma& op : emu_wgmma_groups.front()) emu_wgmma_execute(op);
        emu_wgmma_groups.erase(emu_wgmma_groups.begin());
    }
    __syncwarp();
}

template <int N>
inline void wgmma_ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
    emu_wgmma_open.push_back(EmuWgmma{d, N, accumulate, false, desc_a, {}, desc_b, false});
}

template <int N>
inline void wgmma_ssmn(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
    emu_wgmma_open.push_back(EmuWgmma{d, N, accumulate, false, desc_a, {}, desc_b, true, true});
}

// The A fragment (m16n8k16 layout) of the warp's 16 rows, gathered from its lanes at issue.
template <int N>
inline void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b, bool accumulate) {
    const unsigned warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    uint32_t* mine = ptx::emu_frag_exchange[warp][lane];
    for (int i = 0; i < 4; ++i) mine[i] = a[i];
    __syncwarp();
    EmuWgmma op{d, N, accumulate, true, 0, {}, desc_b, true};
    const int g = lane >> 2;
    for (int h = 0; h < 2; ++h) {
        for (int k = 0; k < 16; ++k) {
            const uint32_t* owner = ptx::emu_frag_exchange[warp][g * 4 + (k % 8) / 2];
            op.a_rows[h][k] = ptx::emu_bf16_half(owner[h + (k >= 8 ? 2 : 0)], k % 2);
        }
    }
    __syncwarp();
    emu_wgmma_open.push_back(op);
}

}  // namespace sm90
}  // namespace kormo
