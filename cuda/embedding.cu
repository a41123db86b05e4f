// Token embedding lookup and its scatter-add backward.
// Design: the forward is one grid-stride loop over tokens * dim/8 16-byte copies (8 bf16) when
// both pointers, both row strides and dim are 16-byte multiples (the test is uniform over the
// grid; rust/cuda/src/kernel_launch.rs sizes the grid with the same one), else over tokens*dim 2-byte
// copies. The backward is one grid-stride loop over tokens*dim adding into an f32 table gradient
// with atomics (repeated tokens collide; the order of f32 additions therefore depends on thread
// scheduling).
// Deterministic backward (kormo_embedding_bwd_owned, CudaOps' deterministic mode): ownership
// instead of atomics. Block (bx, by) owns the table rows r with r % gridDim.x == bx and, within
// them, the columns c with c % (gridDim.y * blockDim.x) == by * blockDim.x + threadIdx.x. Every
// block scans all token ids in order (a chunk of blockDim.x at a time through shared memory) and
// each thread adds dout[t, c] into dtable[tokens[t], c] for its owned rows and columns: every
// element of dtable has one writer, which adds its tokens in increasing t, so the f32 sums are
// the same for any block schedule (and equal the sequential scatter-add in token order). Cost:
// every block reads all num_tokens ids; a token repeated n times is n sequential adds by one
// block (no parallelism inside a hot row beyond its columns).
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

// Dynamic shared memory: none (the id chunk is a static blockDim.x <= 1024 array).
extern "C" __global__ void kormo_embedding_bwd_owned(KormoEmbeddingArgs a) {
    __shared__ uint32_t chunk[1024];
    const uint32_t* tokens = dev_ptr<const uint32_t>(a.tokens);
    float* dtable = dev_ptr<float>(a.table);
    const __nv_bfloat16* dout = dev_ptr<const __nv_bfloat16>(a.rows);
    const uint32_t owners = gridDim.x, owner = blockIdx.x;
    const int64_t col_stride = static_cast<int64_t>(gridDim.y) * blockDim.x;
    const int64_t col0 = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
    for (int64_t t0 = 0; t0 < a.num_tokens; t0 += blockDim.x) {
        const int64_t n = min(static_cast<int64_t>(blockDim.x), a.num_tokens - t0);
        __syncthreads();  // every thread is done with the previous chunk
        if (threadIdx.x < n) chunk[threadIdx.x] = tokens[t0 + threadIdx.x];
        __syncthreads();
        for (int64_t j = 0; j < n; ++j) {
            const uint32_t id = chunk[j];
            if (id % owners != owner) continue;
            float* dst = dtable + static_cast<int64_t>(id) * a.table_row_stride;
            const __nv_bfloat16* src = dout + (t0 + j) * a.rows_row_stride;
            for (int64_t c = col0; c < a.dim; c += col_stride) dst[c] += to_f32(src[c]);
        }
    }
}
