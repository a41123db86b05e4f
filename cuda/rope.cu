// Rotary position embedding (rotate-half pairs (i, i + head_dim/2)), forward and backward.
// Design: one thread per (token, head, pair). The angle position * theta^(-2i/head_dim) is formed
// and reduced in f64 because positions reach 32K and more: in f32 the angle alone would carry
// ~1e-3 rad of error. The backward is the inverse rotation (a rotation's transpose), so both
// directions share one body with the sign of sin flipped. x and y may alias.
#include "kormo_device.cuh"

using namespace kormo;

__device__ __forceinline__ void rope_apply(const KormoRopeArgs& a, float sin_sign) {
    const __nv_bfloat16* x = dev_ptr<const __nv_bfloat16>(a.x);
    __nv_bfloat16* y = dev_ptr<__nv_bfloat16>(a.y);
    const uint32_t* positions = dev_ptr<const uint32_t>(a.positions);
    const int64_t half = a.head_dim / 2;
    KORMO_GRID_STRIDE(idx, a.tokens * a.heads * half) {
        const int64_t i = idx % half;
        const int64_t h = (idx / half) % a.heads;
        const int64_t t = idx / (half * a.heads);
        const double inv_freq = pow(static_cast<double>(a.theta), -2.0 * static_cast<double>(i) / a.head_dim);
        double s, c;
        sincos(static_cast<double>(positions[t]) * inv_freq, &s, &c);
        const float sn = sin_sign * static_cast<float>(s), cs = static_cast<float>(c);
        const int64_t off = t * a.token_stride + h * a.head_stride;
        const float x0 = to_f32(x[off + i]);
        const float x1 = to_f32(x[off + i + half]);
        y[off + i] = to_bf16(x0 * cs - x1 * sn);
        y[off + i + half] = to_bf16(x1 * cs + x0 * sn);
    }
}

extern "C" __global__ void kormo_rope_fwd(KormoRopeArgs a) { rope_apply(a, 1.0f); }

extern "C" __global__ void kormo_rope_bwd(KormoRopeArgs a) { rope_apply(a, -1.0f); }
