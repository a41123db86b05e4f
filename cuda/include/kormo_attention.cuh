// Masked flash attention (forward and backward) as templates over head dim and mask kind; the
// extern "C" entry points are generated per variant by cuda/generate_instantiations.py.
//
// Design: FlashAttention-2 on mma.sync.m16n8k16 (bf16 in, f32 accumulate) through the wrappers in
// kormo_device.cuh (ldmatrix fragment loads, cp.async copies, ex2.approx); docs/kernels.md has the
// table (shared memory, registers) and the measured rates.
// - Blocks of 4 warps. Forward: 128 queries per block, 32 per warp as two 16-row m-blocks, so
//   every K and V fragment a warp loads feeds two MMAs (half the shared-memory traffic per MMA
//   of 16-row warps); 64 keys per step. Backward: 64 keys per block, 16 per warp; 64 queries
//   per step. Accumulators, softmax state and gradients live in registers (255 at hd128).
// - Shared tiles are bf16 [rows][D] with 16-byte chunks XOR-swizzled (chunk ^ (row & 7)), so the
//   8 row addresses of every ldmatrix and the cp.async stores hit 8 distinct bank groups.
// - Forward: one block per (128-query tile, query head, batch row); blocks run the last
//   (heaviest, causal) query tiles first. Key tiles run from the diagonal down to the first one
//   the documents allow; per tile, V is copied (cp.async) while S = Q K^T runs, and the next K
//   while O += P V runs (one K and one V buffer, as in FA2). S stays in its accumulator fragments:
//   mask, online softmax (row max and sum across the 4 lanes of a quad, base-2 exponentials,
//   running sums kept per lane and reduced once at the end), and P is repacked into bf16 A
//   fragments straight from the accumulators (the m16n8 C layout of two adjacent key blocks is
//   the m16n8k16 A layout). O is rescaled in registers and written once; lse = max + log(sum)
//   (natural log) is saved for the backward.
// - Backward (FA2 order): one block per (64-key tile, kv head, batch row). K and V stay in shared
//   memory; for every query head of the GQA group and every query tile that can see the keys
//   (Q, dO, lse, delta, doc ids double-buffered: the next tile is copied while this one is
//   computed), S^T = K Q^T and P^T = exp(S^T scale - lse) stay in registers, dV += P^T dO and
//   dK += dS^T Q accumulate in registers (dS^T = P^T (dP^T - delta), dP^T = V dO^T), dS^T goes to
//   shared memory once so that each warp then forms dQ for 16 queries (dS K) and adds it to the
//   f32 dq_accum with atomics (float2 on sm_90). The softmax scale is applied to dK at the end
//   and to dQ on the add. Two barriers per query tile (its copies landed; dS^T complete).
// - Deterministic backward (CudaOps' deterministic mode): the dQ atomics above add the key
//   tiles' contributions in whatever order the blocks run, so dQ's f32 rounding depends on
//   scheduling. backward<D, DOC, false> is the same kernel without the dQ phase (dK and dV are
//   owned by their key-tile block and summed in a fixed order already), and backward_dq owns dQ
//   instead: one block per (64-query tile, query head, batch row), heaviest tiles first, walking
//   the key tiles from the diagonal down in a fixed order (K, V, key doc ids double-buffered),
//   recomputing S = Q K^T and dP = dO V^T per tile (4 warps x 16 queries), P = exp(S scale - lse)
//   with the same masks, dS = P (dP - delta) packed to bf16 A fragments straight from the
//   accumulators (as the forward packs P), and dQ += dS K in registers, written once as bf16. It
//   recomputes two of the five backward matmuls (its speed cost is for a GPU run to measure).
// - Masks: causal always; the DOC variants also require doc_ids[i] == doc_ids[j] (or, with
//   a.cross_lingual, another language in bit 31: then no document-based tile skipping). Tiles that are
//   fully masked are never loaded: causal bounds the tile range, and because doc ids are
//   non-decreasing within a row, a key tile whose last doc id is below the first query's doc id
//   (forward) or a query tile whose first doc id is beyond the last key's (backward) is skipped.
//   Tiles that need no mask at all (below the diagonal, one document, inside the sequence) skip
//   the per-element test.
// - Copies are 16-byte cp.async: strides must be multiples of 8 elements and pointers 16-byte
//   aligned (checked by the Rust launcher, which also bounds seq_len to 32 bits). Rows past
//   seq_len are zero-filled so they can never inject NaN into the products; their results are
//   never stored.
// These are the kernels of A100-class devices (and of Hopper for arguments outside the TMA
// preconditions); compute capability 9.0 runs kormo_attention_sm90.cuh (wgmma + TMA).
#pragma once

#include "kormo_device.cuh"

namespace kormo {
namespace attention {

constexpr int kTile = 64;            // keys per tile (both passes), queries per backward tile
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kFwdRows = 128;        // queries per forward block
constexpr int kFwdRowsPerWarp = kFwdRows / kWarps;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Shared-memory layouts, in bytes (every region a multiple of 128 bytes). The generated files
// static_assert these against the generator's numbers.
template <int D>
struct FwdSmem {
    static constexpr int q = 0;                                  // bf16 [128][D], swizzled
    static constexpr int k = q + kFwdRows * D * 2;               // bf16 [64][D], swizzled
    static constexpr int v = k + kTile * D * 2;                  // bf16 [64][D], swizzled
    static constexpr int k_doc = v + kTile * D * 2;              // uint32 [64]
    static constexpr int bytes = k_doc + kTile * 4;
};

template <int D>
struct DqSmem {
    static constexpr int q = 0;                                  // bf16 [64][D], swizzled
    static constexpr int dout = q + kTile * D * 2;               // bf16 [64][D], swizzled
    static constexpr int k = dout + kTile * D * 2;               // bf16 [2][64][D], swizzled
    static constexpr int v = k + 2 * kTile * D * 2;              // bf16 [2][64][D], swizzled
    static constexpr int k_doc = v + 2 * kTile * D * 2;          // uint32 [2][64]
    static constexpr int bytes = k_doc + 2 * kTile * 4;
};

template <int D>
struct BwdSmem {
    static constexpr int k = 0;                                  // bf16 [64][D], swizzled
    static constexpr int v = k + kTile * D * 2;                  // bf16 [64][D], swizzled
    static constexpr int q = v + kTile * D * 2;                  // bf16 [2][64][D], swizzled
    static constexpr int dout = q + 2 * kTile * D * 2;           // bf16 [2][64][D], swizzled
    static constexpr int ds = dout + 2 * kTile * D * 2;          // bf16 [64 keys][64 queries], swizzled: dS^T
    static constexpr int lse = ds + kTile * kTile * 2;           // f32 [2][64]
    static constexpr int delta = lse + 2 * kTile * 4;            // f32 [2][64]
    static constexpr int q_doc = delta + 2 * kTile * 4;          // uint32 [2][64]
    static constexpr int bytes = q_doc + 2 * kTile * 4;
};

// Element offset of 16-byte chunk `chunk` (8 bf16) of row `row` in a swizzled [rows][W] tile.
template <int W>
__device__ __forceinline__ int swz(int row, int chunk) {
    static_assert(W % 64 == 0, "the swizzle permutes 8 chunks of a row");
    return row * W + ((chunk ^ (row & 7)) << 3);
}

// Starts copying rows [first, first + ROWS) of a [tokens, D] view (token stride `stride`) into a
// swizzled [ROWS][D] tile; rows at or past `end` become zeros. Part of the caller's next commit.
template <int D, int ROWS>
__device__ __forceinline__ void load_tile_async(__nv_bfloat16* dst, const __nv_bfloat16* src, int64_t stride,
                                                int64_t first, int64_t end) {
    constexpr int kChunks = D / 8;
    constexpr int kRowsPerRound = kThreads / kChunks;
    // Every round moves the thread down by a multiple of 8 rows, so its swizzled column stays:
    // one shared offset plus compile-time steps (few live registers across the main loops).
    static_assert(kThreads % kChunks == 0 && kRowsPerRound % 8 == 0 && ROWS % kRowsPerRound == 0, "copy rounds");
    const int r0 = threadIdx.x / kChunks;
    const int c = threadIdx.x % kChunks;
    __nv_bfloat16* d = dst + swz<D>(r0, c);
    const __nv_bfloat16* s = src + (first + r0) * stride + c * 8;
#pragma unroll
    for (int it = 0; it < ROWS / kRowsPerRound; ++it) {
        const bool valid = first + r0 + it * kRowsPerRound < end;
        ptx::cp_async_16(d + it * kRowsPerRound * D, valid ? s + it * kRowsPerRound * stride : src, valid);
    }
}

// Starts copying the 4-byte values [first, first + 64) of `src` (doc ids, lse, delta) into
// dst[64]; entries at or past `end` become 0 (those rows are masked by position).
__device__ __forceinline__ void load_row_values_async(void* dst, const void* src, int64_t first, int64_t end) {
    for (int r = threadIdx.x; r < kTile; r += kThreads) {
        const bool valid = first + r < end;
        ptx::cp_async_4(static_cast<uint32_t*>(dst) + r, static_cast<const uint32_t*>(src) + (valid ? first + r : 0), valid);
    }
}

// Whether a query with doc id `q` sees a (causally earlier) key with doc id `k`: same document,
// or with cross-lingual attention (XLDA) a document of the other language (bit 31 differs).
__device__ __forceinline__ bool doc_visible(uint32_t q, uint32_t k, bool cross_lingual) {
    return q == k || (cross_lingual && ((q ^ k) >> 31) != 0);
}

__device__ __forceinline__ void store_bf16x2(__nv_bfloat16* dst, float lo, float hi) {
    *reinterpret_cast<uint32_t*>(dst) = ptx::pack_bf16x2(lo, hi);
}

// Bf16 A fragment (16 rows x 16 columns 16 ks .. 16 ks + 15) from the f32 accumulators of two
// adjacent 16x8 blocks: c[0..1] are row g, c[2..3] row g + 8, columns 2t, 2t + 1 of each block.
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&lo)[4], const float (&hi)[4]) {
    a[0] = ptx::pack_bf16x2(lo[0], lo[1]);
    a[1] = ptx::pack_bf16x2(lo[2], lo[3]);
    a[2] = ptx::pack_bf16x2(hi[0], hi[1]);
    a[3] = ptx::pack_bf16x2(hi[2], hi[3]);
}

// Lane addresses for ldmatrix.x4 on a swizzled [rows][W] tile:
// - a_rows: A fragment of rows r0 .. r0 + 15, columns 16 kk .. 16 kk + 15 (matrices: rows 0-7 /
//   8-15 of chunk 2 kk, then of chunk 2 kk + 1).
// - b_rows: B fragments of two k-steps kk, kk + 1 for 8 n-rows n0 .. n0 + 7 stored as [n][k]
//   (matrices: chunks 2 kk .. 2 kk + 3 of the same 8 rows); registers {0, 1} for kk, {2, 3} for kk + 1.
// - bt_rows (with .trans): B fragments of two n-blocks nd, nd + 1 (chunks) for the k-step of
//   rows k0 .. k0 + 15 stored as [k][n]; registers {0, 1} for nd, {2, 3} for nd + 1.
template <int W>
__device__ __forceinline__ int a_rows(int lane, int r0, int kk) {
    return swz<W>(r0 + (lane & 15), 2 * kk + (lane >> 4));
}
template <int W>
__device__ __forceinline__ int b_rows(int lane, int n0, int kk) {
    return swz<W>(n0 + (lane & 7), 2 * kk + (lane >> 3));
}
// - b2_rows: B fragments of one k-step kk for the 16 n-rows n0 .. n0 + 15 stored as [n][k]
//   (matrices: rows 0-7 of chunks 2 kk, 2 kk + 1, then rows 8-15 of the same); registers {0, 1}
//   for n-block n0 / 8, {2, 3} for the next.
template <int W>
__device__ __forceinline__ int b2_rows(int lane, int n0, int kk) {
    return swz<W>(n0 + (lane & 7) + 8 * (lane >> 4), 2 * kk + ((lane >> 3) & 1));
}
template <int W>
__device__ __forceinline__ int bt_rows(int lane, int k0, int nd) {
    return swz<W>(k0 + (lane & 15), nd + (lane >> 4));
}

template <int D, bool DOC>
__device__ void forward(const KormoAttentionFwdArgs& a) {
    static_assert(D % 64 == 0, "head dim must be a multiple of 64 (swizzle, paired k-steps)");
    constexpr int kKSteps = D / 16;   // k-steps of Q K^T
    constexpr int kNBlocks = D / 8;   // n-blocks of O
    constexpr int kSBlocks = kTile / 8;
    constexpr int kMB = kFwdRowsPerWarp / 16;  // 16-row m-blocks per warp
    using L = FwdSmem<D>;
    KORMO_DYNAMIC_SMEM(unsigned char, smem);
    __nv_bfloat16* sq = reinterpret_cast<__nv_bfloat16*>(smem + L::q);
    __nv_bfloat16* sk = reinterpret_cast<__nv_bfloat16*>(smem + L::k);
    __nv_bfloat16* sv = reinterpret_cast<__nv_bfloat16*>(smem + L::v);
    uint32_t* k_doc = reinterpret_cast<uint32_t*>(smem + L::k_doc);

    // Heaviest tiles first: under the causal mask a query tile's work grows with its index.
    const int64_t q_tile = static_cast<int64_t>(gridDim.x) - 1 - blockIdx.x;
    const int64_t q0 = q_tile * kFwdRows;
    const int64_t head = blockIdx.y;
    const int64_t row = blockIdx.z;
    if (q0 >= a.seq_len || head >= a.heads_q || row >= a.batch) return;
    const int64_t kv_head = head / (a.heads_q / a.heads_kv);
    const int64_t base = row * a.seq_len;  // token index of position 0 of this row
    const int64_t total_tokens = a.batch * a.seq_len;
    const uint32_t* doc = DOC ? dev_ptr<const uint32_t>(a.doc_ids) + base : nullptr;
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int g = lane >> 2;  // accumulator rows g and g + 8 of every 16-row m-block
    const int t = lane & 3;   // accumulator columns 2t, 2t + 1 of every 8-column block
    const float scale_log2 = a.softmax_scale * kLog2e;

    const __nv_bfloat16* q = dev_ptr<const __nv_bfloat16>(a.q) + base * a.q_token_stride + head * a.q_head_stride;
    const __nv_bfloat16* k = dev_ptr<const __nv_bfloat16>(a.k) + base * a.k_token_stride + kv_head * a.k_head_stride;
    const __nv_bfloat16* v = dev_ptr<const __nv_bfloat16>(a.v) + base * a.v_token_stride + kv_head * a.v_head_stride;

    const int64_t q_last = min(q0 + kFwdRows - 1, a.seq_len - 1);
    const uint32_t first_doc = DOC ? doc[q0] : 0u;
    const uint32_t last_doc = DOC ? doc[q_last] : 0u;
    // Positions below are relative to q0 and fit in 32 bits (the launcher bounds seq_len).
    // Row (mb, h) of this thread: warp * 32 + mb * 16 + g + 8 h of the tile.
    const int rows_left = static_cast<int>(a.seq_len - q0);  // rows of this tile inside the sequence
    const int warp_row = warp * kFwdRowsPerWarp;
    uint32_t row_doc[kMB][2];
#pragma unroll
    for (int mb = 0; mb < kMB; ++mb) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int r = warp_row + mb * 16 + g + 8 * h;
            row_doc[mb][h] = DOC && r < rows_left ? doc[q0 + r] : 0xffffffffu;
        }
    }

    // Prologue: Q and the last key tile the tile's rows can see (one group).
    int64_t kt = q_last / kTile;
    load_tile_async<D, kFwdRows>(sq, q, a.q_token_stride, q0, a.seq_len);
    load_tile_async<D, kTile>(sk, k, a.k_token_stride, kt * kTile, a.seq_len);
    if (DOC) load_row_values_async(k_doc, doc, kt * kTile, a.seq_len);
    ptx::cp_async_commit();

    float o[kMB][kNBlocks][4];
#pragma unroll
    for (int mb = 0; mb < kMB; ++mb) {
#pragma unroll
        for (int nd = 0; nd < kNBlocks; ++nd) o[mb][nd][0] = o[mb][nd][1] = o[mb][nd][2] = o[mb][nd][3] = 0.0f;
    }
    float m[kMB][2];  // running row max of S * scale * log2(e)
    float l[kMB][2];  // this lane's part of the running row sum
#pragma unroll
    for (int mb = 0; mb < kMB; ++mb) {
        m[mb][0] = m[mb][1] = -INFINITY;
        l[mb][0] = l[mb][1] = 0.0f;
    }

    for (;;) {
        const int64_t k0 = kt * kTile;
        // Only the tiles on the diagonal (and, with documents, tiles spanning several) need a
        // mask. The next key tile is the one below, unless all its keys are in earlier documents.
        const bool need_mask = k0 + kTile - 1 > q0 || (DOC && doc[k0] != last_doc);
        const bool has_next = kt > 0 && (!DOC || a.cross_lingual || doc[k0 - 1] >= first_doc);
        load_tile_async<D, kTile>(sv, v, a.v_token_stride, k0, a.seq_len);
        ptx::cp_async_commit();
        ptx::cp_async_wait<1>();  // Q and K(kt) have landed (V(kt) may still be in flight)
        __syncthreads();          // ... for every thread's copies, and k_doc is visible

        // S (warp's 32 rows x 64 keys) = Q K^T; K stored [key][d] is B = K^T column-major. Each
        // K fragment feeds both m-blocks; Q fragments are re-read from shared memory per tile.
        float s[kMB][kSBlocks][4];
#pragma unroll
        for (int mb = 0; mb < kMB; ++mb) {
#pragma unroll
            for (int nb = 0; nb < kSBlocks; ++nb) s[mb][nb][0] = s[mb][nb][1] = s[mb][nb][2] = s[mb][nb][3] = 0.0f;
        }
#pragma unroll
        for (int kk = 0; kk < kKSteps; ++kk) {
            uint32_t qa[kMB][4];
#pragma unroll
            for (int mb = 0; mb < kMB; ++mb) ptx::ldmatrix_x4(qa[mb], sq + a_rows<D>(lane, warp_row + mb * 16, kk));
#pragma unroll
            for (int nb = 0; nb < kSBlocks; nb += 2) {
                uint32_t b[4];
                ptx::ldmatrix_x4(b, sk + b2_rows<D>(lane, nb * 8, kk));
#pragma unroll
                for (int mb = 0; mb < kMB; ++mb) {
                    ptx::mma_bf16_16816(s[mb][nb], qa[mb], b[0], b[1]);
                    ptx::mma_bf16_16816(s[mb][nb + 1], qa[mb], b[2], b[3]);
                }
            }
        }

        if (need_mask) {
            // Key column c = nb * 8 + 2t + (e & 1) is past row r when c - 2t > r + shift.
            const int shift = static_cast<int>(q0 - k0) - 2 * t;
#pragma unroll
            for (int mb = 0; mb < kMB; ++mb) {
#pragma unroll
                for (int nb = 0; nb < kSBlocks; ++nb) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int h = e >> 1;
                        const int limit = warp_row + mb * 16 + g + 8 * h + shift;
                        // j > i also masks keys past seq_len for every stored row (i < seq_len).
                        if (nb * 8 + (e & 1) > limit ||
                            (DOC && !doc_visible(row_doc[mb][h], k_doc[nb * 8 + 2 * t + (e & 1)], a.cross_lingual)))
                            s[mb][nb][e] = -INFINITY;
                    }
                }
            }
        }

        // Online softmax on the fragments: rows g (h = 0) and g + 8 (h = 1) of each m-block.
#pragma unroll
        for (int mb = 0; mb < kMB; ++mb) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                float mx = -INFINITY;
#pragma unroll
                for (int nb = 0; nb < kSBlocks; ++nb) mx = fmaxf(mx, fmaxf(s[mb][nb][2 * h], s[mb][nb][2 * h + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                const float m_new = fmaxf(m[mb][h], mx * scale_log2);
                // A row with nothing allowed yet keeps max -inf: subtract 0 instead (p = 0, alpha = 0).
                const float m_use = m_new == -INFINITY ? 0.0f : m_new;
                const float alpha = ptx::exp2_approx(m[mb][h] - m_use);
                m[mb][h] = m_new;
                l[mb][h] *= alpha;
#pragma unroll
                for (int nd = 0; nd < kNBlocks; ++nd) {
                    o[mb][nd][2 * h] *= alpha;
                    o[mb][nd][2 * h + 1] *= alpha;
                }
#pragma unroll
                for (int nb = 0; nb < kSBlocks; ++nb) {
#pragma unroll
                    for (int e = 2 * h; e < 2 * h + 2; ++e) {
                        const float p = ptx::exp2_approx(fmaf(s[mb][nb][e], scale_log2, -m_use));
                        s[mb][nb][e] = p;
                        l[mb][h] += p;
                    }
                }
            }
        }

        ptx::cp_async_wait<0>();  // V(kt) has landed
        __syncthreads();          // ... for every thread; every warp is done with K(kt) and k_doc
        if (has_next) {
            load_tile_async<D, kTile>(sk, k, a.k_token_stride, k0 - kTile, a.seq_len);
            if (DOC) load_row_values_async(k_doc, doc, k0 - kTile, a.seq_len);
        }
        ptx::cp_async_commit();

        // O += P V: P's A fragments come straight from the S accumulators; V stored [key][d] is
        // B row-major, read with ldmatrix.trans; each V fragment feeds both m-blocks.
#pragma unroll
        for (int ks = 0; ks < kTile / 16; ++ks) {
            uint32_t pa[kMB][4];
#pragma unroll
            for (int mb = 0; mb < kMB; ++mb) acc_to_a(pa[mb], s[mb][2 * ks], s[mb][2 * ks + 1]);
#pragma unroll
            for (int nd = 0; nd < kNBlocks; nd += 2) {
                uint32_t b[4];
                ptx::ldmatrix_x4_trans(b, sv + bt_rows<D>(lane, ks * 16, nd));
#pragma unroll
                for (int mb = 0; mb < kMB; ++mb) {
                    ptx::mma_bf16_16816(o[mb][nd], pa[mb], b[0], b[1]);
                    ptx::mma_bf16_16816(o[mb][nd + 1], pa[mb], b[2], b[3]);
                }
            }
        }
        if (!has_next) break;
        __syncthreads();  // every warp is done with V(kt) before the next V copy overwrites it
        --kt;
    }

    // The quad's partial sums make the row sum; > 0 for every stored row (its diagonal key).
    __nv_bfloat16* o_out = dev_ptr<__nv_bfloat16>(a.o) + base * a.o_token_stride + head * a.o_head_stride;
    float* lse = dev_ptr<float>(a.lse) + head * total_tokens + base;
#pragma unroll
    for (int mb = 0; mb < kMB; ++mb) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            float sum = l[mb][h];
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            const int r = warp_row + mb * 16 + g + 8 * h;
            if (r >= rows_left) continue;
            const int64_t i = q0 + r;
            const float inv_l = 1.0f / sum;
            __nv_bfloat16* dst = o_out + i * a.o_token_stride + 2 * t;
#pragma unroll
            for (int nd = 0; nd < kNBlocks; ++nd)
                store_bf16x2(dst + nd * 8, o[mb][nd][2 * h] * inv_l, o[mb][nd][2 * h + 1] * inv_l);
            if (t == 0) lse[i] = m[mb][h] * kLn2 + logf(sum);
        }
    }
}

// DQ = false: dK and dV only (the deterministic mode's first pass; backward_dq writes dQ).
template <int D, bool DOC, bool DQ = true>
__device__ void backward(const KormoAttentionBwdArgs& a) {
    static_assert(D % 64 == 0, "head dim must be a multiple of 64 (swizzle, paired k-steps)");
    constexpr int kKSteps = D / 16;
    constexpr int kNBlocks = D / 8;
    constexpr int kSBlocks = kTile / 8;
    constexpr int kDqGroup = 4;  // n-blocks of dQ per pass (4 measured best on an H200 against 2, 8 and 16)
    using L = BwdSmem<D>;
    KORMO_DYNAMIC_SMEM(unsigned char, smem);
    __nv_bfloat16* sk = reinterpret_cast<__nv_bfloat16*>(smem + L::k);
    __nv_bfloat16* sv = reinterpret_cast<__nv_bfloat16*>(smem + L::v);
    __nv_bfloat16* sq_buf = reinterpret_cast<__nv_bfloat16*>(smem + L::q);
    __nv_bfloat16* sdo_buf = reinterpret_cast<__nv_bfloat16*>(smem + L::dout);
    __nv_bfloat16* sds = reinterpret_cast<__nv_bfloat16*>(smem + L::ds);
    float* lse_buf = reinterpret_cast<float*>(smem + L::lse);  // natural log, as stored by the forward
    float* delta_buf = reinterpret_cast<float*>(smem + L::delta);
    uint32_t* q_doc_buf = reinterpret_cast<uint32_t*>(smem + L::q_doc);

    const int64_t k0 = static_cast<int64_t>(blockIdx.x) * kTile;
    const int64_t kv_head = blockIdx.y;
    const int64_t row = blockIdx.z;
    if (k0 >= a.seq_len || kv_head >= a.heads_kv || row >= a.batch) return;
    const int64_t group = a.heads_q / a.heads_kv;
    const int64_t base = row * a.seq_len;
    const int64_t total_tokens = a.batch * a.seq_len;
    const uint32_t* doc = DOC ? dev_ptr<const uint32_t>(a.doc_ids) + base : nullptr;
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int g = lane >> 2;
    const int t = lane & 3;
    const float scale_log2 = a.softmax_scale * kLog2e;

    const __nv_bfloat16* k = dev_ptr<const __nv_bfloat16>(a.k) + base * a.k_token_stride + kv_head * a.k_head_stride;
    const __nv_bfloat16* v = dev_ptr<const __nv_bfloat16>(a.v) + base * a.v_token_stride + kv_head * a.v_head_stride;
    const int64_t last_key = min(k0 + kTile - 1, a.seq_len - 1);
    const uint32_t first_key_doc = DOC ? doc[k0] : 0u;
    const uint32_t last_key_doc = DOC ? doc[last_key] : 0u;
    // This thread's accumulator rows: keys warp * 16 + g (h = 0) and + 8 (h = 1) of the tile.
    // Positions below are relative to the tiles and fit in 32 bits (the launcher bounds seq_len).
    const int r_row[2] = {warp * 16 + g, warp * 16 + g + 8};
    const int keys_left = static_cast<int>(a.seq_len - k0);
    uint32_t key_doc[2] = {0u, 0u};
    if (DOC) {
#pragma unroll
        for (int h = 0; h < 2; ++h) key_doc[h] = r_row[h] < keys_left ? doc[k0 + r_row[h]] : 0xfffffffeu;
    }

    // Starts the copies of query tile q0 of head hq into buffer b: Q, dO, lse, delta, doc ids.
    auto issue = [&](int64_t hq, int64_t q0, int b) {
        const __nv_bfloat16* q = dev_ptr<const __nv_bfloat16>(a.q) + base * a.q_token_stride + hq * a.q_head_stride;
        const __nv_bfloat16* dout =
            dev_ptr<const __nv_bfloat16>(a.dout) + base * a.o_token_stride + hq * a.o_head_stride;
        load_tile_async<D, kTile>(sq_buf + b * kTile * D, q, a.q_token_stride, q0, a.seq_len);
        load_tile_async<D, kTile>(sdo_buf + b * kTile * D, dout, a.o_token_stride, q0, a.seq_len);
        const float* lse = dev_ptr<const float>(a.lse) + hq * total_tokens + base;
        const float* delta = dev_ptr<const float>(a.delta) + hq * total_tokens + base;
        load_row_values_async(lse_buf + b * kTile, lse, q0, a.seq_len);
        load_row_values_async(delta_buf + b * kTile, delta, q0, a.seq_len);
        if (DOC) load_row_values_async(q_doc_buf + b * kTile, doc, q0, a.seq_len);
    };
    // The (head, query tile) after (hq, q0): causal starts every head at the key tile, documents
    // end it at the first query tile whose first doc id is past the last key's.
    const int64_t hq_end = (kv_head + 1) * group;
    auto advance = [&](int64_t& hq, int64_t& q0) {
        q0 += kTile;
        if (q0 >= a.seq_len || (DOC && !a.cross_lingual && doc[q0] > last_key_doc)) {
            ++hq;
            q0 = k0;
        }
        return hq < hq_end;
    };

    load_tile_async<D, kTile>(sk, k, a.k_token_stride, k0, a.seq_len);
    load_tile_async<D, kTile>(sv, v, a.v_token_stride, k0, a.seq_len);
    int64_t hq = kv_head * group;
    int64_t q0 = k0;
    int buf = 0;
    issue(hq, q0, buf);
    ptx::cp_async_commit();

    float dk[kNBlocks][4];
    float dv[kNBlocks][4];
#pragma unroll
    for (int nd = 0; nd < kNBlocks; ++nd) {
        dk[nd][0] = dk[nd][1] = dk[nd][2] = dk[nd][3] = 0.0f;
        dv[nd][0] = dv[nd][1] = dv[nd][2] = dv[nd][3] = 0.0f;
    }

    for (;;) {
        int64_t next_hq = hq, next_q0 = q0;
        const bool has_next = advance(next_hq, next_q0);
        if (has_next) issue(next_hq, next_q0, buf ^ 1);
        ptx::cp_async_commit();
        ptx::cp_async_wait<1>();  // this tile (and K, V) have landed; the next may be in flight
        __syncthreads();          // ... for every thread's copies

        const __nv_bfloat16* sq = sq_buf + buf * kTile * D;
        const __nv_bfloat16* sdo = sdo_buf + buf * kTile * D;
        const float* s_lse = lse_buf + buf * kTile;
        const float* s_delta = delta_buf + buf * kTile;
        const uint32_t* q_doc = q_doc_buf + buf * kTile;

        // S^T (warp's 16 keys x 64 queries) = K Q^T; Q stored [query][d] is B column-major.
        float p[kSBlocks][4];
#pragma unroll
        for (int nb = 0; nb < kSBlocks; ++nb) p[nb][0] = p[nb][1] = p[nb][2] = p[nb][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < kKSteps; kk += 2) {
            uint32_t ka0[4], ka1[4];
            ptx::ldmatrix_x4(ka0, sk + a_rows<D>(lane, warp * 16, kk));
            ptx::ldmatrix_x4(ka1, sk + a_rows<D>(lane, warp * 16, kk + 1));
#pragma unroll
            for (int nb = 0; nb < kSBlocks; ++nb) {
                uint32_t b[4];
                ptx::ldmatrix_x4(b, sq + b_rows<D>(lane, nb * 8, kk));
                ptx::mma_bf16_16816(p[nb], ka0, b[0], b[1]);
                ptx::mma_bf16_16816(p[nb], ka1, b[2], b[3]);
            }
        }

        // P^T = exp(S^T * scale - lse); masked entries exactly 0. Tiles below the diagonal, inside
        // the sequence and within one document need no test.
        const int64_t q_last = min(q0 + kTile - 1, a.seq_len - 1);
        const bool need_mask =
            q0 < k0 + kTile || q0 + kTile > a.seq_len || (DOC && first_key_doc != doc[q_last]);
        // Query column c = nb * 8 + 2t + (e & 1) (position q0 + c) sees key row h when
        // first[h] <= c - 2t (causal) and c - 2t < end (inside the sequence).
        const int shift = static_cast<int>(k0 - q0) - 2 * t;
        const int first[2] = {r_row[0] + shift, r_row[1] + shift};
        const int end = static_cast<int>(min(a.seq_len - q0, static_cast<int64_t>(kTile))) - 2 * t;
#pragma unroll
        for (int nb = 0; nb < kSBlocks; ++nb) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int h = e >> 1;
                const int c = nb * 8 + 2 * t + (e & 1);
                const int cc = nb * 8 + (e & 1);
                const bool ok =
                    !need_mask || (first[h] <= cc && cc < end && (!DOC || doc_visible(q_doc[c], key_doc[h], a.cross_lingual)));
                p[nb][e] = ok ? ptx::exp2_approx(fmaf(p[nb][e], scale_log2, -s_lse[c] * kLog2e)) : 0.0f;
            }
        }

        // dV += P^T dO (A from the P^T accumulators; dO stored [query][d] is B row-major).
#pragma unroll
        for (int ks = 0; ks < kTile / 16; ++ks) {
            uint32_t pa[4];
            acc_to_a(pa, p[2 * ks], p[2 * ks + 1]);
#pragma unroll
            for (int nd = 0; nd < kNBlocks; nd += 2) {
                uint32_t b[4];
                ptx::ldmatrix_x4_trans(b, sdo + bt_rows<D>(lane, ks * 16, nd));
                ptx::mma_bf16_16816(dv[nd], pa, b[0], b[1]);
                ptx::mma_bf16_16816(dv[nd + 1], pa, b[2], b[3]);
            }
        }

        // dP^T = V dO^T, then dS^T = P^T (dP^T - delta) in place.
        float ds[kSBlocks][4];
#pragma unroll
        for (int nb = 0; nb < kSBlocks; ++nb) ds[nb][0] = ds[nb][1] = ds[nb][2] = ds[nb][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < kKSteps; kk += 2) {
            uint32_t va0[4], va1[4];
            ptx::ldmatrix_x4(va0, sv + a_rows<D>(lane, warp * 16, kk));
            ptx::ldmatrix_x4(va1, sv + a_rows<D>(lane, warp * 16, kk + 1));
#pragma unroll
            for (int nb = 0; nb < kSBlocks; ++nb) {
                uint32_t b[4];
                ptx::ldmatrix_x4(b, sdo + b_rows<D>(lane, nb * 8, kk));
                ptx::mma_bf16_16816(ds[nb], va0, b[0], b[1]);
                ptx::mma_bf16_16816(ds[nb], va1, b[2], b[3]);
            }
        }
#pragma unroll
        for (int nb = 0; nb < kSBlocks; ++nb) {
#pragma unroll
            for (int e = 0; e < 4; ++e) ds[nb][e] = p[nb][e] * (ds[nb][e] - s_delta[nb * 8 + 2 * t + (e & 1)]);
        }

        // dK += dS^T Q (Q stored [query][d] is B row-major); dS^T (bf16) to shared for dQ.
#pragma unroll
        for (int ks = 0; ks < kTile / 16; ++ks) {
            uint32_t da[4];
            acc_to_a(da, ds[2 * ks], ds[2 * ks + 1]);
#pragma unroll
            for (int nd = 0; nd < kNBlocks; nd += 2) {
                uint32_t b[4];
                ptx::ldmatrix_x4_trans(b, sq + bt_rows<D>(lane, ks * 16, nd));
                ptx::mma_bf16_16816(dk[nd], da, b[0], b[1]);
                ptx::mma_bf16_16816(dk[nd + 1], da, b[2], b[3]);
            }
        }
        if (!DQ) {
            // Every warp is done with this tile's buffers before the next iteration copies into
            // them (the barrier the dS^T hand-off provides below).
            __syncthreads();
            if (!has_next) break;
            hq = next_hq;
            q0 = next_q0;
            buf ^= 1;
            continue;
        }
#pragma unroll
        for (int nb = 0; nb < kSBlocks; ++nb) {
#pragma unroll
            for (int h = 0; h < 2; ++h)
                *reinterpret_cast<uint32_t*>(sds + swz<kTile>(warp * 16 + g + 8 * h, nb) + 2 * t) =
                    ptx::pack_bf16x2(ds[nb][2 * h], ds[nb][2 * h + 1]);
        }
        __syncthreads();  // every warp's dS^T rows are needed for dQ

        // dQ (warp's 16 queries) += dS K * scale: dS = (dS^T)^T is read as A with ldmatrix.trans
        // (matrices: keys 0-7 of query chunks 2 warp, 2 warp + 1, then keys 8-15 of the same);
        // K stored [key][d] is B row-major.
        uint32_t dsa[kTile / 16][4];
#pragma unroll
        for (int ks = 0; ks < kTile / 16; ++ks)
            ptx::ldmatrix_x4_trans(dsa[ks], sds + swz<kTile>(ks * 16 + (lane & 7) + 8 * (lane >> 4), 2 * warp + ((lane >> 3) & 1)));
        // This thread's two dQ rows (queries warp * 16 + g and + 8 of the tile), at column 2t.
        const int64_t dq_row_stride = a.heads_q * D;
        float* dq0 = dev_ptr<float>(a.dq_accum) + ((base + q0 + warp * 16 + g) * a.heads_q + hq) * D + 2 * t;
        float* dq_rows[2] = {dq0, dq0 + 8 * dq_row_stride};
        const int q_rows_left = static_cast<int>(min(a.seq_len - q0, static_cast<int64_t>(kTile)));
        const bool dq_ok[2] = {warp * 16 + g < q_rows_left, warp * 16 + g + 8 < q_rows_left};
        // kDqGroup n-blocks at a time: that many independent accumulator chains (of kTile / 16
        // k-steps each) keep the tensor cores busy; the f32 adds follow each group.
#pragma unroll
        for (int n0 = 0; n0 < kNBlocks; n0 += kDqGroup) {
            float acc[kDqGroup][4];
#pragma unroll
            for (int x = 0; x < kDqGroup; ++x) acc[x][0] = acc[x][1] = acc[x][2] = acc[x][3] = 0.0f;
#pragma unroll
            for (int ks = 0; ks < kTile / 16; ++ks) {
#pragma unroll
                for (int x = 0; x < kDqGroup; x += 2) {
                    uint32_t b[4];
                    ptx::ldmatrix_x4_trans(b, sk + bt_rows<D>(lane, ks * 16, n0 + x));
                    ptx::mma_bf16_16816(acc[x], dsa[ks], b[0], b[1]);
                    ptx::mma_bf16_16816(acc[x + 1], dsa[ks], b[2], b[3]);
                }
            }
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                if (dq_ok[h]) {
#pragma unroll
                    for (int x = 0; x < kDqGroup; ++x)  // columns 2t, 2t + 1 of n-block n0 + x
                        ptx::atomic_add_f32x2(dq_rows[h] + (n0 + x) * 8, acc[x][2 * h] * a.softmax_scale,
                                              acc[x][2 * h + 1] * a.softmax_scale);
                }
            }
        }
        // No barrier here. The next iteration copies the tile after next into this iteration's
        // Q/dO/lse/delta/doc buffer, whose every read (by any warp) happened before the dS^T
        // barrier above; it writes dS^T only after its first barrier, which every warp reaches
        // only when done with this dQ (racecheck: clean on an H200).
        if (!has_next) break;
        hq = next_hq;
        q0 = next_q0;
        buf ^= 1;
    }

    __nv_bfloat16* dk_out = dev_ptr<__nv_bfloat16>(a.dk) + base * a.k_token_stride + kv_head * a.k_head_stride;
    __nv_bfloat16* dv_out = dev_ptr<__nv_bfloat16>(a.dv) + base * a.v_token_stride + kv_head * a.v_head_stride;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        if (r_row[h] >= keys_left) continue;
        const int64_t j = k0 + r_row[h];
        __nv_bfloat16* dk_dst = dk_out + j * a.k_token_stride + 2 * t;
        __nv_bfloat16* dv_dst = dv_out + j * a.v_token_stride + 2 * t;
#pragma unroll
        for (int nd = 0; nd < kNBlocks; ++nd) {
            store_bf16x2(dk_dst + nd * 8, dk[nd][2 * h] * a.softmax_scale, dk[nd][2 * h + 1] * a.softmax_scale);
            store_bf16x2(dv_dst + nd * 8, dv[nd][2 * h], dv[nd][2 * h + 1]);
        }
    }
}

// The deterministic mode's dQ pass (see the top of this file): after backward<D, DOC, false>,
// from the same arguments (lse, delta from kormo_attention_bwd_prepare); dq_accum is unused.
template <int D, bool DOC>
__device__ void backward_dq(const KormoAttentionBwdArgs& a) {
    static_assert(D % 64 == 0, "head dim must be a multiple of 64 (swizzle, paired k-steps)");
    constexpr int kKSteps = D / 16;
    constexpr int kNBlocks = D / 8;
    constexpr int kSBlocks = kTile / 8;
    using L = DqSmem<D>;
    KORMO_DYNAMIC_SMEM(unsigned char, smem);
    __nv_bfloat16* sq = reinterpret_cast<__nv_bfloat16*>(smem + L::q);
    __nv_bfloat16* sdo = reinterpret_cast<__nv_bfloat16*>(smem + L::dout);
    __nv_bfloat16* sk_buf = reinterpret_cast<__nv_bfloat16*>(smem + L::k);
    __nv_bfloat16* sv_buf = reinterpret_cast<__nv_bfloat16*>(smem + L::v);
    uint32_t* k_doc_buf = reinterpret_cast<uint32_t*>(smem + L::k_doc);

    // Heaviest tiles first: under the causal mask a query tile's work grows with its index.
    const int64_t q0 = (static_cast<int64_t>(gridDim.x) - 1 - blockIdx.x) * kTile;
    const int64_t head = blockIdx.y;
    const int64_t row = blockIdx.z;
    if (q0 >= a.seq_len || head >= a.heads_q || row >= a.batch) return;
    const int64_t kv_head = head / (a.heads_q / a.heads_kv);
    const int64_t base = row * a.seq_len;
    const int64_t total_tokens = a.batch * a.seq_len;
    const uint32_t* doc = DOC ? dev_ptr<const uint32_t>(a.doc_ids) + base : nullptr;
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int g = lane >> 2;  // accumulator rows g and g + 8 of the warp's 16 queries
    const int t = lane & 3;
    const float scale_log2 = a.softmax_scale * kLog2e;

    const __nv_bfloat16* q = dev_ptr<const __nv_bfloat16>(a.q) + base * a.q_token_stride + head * a.q_head_stride;
    const __nv_bfloat16* dout = dev_ptr<const __nv_bfloat16>(a.dout) + base * a.o_token_stride + head * a.o_head_stride;
    const __nv_bfloat16* k = dev_ptr<const __nv_bfloat16>(a.k) + base * a.k_token_stride + kv_head * a.k_head_stride;
    const __nv_bfloat16* v = dev_ptr<const __nv_bfloat16>(a.v) + base * a.v_token_stride + kv_head * a.v_head_stride;

    const int64_t q_last = min(q0 + kTile - 1, a.seq_len - 1);
    const uint32_t first_doc = DOC ? doc[q0] : 0u;
    const uint32_t last_doc = DOC ? doc[q_last] : 0u;
    // Positions below are relative to q0 and fit in 32 bits (the launcher bounds seq_len).
    const int rows_left = static_cast<int>(a.seq_len - q0);
    const int warp_row = warp * 16;
    uint32_t row_doc[2];
    float row_lse[2], row_delta[2];  // lse * log2(e) and delta of rows g, g + 8 (0 past seq_len)
    {
        const float* lse = dev_ptr<const float>(a.lse) + head * total_tokens + base;
        const float* delta = dev_ptr<const float>(a.delta) + head * total_tokens + base;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int r = warp_row + g + 8 * h;
            const bool valid = r < rows_left;
            row_doc[h] = DOC && valid ? doc[q0 + r] : 0xffffffffu;
            row_lse[h] = valid ? lse[q0 + r] * kLog2e : 0.0f;
            row_delta[h] = valid ? delta[q0 + r] : 0.0f;
        }
    }

    // Prologue: Q, dO and the last key tile the queries can see (one group).
    int64_t kt = q_last / kTile;
    int buf = 0;
    load_tile_async<D, kTile>(sq, q, a.q_token_stride, q0, a.seq_len);
    load_tile_async<D, kTile>(sdo, dout, a.o_token_stride, q0, a.seq_len);
    load_tile_async<D, kTile>(sk_buf, k, a.k_token_stride, kt * kTile, a.seq_len);
    load_tile_async<D, kTile>(sv_buf, v, a.v_token_stride, kt * kTile, a.seq_len);
    if (DOC) load_row_values_async(k_doc_buf, doc, kt * kTile, a.seq_len);
    ptx::cp_async_commit();

    float dq[kNBlocks][4];
#pragma unroll
    for (int nd = 0; nd < kNBlocks; ++nd) dq[nd][0] = dq[nd][1] = dq[nd][2] = dq[nd][3] = 0.0f;

    for (;;) {
        const int64_t k0 = kt * kTile;
        // As in the forward: only the diagonal tile and tiles spanning documents need a mask;
        // the walk stops before a tile whose keys are all in earlier documents.
        const bool need_mask = k0 + kTile - 1 > q0 || (DOC && doc[k0] != last_doc);
        const bool has_next = kt > 0 && (!DOC || a.cross_lingual || doc[k0 - 1] >= first_doc);
        if (has_next) {
            const int nb = buf ^ 1;
            load_tile_async<D, kTile>(sk_buf + nb * kTile * D, k, a.k_token_stride, k0 - kTile, a.seq_len);
            load_tile_async<D, kTile>(sv_buf + nb * kTile * D, v, a.v_token_stride, k0 - kTile, a.seq_len);
            if (DOC) load_row_values_async(k_doc_buf + nb * kTile, doc, k0 - kTile, a.seq_len);
        }
        ptx::cp_async_commit();
        ptx::cp_async_wait<1>();  // this tile (and Q, dO) have landed; the next may be in flight
        __syncthreads();          // ... for every thread's copies
        const __nv_bfloat16* sk = sk_buf + buf * kTile * D;
        const __nv_bfloat16* sv = sv_buf + buf * kTile * D;
        const uint32_t* k_doc = k_doc_buf + buf * kTile;

        // S = Q K^T and dP = dO V^T (warp's 16 queries x 64 keys); K and V stored [key][d] are
        // B column-major.
        float s[kSBlocks][4], dp[kSBlocks][4];
#pragma unroll
        for (int nb = 0; nb < kSBlocks; ++nb) {
            s[nb][0] = s[nb][1] = s[nb][2] = s[nb][3] = 0.0f;
            dp[nb][0] = dp[nb][1] = dp[nb][2] = dp[nb][3] = 0.0f;
        }
#pragma unroll
        for (int kk = 0; kk < kKSteps; ++kk) {
            uint32_t qa[4], da[4];
            ptx::ldmatrix_x4(qa, sq + a_rows<D>(lane, warp_row, kk));
            ptx::ldmatrix_x4(da, sdo + a_rows<D>(lane, warp_row, kk));
#pragma unroll
            for (int nb = 0; nb < kSBlocks; nb += 2) {
                uint32_t b[4];
                ptx::ldmatrix_x4(b, sk + b2_rows<D>(lane, nb * 8, kk));
                ptx::mma_bf16_16816(s[nb], qa, b[0], b[1]);
                ptx::mma_bf16_16816(s[nb + 1], qa, b[2], b[3]);
                ptx::ldmatrix_x4(b, sv + b2_rows<D>(lane, nb * 8, kk));
                ptx::mma_bf16_16816(dp[nb], da, b[0], b[1]);
                ptx::mma_bf16_16816(dp[nb + 1], da, b[2], b[3]);
            }
        }

        // P = exp(S scale - lse) (masked entries exactly 0), then dS = P (dP - delta) in s.
        // Key column c = nb * 8 + 2t + (e & 1) is past row r when c - 2t > r + shift.
        const int shift = static_cast<int>(q0 - k0) - 2 * t;
#pragma unroll
        for (int nb = 0; nb < kSBlocks; ++nb) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int h = e >> 1;
                const bool masked = need_mask && (nb * 8 + (e & 1) > warp_row + g + 8 * h + shift ||
                                                  (DOC && !doc_visible(row_doc[h], k_doc[nb * 8 + 2 * t + (e & 1)], a.cross_lingual)));
                const float p = masked ? 0.0f : ptx::exp2_approx(fmaf(s[nb][e], scale_log2, -row_lse[h]));
                s[nb][e] = p * (dp[nb][e] - row_delta[h]);
            }
        }

        // dQ += dS K: dS's bf16 A fragments straight from the accumulators; K stored [key][d] is
        // B row-major, read with ldmatrix.trans.
#pragma unroll
        for (int ks = 0; ks < kTile / 16; ++ks) {
            uint32_t dsa[4];
            acc_to_a(dsa, s[2 * ks], s[2 * ks + 1]);
#pragma unroll
            for (int nd = 0; nd < kNBlocks; nd += 2) {
                uint32_t b[4];
                ptx::ldmatrix_x4_trans(b, sk + bt_rows<D>(lane, ks * 16, nd));
                ptx::mma_bf16_16816(dq[nd], dsa, b[0], b[1]);
                ptx::mma_bf16_16816(dq[nd + 1], dsa, b[2], b[3]);
            }
        }
        if (!has_next) break;
        __syncthreads();  // every warp is done with this buffer before the next copies overwrite it
        buf ^= 1;
        --kt;
    }

    __nv_bfloat16* dq_out = dev_ptr<__nv_bfloat16>(a.dq) + base * a.q_token_stride + head * a.q_head_stride;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int r = warp_row + g + 8 * h;
        if (r >= rows_left) continue;
        __nv_bfloat16* dst = dq_out + (q0 + r) * a.q_token_stride + 2 * t;
#pragma unroll
        for (int nd = 0; nd < kNBlocks; ++nd)
            store_bf16x2(dst + nd * 8, dq[nd][2 * h] * a.softmax_scale, dq[nd][2 * h + 1] * a.softmax_scale);
    }
}

}  // namespace attention
}  // namespace kormo
