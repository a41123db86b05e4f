// Hopper (sm_90a) masked attention forward: FlashAttention-3's structure on wgmma + TMA, for
// the same masks, layouts and outputs as kormo::attention::forward (o and the natural-log lse).
// The extern "C" entry points are generated per variant by cuda/generate_instantiations.py.
//
// Design:
// - One block per (128 query rows, batch row), heaviest (last) tiles first; three warpgroups. The
//   128 rows are `pack` query heads of one GQA group x 128 / pack positions (row r: position
//   r / pack, head r % pack; pack = the group size when it divides 128, else 1), so the heads
//   that share a kv head share every K and V tile the block loads. Warpgroup 0 is the producer: it gives registers back (setmaxnreg.dec to 24) and
//   one thread issues every copy with TMA: the Q tile once, then per key tile K (+ its doc ids)
//   and V into a 2-stage ring. Warpgroups 1 and 2 are consumers (setmaxnreg.inc to 240), 64 query
//   rows each, sharing every K and V tile.
// - mbarriers: q_full; k_full[s] and v_full[s] complete on the copies' bytes; k_empty[s] and
//   v_empty[s] take one arrival per consumer warp once that K (after S) or V (after O += PV) is no
//   longer read, so K tiles are reloaded one softmax earlier than V tiles.
// - Consumer step for key tile j: S_j = Q K_j^T (wgmma, both operands from shared memory) and
//   O += P_{j-1} V_{j-1} (wgmma, P from registers as the m16n8k16 A layout straight from the S
//   accumulators) are issued together; S_j's mask and online softmax run while the PV product is
//   still in the tensor cores, then O is rescaled (intra-warpgroup overlap). The two consumer
//   warpgroups take turns issuing (named barriers 1 and 2), so one warpgroup's softmax runs while
//   the other's GEMMs do (ping-pong).
// - Masking: key tiles are walked from the diagonal down to the tile holding the start of the
//   block's first document (found by binary search over the row's doc ids), so tiles of earlier
//   documents are never loaded; of the loaded tiles only the diagonal one and, with documents,
//   tiles whose first key's document differs from the block's last query's pay for the
//   per-element test. Doc-masked attention costs its visible work plus partial edge tiles.
// - Shared tiles are [128 rows][64] bf16 sub-tiles (head dim 128: two per tile), 128-byte rows with
//   the 128-byte swizzle: TMA writes them so, the wgmma descriptors read them so; the region is
//   aligned to 1024 bytes (the swizzle period). Rows past the sequence come in as zeros (TMA's
//   out-of-bounds fill over the 4-D {d, head, position, row} maps) and are never stored.
// Backward (between kormo_attention_bwd_prepare and _finish, as the sm_80 one): one block per
// (128-key tile, kv head, batch row), the same three warpgroups. The producer loads K and V once,
// then per step (query head of the GQA group x 64-query tile) Q, dO, lse, delta and the query
// doc ids into a 2-stage ring. Consumer c owns keys 64c..64c+63: S^T = K Q^T and dP^T = V dO^T
// (wgmma from shared memory), P^T and dS^T = P^T (dP^T - delta) in registers, dV += P^T dO and
// dK += dS^T Q (P^T and dS^T as register A operands), then dS^T goes to shared memory and
// dQ = dS K over the consumer's 64 keys (A M-major) is added to dq_accum with f32 atomics.
// Query tiles run from the one holding the block's first key to the end of its last key's
// document; the per-element mask only on tiles crossing the diagonal, a document edge or the
// end of the sequence. DQ = false (the deterministic mode's dK/dV pass) stops before dS^T's
// store; the sm_80 dQ pass then owns dQ.
// Outside the sm_90a pass (sm_80 cubin, compute_90 PTX) the kernels are traps: the launcher picks
// them only on compute capability 9.0.
#pragma once

#include "kormo_attention.cuh"
#include "kormo_hopper.cuh"

namespace kormo {
namespace attention_sm90 {

constexpr int kBlockM = 128;  // queries per block
constexpr int kBlockN = 128;  // keys per tile
constexpr int kStages = 2;
constexpr int kThreads = 384;
constexpr int kConsumerWarps = 8;
constexpr int kSubTileBytes = kBlockN * sm90::kSwizzleRowBytes;  // [128 rows][64] bf16
constexpr int kBwdBlockM = 64;                                    // queries per backward step
constexpr int kBwdSubTileBytes = kBwdBlockM * sm90::kSwizzleRowBytes;  // [64 rows][64] bf16

template <int D>
struct FwdSmem {
    static constexpr int kHalves = D / 64;
    static constexpr int q = 0;                                         // [half][128][64]
    static constexpr int k = q + kHalves * kSubTileBytes;               // [stage][half][128][64]
    static constexpr int v = k + kStages * kHalves * kSubTileBytes;     // [stage][half][128][64]
    static constexpr int k_doc = v + kStages * kHalves * kSubTileBytes; // uint32 [stage][128]
    static constexpr int bars = k_doc + kStages * kBlockN * 4;         // 9 mbarriers
    static constexpr int info = bars + 128;                            // first key tile
    static constexpr int bytes = info + 128 + sm90::kSwizzleAtomBytes;  // + slack for the alignment
};

// The dynamic shared memory from its first 1024-byte boundary (the swizzle period: TMA and the
// wgmma descriptors agree on the pattern only from there); kernels request 1 KiB extra.
__device__ __forceinline__ unsigned char* aligned_smem() {
    KORMO_DYNAMIC_SMEM(unsigned char, base);
    const uint32_t misalign = sm90::smem_u32(base) % sm90::kSwizzleAtomBytes;
    return base + (misalign ? sm90::kSwizzleAtomBytes - misalign : 0);
}

// Warp specialization: warpgroup 0 gives registers back and one of its threads runs `produce`
// (the TMA copies); the two consumer warpgroups raise their registers and run `consume`.
template <class Produce, class Consume>
__device__ __forceinline__ void split_warpgroups(Produce produce, Consume consume) {
    if (threadIdx.x < 128) {
        sm90::reg_dealloc<24>();
        if (threadIdx.x == 0) produce();
        return;
    }
    sm90::reg_alloc<240>();
    consume();
}

struct Barriers {
    uint64_t* q_full;
    uint64_t* k_full;   // [kStages]
    uint64_t* v_full;   // [kStages]
    uint64_t* k_empty;  // [kStages]
    uint64_t* v_empty;  // [kStages]
};

// Packs this thread's elements of a 64 x N accumulator (m64nN layout) into the bf16 A
// fragments of its N / 16 k-steps: the C layout of two adjacent 8-column blocks is the A layout.
template <int N>
__device__ __forceinline__ void acc_to_a(uint32_t (&frag)[N / 16][4], const float (&x)[N / 2]) {
#pragma unroll
    for (int kk = 0; kk < N / 16; ++kk) {
        frag[kk][0] = ptx::pack_bf16x2(x[8 * kk + 0], x[8 * kk + 1]);
        frag[kk][1] = ptx::pack_bf16x2(x[8 * kk + 2], x[8 * kk + 3]);
        frag[kk][2] = ptx::pack_bf16x2(x[8 * kk + 4], x[8 * kk + 5]);
        frag[kk][3] = ptx::pack_bf16x2(x[8 * kk + 6], x[8 * kk + 7]);
    }
}

// Smallest position p <= q0 of the row whose document is doc[q0] (doc ids are non-decreasing).
__device__ __forceinline__ int64_t first_of_document(const uint32_t* doc, int64_t q0) {
    const uint32_t target = doc[q0];
    int64_t lo = 0, hi = q0;
    while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        if (doc[mid] < target)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

// What a forward block covers: positions q0 .. q0 + 128 / pack - 1 of batch row `row`, query
// heads head0 .. head0 + pack - 1 (all of kv head kv_head), key tiles first_tile .. last_tile.
struct FwdBlock {
    int pack, q0, head0, kv_head, row, last_tile;
};

__device__ __forceinline__ FwdBlock fwd_block(const KormoAttentionFwdSm90Args& p) {
    const int pack = p.heads_per_block;
    const int q0 = (static_cast<int>(gridDim.x) - 1 - static_cast<int>(blockIdx.x)) * (kBlockM / pack);
    const int head0 = static_cast<int>(blockIdx.y) * pack;
    return FwdBlock{pack, q0, head0, head0 / static_cast<int>(p.a.heads_q / p.a.heads_kv), static_cast<int>(blockIdx.z),
                    q0 / kBlockN};
}

template <int D, bool DOC>
__device__ void produce(const KormoAttentionFwdSm90Args& p, unsigned char* smem, const Barriers& b, const FwdBlock& blk,
                        int first_tile) {
    using L = FwdSmem<D>;
    const KormoAttentionFwdArgs& a = p.a;
    const int row = blk.row, kv_head = blk.kv_head, last_tile = blk.last_tile;
    constexpr uint32_t kTileBytes = L::kHalves * kSubTileBytes;
    sm90::mbar_arrive_expect_tx(b.q_full, kTileBytes);
    for (int h = 0; h < L::kHalves; ++h)  // box {64, pack heads, 128 / pack positions}: rows (position, head)
        sm90::tma_load_4d(smem + L::q + h * kSubTileBytes, &p.q_map, b.q_full, 64 * h, blk.head0, blk.q0, row);
    for (int it = 0; it <= last_tile - first_tile; ++it) {
        const int j = last_tile - it, s = it % kStages, use = it / kStages;
        if (use > 0) sm90::mbar_wait(&b.k_empty[s], (use - 1) & 1);
        sm90::mbar_arrive_expect_tx(&b.k_full[s], kTileBytes + (DOC ? kBlockN * 4 : 0));
        for (int h = 0; h < L::kHalves; ++h)
            sm90::tma_load_4d(smem + L::k + (s * L::kHalves + h) * kSubTileBytes, &p.k_map, &b.k_full[s], 64 * h, kv_head,
                              j * kBlockN, row);
        if (DOC)
            sm90::tma_load_1d(smem + L::k_doc + s * kBlockN * 4, &p.doc_map, &b.k_full[s],
                              static_cast<int>(row * a.seq_len + j * kBlockN));
        if (use > 0) sm90::mbar_wait(&b.v_empty[s], (use - 1) & 1);
        sm90::mbar_arrive_expect_tx(&b.v_full[s], kTileBytes);
        for (int h = 0; h < L::kHalves; ++h)
            sm90::tma_load_4d(smem + L::v + (s * L::kHalves + h) * kSubTileBytes, &p.v_map, &b.v_full[s], 64 * h, kv_head,
                              j * kBlockN, row);
    }
}

// Masks S (this thread's elements of the 64 x 128 tile) and folds it into the running softmax:
// m (row max of S * scale * log2 e), l (this lane's part of the row sum); S becomes P and alpha
// the factor the previous O must be scaled by.
template <bool DOC>
__device__ __forceinline__ void softmax_step(float (&s)[kBlockN / 2], float (&m)[2], float (&l)[2], float (&alpha)[2],
                                             bool need_mask, const int (&limit)[2], const uint32_t* k_doc,
                                             const uint32_t (&row_doc)[2], bool cross_lingual, float scale_log2) {
    const int t = threadIdx.x & 3;
    if (need_mask) {
#pragma unroll
        for (int i = 0; i < kBlockN / 2; ++i) {
            // Key k0 + c is past the query at position limit[h] + k0 of the row when c > limit[h].
            const int h = (i & 2) >> 1, c = (i / 4) * 8 + 2 * t + (i & 1);
            if (c > limit[h] || (DOC && !attention::doc_visible(row_doc[h], k_doc[c], cross_lingual))) s[i] = -INFINITY;
        }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        float mx = -INFINITY;
#pragma unroll
        for (int nb = 0; nb < kBlockN / 8; ++nb) mx = fmaxf(mx, fmaxf(s[nb * 4 + 2 * h], s[nb * 4 + 2 * h + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m[h], mx * scale_log2);
        const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // nothing visible yet: p = 0, alpha = 0
        alpha[h] = ptx::exp2_approx(m[h] - m_use);
        m[h] = m_new;
        float sum = 0.0f;
#pragma unroll
        for (int nb = 0; nb < kBlockN / 8; ++nb) {
#pragma unroll
            for (int e = 2 * h; e < 2 * h + 2; ++e) {
                const float pv = ptx::exp2_approx(fmaf(s[nb * 4 + e], scale_log2, -m_use));
                s[nb * 4 + e] = pv;
                sum += pv;
            }
        }
        l[h] = l[h] * alpha[h] + sum;
    }
}

template <int D, bool DOC>
__device__ void consume(const KormoAttentionFwdSm90Args& p, unsigned char* smem, const Barriers& b, const FwdBlock& blk,
                        int first_tile) {
    using L = FwdSmem<D>;
    const KormoAttentionFwdArgs& a = p.a;
    const int wg = threadIdx.x / 128 - 1;  // consumer warpgroup 0 or 1
    const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int last_tile = blk.last_tile;
    const int64_t q0 = blk.q0, base = static_cast<int64_t>(blk.row) * a.seq_len, total_tokens = a.batch * a.seq_len;
    const int row0 = wg * 64 + warp * 16 + g;  // this thread's rows: row0 and row0 + 8 of the block
    // Row r of the block: position q0 + r / pack, query head head0 + r % pack.
    const int64_t pos[2] = {q0 + (row0) / blk.pack, q0 + (row0 + 8) / blk.pack};
    const int64_t head[2] = {blk.head0 + row0 % blk.pack, blk.head0 + (row0 + 8) % blk.pack};
    const uint32_t* doc = DOC ? dev_ptr<const uint32_t>(a.doc_ids) + base : nullptr;
    uint32_t row_doc[2] = {0u, 0u};
    uint32_t last_doc = 0u;
    if (DOC) {
        for (int h = 0; h < 2; ++h) row_doc[h] = pos[h] < a.seq_len ? doc[pos[h]] : 0xffffffffu;
        last_doc = doc[min(q0 + kBlockM / blk.pack - 1, a.seq_len - 1)];
    }
    const float scale_log2 = a.softmax_scale * attention::kLog2e;
    const unsigned char* sq = smem + L::q + wg * 64 * sm90::kSwizzleRowBytes;

    float o[D / 2], s[kBlockN / 2];
    uint32_t pa[kBlockN / 16][4];  // P of the previous tile as A fragments, one per 16 keys
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, alpha[2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;

    const unsigned char* sk_base = smem + L::k;
    const unsigned char* sv_base = smem + L::v;
    // S = Q K^T for the key tile in stage st (D / 16 k-steps, both operands in shared memory).
    auto issue_s = [&](int st) {
        const unsigned char* sk = sk_base + st * L::kHalves * kSubTileBytes;
#pragma unroll
        for (int ks = 0; ks < D / 16; ++ks) {
            const int off = (ks / 4) * kSubTileBytes + (ks % 4) * 32;
            sm90::wgmma_ss<kBlockN>(s, sm90::desc_sw128(sq + off, 16, sm90::kSwizzleAtomBytes),
                                    sm90::desc_sw128(sk + off, 16, sm90::kSwizzleAtomBytes), ks > 0);
        }
        sm90::wgmma_commit();
    };
    // O += P V for the value tile in stage st (P from registers; V N-major, 16 keys per k-step).
    auto issue_pv = [&](int st) {
        const unsigned char* sv = sv_base + st * L::kHalves * kSubTileBytes;
#pragma unroll
        for (int kk = 0; kk < kBlockN / 16; ++kk)
            sm90::wgmma_rs<D>(o, pa[kk], sm90::desc_sw128(sv + kk * 16 * sm90::kSwizzleRowBytes, kSubTileBytes,
                                                           sm90::kSwizzleAtomBytes), true);
        sm90::wgmma_commit();
    };
    // Mask + softmax of the tile just computed (iteration it, stage st): S becomes P.
    auto softmax = [&](int it, int st) {
        const int64_t k0 = static_cast<int64_t>(last_tile - it) * kBlockN;
        const uint32_t* k_doc = reinterpret_cast<const uint32_t*>(smem + L::k_doc + st * kBlockN * 4);
        const bool need_mask = k0 + kBlockN - 1 > q0 || (DOC && k_doc[0] != last_doc);
        const int limit[2] = {static_cast<int>(pos[0] - k0), static_cast<int>(pos[1] - k0)};
        softmax_step<DOC>(s, m, l, alpha, need_mask, limit, k_doc, row_doc, a.cross_lingual != 0, scale_log2);
    };
    // One arrival per warp on an empty barrier, once all its lanes are done with the stage.
    auto release = [&](uint64_t* bar) {
        __syncwarp();
        if (lane == 0) sm90::mbar_arrive(bar);
    };
    // Ping-pong: consumer c issues its GEMMs after bar.sync(1 + c) and then lets the other go
    // with bar.arrive(2 - c). Consumer 1 opens with one arrival for consumer 0 and skips its
    // last one, so every sync meets exactly one arrival.
    const int n_tiles = last_tile - first_tile + 1;
    if (wg == 1) sm90::named_bar_arrive(1, 256);
    sm90::mbar_wait(b.q_full, 0);

    // First tile (the diagonal): S only.
    sm90::mbar_wait(&b.k_full[0], 0);
    sm90::named_bar_sync(1 + wg, 256);
    sm90::wgmma_fence();
    issue_s(0);
    if (!(wg == 1 && n_tiles == 1)) sm90::named_bar_arrive(2 - wg, 256);
    sm90::wgmma_wait<0>();
    sm90::fence_operand(s);
    softmax(0, 0);
    release(&b.k_empty[0]);
    acc_to_a<kBlockN>(pa, s);

    // Tile it: S_it with the previous tile's PV in flight behind it.
    for (int it = 1; it < n_tiles; ++it) {
        const int st = it % kStages, prev = (it - 1) % kStages;
        sm90::mbar_wait(&b.k_full[st], (it / kStages) & 1);
        sm90::mbar_wait(&b.v_full[prev], ((it - 1) / kStages) & 1);
        sm90::named_bar_sync(1 + wg, 256);
        sm90::wgmma_fence();
        issue_s(st);
        issue_pv(prev);
        if (!(wg == 1 && it == n_tiles - 1)) sm90::named_bar_arrive(2 - wg, 256);
        sm90::wgmma_wait<1>();  // S done; PV may still run
        sm90::fence_operand(s);
        softmax(it, st);  // reads the stage's key doc ids: K is released after it
        release(&b.k_empty[st]);
        sm90::wgmma_wait<0>();
        sm90::fence_operand(o);
        release(&b.v_empty[prev]);
#pragma unroll
        for (int i = 0; i < D / 2; ++i) o[i] *= alpha[(i & 2) >> 1];
        acc_to_a<kBlockN>(pa, s);
    }

    // Last PV.
    const int last = (n_tiles - 1) % kStages;
    sm90::mbar_wait(&b.v_full[last], ((n_tiles - 1) / kStages) & 1);
    sm90::wgmma_fence();
    issue_pv(last);
    sm90::wgmma_wait<0>();
    sm90::fence_operand(o);

    // Epilogue: the quad's partial sums make the row sum (> 0 for every stored row: its diagonal key).
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        float sum = l[h];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const int64_t i = pos[h];
        if (i >= a.seq_len) continue;
        const float inv_l = 1.0f / sum;
        float* lse = dev_ptr<float>(a.lse) + head[h] * total_tokens + base;
        __nv_bfloat16* dst = dev_ptr<__nv_bfloat16>(a.o) + (base + i) * a.o_token_stride + head[h] * a.o_head_stride + 2 * t;
#pragma unroll
        for (int nd = 0; nd < D / 8; ++nd)
            attention::store_bf16x2(dst + nd * 8, o[nd * 4 + 2 * h] * inv_l, o[nd * 4 + 2 * h + 1] * inv_l);
        if (t == 0) lse[i] = m[h] * attention::kLn2 + logf(sum);
    }
}

template <int D, bool DOC>
__device__ void forward(const KormoAttentionFwdSm90Args& p) {
#if defined(KORMO_EMULATOR) || defined(KORMO_SM90A)
    static_assert(D == 64 || D == 128, "head dim 64 or 128");
    using L = FwdSmem<D>;
    const KormoAttentionFwdArgs& a = p.a;
    unsigned char* smem = aligned_smem();
    const FwdBlock blk = fwd_block(p);
    if (blk.q0 >= a.seq_len || blk.head0 >= a.heads_q || blk.row >= a.batch) return;
    uint64_t* bars = reinterpret_cast<uint64_t*>(smem + L::bars);
    const Barriers b{bars, bars + 1, bars + 1 + kStages, bars + 1 + 2 * kStages, bars + 1 + 3 * kStages};
    int* info = reinterpret_cast<int*>(smem + L::info);
    if (threadIdx.x == 0) {
        sm90::mbar_init(b.q_full, 1);
        for (int s = 0; s < kStages; ++s) {
            sm90::mbar_init(&b.k_full[s], 1);
            sm90::mbar_init(&b.v_full[s], 1);
            sm90::mbar_init(&b.k_empty[s], kConsumerWarps);
            sm90::mbar_init(&b.v_empty[s], kConsumerWarps);
        }
        sm90::fence_barrier_init();
        // Under cross-lingual attention earlier documents may be visible: only the causal bound.
        const uint32_t* doc = dev_ptr<const uint32_t>(a.doc_ids) + static_cast<int64_t>(blk.row) * a.seq_len;
        info[0] = DOC && !a.cross_lingual ? static_cast<int>(first_of_document(doc, blk.q0) / kBlockN) : 0;
    }
    __syncthreads();
    const int first_tile = info[0];
    split_warpgroups([&] { produce<D, DOC>(p, smem, b, blk, first_tile); }, [&] { consume<D, DOC>(p, smem, b, blk, first_tile); });
#else
    (void)p;
    __trap();
#endif
}

template <int D>
struct BwdSmem {
    static constexpr int kHalves = D / 64;
    static constexpr int k = 0;                                             // [half][128][64]
    static constexpr int v = k + kHalves * kSubTileBytes;                   // [half][128][64]
    static constexpr int q = v + kHalves * kSubTileBytes;                   // [stage][half][64][64]
    static constexpr int dout = q + kStages * kHalves * kBwdSubTileBytes;   // [stage][half][64][64]
    static constexpr int ds = dout + kStages * kHalves * kBwdSubTileBytes;  // dS^T [128 keys][64 queries]
    static constexpr int lse = ds + kSubTileBytes;                          // f32 [stage][64]
    static constexpr int delta = lse + kStages * kBwdBlockM * 4;            // f32 [stage][64]
    static constexpr int q_doc = delta + kStages * kBwdBlockM * 4;          // uint32 [stage][64]
    static constexpr int k_doc = q_doc + kStages * kBwdBlockM * 4;          // uint32 [128]
    static constexpr int bars = k_doc + kBlockN * 4;                       // 5 mbarriers
    static constexpr int info = bars + 128;                                // query tile range
    static constexpr int bytes = info + 128 + sm90::kSwizzleAtomBytes;
};

// Position after the last one of the row whose document is doc[k] (doc ids are non-decreasing).
__device__ __forceinline__ int64_t end_of_document(const uint32_t* doc, int64_t k, int64_t seq_len) {
    const uint32_t target = doc[k];
    int64_t lo = k, hi = seq_len;
    while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        if (doc[mid] <= target)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

template <int D, bool DOC>
__device__ void produce_bwd(const KormoAttentionBwdSm90Args& p, unsigned char* smem, uint64_t* bars, int qt_lo, int qt_hi) {
    using L = BwdSmem<D>;
    const KormoAttentionBwdArgs& a = p.a;
    const int kv_head = blockIdx.y, row = blockIdx.z, k0 = blockIdx.x * kBlockN;
    const int group = static_cast<int>(a.heads_q / a.heads_kv), tiles = qt_hi - qt_lo + 1;
    const int64_t tokens = a.batch * a.seq_len;
    uint64_t *kv_full = bars, *q_full = bars + 1, *q_empty = bars + 1 + kStages;
    sm90::mbar_arrive_expect_tx(kv_full, 2 * L::kHalves * kSubTileBytes + (DOC ? kBlockN * 4 : 0));
    for (int h = 0; h < L::kHalves; ++h) {
        sm90::tma_load_4d(smem + L::k + h * kSubTileBytes, &p.k_map, kv_full, 64 * h, kv_head, k0, row);
        sm90::tma_load_4d(smem + L::v + h * kSubTileBytes, &p.v_map, kv_full, 64 * h, kv_head, k0, row);
    }
    if (DOC) sm90::tma_load_1d(smem + L::k_doc, &p.k_doc_map, kv_full, static_cast<int>(row * a.seq_len + k0));
    constexpr uint32_t kStepBytes = 2 * L::kHalves * kBwdSubTileBytes + 2 * kBwdBlockM * 4 + (DOC ? kBwdBlockM * 4 : 0);
    for (int step = 0; step < group * tiles; ++step) {
        const int hq = kv_head * group + step / tiles, q0 = (qt_lo + step % tiles) * kBwdBlockM;
        const int s = step % kStages, use = step / kStages;
        if (use > 0) sm90::mbar_wait(&q_empty[s], (use - 1) & 1);
        sm90::mbar_arrive_expect_tx(&q_full[s], kStepBytes);
        for (int h = 0; h < L::kHalves; ++h) {
            const int at = (s * L::kHalves + h) * kBwdSubTileBytes;
            sm90::tma_load_4d(smem + L::q + at, &p.q_map, &q_full[s], 64 * h, hq, q0, row);
            sm90::tma_load_4d(smem + L::dout + at, &p.dout_map, &q_full[s], 64 * h, hq, q0, row);
        }
        const int token = static_cast<int>(row * a.seq_len + q0);
        sm90::tma_load_1d(smem + L::lse + s * kBwdBlockM * 4, &p.lse_map, &q_full[s], static_cast<int>(hq * tokens) + token);
        sm90::tma_load_1d(smem + L::delta + s * kBwdBlockM * 4, &p.delta_map, &q_full[s], static_cast<int>(hq * tokens) + token);
        if (DOC) sm90::tma_load_1d(smem + L::q_doc + s * kBwdBlockM * 4, &p.q_doc_map, &q_full[s], token);
    }
}

template <int D, bool DOC, bool DQ>
__device__ void consume_bwd(const KormoAttentionBwdSm90Args& p, unsigned char* smem, uint64_t* bars, int qt_lo, int qt_hi) {
    using L = BwdSmem<D>;
    const KormoAttentionBwdArgs& a = p.a;
    const int wg = threadIdx.x / 128 - 1, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int64_t k0 = static_cast<int64_t>(blockIdx.x) * kBlockN, kv_head = blockIdx.y, row = blockIdx.z;
    const int64_t base = row * a.seq_len;
    const int group = static_cast<int>(a.heads_q / a.heads_kv), tiles = qt_hi - qt_lo + 1;
    const int key0 = wg * 64 + warp * 16 + g;  // this thread's keys: key0 and key0 + 8 of the block
    const float scale_log2 = a.softmax_scale * attention::kLog2e;
    uint64_t *kv_full = bars, *q_full = bars + 1, *q_empty = bars + 1 + kStages;
    const unsigned char* sk = smem + L::k;
    const unsigned char* sv = smem + L::v;
    unsigned char* sds = smem + L::ds;
    const uint32_t* k_doc = reinterpret_cast<const uint32_t*>(smem + L::k_doc);

    float dk[D / 2], dv[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) dk[i] = dv[i] = 0.0f;
    sm90::mbar_wait(kv_full, 0);
    const uint32_t key_doc[2] = {DOC ? k_doc[key0] : 0u, DOC ? k_doc[key0 + 8] : 0u};

    for (int step = 0; step < group * tiles; ++step) {
        const int64_t hq = kv_head * group + step / tiles, q0 = static_cast<int64_t>(qt_lo + step % tiles) * kBwdBlockM;
        const int s = step % kStages;
        const unsigned char* sq = smem + L::q + s * L::kHalves * kBwdSubTileBytes;
        const unsigned char* sdo = smem + L::dout + s * L::kHalves * kBwdSubTileBytes;
        const float* lse = reinterpret_cast<const float*>(smem + L::lse + s * kBwdBlockM * 4);
        const float* delta = reinterpret_cast<const float*>(smem + L::delta + s * kBwdBlockM * 4);
        const uint32_t* q_doc = reinterpret_cast<const uint32_t*>(smem + L::q_doc + s * kBwdBlockM * 4);
        sm90::mbar_wait(&q_full[s], (step / kStages) & 1);

        // S^T = K Q^T and dP^T = V dO^T for this consumer's 64 keys x the 64 queries.
        float st[kBwdBlockM / 2], dpt[kBwdBlockM / 2];
        sm90::wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < D / 16; ++ks) {
            const int a_off = (ks / 4) * kSubTileBytes + wg * 64 * sm90::kSwizzleRowBytes + (ks % 4) * 32;
            const int b_off = (ks / 4) * kBwdSubTileBytes + (ks % 4) * 32;
            sm90::wgmma_ss<kBwdBlockM>(st, sm90::desc_sw128(sk + a_off, 16, sm90::kSwizzleAtomBytes),
                                       sm90::desc_sw128(sq + b_off, 16, sm90::kSwizzleAtomBytes), ks > 0);
            sm90::wgmma_ss<kBwdBlockM>(dpt, sm90::desc_sw128(sv + a_off, 16, sm90::kSwizzleAtomBytes),
                                       sm90::desc_sw128(sdo + b_off, 16, sm90::kSwizzleAtomBytes), ks > 0);
        }
        sm90::wgmma_commit();
        sm90::wgmma_wait<0>();
        sm90::fence_operand(st);
        sm90::fence_operand(dpt);

        // P^T = exp(S^T scale - lse), dS^T = P^T (dP^T - delta); masked pairs give 0.
        const bool need_mask =
            q0 < k0 + kBlockN - 1 || q0 + kBwdBlockM > a.seq_len || (DOC && k_doc[0] != q_doc[kBwdBlockM - 1]);
#pragma unroll
        for (int i = 0; i < kBwdBlockM / 2; ++i) {
            const int h = (i & 2) >> 1, c = (i / 4) * 8 + 2 * t + (i & 1);
            const bool masked = need_mask && (k0 + key0 + 8 * h > q0 + c || q0 + c >= a.seq_len ||
                                              (DOC && !attention::doc_visible(q_doc[c], key_doc[h], a.cross_lingual)));
            const float pv = masked ? 0.0f : ptx::exp2_approx(fmaf(st[i], scale_log2, -lse[c] * attention::kLog2e));
            st[i] = pv;
            dpt[i] = pv * (dpt[i] - delta[c]);
        }
        uint32_t pa[kBwdBlockM / 16][4], dsa[kBwdBlockM / 16][4];
        acc_to_a<kBwdBlockM>(pa, st);
        acc_to_a<kBwdBlockM>(dsa, dpt);

        // dV += P^T dO, dK += dS^T Q (B N-major: 16 queries per k-step).
        sm90::wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kBwdBlockM / 16; ++kk) {
            const int off = kk * 16 * sm90::kSwizzleRowBytes;
            sm90::wgmma_rs<D>(dv, pa[kk], sm90::desc_sw128(sdo + off, kBwdSubTileBytes, sm90::kSwizzleAtomBytes), true);
            sm90::wgmma_rs<D>(dk, dsa[kk], sm90::desc_sw128(sq + off, kBwdSubTileBytes, sm90::kSwizzleAtomBytes), true);
        }
        sm90::wgmma_commit();
        if (DQ) {
            // dS^T rows of this thread's keys into the swizzled [128][64] tile (the A fragments'
            // registers are bf16 pairs of adjacent queries already).
#pragma unroll
            for (int kk = 0; kk < kBwdBlockM / 16; ++kk) {
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    const int key = key0 + 8 * (r & 1), col = 16 * kk + 8 * (r >> 1) + 2 * t;
                    *reinterpret_cast<uint32_t*>(sds + key * sm90::kSwizzleRowBytes + (((col / 8) ^ (key & 7)) << 4) + (col % 8) * 2) =
                        dsa[kk][r];
                }
            }
        }
        sm90::wgmma_wait<0>();
        sm90::fence_operand(dk);
        sm90::fence_operand(dv);
        __syncwarp();  // every lane is done with the stage (lse, delta, doc ids, Q, dO)
        if (lane == 0) sm90::mbar_arrive(&q_empty[s]);
        if (!DQ) continue;

        // dQ (64 queries x D) += dS K over this consumer's keys: A = dS^T read M-major, B = K N-major.
        sm90::fence_view_async_shared();
        sm90::named_bar_sync(1 + wg, 128);
        float dq[D / 2];
        sm90::wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
            const int off = (wg * 64 + kk * 16) * sm90::kSwizzleRowBytes;
            sm90::wgmma_ssmn<D>(dq, sm90::desc_sw128(sds + off, kSubTileBytes, sm90::kSwizzleAtomBytes),
                                sm90::desc_sw128(sk + off, kSubTileBytes, sm90::kSwizzleAtomBytes), kk > 0);
        }
        sm90::wgmma_commit();
        sm90::wgmma_wait<0>();
        sm90::fence_operand(dq);
        sm90::named_bar_sync(1 + wg, 128);  // every warp's dQ product has read dS^T before the next store
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int64_t i = q0 + warp * 16 + g + 8 * h;
            if (i >= a.seq_len) continue;
            float* dst = dev_ptr<float>(a.dq_accum) + ((base + i) * a.heads_q + hq) * D + 2 * t;
#pragma unroll
            for (int nd = 0; nd < D / 8; ++nd)
                ptx::atomic_add_f32x2(dst + nd * 8, dq[nd * 4 + 2 * h] * a.softmax_scale, dq[nd * 4 + 2 * h + 1] * a.softmax_scale);
        }
    }

    // dK (softmax scale applied here) and dV rows of this thread's keys.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int64_t j = k0 + key0 + 8 * h;
        if (j >= a.seq_len) continue;
        __nv_bfloat16* dk_out = dev_ptr<__nv_bfloat16>(a.dk) + (base + j) * a.k_token_stride + kv_head * a.k_head_stride + 2 * t;
        __nv_bfloat16* dv_out = dev_ptr<__nv_bfloat16>(a.dv) + (base + j) * a.v_token_stride + kv_head * a.v_head_stride + 2 * t;
#pragma unroll
        for (int nd = 0; nd < D / 8; ++nd) {
            attention::store_bf16x2(dk_out + nd * 8, dk[nd * 4 + 2 * h] * a.softmax_scale, dk[nd * 4 + 2 * h + 1] * a.softmax_scale);
            attention::store_bf16x2(dv_out + nd * 8, dv[nd * 4 + 2 * h], dv[nd * 4 + 2 * h + 1]);
        }
    }
}

template <int D, bool DOC, bool DQ>
__device__ void backward(const KormoAttentionBwdSm90Args& p) {
#if defined(KORMO_EMULATOR) || defined(KORMO_SM90A)
    static_assert(D == 64 || D == 128, "head dim 64 or 128");
    using L = BwdSmem<D>;
    const KormoAttentionBwdArgs& a = p.a;
    unsigned char* smem = aligned_smem();
    const int64_t k0 = static_cast<int64_t>(blockIdx.x) * kBlockN;
    if (k0 >= a.seq_len || blockIdx.y >= a.heads_kv || blockIdx.z >= a.batch) return;
    uint64_t* bars = reinterpret_cast<uint64_t*>(smem + L::bars);  // kv_full, q_full[2], q_empty[2]
    int* info = reinterpret_cast<int*>(smem + L::info);
    if (threadIdx.x == 0) {
        sm90::mbar_init(bars, 1);
        for (int s = 0; s < kStages; ++s) {
            sm90::mbar_init(bars + 1 + s, 1);
            sm90::mbar_init(bars + 1 + kStages + s, kConsumerWarps);
        }
        sm90::fence_barrier_init();
        // Queries that see a key of the block: from the tile holding k0 to the end of the last
        // key's document (the row's end without documents).
        const int64_t k_last = min(k0 + kBlockN - 1, a.seq_len - 1);
        const uint32_t* doc = dev_ptr<const uint32_t>(a.doc_ids) + blockIdx.z * a.seq_len;
        const int64_t q_end = DOC && !a.cross_lingual ? end_of_document(doc, k_last, a.seq_len) : a.seq_len;
        info[0] = static_cast<int>(k0 / kBwdBlockM);
        info[1] = static_cast<int>((q_end - 1) / kBwdBlockM);
    }
    __syncthreads();
    const int qt_lo = info[0], qt_hi = info[1];
    split_warpgroups([&] { produce_bwd<D, DOC>(p, smem, bars, qt_lo, qt_hi); },
                     [&] { consume_bwd<D, DOC, DQ>(p, smem, bars, qt_lo, qt_hi); });
#else
    (void)p;
    __trap();
#endif
}

}  // namespace attention_sm90
}  // namespace kormo
