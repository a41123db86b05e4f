//! The kernel checks, generic over where kernels run ([`Backend`]): tests/gpu.rs runs them on a
//! CUDA device at realistic odd shapes, tests/emulated.rs on the CPU emulator at small ones.
//!
//! Conventions: fresh random inputs per seed (bf16-representable, never zero), odd shapes,
//! padded row strides where the kernel takes strides (the padding must stay untouched), every
//! output buffer poisoned with NaN before the launch and checked fully written. bf16 outputs
//! must be within 1e-2 relative L2 of the reference: the f64 instantiation of the kormo_cpu
//! function for the same op (AdamW and clipping: kormo_optim, f32), called with the inputs the
//! kernel read (bf16-representable values). Attention's outputs must in addition be within 2x
//! (o) and 3x (dq, dk, dv) of the error of the same kormo_cpu function run in f32 on those bf16
//! inputs with its outputs rounded to bf16 ([`assert_within_low_precision_error`]).

use kormo_cpu::{attention, cross_entropy, embedding, rmsnorm, rope, swiglu};
use kormo_cuda::bf16;
use kormo_cuda::bindings::*;
use kormo_cuda::kernel_launch;
use kormo_model::{AttentionShape, CrossEntropyShape, EmbeddingShape, RopeShape, RowsShape};
use kormo_optim::{AdamW, AdamWConfig, ParamInfo};

use super::*;

/// Host buffer of `rows` rows of `len` values laid out with row stride `stride`; the padding holds
/// poison so a kernel writing outside its rows is caught.
pub fn padded(values: &[f32], rows: usize, len: usize, stride: usize) -> Vec<u16> {
    let mut out = vec![bf16::POISON; rows * stride];
    for r in 0..rows {
        for c in 0..len {
            out[r * stride + c] = bf16::from_f32(values[r * len + c]);
        }
    }
    out
}

/// The logical rows back out of a padded download, asserting the padding is still poison.
pub fn unpadded(what: &str, bits: &[u16], rows: usize, len: usize, stride: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * len);
    for r in 0..rows {
        out.extend(bits[r * stride..][..len].iter().map(|&b| bf16::to_f32(b)));
        assert!(
            bits[r * stride + len..(r + 1) * stride].iter().all(|&b| b == bf16::POISON),
            "{what}: row {r} padding was overwritten"
        );
    }
    out
}

pub fn check_rmsnorm<B: Backend>(b: &B, cases: &[(u64, usize, usize, bool, i64)]) {
    let eps = 1e-5f32;
    for &(seed, rows, hidden, fused, partial_rows) in cases {
        let mut rng = SplitMix64::new(seed);
        let stride = hidden + 8;
        let n = rows * hidden;
        let (x, res, w) = (bf16_values(&mut rng, n, 2.0), bf16_values(&mut rng, n, 2.0), bf16_values(&mut rng, hidden, 1.5));
        let (dy, dres) = (bf16_values(&mut rng, n, 1.0), bf16_values(&mut rng, n, 1.0));
        let d_x = b.upload(&padded(&x, rows, hidden, stride));
        let d_res = b.upload(&padded(&res, rows, hidden, stride));
        let d_w = upload_bf16(b, &w);
        // Outputs start as poison everywhere: logical elements must be written, padding must not.
        let poison_rows = vec![bf16::POISON; rows * stride];
        let d_y = b.upload(&poison_rows);
        let d_hout = b.upload(&poison_rows);
        let d_rstd = poisoned_f32(b, rows);
        let a = KormoRmsNormFwdArgs {
            x: b.ptr(&d_x),
            residual: if fused { b.ptr(&d_res) } else { 0 },
            residual_out: if fused { b.ptr(&d_hout) } else { 0 },
            weight: b.ptr(&d_w),
            y: b.ptr(&d_y),
            rstd: b.ptr(&d_rstd),
            rows: rows as i64,
            hidden: hidden as i64,
            x_row_stride: stride as i64,
            residual_row_stride: stride as i64,
            y_row_stride: stride as i64,
            eps,
            _pad0: 0,
        };
        unsafe { kernel_launch::rmsnorm_fwd(b, &a) }.expect("launch rmsnorm_fwd");
        let shape = RowsShape { rows, dim: hidden };
        let w64 = to_f64(&w);
        // The fused residual add is part of the kernel, not of the reference op: add in f64.
        let want_h: Vec<f64> = if fused { x.iter().zip(&res).map(|(&a, &r)| a as f64 + r as f64).collect() } else { to_f64(&x) };
        let (mut want_y, mut want_rstd) = (vec![0.0; n], vec![0.0; rows]);
        rmsnorm::rmsnorm_fwd(1, &want_h, &w64, &mut want_y, &mut want_rstd, shape, eps);
        let y = unpadded("rmsnorm y", &b.download(&d_y), rows, hidden, stride);
        assert_close(&format!("rmsnorm y (seed {seed})"), &y, &want_y, BF16_REL_L2);
        assert_close("rmsnorm rstd", &b.download(&d_rstd), &want_rstd, 2e-3);
        let h = if fused {
            let h = unpadded("rmsnorm residual_out", &b.download(&d_hout), rows, hidden, stride);
            assert_close("rmsnorm residual_out", &h, &want_h, BF16_REL_L2);
            h
        } else {
            x.clone()
        };

        // Backward from the stored h (bf16), accumulating onto a non-zero dweight.
        let d_h = b.upload(&padded(&h, rows, hidden, stride));
        let d_dy = b.upload(&padded(&dy, rows, hidden, stride));
        let d_dres = b.upload(&padded(&dres, rows, hidden, stride));
        let d_dh = b.upload(&poison_rows);
        let d_partial = poisoned_f32(b, partial_rows as usize * hidden);
        let dweight_init = rng.vec(hidden, 0.5);
        let d_dweight = b.upload(&dweight_init);
        let bwd_args = KormoRmsNormBwdArgs {
            h: b.ptr(&d_h),
            dy: b.ptr(&d_dy),
            dresidual: if fused { b.ptr(&d_dres) } else { 0 },
            weight: b.ptr(&d_w),
            rstd: b.ptr(&d_rstd),
            dh: b.ptr(&d_dh),
            dweight_partial: b.ptr(&d_partial),
            rows: rows as i64,
            hidden: hidden as i64,
            h_row_stride: stride as i64,
            dy_row_stride: stride as i64,
            dh_row_stride: stride as i64,
            partial_rows,
        };
        let r = kernel_launch::rmsnorm_dweight_reduce_args(&bwd_args, b.ptr(&d_dweight));
        unsafe { kernel_launch::rmsnorm_bwd(b, &bwd_args, &r) }.expect("launch rmsnorm_bwd");
        // kormo_cpu accumulates into dx and dweight: start them at dresidual and the initial
        // dweight, which is what the kernel adds. inv_rms is recomputed from the bf16 h read.
        let h64 = to_f64(&h);
        let (mut y_unused, mut inv_rms) = (vec![0.0; n], vec![0.0; rows]);
        rmsnorm::rmsnorm_fwd(1, &h64, &w64, &mut y_unused, &mut inv_rms, shape, eps);
        let mut want_dh = if fused { to_f64(&dres) } else { vec![0.0; n] };
        let mut want_dw = to_f64(&dweight_init);
        rmsnorm::rmsnorm_bwd(1, &h64, &w64, &inv_rms, &to_f64(&dy), &mut want_dh, &mut want_dw, shape);
        let dh = unpadded("rmsnorm dh", &b.download(&d_dh), rows, hidden, stride);
        assert_close(&format!("rmsnorm dh (seed {seed})"), &dh, &want_dh, BF16_REL_L2);
        assert_close("rmsnorm dweight", &b.download(&d_dweight), &want_dw, 1e-4);
    }
}

pub fn check_swiglu<B: Backend>(b: &B, cases: &[(u64, usize, usize)]) {
    for &(seed, rows, cols) in cases {
        let mut rng = SplitMix64::new(seed);
        // gate and up are the two halves of one fused [rows, 2*cols] projection output.
        let (gate, up, dout) = (bf16_values(&mut rng, rows * cols, 4.0), bf16_values(&mut rng, rows * cols, 2.0), bf16_values(&mut rng, rows * cols, 1.0));
        let mut fused = Vec::with_capacity(rows * 2 * cols);
        for r in 0..rows {
            fused.extend_from_slice(&gate[r * cols..][..cols]);
            fused.extend_from_slice(&up[r * cols..][..cols]);
        }
        let d_in = upload_bf16(b, &fused);
        let d_out = poisoned_bf16(b, rows * cols);
        let d_dout = upload_bf16(b, &dout);
        let d_dgrad = poisoned_bf16(b, rows * 2 * cols);
        let base = b.ptr(&d_in);
        let dbase = b.ptr(&d_dgrad);
        let mut a = KormoSwigluArgs {
            gate: base,
            up: base + 2 * cols as u64,
            out: b.ptr(&d_out),
            dgate: 0,
            dup: 0,
            rows: rows as i64,
            cols: cols as i64,
            in_row_stride: 2 * cols as i64,
            out_row_stride: cols as i64,
        };
        unsafe { kernel_launch::swiglu_fwd(b, &a) }.expect("launch swiglu_fwd");
        let (g64, u64_, d64) = (to_f64(&gate), to_f64(&up), to_f64(&dout));
        let mut want_out = vec![0.0; rows * cols];
        swiglu::swiglu_fwd(1, &g64, &u64_, &mut want_out);
        assert_close(&format!("swiglu out (seed {seed})"), &download_bf16(b, &d_out), &want_out, BF16_REL_L2);
        a.out = b.ptr(&d_dout);
        a.dgate = dbase;
        a.dup = dbase + 2 * cols as u64;
        unsafe { kernel_launch::swiglu_bwd(b, &a) }.expect("launch swiglu_bwd");
        let (mut want_dg, mut want_du) = (vec![0.0; rows * cols], vec![0.0; rows * cols]);
        swiglu::swiglu_bwd(1, &g64, &u64_, &d64, &mut want_dg, &mut want_du);
        let grads = download_bf16(b, &d_dgrad);
        let (mut dg, mut du) = (Vec::new(), Vec::new());
        for r in 0..rows {
            dg.extend_from_slice(&grads[r * 2 * cols..][..cols]);
            du.extend_from_slice(&grads[r * 2 * cols + cols..][..cols]);
        }
        assert_close("swiglu dgate", &dg, &want_dg, BF16_REL_L2);
        assert_close("swiglu dup", &du, &want_du, BF16_REL_L2);
    }
}

pub fn check_rope<B: Backend>(b: &B, cases: &[(u64, usize, usize, usize, f32)]) {
    let cases: Vec<RopeCase> = cases
        .iter()
        .map(|&(seed, tokens, heads, head_dim, theta)| RopeCase { seed, tokens, heads, head_dim, theta, ..RopeCase::default() })
        .collect();
    check_rope_layouts(b, &cases);
}

/// A RoPE case with an explicit layout: element (t, h, d) of x and y lives at
/// `offset + t * token_stride + h * head_stride + d`, head_stride = head_dim + head_pad and
/// token_stride = heads * head_stride + token_pad; positions are below `max_pos`.
#[derive(Clone, Copy, Debug)]
pub struct RopeCase {
    pub seed: u64,
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub theta: f32,
    pub token_pad: usize,
    pub head_pad: usize,
    /// Elements before the first one (1: the tensors start 2 bytes past a 16-byte boundary).
    pub offset: usize,
    pub max_pos: u64,
}

impl Default for RopeCase {
    fn default() -> Self {
        RopeCase { seed: 0, tokens: 1, heads: 1, head_dim: 2, theta: 10000.0, token_pad: 16, head_pad: 0, offset: 0, max_pos: 40_000 }
    }
}

/// Forward out of place, then the backward in place (x == y) on the forward's output.
/// RoPE layouts for the kernels' 16-byte path (aligned x/y, strides and head_dim/2 multiples of
/// 8) and every way out of it onto the 2-byte path; long positions; more heads than one load
/// step holds. Shared by the emulator and the GPU tests.
pub fn rope_layouts() -> Vec<RopeCase> {
    let case = |seed, tokens, heads, head_dim, token_pad, head_pad, offset| RopeCase {
        seed,
        tokens,
        heads,
        head_dim,
        theta: 500000.0,
        token_pad,
        head_pad,
        offset,
        max_pos: 131_072,
    };
    vec![
        case(60, 5, 9, 128, 8, 8, 0),  // 16-byte path, padded heads, 9 heads (3 load steps)
        case(61, 4, 5, 16, 0, 0, 0),   // 16-byte path, one vector per half, no padding
        case(62, 6, 3, 6, 2, 0, 0),    // head_dim/2 = 3: 2-byte path
        case(63, 3, 5, 64, 3, 0, 0),   // odd token stride: 2-byte path
        case(64, 3, 2, 64, 6, 5, 0),   // odd head stride (token stride 144): 2-byte path
        case(65, 4, 3, 128, 8, 0, 1),  // x, y 2 bytes past a 16-byte boundary: 2-byte path
    ]
}

pub fn check_rope_layouts<B: Backend>(b: &B, cases: &[RopeCase]) {
    for c in cases {
        let mut rng = SplitMix64::new(c.seed);
        let (hd, heads, tokens) = (c.head_dim, c.heads, c.tokens);
        let head_stride = hd + c.head_pad;
        let token_stride = heads * head_stride + c.token_pad;
        let len = c.offset + tokens * token_stride;
        let at = |t: usize, h: usize, d: usize| c.offset + t * token_stride + h * head_stride + d;
        let scatter = |values: &[f32]| {
            let mut out = vec![bf16::POISON; len];
            for t in 0..tokens {
                for h in 0..heads {
                    for d in 0..hd {
                        out[at(t, h, d)] = bf16::from_f32(values[(t * heads + h) * hd + d]);
                    }
                }
            }
            out
        };
        let gather = |what: &str, bits: &[u16]| {
            let mut logical = vec![false; len];
            let mut out = Vec::with_capacity(tokens * heads * hd);
            for t in 0..tokens {
                for h in 0..heads {
                    for d in 0..hd {
                        logical[at(t, h, d)] = true;
                        out.push(bf16::to_f32(bits[at(t, h, d)]));
                    }
                }
            }
            let clobbered = (0..len).find(|&i| !logical[i] && bits[i] != bf16::POISON);
            assert!(clobbered.is_none(), "{what} ({c:?}): element {clobbered:?} outside the tensor was overwritten");
            out
        };
        let x = bf16_values(&mut rng, tokens * heads * hd, 2.0);
        let positions: Vec<u32> = (0..tokens).map(|_| rng.below(c.max_pos) as u32).collect();
        let d_x = b.upload(&scatter(&x));
        let d_y = b.upload(&vec![bf16::POISON; len]);
        let d_pos = b.upload(&positions);
        let mut a = KormoRopeArgs {
            x: b.ptr(&d_x) + 2 * c.offset as u64,
            y: b.ptr(&d_y) + 2 * c.offset as u64,
            positions: b.ptr(&d_pos),
            tokens: tokens as i64,
            heads: heads as i64,
            head_dim: hd as i64,
            token_stride: token_stride as i64,
            head_stride: head_stride as i64,
            theta: c.theta,
            _pad0: 0,
        };
        unsafe { kernel_launch::rope_fwd(b, &a) }.expect("launch rope_fwd");
        let shape = RopeShape { tokens, heads, head_dim: hd };
        let mut want = to_f64(&x);
        rope::rope_rotate(1, &mut want, &positions, shape, c.theta, 1.0);
        let y = gather("rope y", &b.download(&d_y));
        assert_close(&format!("rope y ({c:?})"), &y, &want, BF16_REL_L2);
        // Backward in place on y: the inverse rotation of y's bf16 values.
        a.x = a.y;
        unsafe { kernel_launch::rope_bwd(b, &a) }.expect("launch rope_bwd");
        let mut want_dx = to_f64(&y);
        rope::rope_rotate(1, &mut want_dx, &positions, shape, c.theta, -1.0);
        let dx = gather("rope dx", &b.download(&d_y));
        assert_close(&format!("rope dx in place ({c:?})"), &dx, &want_dx, BF16_REL_L2);
    }
}

/// The document layouts every attention path is checked over: one document, many short ones
/// straddling two rows, documents inside one tile, several tiles each way (forward blocks hold
/// 128 queries, backward blocks 64 keys: interior tiles without a mask, two kv heads, the
/// pipelines' steady state), long documents (the forward's stop before an earlier document's
/// tiles, the backward's move to the next head at a later one), cross-lingual documents; seq not
/// a multiple of any tile.
pub fn attention_layouts() -> Vec<AttnCase> {
    let shape = |batch, seq, heads, kv_heads, head_dim| AttentionShape::new(batch, seq, heads, kv_heads, head_dim);
    let xlda = |s: AttentionShape| AttentionShape { cross_lingual: true, ..s };
    vec![
        AttnCase { name: "causal, hd64, GQA 2", shape: shape(1, 70, 2, 1, 64), docs: None, pad: 8, seed: 21 },
        AttnCase { name: "short docs straddling rows, hd64, GQA 3", shape: shape(2, 80, 3, 1, 64), docs: Some(vec![30, 1, 1, 60, 20, 9, 100]), pad: 0, seed: 22 },
        AttnCase { name: "docs, hd128, GQA 2", shape: shape(1, 70, 2, 1, 128), docs: Some(vec![40, 1, 29]), pad: 0, seed: 23 },
        AttnCase { name: "causal, 5 key tiles, hd64, 2 kv heads x GQA 2", shape: shape(1, 300, 4, 2, 64), docs: None, pad: 8, seed: 24 },
        AttnCase { name: "long docs, 5 key tiles, hd128, GQA 2", shape: shape(1, 300, 2, 1, 128), docs: Some(vec![70, 230]), pad: 0, seed: 25 },
        // Cross-lingual attention (odd documents in the other language): earlier documents of
        // the other language visible, of the same language not; no document-based skipping.
        AttnCase { name: "xlda, short docs, hd64, GQA 2", shape: xlda(shape(2, 90, 2, 1, 64)), docs: Some(vec![30, 1, 40, 9, 70, 30]), pad: 0, seed: 27 },
        AttnCase { name: "xlda, long docs across tiles, hd128, GQA 2", shape: xlda(shape(1, 300, 4, 2, 128)), docs: Some(vec![70, 100, 130]), pad: 8, seed: 28 },
    ]
}

pub struct AttnCase {
    pub name: &'static str,
    pub shape: AttentionShape,
    /// Document lengths laid across rows; None = causal only (the causal variant, doc_ids = 0).
    pub docs: Option<Vec<usize>>,
    /// Extra elements at the end of every token row of q/k/v/o (strides stay multiples of 8).
    pub pad: usize,
    pub seed: u64,
}

/// FlashAttention's test factors over the low-precision reference's error: 2x for the output,
/// 3x for the gradients (more rounded steps: the bf16 O into delta, P and dS into the matmuls).
const ATTENTION_OUT_FACTOR: f64 = 2.0;
const ATTENTION_GRAD_FACTOR: f64 = 3.0;

pub fn check_attention<B: Backend>(b: &B, cases: &[AttnCase]) {
    check_attention_mode(b, cases, false);
}

/// The raw outputs of one attention case, for comparisons across block orders: bf16 bits of o,
/// dq, dk and dv (padding included), and the f32 bits of the default backward's dQ accumulator
/// (empty for the deterministic backward, which has none).
#[derive(PartialEq, Eq)]
pub struct AttnOutputs {
    pub o: Vec<u16>,
    pub dq: Vec<u16>,
    pub dk: Vec<u16>,
    pub dv: Vec<u16>,
    pub dq_accum: Vec<u32>,
}

/// [`check_attention`] with the default backward (`deterministic` false: dQ by f32 atomics) or
/// the deterministic one ([`kernel_launch::attention_bwd_deterministic`], whose dq_accum is left
/// unallocated: 0). Returns each case's outputs.
pub fn check_attention_mode<B: Backend>(b: &B, cases: &[AttnCase], deterministic: bool) -> Vec<AttnOutputs> {
    let mut outputs = Vec::new();
    for case in cases {
        let s = case.shape;
        let (t, d) = (s.tokens(), s.head_dim);
        let (q_row, kv_row) = (s.heads * d, s.kv_heads * d);
        let (q_len, kv_len) = (t * q_row, t * kv_row);
        let (q_stride, kv_stride) = (q_row + case.pad, kv_row + case.pad);
        let mut rng = SplitMix64::new(case.seed);
        let (q, kk, v, dout) =
            (bf16_values(&mut rng, q_len, 1.0), bf16_values(&mut rng, kv_len, 1.0), bf16_values(&mut rng, kv_len, 1.0), bf16_values(&mut rng, q_len, 1.0));
        // Cross-lingual cases: odd-numbered documents are in the other language (bit 31).
        let language = |id: u32| if s.cross_lingual && id % 2 == 1 { id | kormo_model::DOC_LANGUAGE_BIT } else { id };
        let doc = case.docs.as_ref().map(|lengths| doc_ids_from_lengths(lengths, s.batch, s.seq).into_iter().map(language).collect::<Vec<u32>>());
        let d_q = b.upload(&padded(&q, t, q_row, q_stride));
        let d_k = b.upload(&padded(&kk, t, kv_row, kv_stride));
        let d_v = b.upload(&padded(&v, t, kv_row, kv_stride));
        let d_do = b.upload(&padded(&dout, t, q_row, q_stride));
        let d_o = b.upload(&vec![bf16::POISON; t * q_stride]);
        let d_lse = poisoned_f32(b, s.heads * t);
        let d_doc = b.upload(doc.as_deref().unwrap_or(&[0u32]));
        // Padded token strides: a kernel that reads past a row's heads sees poison.
        let layout = kernel_launch::AttentionLayout {
            batch: s.batch,
            seq: s.seq,
            heads_q: s.heads,
            heads_kv: s.kv_heads,
            head_dim: d,
            q_token_stride: q_stride,
            kv_token_stride: kv_stride,
        };
        let doc_ids = if doc.is_some() { b.ptr(&d_doc) } else { 0 };
        let fwd = KormoAttentionFwdArgs {
            cross_lingual: i32::from(s.cross_lingual),
            ..layout.fwd_args([b.ptr(&d_q), b.ptr(&d_k), b.ptr(&d_v)], b.ptr(&d_o), b.ptr(&d_lse), doc_ids)
        };
        unsafe { kernel_launch::attention_fwd(b, &fwd) }.expect("launch attention fwd");

        let (q64, k64, v64, do64) = (to_f64(&q), to_f64(&kk), to_f64(&v), to_f64(&dout));
        // Causal-only cases: one document id for every token is the same mask.
        let ref_doc = doc.clone().unwrap_or_else(|| vec![0; t]);
        let (mut want_o, mut want_lse) = (vec![0.0; q_len], vec![0.0; t * s.heads]);
        attention::attention_fwd(reference_threads(), &q64, &k64, &v64, &ref_doc, &mut want_o, &mut want_lse, s);
        let want_lse_heads_major = heads_major(&want_lse, t, s.heads);
        // The low-precision reference: the same function in f32 on the same bf16 inputs (q, kk, v
        // hold bf16 values), its output rounded to bf16 like the kernel's store; lse stays f32.
        let (mut low_o, mut low_lse) = (vec![0.0f32; q_len], vec![0.0f32; t * s.heads]);
        attention::attention_fwd(reference_threads(), &q, &kk, &v, &ref_doc, &mut low_o, &mut low_lse, s);
        let low_o = round_to_bf16(&low_o);
        let o = unpadded("attention o", &b.download(&d_o), t, q_row, q_stride);
        assert_within_low_precision_error(&format!("{}: o", case.name), &o, &low_o, &want_o, ATTENTION_OUT_FACTOR);
        let lse = b.download(&d_lse);
        let lse_err = lse.iter().zip(&want_lse_heads_major).map(|(&g, w)| (g as f64 - w).abs()).fold(0.0, f64::max);
        assert!(lse.iter().all(|x| x.is_finite()) && lse_err < 1e-3, "{}: lse max error {lse_err:.3e}", case.name);

        // Backward, from the kernel's own (bf16) O as a trainer would run it.
        let d_delta = poisoned_f32(b, s.heads * t);
        let d_dq_accum = poisoned_f32(b, if deterministic { 1 } else { q_len });
        let d_dq = b.upload(&vec![bf16::POISON; t * q_stride]);
        let d_dk = b.upload(&vec![bf16::POISON; t * kv_stride]);
        let d_dv = b.upload(&vec![bf16::POISON; t * kv_stride]);
        let buffers = kernel_launch::AttentionBwdBuffers {
            dout: b.ptr(&d_do),
            delta: b.ptr(&d_delta),
            dq_accum: if deterministic { 0 } else { b.ptr(&d_dq_accum) },
            dq: b.ptr(&d_dq),
            dk: b.ptr(&d_dk),
            dv: b.ptr(&d_dv),
        };
        let bwd = kernel_launch::attention_bwd_args(&fwd, buffers);
        if deterministic {
            unsafe { kernel_launch::attention_bwd_deterministic(b, &bwd) }.expect("launch deterministic attention bwd");
        } else {
            unsafe { kernel_launch::attention_bwd(b, &bwd) }.expect("launch attention bwd");
        }
        // The reference backward starts from the exact forward (the kernel from its bf16 O).
        let (mut want_dq, mut want_dk, mut want_dv) = (vec![0.0; q_len], vec![0.0; kv_len], vec![0.0; kv_len]);
        attention::attention_bwd(
            reference_threads(),
            &q64,
            &k64,
            &v64,
            &ref_doc,
            &want_o,
            &want_lse,
            &do64,
            &mut want_dq,
            &mut want_dk,
            &mut want_dv,
            s,
        );
        // Low-precision backward from the low-precision forward's bf16 O and f32 lse, as the
        // kernel runs from its own.
        let (mut low_dq, mut low_dk, mut low_dv) = (vec![0.0f32; q_len], vec![0.0f32; kv_len], vec![0.0f32; kv_len]);
        attention::attention_bwd(
            reference_threads(),
            &q,
            &kk,
            &v,
            &ref_doc,
            &low_o,
            &low_lse,
            &dout,
            &mut low_dq,
            &mut low_dk,
            &mut low_dv,
            s,
        );
        let got = [
            ("dq", unpadded("attention dq", &b.download(&d_dq), t, q_row, q_stride), &low_dq, &want_dq),
            ("dk", unpadded("attention dk", &b.download(&d_dk), t, kv_row, kv_stride), &low_dk, &want_dk),
            ("dv", unpadded("attention dv", &b.download(&d_dv), t, kv_row, kv_stride), &low_dv, &want_dv),
        ];
        let mode = if deterministic { " (deterministic)" } else { "" };
        for (what, g, low, w) in got {
            assert_within_low_precision_error(&format!("{}{mode}: {what}", case.name), &g, &round_to_bf16(low), w, ATTENTION_GRAD_FACTOR);
        }
        outputs.push(AttnOutputs {
            o: b.download(&d_o),
            dq: b.download(&d_dq),
            dk: b.download(&d_dk),
            dv: b.download(&d_dv),
            dq_accum: if deterministic { Vec::new() } else { b.download(&d_dq_accum).iter().map(|x| x.to_bits()).collect() },
        });
    }
    outputs
}

/// Cases: (seed, rows, vocab, dlogits in place, z_loss).
pub fn check_cross_entropy<B: Backend>(b: &B, cases: &[(u64, usize, usize, bool, f32)]) {
    let cases: Vec<CeCase> = cases
        .iter()
        .map(|&(seed, rows, vocab, in_place, z_loss)| CeCase { seed, rows, vocab, in_place, z_loss, ..CeCase::default() })
        .collect();
    check_cross_entropy_layouts(b, &cases);
}

/// A cross-entropy case with an explicit layout: logits row r starts at element
/// `logits_offset + r * (vocab + logits_pad)` of its buffer, dlogits likewise (in place: the
/// logits' layout). Row weights cycle through 1, 0, 0.5, 2 (0: an ignored row). `bad_target`
/// gives that row (weight non-zero) the target `vocab`: its loss must come out NaN.
#[derive(Clone, Copy, Debug)]
pub struct CeCase {
    pub seed: u64,
    pub rows: usize,
    pub vocab: usize,
    pub in_place: bool,
    pub z_loss: f32,
    pub logits_pad: usize,
    pub dlogits_pad: usize,
    pub logits_offset: usize,
    pub dlogits_offset: usize,
    pub bad_target: Option<usize>,
}

impl Default for CeCase {
    fn default() -> Self {
        CeCase {
            seed: 0,
            rows: 1,
            vocab: 1,
            in_place: false,
            z_loss: 0.0,
            logits_pad: 8,
            dlogits_pad: 8,
            logits_offset: 0,
            dlogits_offset: 0,
            bad_target: None,
        }
    }
}

/// Cross-entropy layouts for the kernel's row split (scalar head, 16-byte vectors, scalar tail)
/// at every alignment phase, rows long enough for several 4-vector load steps per thread
/// (> 4 * 512 * 8 elements), logits and dlogits in different phases (2-byte gradient stores),
/// ignored rows, z-loss, a bad target. Shared by the emulator and the GPU tests.
pub fn cross_entropy_layouts() -> Vec<CeCase> {
    let base = CeCase::default();
    vec![
        // Vocab a multiple of 8, no padding: every row aligned, no scalar elements.
        CeCase { seed: 70, rows: 3, vocab: 36_864, logits_pad: 0, dlogits_pad: 0, z_loss: 1e-3, ..base },
        // Odd vocab and stride: each row in its own phase; in place.
        CeCase { seed: 71, rows: 9, vocab: 20_003, in_place: true, logits_pad: 0, z_loss: 0.05, ..base },
        // Different phases for logits and dlogits; misaligned bases; a bad target.
        CeCase { seed: 72, rows: 6, vocab: 17_000, logits_pad: 3, dlogits_pad: 8, logits_offset: 1, dlogits_offset: 2, bad_target: Some(2), ..base },
        // Same phase through offsets (vector path) with a bad target, in place.
        CeCase { seed: 73, rows: 4, vocab: 16_392, in_place: true, logits_pad: 0, logits_offset: 3, bad_target: Some(0), z_loss: 1e-4, ..base },
        // Rows shorter than one vector per thread, and shorter than 8.
        CeCase { seed: 74, rows: 5, vocab: 13, logits_pad: 1, dlogits_pad: 1, ..base },
        CeCase { seed: 75, rows: 2, vocab: 5, in_place: true, logits_pad: 0, logits_offset: 7, ..base },
    ]
}

pub fn check_cross_entropy_layouts<B: Backend>(b: &B, cases: &[CeCase]) {
    for c in cases {
        let (rows, vocab) = (c.rows, c.vocab);
        let mut rng = SplitMix64::new(c.seed);
        let (pad, off) = (c.logits_pad, c.logits_offset);
        let (dpad, doff) = if c.in_place { (pad, off) } else { (c.dlogits_pad, c.dlogits_offset) };
        let (stride, dstride) = (vocab + pad, vocab + dpad);
        let logits = bf16_values(&mut rng, rows * vocab, 8.0);
        let mut targets: Vec<u32> = (0..rows).map(|_| rng.below(vocab as u64) as u32).collect();
        let weights: Vec<f32> = (0..rows).map(|r| [1.0, 0.0, 0.5, 2.0][r % 4]).collect();
        let grad_scale = 1.0 / weights.iter().sum::<f32>();
        let mut kernel_targets = targets.clone();
        if let Some(r) = c.bad_target {
            assert!(weights[r] != 0.0, "bad_target must name a row with a non-zero weight");
            kernel_targets[r] = vocab as u32;
            targets[r] = 0; // the reference needs a valid one; row r's outputs are checked apart
        }
        let with_offset = |offset: usize, bits: Vec<u16>| {
            let mut out = vec![bf16::POISON; offset];
            out.extend(bits);
            out
        };
        let d_logits = b.upload(&with_offset(off, padded(&logits, rows, vocab, stride)));
        let d_dlogits = b.upload(&vec![bf16::POISON; doff + rows * dstride]);
        let (d_t, d_w, d_gs) = (b.upload(&kernel_targets), b.upload(&weights), b.upload(&[grad_scale]));
        let (d_loss, d_lse) = (poisoned_f32(b, rows), poisoned_f32(b, rows));
        let out = if c.in_place { &d_logits } else { &d_dlogits };
        let a = KormoCrossEntropyArgs {
            logits: b.ptr(&d_logits) + 2 * off as u64,
            targets: b.ptr(&d_t),
            loss_weights: b.ptr(&d_w),
            grad_scale: b.ptr(&d_gs),
            loss: b.ptr(&d_loss),
            lse: b.ptr(&d_lse),
            dlogits: b.ptr(out) + 2 * doff as u64,
            rows: rows as i64,
            vocab: vocab as i64,
            logits_row_stride: stride as i64,
            dlogits_row_stride: dstride as i64,
            z_loss: c.z_loss,
            _pad0: 0,
        };
        unsafe { kernel_launch::cross_entropy(b, &a) }.expect("launch cross_entropy");
        // kormo_cpu overwrites the logits with their gradient, as the kernel does in place.
        let (mut want_d, mut want_loss) = (to_f64(&logits), vec![0.0; rows]);
        let shape = CrossEntropyShape { tokens: rows, vocab };
        cross_entropy::cross_entropy(1, &mut want_d, &targets, &to_f64(&weights), &mut want_loss, shape, c.z_loss, grad_scale);
        let mut loss = b.download(&d_loss);
        let lse = b.download(&d_lse);
        assert!(lse.iter().all(|x| x.is_finite()), "lse not fully written ({c:?})");
        let dl = b.download(out);
        assert!(dl[..doff].iter().all(|&x| x == bf16::POISON), "dlogits: elements before the tensor were overwritten ({c:?})");
        let mut d = unpadded("dlogits", &dl[doff..], rows, vocab, dstride);
        if let Some(r) = c.bad_target {
            assert!(loss[r].is_nan(), "a bad target must poison the loss ({c:?}): got {}", loss[r]);
            // Without a valid target the row's gradient is g * p * (1 + 2 z lse): no onehot.
            let g = weights[r] as f64 * grad_scale as f64;
            let row_sum: f64 = d[r * vocab..][..vocab].iter().map(|&x| x as f64).sum();
            let want_sum = g * (1.0 + 2.0 * c.z_loss as f64 * lse[r] as f64);
            assert!((row_sum - want_sum).abs() <= 2e-2 * want_sum.abs(), "bad-target row gradient sums to {row_sum}, want {want_sum}");
            loss[r] = want_loss[r] as f32;
            d[r * vocab..][..vocab].iter_mut().zip(&want_d[r * vocab..][..vocab]).for_each(|(g, &w)| *g = w as f32);
        }
        assert_close(&format!("cross entropy loss ({c:?})"), &loss, &want_loss, 1e-4);
        assert_close(&format!("cross entropy dlogits ({c:?})"), &d, &want_d, BF16_REL_L2);
        // Rows are also checked one by one: a row's error must not hide in the others'.
        for r in 0..rows {
            let got = &d[r * vocab..][..vocab];
            let want = &want_d[r * vocab..][..vocab];
            if want.iter().all(|&w| w == 0.0) {
                assert!(got.iter().all(|&g| g == 0.0), "dlogits row {r} (weight 0) not zero ({c:?})");
            } else {
                assert_close(&format!("cross entropy dlogits row {r} ({c:?})"), got, want, BF16_REL_L2);
            }
        }
    }
}

pub fn check_embedding<B: Backend>(b: &B, shape: (usize, usize, usize)) {
    check_embedding_mode(b, shape, 41, false);
}

/// [`check_embedding`] from inputs of `seed`, with the default backward (`deterministic` false:
/// f32 atomics) or [`kernel_launch::embedding_bwd_deterministic`]; returns the bits of the f32 dtable.
pub fn check_embedding_mode<B: Backend>(b: &B, (vocab, dim, n): (usize, usize, usize), seed: u64, deterministic: bool) -> Vec<u32> {
    let mut rng = SplitMix64::new(seed);
    let table = bf16_values(&mut rng, vocab * dim, 1.0);
    // Few distinct tokens, so repeated rows exercise colliding atomics (and owners with several
    // rows, several tokens each).
    let distinct = 50.min(vocab as u64);
    let tokens: Vec<u32> = (0..n).map(|_| (rng.below(distinct) * (vocab as u64 / distinct)) as u32).collect();
    let (d_table, d_tokens, d_out) = (upload_bf16(b, &table), b.upload(&tokens), poisoned_bf16(b, n * dim));
    let shape = EmbeddingShape { tokens: n, vocab, dim };
    let mut a = kernel_launch::embedding_args(b.ptr(&d_tokens), b.ptr(&d_table), b.ptr(&d_out), shape);
    unsafe { kernel_launch::embedding_fwd(b, &a) }.expect("launch embedding_fwd");
    let mut want = vec![0.0; n * dim];
    embedding::embedding_fwd(1, &to_f64(&table), &tokens, &mut want, shape);
    let got = download_bf16(b, &d_out);
    assert!(got.iter().zip(&want).all(|(&g, &w)| g as f64 == w), "embedding rows must be exact copies");

    let dout = bf16_values(&mut rng, n * dim, 1.0);
    let init = rng.vec(vocab * dim, 0.1);
    let (d_dout, d_dtable) = (upload_bf16(b, &dout), b.upload(&init));
    a.table = b.ptr(&d_dtable);
    a.rows = b.ptr(&d_dout);
    if deterministic {
        unsafe { kernel_launch::embedding_bwd_deterministic(b, &a) }.expect("launch embedding_bwd_deterministic");
    } else {
        unsafe { kernel_launch::embedding_bwd(b, &a) }.expect("launch embedding_bwd");
    }
    // kormo_cpu scatter-adds into the table it is given: start from the kernel's initial one.
    let mut want = to_f64(&init);
    embedding::embedding_bwd(&to_f64(&dout), &tokens, &mut want, shape);
    let got = b.download(&d_dtable);
    let mode = if deterministic { " (deterministic)" } else { "" };
    assert_close(&format!("embedding dtable{mode} ({vocab} x {dim}, {n} tokens)"), &got, &want, 1e-5);
    got.iter().map(|x| x.to_bits()).collect()
}

/// The gradient sum of squares over several tensors into one f32 (as DeviceAdamW clips), with
/// [`kernel_launch::grad_sumsq`] (f32 atomics) or [`kernel_launch::grad_sumsq_deterministic`], against the
/// f64 sum; `lens` are the tensors' sizes, inputs from `seed`. Returns the bits of the sum.
pub fn check_grad_sumsq<B: Backend>(b: &B, lens: &[usize], seed: u64, deterministic: bool) -> u32 {
    let mut rng = SplitMix64::new(seed);
    let grads: Vec<Vec<f32>> = lens.iter().map(|&n| rng.vec(n, 3.0)).collect();
    let d_sumsq = b.upload(&[0.0f32]);
    let d_partial = poisoned_f32(b, kernel_launch::GRAD_SUMSQ_MAX_BLOCKS);
    for g in &grads {
        let d_g = b.upload(g);
        let a = KormoGradSumsqArgs { grad: b.ptr(&d_g), sumsq: b.ptr(&d_sumsq), n: g.len() as i64 };
        if deterministic {
            unsafe { kernel_launch::grad_sumsq_deterministic(b, &a, b.ptr(&d_partial)) }.expect("launch grad_sumsq_deterministic");
        } else {
            unsafe { kernel_launch::grad_sumsq(b, &a) }.expect("launch grad_sumsq");
        }
    }
    let got = b.download(&d_sumsq)[0];
    let want: f64 = grads.iter().flatten().map(|&g| g as f64 * g as f64).sum();
    let mode = if deterministic { " (deterministic)" } else { "" };
    assert_close(&format!("grad sum of squares{mode} ({lens:?})"), &[got], &[want], 1e-5);
    got.to_bits()
}

pub fn check_adamw<B: Backend>(b: &B, n: usize) {
    let mut rng = SplitMix64::new(51);
    struct Tensor {
        master: Vec<f32>,
        grad: Vec<f32>,
        m: Vec<f32>,
        v: Vec<f32>,
        decay: bool,
    }
    let tensors: Vec<Tensor> = (0..2)
        .map(|i| Tensor {
            master: rng.vec(n, 1.0),
            grad: rng.vec(n, 3.0),
            m: rng.vec(n, 0.1),
            v: rng.vec(n, 1e-3).iter().map(|x| x.abs()).collect(),
            decay: i == 0,
        })
        .collect();
    // Clip scale over both gradients, on device; kormo_optim clips the same gradients on the host.
    let host_grads: Vec<Vec<f32>> = tensors.iter().map(|t| t.grad.clone()).collect();
    let max_norm = (kormo_optim::grad_norm(&host_grads) / 3.0) as f32;
    let mut clipped = host_grads.clone();
    kormo_optim::clip_grad_norm(&mut clipped, max_norm as f64);
    let d_sumsq = b.upload(&[0.0f32]);
    let d_clip = poisoned_f32(b, 1);
    let d_grads: Vec<_> = host_grads.iter().map(|g| b.upload(g)).collect();
    for g in &d_grads {
        let a = KormoGradSumsqArgs { grad: b.ptr(g), sumsq: b.ptr(&d_sumsq), n: n as i64 };
        unsafe { kernel_launch::grad_sumsq(b, &a) }.expect("launch grad_sumsq");
    }
    let c = KormoClipScaleArgs { sumsq: b.ptr(&d_sumsq), clip_scale: b.ptr(&d_clip), max_norm, _pad0: 0 };
    unsafe { kernel_launch::clip_scale(b, &c) }.expect("launch clip_scale");
    let clip = b.download(&d_clip)[0];
    let device_clipped: Vec<f32> = host_grads.iter().flatten().map(|&g| g * clip).collect();
    let want_clipped: Vec<f64> = clipped.iter().flatten().map(|&g| g as f64).collect();
    assert_close("clip scale applied to the gradients", &device_clipped, &want_clipped, 1e-5);

    let config = AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };
    let (lr, step) = (3e-4, 7u64);
    let d_lr = b.upload(&[lr as f32]);
    for ((Tensor { master, m, v, decay, .. }, d_grad), clipped) in tensors.iter().zip(&d_grads).zip(&clipped) {
        let (d_master, d_m, d_v, d_w) = (b.upload(master), b.upload(m), b.upload(v), poisoned_bf16(b, n));
        let a = KormoAdamwArgs {
            master: b.ptr(&d_master),
            grad: b.ptr(d_grad),
            exp_avg: b.ptr(&d_m),
            exp_avg_sq: b.ptr(&d_v),
            weight: b.ptr(&d_w),
            lr: b.ptr(&d_lr),
            clip_scale: b.ptr(&d_clip),
            n: n as i64,
            beta1: config.beta1 as f32,
            beta2: config.beta2 as f32,
            eps: config.eps as f32,
            weight_decay: config.weight_decay as f32,
            bias_correction1: (1.0 - config.beta1.powi(step as i32)) as f32,
            bias_correction2: (1.0 - config.beta2.powi(step as i32)) as f32,
            apply_weight_decay: *decay as i32,
            _pad0: 0,
        };
        unsafe { kernel_launch::adamw_step(b, &a) }.expect("launch adamw_step");
        // The reference: kormo_optim's AdamW at the same step with the same moments, on the
        // host-clipped gradient.
        let info = ParamInfo { name: "p".into(), numel: n, weight_decay: *decay };
        let mut reference = AdamW::new(config.clone(), vec![info]).expect("valid AdamW config").with_threads(1);
        reference.load_state_tensor("p.exp_avg", m).expect("exp_avg");
        reference.load_state_tensor("p.exp_avg_sq", v).expect("exp_avg_sq");
        reference.set_step_count(step - 1);
        let mut want_master = vec![master.clone()];
        reference.step(&mut want_master, std::slice::from_ref(clipped), lr).expect("reference step");
        let state = reference.state_tensors();
        let got_master = b.download(&d_master);
        // Compare the update (master - initial) so the tolerance is relative to what changed.
        let upd: Vec<f32> = got_master.iter().zip(master).map(|(after, before)| after - before).collect();
        let want_upd: Vec<f64> = want_master[0].iter().zip(master).map(|(&a, &b)| a as f64 - b as f64).collect();
        assert_close(&format!("adamw update (decay {decay})"), &upd, &want_upd, 1e-3);
        assert_close("adamw exp_avg", &b.download(&d_m), &to_f64(state[0].1), 1e-5);
        assert_close("adamw exp_avg_sq", &b.download(&d_v), &to_f64(state[1].1), 1e-5);
        let w = b.download(&d_w);
        assert!(w.iter().zip(&got_master).all(|(&b, &m)| b == bf16::from_f32(m)), "bf16 weights must be the rounded master");
    }
}

/// Every op x dtype pair of the elementwise kernel, on a length that is not a multiple of the
/// block size. Expected values are computed on the host from the bf16/f32 values the kernel
/// reads, rounded like its store.
pub fn check_elementwise<B: Backend>(b: &B, n: usize) {
    let mut rng = SplitMix64::new(61);
    let (dst0, src0) = (bf16_values(&mut rng, n, 3.0), bf16_values(&mut rng, n, 3.0));
    let (bf, f) = (KormoDtype_KORMO_DTYPE_BF16 as i32, KormoDtype_KORMO_DTYPE_F32 as i32);
    let ops = [
        (KormoElementwiseOp_KORMO_ELEMENTWISE_FILL, "fill"),
        (KormoElementwiseOp_KORMO_ELEMENTWISE_SCALE, "scale"),
        (KormoElementwiseOp_KORMO_ELEMENTWISE_COPY, "copy"),
        (KormoElementwiseOp_KORMO_ELEMENTWISE_ADD, "add"),
    ];
    let value = -0.75f32;
    for (op, name) in ops {
        for (dst_dtype, src_dtype) in [(bf, bf), (bf, f), (f, bf), (f, f)] {
            let (d_dst_bf, d_dst_f) = (upload_bf16(b, &dst0), b.upload(&dst0));
            let (d_src_bf, d_src_f) = (upload_bf16(b, &src0), b.upload(&src0));
            let a = KormoElementwiseArgs {
                dst: if dst_dtype == bf { b.ptr(&d_dst_bf) } else { b.ptr(&d_dst_f) },
                src: if src_dtype == bf { b.ptr(&d_src_bf) } else { b.ptr(&d_src_f) },
                n: n as i64,
                op: op as i32,
                dst_dtype,
                src_dtype,
                value,
            };
            unsafe { kernel_launch::elementwise(b, &a) }.expect("launch elementwise");
            let got = if dst_dtype == bf { download_bf16(b, &d_dst_bf) } else { b.download(&d_dst_f) };
            let want: Vec<f32> = dst0
                .iter()
                .zip(&src0)
                .map(|(&d, &s)| {
                    let v = if op == KormoElementwiseOp_KORMO_ELEMENTWISE_FILL {
                        value
                    } else if op == KormoElementwiseOp_KORMO_ELEMENTWISE_SCALE {
                        value * d
                    } else if op == KormoElementwiseOp_KORMO_ELEMENTWISE_COPY {
                        s
                    } else {
                        d + s
                    };
                    if dst_dtype == bf { bf16::to_f32(bf16::from_f32(v)) } else { v }
                })
                .collect();
            assert_eq!(got, want, "elementwise {name} (dst dtype {dst_dtype}, src dtype {src_dtype})");
        }
    }
    let bad = KormoElementwiseArgs { dst: 0, src: 0, n: 1, op: 9, dst_dtype: bf, src_dtype: bf, value: 0.0 };
    assert!(unsafe { kernel_launch::elementwise(b, &bad) }.is_err(), "an unknown op must be refused");
}
