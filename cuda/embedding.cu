// Token embedding lookup and its scatter-add backward.
// Design: the forward is one grid-stride loop over tokens * dim/8 16-byte copies (8 bf16) when
// both pointers, both row strides and dim are 16-byte multiples (the test is uniform over the
// grid; rust/cuda/src/launch.rs sizes the grid with the same one), else over tokens*dim 2-byte
// copies. The backward is one grid-stride loop over tokens*dim adding into an f32 table gradient
// with atomics (repeated tokens collide; the order of f32 additions is therefore not
// deterministic, a sort-by-token backward is the plan if bitwise reproducibility on device is
// ever required).
#include "kormo_device.cuh"

using namespace kormo;

extern "C" __global__ void kormo_embedding_fwd(KormoEmbeddingArgs a) {
    const uint32_t* tokens = dev_ptr<const uint32_t>(a.tokens);
    const __nv_bfloat16* table = dev_ptr<const __nv_bfloat16>(a.table);
    __nv_bfloat16* out = dev_ptr<__nv_bfloat16>(a.rows);
    const bool vec8 = (a.table % 16) == 0 && (a.rows % 16) == 0 && (a.dim % 8) == 0 && (a.table_row_stride % 8) == 0 &&
                      (a.rows_row_stride % 8) == 0;
    if (vec8) {
        const int64_t chunks = a.dim / 8;
        KORMO_GRID_STRIDE(idx, a.num_tokens * chunks) {
            const int64_t t = idx / chunks, c = (idx % chunks) * 8;
            store_16(out + t * a.rows_row_stride + c,
                     load_16(table + static_cast<int64_t>(tokens[t]) * a.table_row_stride + c));
        }
        return;
    }
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
