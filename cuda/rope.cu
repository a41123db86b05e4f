// Rotary position embedding (rotate-half pairs (i, i + head_dim/2)), forward and backward.
// Design: one thread per (token, run of V consecutive pairs); the thread forms the V angles
// position * theta^(-2i/head_dim) once and rotates those pairs in every head of its token, so
// each (token, pair) angle is computed exactly once per launch, not once per head. The angle is
// formed and reduced in f64 because positions reach 32K and more: in f32 the angle alone would
// carry ~1e-3 rad of error (theta^(-2i/head_dim): one f64 pow per run, then f64 products by
// theta^(-2/head_dim) for the run's next pairs). Heads are handled ROPE_HEADS_PER_STEP at a
// time: all their loads are issued before the first store, so several loads are in flight per
// thread even when x and y alias (the compiler cannot move a load of x above a store to y).
// V = 8 (16-byte loads/stores of both halves) when x, y, both strides and head_dim/2 allow
// 16-byte alignment, otherwise V = 1 with 2-byte accesses; the test is uniform over the grid.
// The backward is the inverse rotation (a rotation's transpose), so both directions share one
// body with the sign of sin flipped. x and y may alias (each thread reads all of its elements of
// a head step before writing them); distinct heads and tokens must not overlap in memory.
#include "kormo_device.cuh"

using namespace kormo;

#define ROPE_HEADS_PER_STEP 4

template <int V>
__device__ __forceinline__ void rope_rows(const KormoRopeArgs& a, float sin_sign) {
    const __nv_bfloat16* x = dev_ptr<const __nv_bfloat16>(a.x);
    __nv_bfloat16* y = dev_ptr<__nv_bfloat16>(a.y);
    const uint32_t* positions = dev_ptr<const uint32_t>(a.positions);
    const int64_t half = a.head_dim / 2;
    const int64_t runs = half / V;  // V divides half (checked by the caller)
    KORMO_GRID_STRIDE(idx, a.tokens * runs) {
        const int64_t t = idx / runs;
        const int64_t i0 = (idx % runs) * V;
        const double pos = static_cast<double>(positions[t]);
        // inv_freq(i) = theta^(-2i/head_dim): one pow for the run's first pair, then the ratio
        // theta^(-2/head_dim) (V - 1 products, a few f64 ulps: ~1e-10 rad at position 1e6).
        const double theta = static_cast<double>(a.theta), hd = static_cast<double>(a.head_dim);
        double inv_freq = pow(theta, -2.0 * static_cast<double>(i0) / hd);
        const double ratio = V > 1 ? pow(theta, -2.0 / hd) : 1.0;
        float cs[V], sn[V];
#pragma unroll
        for (int v = 0; v < V; ++v) {
            double s, c;
            sincos(pos * inv_freq, &s, &c);
            cs[v] = static_cast<float>(c);
            sn[v] = sin_sign * static_cast<float>(s);
            inv_freq *= ratio;
        }
        const __nv_bfloat16* xt = x + t * a.token_stride + i0;
        __nv_bfloat16* yt = y + t * a.token_stride + i0;
        for (int64_t h0 = 0; h0 < a.heads; h0 += ROPE_HEADS_PER_STEP) {
            if constexpr (V == 8) {
                uint4 lo[ROPE_HEADS_PER_STEP], hi[ROPE_HEADS_PER_STEP];
#pragma unroll
                for (int u = 0; u < ROPE_HEADS_PER_STEP; ++u)
                    if (h0 + u < a.heads) {
                        const __nv_bfloat16* p = xt + (h0 + u) * a.head_stride;
                        lo[u] = load_16(p);
                        hi[u] = load_16(p + half);
                    }
#pragma unroll
                for (int u = 0; u < ROPE_HEADS_PER_STEP; ++u)
                    if (h0 + u < a.heads) {
                        float x0[8], x1[8], y0[8], y1[8];
                        unpack_bf16x8(lo[u], x0);
                        unpack_bf16x8(hi[u], x1);
#pragma unroll
                        for (int v = 0; v < 8; ++v) {
                            y0[v] = x0[v] * cs[v] - x1[v] * sn[v];
                            y1[v] = x1[v] * cs[v] + x0[v] * sn[v];
                        }
                        __nv_bfloat16* q = yt + (h0 + u) * a.head_stride;
                        store_16(q, pack_bf16x8(y0));
                        store_16(q + half, pack_bf16x8(y1));
                    }
            } else {
                float x0[ROPE_HEADS_PER_STEP], x1[ROPE_HEADS_PER_STEP];
#pragma unroll
                for (int u = 0; u < ROPE_HEADS_PER_STEP; ++u)
                    if (h0 + u < a.heads) {
                        const __nv_bfloat16* p = xt + (h0 + u) * a.head_stride;
                        x0[u] = to_f32(p[0]);
                        x1[u] = to_f32(p[half]);
                    }
#pragma unroll
                for (int u = 0; u < ROPE_HEADS_PER_STEP; ++u)
                    if (h0 + u < a.heads) {
                        __nv_bfloat16* q = yt + (h0 + u) * a.head_stride;
                        q[0] = to_bf16(x0[u] * cs[0] - x1[u] * sn[0]);
                        q[half] = to_bf16(x1[u] * cs[0] + x0[u] * sn[0]);
                    }
            }
        }
    }
}

// The 16-byte path's preconditions (rust/cuda/src/kernel_launch.rs sizes the grid with the same test).
__device__ __forceinline__ bool rope_vec8_ok(const KormoRopeArgs& a) {
    return (a.x % 16) == 0 && (a.y % 16) == 0 && (a.token_stride % 8) == 0 && (a.head_stride % 8) == 0 &&
           ((a.head_dim / 2) % 8) == 0;
}

__device__ __forceinline__ void rope_apply(const KormoRopeArgs& a, float sin_sign) {
    if (rope_vec8_ok(a))
        rope_rows<8>(a, sin_sign);
    else
        rope_rows<1>(a, sin_sign);
}

extern "C" __global__ void kormo_rope_fwd(KormoRopeArgs a) { rope_apply(a, 1.0f); }

extern "C" __global__ void kormo_rope_bwd(KormoRopeArgs a) { rope_apply(a, -1.0f); }
