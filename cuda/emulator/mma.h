// Emulator stand-in for CUDA's mma.h (WMMA, 16x16x16, bf16 in, f32 accumulate) with the
// documented semantics: row_major element (i, j) at p[i * ldm + j], col_major at p[i + j * ldm].
// Every lane keeps the whole 16x16 tile (the real per-lane layout is opaque to kormo's code);
// loads and stores are warp-synchronous, as the *_sync collectives are on the device.
#pragma once
#include <type_traits>

#include "cuda_bf16.h"

namespace nvcuda {
namespace wmma {

struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
    static_assert(M == 16 && N == 16 && K == 16, "the emulator covers 16x16x16 only");
    float m[16][16];
};

template <class Use, class T, class Layout>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const T* p, unsigned ldm) {
    __syncwarp();
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j)
            f.m[i][j] = __bfloat162float(std::is_same<Layout, row_major>::value ? p[i * ldm + j] : p[i + j * ldm]);
    __syncwarp();
}

template <class T>
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, T>& f, const float* p, unsigned ldm, layout_t l) {
    __syncwarp();
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j) f.m[i][j] = l == mem_row_major ? p[i * ldm + j] : p[i + j * ldm];
    __syncwarp();
}

template <class T>
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, T>& f, unsigned ldm, layout_t l) {
    __syncwarp();
    if (threadIdx.x % 32 == 0)
        for (int i = 0; i < 16; ++i)
            for (int j = 0; j < 16; ++j) (l == mem_row_major ? p[i * ldm + j] : p[i + j * ldm]) = f.m[i][j];
    __syncwarp();
}

template <class T>
inline void fill_fragment(fragment<accumulator, 16, 16, 16, T>& f, float v) {
    for (auto& row : f.m)
        for (auto& x : row) x = v;
}

template <class T, class LayoutA, class LayoutB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, T, LayoutA>& a,
                     const fragment<matrix_b, 16, 16, 16, T, LayoutB>& b,
                     const fragment<accumulator, 16, 16, 16, float>& c) {
    float r[16][16];
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j) {
            float s = c.m[i][j];
            for (int k = 0; k < 16; ++k) s += a.m[i][k] * b.m[k][j];
            r[i][j] = s;
        }
    std::memcpy(d.m, r, sizeof r);
}

}  // namespace wmma
}  // namespace nvcuda
