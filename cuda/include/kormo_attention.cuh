// Masked flash attention (forward and backward) as templates over head dim and mask kind; the
// extern "C" entry points are generated per variant by cuda/generate_instantiations.py.
//
// Design (correctness first, tensor cores through WMMA 16x16x16 bf16 -> f32):
// - Forward: one block of 4 warps per (64-query tile, query head, batch row). Each warp owns 16
//   query rows. Per 64-key tile: S = Q K^T with WMMA into shared f32, online softmax by the owning
//   warp (running max / sum per row, base-2 exponentials), P rounded to bf16, O += P V with WMMA
//   where O lives in shared f32 (WMMA's accumulator layout is opaque, so the per-row rescale is
//   done in shared memory). lse = max + log(sum) is saved for the backward.
// - Backward (FA2 order): one block per (64-key tile, kv head, batch row), warps own 16 keys.
//   For every query head of the GQA group and every query tile that can see the keys, P^T is
//   recomputed from lse, dV += P^T dO and dK += dS^T Q stay in WMMA accumulators (no rescale
//   needed), and dQ += dS K is added to an f32 buffer with atomics.
// - Masks: causal always; the DOC variants also require doc_ids[i] == doc_ids[j]. Tiles that are
//   fully masked are never loaded: causal bounds the tile range, and because doc ids are
//   non-decreasing within a row, a key tile whose last doc id is below the first query's doc id
//   (forward) or a query tile whose first doc id is beyond the last key's (backward) is skipped.
// - Loads are 16-byte vectors: strides must be multiples of 8 elements and pointers 16-byte
//   aligned (checked by the Rust launcher). Rows past seq_len are zero-filled so they can never
//   inject NaN into the products.
// Performance plan (after device validation): mma.sync m16n8k16 with ldmatrix and register-resident
// O/softmax state (FA2 layout), swizzled shared memory to remove bank conflicts, cp.async double
// buffering of K/V; on sm_90a, wgmma + TMA (FA3 style).
#pragma once

#include <mma.h>

#include "kormo_device.cuh"

namespace kormo {
namespace attention {

constexpr int kTile = 64;      // queries per tile and keys per tile
constexpr int kWarps = 4;      // each warp owns 16 rows of a tile
constexpr int kThreads = kWarps * 32;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

using namespace nvcuda;
using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major>;
using FragAcol = wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::col_major>;
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major>;
using FragBcol = wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// Shared-memory layouts, in bytes; every region is a multiple of 128 bytes so WMMA pointers stay
// 32-byte aligned. The generated files static_assert these against the generator's numbers.
template <int D>
struct FwdSmem {
    static constexpr int q = 0;                                  // bf16 [64][D]
    static constexpr int k = q + kTile * D * 2;                  // bf16 [64][D]
    static constexpr int v = k + kTile * D * 2;                  // bf16 [64][D]
    static constexpr int s = v + kTile * D * 2;                  // f32 [64][64]
    static constexpr int p = s + kTile * kTile * 4;              // bf16 [64][64]
    static constexpr int o = p + kTile * kTile * 2;              // f32 [64][D]
    static constexpr int row_max = o + kTile * D * 4;            // f32 [64]
    static constexpr int row_sum = row_max + kTile * 4;          // f32 [64]
    static constexpr int q_doc = row_sum + kTile * 4;            // uint32 [64]
    static constexpr int k_doc = q_doc + kTile * 4;              // uint32 [64]
    static constexpr int bytes = k_doc + kTile * 4;
};

template <int D>
struct BwdSmem {
    static constexpr int k = 0;                                  // bf16 [64][D]
    static constexpr int v = k + kTile * D * 2;                  // bf16 [64][D]
    static constexpr int q = v + kTile * D * 2;                  // bf16 [64][D]; with do: f32 [64][D] at the end
    static constexpr int dout = q + kTile * D * 2;               // bf16 [64][D]
    static constexpr int s = dout + kTile * D * 2;               // f32 [64 keys][64 queries]: S^T, then dP^T
    static constexpr int p32 = s + kTile * kTile * 4;            // f32 [64][64]: P^T
    static constexpr int p = p32 + kTile * kTile * 4;            // bf16 [64][64]: P^T
    static constexpr int ds = p + kTile * kTile * 2;             // bf16 [64][64]: dS^T
    static constexpr int dq_scratch = ds + kTile * kTile * 2;    // f32 [4 warps][16][16]
    static constexpr int lse = dq_scratch + kWarps * 256 * 4;    // f32 [64], base-2 units
    static constexpr int delta = lse + kTile * 4;                // f32 [64]
    static constexpr int q_doc = delta + kTile * 4;              // uint32 [64]
    static constexpr int k_doc = q_doc + kTile * 4;              // uint32 [64]
    static constexpr int bytes = k_doc + kTile * 4;
};

// Copies rows [first, first + 64) of a [tokens, D] view (token stride `stride`) into a dense
// [64][D] shared tile; rows at or past `end` become zeros.
template <int D>
__device__ __forceinline__ void load_tile(__nv_bfloat16* dst, const __nv_bfloat16* src, int64_t stride,
                                          int64_t first, int64_t end) {
    constexpr int kVecPerRow = D / 8;
    for (int idx = threadIdx.x; idx < kTile * kVecPerRow; idx += kThreads) {
        const int r = idx / kVecPerRow;
        const int c = (idx % kVecPerRow) * 8;
        uint4 val = make_uint4(0u, 0u, 0u, 0u);
        if (first + r < end) val = *reinterpret_cast<const uint4*>(src + (first + r) * stride + c);
        *reinterpret_cast<uint4*>(dst + r * D + c) = val;
    }
}

// Doc id of each of the 64 rows of a tile (past the end: a filler; such rows are masked by position).
template <bool DOC>
__device__ __forceinline__ void load_docs(uint32_t* dst, const uint32_t* doc, int64_t first, int64_t end) {
    if constexpr (DOC) {
        for (int r = threadIdx.x; r < kTile; r += kThreads) dst[r] = first + r < end ? doc[first + r] : 0xffffffffu;
    }
}

template <bool DOC>
__device__ __forceinline__ bool allowed(int64_t i, int64_t j, int64_t seq_len, const uint32_t* q_doc, int qi,
                                        const uint32_t* k_doc, int kj) {
    if (j > i || i >= seq_len) return false;  // causal (j <= i < seq_len also bounds j)
    return !DOC || q_doc[qi] == k_doc[kj];
}

template <int D, bool DOC>
__device__ void forward(const KormoAttentionFwdArgs& a) {
    static_assert(D % 16 == 0, "head dim must be a multiple of 16");
    using L = FwdSmem<D>;
    KORMO_DYNAMIC_SMEM(unsigned char, smem);
    __nv_bfloat16* sq = reinterpret_cast<__nv_bfloat16*>(smem + L::q);
    __nv_bfloat16* sk = reinterpret_cast<__nv_bfloat16*>(smem + L::k);
    __nv_bfloat16* sv = reinterpret_cast<__nv_bfloat16*>(smem + L::v);
    float* ss = reinterpret_cast<float*>(smem + L::s);
    __nv_bfloat16* sp = reinterpret_cast<__nv_bfloat16*>(smem + L::p);
    float* so = reinterpret_cast<float*>(smem + L::o);
    float* row_max = reinterpret_cast<float*>(smem + L::row_max);
    float* row_sum = reinterpret_cast<float*>(smem + L::row_sum);
    uint32_t* q_doc = reinterpret_cast<uint32_t*>(smem + L::q_doc);
    uint32_t* k_doc = reinterpret_cast<uint32_t*>(smem + L::k_doc);

    const int64_t q0 = static_cast<int64_t>(blockIdx.x) * kTile;
    const int64_t head = blockIdx.y;
    const int64_t row = blockIdx.z;
    if (q0 >= a.seq_len || head >= a.heads_q || row >= a.batch) return;
    const int64_t kv_head = head / (a.heads_q / a.heads_kv);
    const int64_t base = row * a.seq_len;  // token index of position 0 of this row
    const int64_t total_tokens = a.batch * a.seq_len;
    const uint32_t* doc = DOC ? dev_ptr<const uint32_t>(a.doc_ids) + base : nullptr;
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const float scale_log2 = a.softmax_scale * kLog2e;

    const __nv_bfloat16* q = dev_ptr<const __nv_bfloat16>(a.q) + base * a.q_token_stride + head * a.q_head_stride;
    const __nv_bfloat16* k = dev_ptr<const __nv_bfloat16>(a.k) + base * a.k_token_stride + kv_head * a.k_head_stride;
    const __nv_bfloat16* v = dev_ptr<const __nv_bfloat16>(a.v) + base * a.v_token_stride + kv_head * a.v_head_stride;

    load_tile<D>(sq, q, a.q_token_stride, q0, a.seq_len);
    load_docs<DOC>(q_doc, doc, q0, a.seq_len);
    for (int idx = threadIdx.x; idx < kTile * D; idx += kThreads) so[idx] = 0.0f;
    for (int r = threadIdx.x; r < kTile; r += kThreads) {
        row_max[r] = -INFINITY;
        row_sum[r] = 0.0f;
    }
    const uint32_t first_doc = DOC ? doc[q0] : 0u;

    const int64_t last_key_tile = blockIdx.x;  // causal: keys <= last query of this tile
    for (int64_t kt = 0; kt <= last_key_tile; ++kt) {
        const int64_t k0 = kt * kTile;
        // Fully masked by documents: every key of the tile belongs to an earlier document.
        if (DOC && doc[min(k0 + kTile - 1, a.seq_len - 1)] < first_doc) continue;
        __syncthreads();  // previous tile's K/V no longer in use (and the prologue's stores are visible)
        load_tile<D>(sk, k, a.k_token_stride, k0, a.seq_len);
        load_tile<D>(sv, v, a.v_token_stride, k0, a.seq_len);
        load_docs<DOC>(k_doc, doc, k0, a.seq_len);
        __syncthreads();

        // S (this warp's 16 rows x 64 keys) = Q K^T; K row-major [key][d] is K^T column-major.
        for (int n = 0; n < kTile / 16; ++n) {
            FragC acc;
            wmma::fill_fragment(acc, 0.0f);
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                FragA fa;
                FragBcol fb;
                wmma::load_matrix_sync(fa, sq + warp * 16 * D + kk * 16, D);
                wmma::load_matrix_sync(fb, sk + n * 16 * D + kk * 16, D);
                wmma::mma_sync(acc, fa, fb, acc);
            }
            wmma::store_matrix_sync(ss + warp * 16 * kTile + n * 16, acc, kTile, wmma::mem_row_major);
        }
        __syncwarp();

        // Online softmax over the warp's rows: lane handles keys lane and lane + 32.
        for (int r = 0; r < 16; ++r) {
            const int qi = warp * 16 + r;
            const int64_t i = q0 + qi;
            float s_val[2];
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int kj = lane + 32 * h;
                s_val[h] = allowed<DOC>(i, k0 + kj, a.seq_len, q_doc, qi, k_doc, kj)
                               ? ss[qi * kTile + kj] * scale_log2
                               : -INFINITY;
            }
            const float m_old = row_max[qi];
            const float m_new = fmaxf(m_old, warp_max(fmaxf(s_val[0], s_val[1])));
            // A row with nothing allowed yet keeps max -inf; guard the -inf - -inf = NaN case.
            const bool none = m_new == -INFINITY;
            const float alpha = none ? 1.0f : exp2f(m_old - m_new);
            float p_sum = 0.0f;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const float p = none ? 0.0f : exp2f(s_val[h] - m_new);
                p_sum += p;
                sp[qi * kTile + lane + 32 * h] = to_bf16(p);
            }
            p_sum = warp_sum(p_sum);
            // Every lane read row_max[qi] above; lane 0 rewrites it below. A shuffle is not a
            // memory barrier (racecheck reported this read/write pair on the H100), __syncwarp is.
            __syncwarp();
            if (lane == 0) {
                row_max[qi] = m_new;
                row_sum[qi] = row_sum[qi] * alpha + p_sum;
            }
            for (int d = lane; d < D; d += 32) so[qi * D + d] *= alpha;
        }
        __syncwarp();

        // O (warp's 16 rows) += P V
        for (int dn = 0; dn < D / 16; ++dn) {
            FragC acc;
            float* o_block = so + warp * 16 * D + dn * 16;
            wmma::load_matrix_sync(acc, o_block, D, wmma::mem_row_major);
#pragma unroll
            for (int kk = 0; kk < kTile / 16; ++kk) {
                FragA fa;
                FragB fb;
                wmma::load_matrix_sync(fa, sp + warp * 16 * kTile + kk * 16, kTile);
                wmma::load_matrix_sync(fb, sv + kk * 16 * D + dn * 16, D);
                wmma::mma_sync(acc, fa, fb, acc);
            }
            wmma::store_matrix_sync(o_block, acc, D, wmma::mem_row_major);
        }
        __syncwarp();
    }
    __syncthreads();

    __nv_bfloat16* o = dev_ptr<__nv_bfloat16>(a.o) + base * a.o_token_stride + head * a.o_head_stride;
    float* lse = dev_ptr<float>(a.lse) + head * total_tokens + base;
    for (int r = 0; r < 16; ++r) {
        const int qi = warp * 16 + r;
        const int64_t i = q0 + qi;
        if (i >= a.seq_len) break;
        const float l = row_sum[qi];  // > 0: the diagonal key is always allowed
        const float inv_l = 1.0f / l;
        for (int d = lane; d < D; d += 32) o[i * a.o_token_stride + d] = to_bf16(so[qi * D + d] * inv_l);
        if (lane == 0) lse[i] = row_max[qi] * kLn2 + logf(l);
    }
}

template <int D, bool DOC>
__device__ void backward(const KormoAttentionBwdArgs& a) {
    static_assert(D % 16 == 0, "head dim must be a multiple of 16");
    using L = BwdSmem<D>;
    KORMO_DYNAMIC_SMEM(unsigned char, smem);
    __nv_bfloat16* sk = reinterpret_cast<__nv_bfloat16*>(smem + L::k);
    __nv_bfloat16* sv = reinterpret_cast<__nv_bfloat16*>(smem + L::v);
    __nv_bfloat16* sq = reinterpret_cast<__nv_bfloat16*>(smem + L::q);
    __nv_bfloat16* sdo = reinterpret_cast<__nv_bfloat16*>(smem + L::dout);
    float* ss = reinterpret_cast<float*>(smem + L::s);
    float* sp32 = reinterpret_cast<float*>(smem + L::p32);
    __nv_bfloat16* sp = reinterpret_cast<__nv_bfloat16*>(smem + L::p);
    __nv_bfloat16* sds = reinterpret_cast<__nv_bfloat16*>(smem + L::ds);
    float* dq_scratch = reinterpret_cast<float*>(smem + L::dq_scratch);
    float* s_lse = reinterpret_cast<float*>(smem + L::lse);
    float* s_delta = reinterpret_cast<float*>(smem + L::delta);
    uint32_t* q_doc = reinterpret_cast<uint32_t*>(smem + L::q_doc);
    uint32_t* k_doc = reinterpret_cast<uint32_t*>(smem + L::k_doc);

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
    const float scale_log2 = a.softmax_scale * kLog2e;

    const __nv_bfloat16* k = dev_ptr<const __nv_bfloat16>(a.k) + base * a.k_token_stride + kv_head * a.k_head_stride;
    const __nv_bfloat16* v = dev_ptr<const __nv_bfloat16>(a.v) + base * a.v_token_stride + kv_head * a.v_head_stride;
    load_tile<D>(sk, k, a.k_token_stride, k0, a.seq_len);
    load_tile<D>(sv, v, a.v_token_stride, k0, a.seq_len);
    load_docs<DOC>(k_doc, doc, k0, a.seq_len);
    const int64_t last_key = min(k0 + kTile - 1, a.seq_len - 1);
    const uint32_t last_key_doc = DOC ? doc[last_key] : 0u;

    FragC dk_acc[D / 16];
    FragC dv_acc[D / 16];
#pragma unroll
    for (int dn = 0; dn < D / 16; ++dn) {
        wmma::fill_fragment(dk_acc[dn], 0.0f);
        wmma::fill_fragment(dv_acc[dn], 0.0f);
    }

    for (int64_t hq = kv_head * group; hq < (kv_head + 1) * group; ++hq) {
        const __nv_bfloat16* q = dev_ptr<const __nv_bfloat16>(a.q) + base * a.q_token_stride + hq * a.q_head_stride;
        const __nv_bfloat16* dout = dev_ptr<const __nv_bfloat16>(a.dout) + base * a.o_token_stride + hq * a.o_head_stride;
        const float* lse = dev_ptr<const float>(a.lse) + hq * total_tokens + base;
        const float* delta = dev_ptr<const float>(a.delta) + hq * total_tokens + base;
        float* dq_accum = dev_ptr<float>(a.dq_accum) + (base * a.heads_q + hq) * D;

        // Causal: only query tiles at or after this key tile see its keys.
        for (int64_t q0 = k0; q0 < a.seq_len; q0 += kTile) {
            // Documents are in order: once the first query's doc is past the last key's doc, every
            // later query tile is fully masked too.
            if (DOC && doc[q0] > last_key_doc) break;
            __syncthreads();  // previous tile's Q/dO/dS no longer in use
            load_tile<D>(sq, q, a.q_token_stride, q0, a.seq_len);
            load_tile<D>(sdo, dout, a.o_token_stride, q0, a.seq_len);
            load_docs<DOC>(q_doc, doc, q0, a.seq_len);
            for (int r = threadIdx.x; r < kTile; r += kThreads) {
                const bool valid = q0 + r < a.seq_len;
                s_lse[r] = valid ? lse[q0 + r] * kLog2e : INFINITY;
                s_delta[r] = valid ? delta[q0 + r] : 0.0f;
            }
            __syncthreads();

            // S^T (warp's 16 keys x 64 queries) = K Q^T
            for (int n = 0; n < kTile / 16; ++n) {
                FragC acc;
                wmma::fill_fragment(acc, 0.0f);
#pragma unroll
                for (int kk = 0; kk < D / 16; ++kk) {
                    FragA fa;
                    FragBcol fb;
                    wmma::load_matrix_sync(fa, sk + warp * 16 * D + kk * 16, D);
                    wmma::load_matrix_sync(fb, sq + n * 16 * D + kk * 16, D);
                    wmma::mma_sync(acc, fa, fb, acc);
                }
                wmma::store_matrix_sync(ss + warp * 16 * kTile + n * 16, acc, kTile, wmma::mem_row_major);
            }
            __syncwarp();
            // P^T = exp(S^T * scale - lse), masked entries exactly 0.
            for (int r = 0; r < 16; ++r) {
                const int kj = warp * 16 + r;
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int qi = lane + 32 * h;
                    const int idx = kj * kTile + qi;
                    const float p = allowed<DOC>(q0 + qi, k0 + kj, a.seq_len, q_doc, qi, k_doc, kj)
                                        ? exp2f(ss[idx] * scale_log2 - s_lse[qi])
                                        : 0.0f;
                    sp32[idx] = p;
                    sp[idx] = to_bf16(p);
                }
            }
            __syncwarp();

            // dV += P^T dO;  dP^T = V dO^T
#pragma unroll
            for (int dn = 0; dn < D / 16; ++dn) {
#pragma unroll 1
                for (int kk = 0; kk < kTile / 16; ++kk) {
                    FragA fa;
                    FragB fb;
                    wmma::load_matrix_sync(fa, sp + warp * 16 * kTile + kk * 16, kTile);
                    wmma::load_matrix_sync(fb, sdo + kk * 16 * D + dn * 16, D);
                    wmma::mma_sync(dv_acc[dn], fa, fb, dv_acc[dn]);
                }
            }
            for (int n = 0; n < kTile / 16; ++n) {
                FragC acc;
                wmma::fill_fragment(acc, 0.0f);
#pragma unroll
                for (int kk = 0; kk < D / 16; ++kk) {
                    FragA fa;
                    FragBcol fb;
                    wmma::load_matrix_sync(fa, sv + warp * 16 * D + kk * 16, D);
                    wmma::load_matrix_sync(fb, sdo + n * 16 * D + kk * 16, D);
                    wmma::mma_sync(acc, fa, fb, acc);
                }
                wmma::store_matrix_sync(ss + warp * 16 * kTile + n * 16, acc, kTile, wmma::mem_row_major);
            }
            __syncwarp();
            // dS^T = P^T * (dP^T - delta)
            for (int r = 0; r < 16; ++r) {
                const int kj = warp * 16 + r;
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int qi = lane + 32 * h;
                    const int idx = kj * kTile + qi;
                    sds[idx] = to_bf16(sp32[idx] * (ss[idx] - s_delta[qi]));
                }
            }
            __syncwarp();

            // dK += dS^T Q (softmax scale applied once at the end)
#pragma unroll
            for (int dn = 0; dn < D / 16; ++dn) {
#pragma unroll 1
                for (int kk = 0; kk < kTile / 16; ++kk) {
                    FragA fa;
                    FragB fb;
                    wmma::load_matrix_sync(fa, sds + warp * 16 * kTile + kk * 16, kTile);
                    wmma::load_matrix_sync(fb, sq + kk * 16 * D + dn * 16, D);
                    wmma::mma_sync(dk_acc[dn], fa, fb, dk_acc[dn]);
                }
            }
            __syncthreads();  // every warp's dS^T rows are needed for dQ

            // dQ (warp's 16 queries) += dS K * scale. dS[q][key] = dS^T[key][q]: column-major A.
            float* scratch = dq_scratch + warp * 256;
            for (int dn = 0; dn < D / 16; ++dn) {
                FragC acc;
                wmma::fill_fragment(acc, 0.0f);
#pragma unroll
                for (int kk = 0; kk < kTile / 16; ++kk) {
                    FragAcol fa;
                    FragB fb;
                    wmma::load_matrix_sync(fa, sds + kk * 16 * kTile + warp * 16, kTile);
                    wmma::load_matrix_sync(fb, sk + kk * 16 * D + dn * 16, D);
                    wmma::mma_sync(acc, fa, fb, acc);
                }
                wmma::store_matrix_sync(scratch, acc, 16, wmma::mem_row_major);
                __syncwarp();
                for (int e = lane; e < 256; e += 32) {
                    const int64_t i = q0 + warp * 16 + e / 16;
                    if (i < a.seq_len)
                        atomicAdd(dq_accum + i * a.heads_q * D + dn * 16 + (e % 16), scratch[e] * a.softmax_scale);
                }
                __syncwarp();
            }
        }
    }

    // Write dK (scaled) and dV through shared f32 staging: the Q/dO region holds [64][D] f32.
    __syncthreads();
    float* stage = reinterpret_cast<float*>(smem + L::q);
    __nv_bfloat16* dk = dev_ptr<__nv_bfloat16>(a.dk) + base * a.k_token_stride + kv_head * a.k_head_stride;
    __nv_bfloat16* dv = dev_ptr<__nv_bfloat16>(a.dv) + base * a.v_token_stride + kv_head * a.v_head_stride;
#pragma unroll
    for (int pass = 0; pass < 2; ++pass) {
#pragma unroll
        for (int dn = 0; dn < D / 16; ++dn)
            wmma::store_matrix_sync(stage + warp * 16 * D + dn * 16, pass == 0 ? dk_acc[dn] : dv_acc[dn], D,
                                    wmma::mem_row_major);
        __syncwarp();
        const float mult = pass == 0 ? a.softmax_scale : 1.0f;
        __nv_bfloat16* dst = pass == 0 ? dk : dv;
        const int64_t stride = pass == 0 ? a.k_token_stride : a.v_token_stride;
        for (int r = 0; r < 16; ++r) {
            const int64_t j = k0 + warp * 16 + r;
            if (j >= a.seq_len) break;
            for (int d = lane; d < D; d += 32) dst[j * stride + d] = to_bf16(stage[(warp * 16 + r) * D + d] * mult);
        }
        __syncwarp();
    }
}

}  // namespace attention
}  // namespace kormo
