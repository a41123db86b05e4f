// Token embedding lookup and its scatter-add backward.
// Design: one grid-stride loop over tokens*dim; the backward adds into an f32 table gradient with
// atomics (repeated tokens collide; the order of f32 additions is therefore not deterministic,
// a sort-by-token backward is the plan if bitwise reproducibility on device is ever required).
#include "kormo_device.cuh"

using namespace kormo;

extern "C" __global__ void kormo_embedding_fwd(KormoEmbeddingArgs a) {
    const uint32_t* tokens = dev_ptr<const uint32_t>(a.tokens);
    const __nv_bfloat16* table = dev_ptr<const __nv_bfloat16>(a.table);
    __nv_bfloat16* out = dev_ptr<__nv_bfloat16>(a.rows);
    KORMO_GRID_STRIDE(idx, a.num_tokens * a.dim) {
        const int64_t t = idx / a.dim, c = idx % a.dim;
        out[t * a.rows_row_stride + c] = table[static_cast<int64_t>(tokens[t]) * a.table_row_stride + c];
    }
}

extern "C" __global__ void kormo_embedding_bwd(KormoEmbeddingArgs a) {
    const uint32_t* tokens = dev_ptr<const uint32_t>(a.tokens);
    float* dtable = dev_ptr<float>(a.table);
    const __nv_bfloat16* dout = dev_ptr<const __nv_bfloat16>(a.rows);
    KORMO_GRID_STRIDE(idx, a.num_tokens * a.dim) {
        const int64_t t = idx / a.dim, c = idx % a.dim;
        atomicAdd(dtable + static_cast<int64_t>(tokens[t]) * a.table_row_stride + c,
                  to_f32(dout[t * a.rows_row_stride + c]));
    }
}
