// The emulator library: every kormo kernel, compiled for the CPU against the stand-in headers
// beside this file, behind one C entry point that rust/cuda/tests/support loads with dlopen.
// Build: c++ -std=c++20 -O2 -shared -fPIC -pthread -I cuda/emulator -I cuda/include -I cuda
//        cuda/emulator/emulator.cpp -o libkormo_emulator.so
#include "kormo_emulator.h"

#include <mutex>

#include "generated/kormo_all.cu"

void kormo_emu_reset_thread_state() {
    kormo::ptx::emu_pending_copies.clear();
    kormo::ptx::emu_committed_groups = 0;
    kormo::sm90::emu_wgmma_open.clear();
    kormo::sm90::emu_wgmma_groups.clear();
}

namespace {

// The emulated grid state is process-wide: one launch at a time (test threads run in parallel).
std::mutex one_launch_at_a_time;

template <class Args>
int run(void (*kernel)(Args), const uint32_t grid[3], const uint32_t block[3], uint32_t smem, const void* args,
        size_t args_size, uint64_t order_seed) {
    if (args_size != sizeof(Args)) return 2;
    if (block[1] != 1 || block[2] != 1 || block[0] % 32 != 0 || block[0] > 1024) return 3;
    Args a;
    std::memcpy(&a, args, sizeof a);
    std::lock_guard<std::mutex> lock(one_launch_at_a_time);
    kormo_emu_run(kernel, {grid[0], grid[1], grid[2]}, {block[0], 1, 1}, smem, a, order_seed);
    return 0;
}

}  // namespace

// 0: ran; 1: unknown kernel; 2: argument size differs from the kernel's struct; 3: unsupported block shape.
// order_seed: 0 runs the blocks in grid order, any other value in an order shuffled by it.
extern "C" int kormo_emu_launch(const char* name, const uint32_t grid[3], const uint32_t block[3], uint32_t smem,
                                const void* args, size_t args_size, uint64_t order_seed) {
#define KORMO_KERNEL(kernel) \
    if (std::strcmp(name, #kernel) == 0) return run(kernel, grid, block, smem, args, args_size, order_seed);
#include "generated/kernel_list.inc"
#undef KORMO_KERNEL
    return 1;
}

// Writes the emulator's tensor map (kormo::sm90::EmuTensorMap) for a tensor of `rank` dims at
// `address` into out[128]; the Rust side checks the arguments first (TensorMapSpec::check).
// 0: written; 4: unsupported rank or swizzle.
extern "C" int kormo_emu_encode_tensor_map(uint64_t address, uint32_t elem_bytes, uint32_t rank, const uint64_t* dims,
                                           const uint64_t* strides, const uint32_t* box, uint32_t swizzle_bytes, void* out) {
    if (rank < 1 || rank > 5 || (swizzle_bytes != 0 && swizzle_bytes != 128)) return 4;
    kormo::sm90::EmuTensorMap m{};
    m.magic = kormo::sm90::kEmuTensorMapMagic;
    m.address = address;
    m.rank = rank;
    m.elem_bytes = elem_bytes;
    m.swizzle_bytes = swizzle_bytes;
    for (uint32_t d = 0; d < rank; ++d) {
        m.dims[d] = dims[d];
        m.box[d] = box[d];
        if (d > 0) m.strides[d - 1] = strides[d - 1];
    }
    std::memset(out, 0, sizeof(KormoTensorMap));
    std::memcpy(out, &m, sizeof m);
    return 0;
}
