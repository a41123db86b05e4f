// CPU emulation of the slice of the CUDA execution model that kormo's kernels use, so the real
// kernel sources run (slowly) on machines without a GPU: rust/cuda/tests/emulated.rs compiles
// emulator.cpp with the host C++ compiler and checks every kernel against the f64 references.
//
// Model: blocks run one after another (in grid order, or in a seeded shuffled order so that
// results depending on block scheduling, e.g. f32 atomics from several blocks, become visible); the threads of a block are OS threads (the same ones for every block of a launch). __syncthreads is
// a block barrier, __syncwarp a per-warp barrier, shuffles go through a per-warp exchange buffer
// between two warp barriers. __shared__ variables become function statics (one block at a time,
// so "per block" = "per process"); dynamic shared memory is a per-launch buffer, filled with a
// garbage pattern before each block so reads of unwritten shared memory show up. The tensor-core
// wrappers of kormo_device.cuh (mma.sync, ldmatrix, cp.async) are emulated per lane from the PTX
// ISA's fragment layouts in kormo_ptx.h. What it does not model: memory-model races between
// warps without a barrier (compute-sanitizer's racecheck on the device covers those), cp.async
// timing beyond "lands at the wait that retires its group", performance.
#pragma once

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#define KORMO_EMULATOR 1

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
inline unsigned char* kormo_emu_dynamic_smem = nullptr;
inline size_t kormo_emu_dynamic_smem_bytes = 0;  // the launch's dynamic shared memory size
inline uint64_t kormo_emu_block_serial = 0;       // counts blocks: per-block state (mbarriers) resets on change
inline std::barrier<>* kormo_emu_block_barrier = nullptr;
inline std::vector<std::unique_ptr<std::barrier<>>> kormo_emu_warp_barriers;
inline float kormo_emu_shuffle[32][32];  // [warp][lane], blocks of up to 1024 threads

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static

inline void __syncthreads() { kormo_emu_block_barrier->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { kormo_emu_warp_barriers[threadIdx.x / 32]->arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
    const unsigned warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    kormo_emu_shuffle[warp][lane] = v;
    __syncwarp();
    const float other = kormo_emu_shuffle[warp][lane ^ lane_mask];
    __syncwarp();
    return other;
}

inline float atomicAdd(float* address, float v) { return std::atomic_ref<float>(*address).fetch_add(v); }
inline float __expf(float x) { return std::exp(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
template <class T>
inline T min(T a, T b) { return a < b ? a : b; }
template <class T>
inline T max(T a, T b) { return a > b ? a : b; }

struct uint4 {
    unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

// Clears this thread's per-block emulator state (defined in emulator.cpp, after every header
// that keeps such state).
void kormo_emu_reset_thread_state();

// Runs kernel(args) over the grid. Blocks need blockDim.x % 32 == 0 (every kormo kernel has it).
// order_seed 0 runs blocks in grid order (x fastest); any other value runs them in an order
// shuffled by that seed (Fisher-Yates over SplitMix64, the same on every host).
template <class Args>
void kormo_emu_run(void (*kernel)(Args), dim3 grid, dim3 block, size_t dynamic_smem, const Args& args,
                   uint64_t order_seed = 0) {
    gridDim = grid;
    blockDim = block;
    // 1024-byte aligned, as the sm_90a kernels' swizzled tiles need (and the device's window is).
    std::vector<unsigned char> smem(dynamic_smem + 1024);
    kormo_emu_dynamic_smem =
        reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem.data()) + 1023) & ~uintptr_t(1023));
    kormo_emu_dynamic_smem_bytes = dynamic_smem;
    std::vector<dim3> order;
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) order.push_back({x, y, z});
    if (order_seed != 0) {
        uint64_t state = order_seed;
        auto next = [&state] {
            uint64_t z = (state += 0x9e3779b97f4a7c15ull);
            z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
            z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
            return z ^ (z >> 31);
        };
        for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[next() % i]);
    }
    // One OS thread per CUDA thread for the whole launch. Between blocks the threads meet at
    // `between`, whose completion step (one thread, while the others wait) moves to the next
    // block: shared memory refilled with the garbage pattern, the block serial bumped (fresh
    // mbarriers and named barriers). Every thread starts each block with empty per-thread state
    // (pending cp.async copies, wgmma queues), as a fresh thread would.
    size_t current = 0;
    auto start_block = [&]() noexcept {
        std::memset(kormo_emu_dynamic_smem, 0xff, dynamic_smem);  // NaN pattern as f32 and bf16
        ++kormo_emu_block_serial;
    };
    auto advance = [&]() noexcept {
        if (++current < order.size()) start_block();
    };
    std::barrier between(static_cast<std::ptrdiff_t>(block.x), advance);
    std::barrier<> block_barrier(block.x);
    kormo_emu_block_barrier = &block_barrier;
    kormo_emu_warp_barriers.clear();
    for (unsigned w = 0; w < block.x / 32; ++w) kormo_emu_warp_barriers.emplace_back(new std::barrier<>(32));
    start_block();
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < block.x; ++t)
        threads.emplace_back([&, t] {
            threadIdx = {t, 0, 0};
            while (current < order.size()) {
                blockIdx = order[current];
                kormo_emu_reset_thread_state();
                kernel(args);
                between.arrive_and_wait();
            }
        });
    for (auto& th : threads) th.join();
}
