//! Multi-token prediction (`[model] mtp_depth = k`): `k` extra heads on the shared trunk.
//!
//! Formulation (the shared-trunk extra-head form, Gloeckle et al. 2024, "Better & Faster Large
//! Language Models via Multi-token Prediction", with the shared unembedding of DeepSeek-V3):
//! with `h` the last decoder layer's output (the final norm's input), head `d = 1..=k` is
//!
//! ```text
//! u_d = h P_d^T                  P_d = mtp.{d}.proj.weight  [hidden, hidden]
//! z_d = RMSNorm_d(u_d) W^T       RMSNorm_d gain = mtp.{d}.norm.weight, W the LM head (shared)
//! ```
//!
//! and at position `i` predicts the token at `i + d + 1` (the next-token head predicts `i + 1`).
//! Its targets and weights come from the batch's own ([`mtp_targets`]): at position `i` of a
//! row, depth `d` takes `targets[i + d]` with weight `loss_weights[i + d]` when `i + d` is in
//! the same row and the same document as `i`, and weight 0 otherwise (the row end, a document
//! boundary). The objective is
//!
//! ```text
//! (sum_t w_t loss_t + mtp_loss_weight * (1/k) sum_d sum_t w^d_t loss^d_t) / sum_t w_t
//! ```
//!
//! — the MTP term is normalised by the next-token weight sum, the one normaliser a step's
//! micro-batches and ranks already share (`grad_scale`), so gradient accumulation stays exact;
//! per depth it differs from that depth's own token count only by the `d` positions before
//! each document end. Every head is existing ops (matmul, RMSNorm, cross-entropy), so the CPU
//! and CUDA backends run it alike.
//!
//! Schedule: in training the heads run inside the Head unit's backward, after the next-token
//! head's backward, one depth at a time, reusing the `[tokens, vocab]` logits buffer (free by
//! then; with a chunked head, the same chunk buffers as the next-token head, [`crate::head`]),
//! so MTP adds no `[tokens, vocab]` memory; each head's input gradient is added into the
//! residual-stream gradient that flows into the last layer. In evaluation they run in the Head
//! unit's forward before the next-token head (which then overwrites the logits). `forward` and
//! `log_probs` (generation, scoring) never run them.

use crate::batch::Batch;
use crate::config::ModelConfig;
use crate::head::{self, ChunkTargets, HeadBackward, HeadChunks};
use crate::ops::{CrossEntropyShape, MatmulShape, Ops, RowsShape};
use crate::params::{self, MtpSlot};

/// Targets and loss weights of MTP depth `depth` (1-based) for `batch`: at token `t` of row
/// `b`, position `s`, the batch's target and weight at `s + depth` when that position exists
/// and has `t`'s document id, else target 0 with weight 0.
pub fn mtp_targets(batch: &Batch, depth: usize) -> (Vec<u32>, Vec<f32>) {
    let n = batch.num_tokens();
    let (mut targets, mut weights) = (vec![0u32; n], vec![0f32; n]);
    for b in 0..batch.batch_size {
        let row = b * batch.seq_len;
        for s in 0..batch.seq_len.saturating_sub(depth) {
            let (t, ahead) = (row + s, row + s + depth);
            let w = batch.loss_weights[ahead];
            if batch.doc_ids[ahead] == batch.doc_ids[t] && w > 0.0 {
                (targets[t], weights[t]) = (batch.targets[ahead], w);
            }
        }
    }
    (targets, weights)
}

/// Buffers of the MTP heads for one batch shape: per depth the targets and weights, shared by
/// the depths the projection output `u`, its norm, the inverse RMS, `d(u)` and the losses.
pub(crate) struct MtpWorkspace<O: Ops> {
    tokens: usize,
    targets: Vec<O::IdxBuf>,
    weights: Vec<O::Buf>,
    /// Host copies of the per-depth weight sums (uploaded with the weights).
    weight_sums: Vec<f64>,
    u: O::Buf,
    normed: O::Buf,
    inv_rms: O::Buf,
    d_u: O::Buf,
    losses: O::Buf,
    /// Per depth the targets and weights in head chunks, when the head is chunked.
    chunk_targets: Vec<ChunkTargets<O>>,
}

impl<O: Ops> MtpWorkspace<O> {
    /// `head_chunk`: the chunk size when the head is chunked ([`crate::head`]), else None.
    pub(crate) fn new(ops: &O, cfg: &ModelConfig, tokens: usize, head_chunk: Option<usize>) -> Self {
        let h = cfg.hidden;
        MtpWorkspace {
            tokens,
            targets: (0..cfg.mtp_depth).map(|_| ops.upload_idx(&vec![0; tokens])).collect(),
            weights: (0..cfg.mtp_depth).map(|_| ops.zeros(tokens)).collect(),
            weight_sums: vec![0.0; cfg.mtp_depth],
            u: ops.zeros(tokens * h),
            normed: ops.zeros(tokens * h),
            inv_rms: ops.zeros(tokens),
            d_u: ops.zeros(tokens * h),
            losses: ops.zeros(tokens),
            chunk_targets: head_chunk.map_or_else(Vec::new, |c| (0..cfg.mtp_depth).map(|_| ChunkTargets::new(ops, tokens, c)).collect()),
        }
    }

    /// Uploads every depth's targets and weights for `batch`.
    pub(crate) fn upload(&mut self, ops: &O, batch: &Batch) {
        for d in 1..=self.targets.len() {
            let (targets, weights) = mtp_targets(batch, d);
            ops.write_idx(&mut self.targets[d - 1], &targets);
            ops.write(&mut self.weights[d - 1], &weights);
            self.weight_sums[d - 1] = weights.iter().map(|&w| w as f64).sum();
            if let Some(chunks) = self.chunk_targets.get_mut(d - 1) {
                chunks.write(ops, &targets, &weights);
            }
        }
    }
}

/// Where the heads' backward writes: all gradient buffers, the `[tokens, hidden]` scratch for
/// d(normed), and the residual-stream gradient d(h) the heads add into.
pub(crate) struct MtpBackward<'a, O: Ops> {
    pub grads: &'a mut [O::Buf],
    pub d_normed: &'a mut O::Buf,
    pub d_resid: &'a mut O::Buf,
}

/// The scratch the heads' LM head runs in: the whole `[tokens, vocab]` logits buffer, or the
/// chunked head's buffers ([`crate::head`]).
pub(crate) enum HeadScratch<'a, O: Ops> {
    Whole(&'a mut O::Buf),
    Chunked(&'a mut HeadChunks<O>),
}

/// Runs every MTP head on `h` (`[tokens, hidden]`, the final norm's input) in `scratch`,
/// and with `backward` also their backward at `grad_scale * mtp_loss_weight / k`.
/// Returns `(1/k) sum_d sum_t w^d_t loss^d_t` and `(1/k) sum_d sum_t w^d_t`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_heads<O: Ops>(
    ops: &O,
    cfg: &ModelConfig,
    p: &[O::Buf],
    ws: &mut MtpWorkspace<O>,
    h: &O::Buf,
    mut scratch: HeadScratch<'_, O>,
    z_loss: f32,
    grad_scale: f32,
    mut backward: Option<MtpBackward<'_, O>>,
) -> (f64, f64) {
    let k = cfg.mtp_depth;
    let (dim, vocab) = (cfg.hidden, cfg.vocab);
    let t = ws.tokens;
    let rows = RowsShape { rows: t, dim };
    let head = params::head_index(cfg);
    let scale = grad_scale * cfg.mtp_loss_weight / k as f32;
    let (mut loss, mut weight) = (0.0, 0.0);
    for d in 1..=k {
        let (proj, norm) = (params::mtp_index(cfg, d, MtpSlot::Proj), params::mtp_index(cfg, d, MtpSlot::Norm));
        ops.matmul(h, &p[proj], &mut ws.u, MatmulShape::linear_fwd(t, dim, dim));
        ops.rmsnorm_fwd(&ws.u, &p[norm], &mut ws.normed, &mut ws.inv_rms, rows, cfg.rms_eps);
        weight += ws.weight_sums[d - 1];
        let logits = match &mut scratch {
            HeadScratch::Whole(logits) => &mut **logits,
            HeadScratch::Chunked(chunks) => {
                let b = backward.as_mut().map(|b| HeadBackward { grad_scale: scale, dw: &mut b.grads[head], dx: &mut *b.d_normed });
                loss += head::chunked_head(ops, cfg, &p[head], &ws.normed, chunks, &ws.chunk_targets[d - 1], z_loss, b);
                if let Some(b) = backward.as_mut() {
                    mtp_head_input_backward(ops, cfg, p, ws, h, b, d);
                }
                continue;
            }
        };
        ops.matmul(&ws.normed, &p[head], logits, MatmulShape::linear_fwd(t, dim, vocab));
        let shape = CrossEntropyShape { tokens: t, vocab };
        let backward_scale = if backward.is_some() { scale } else { 0.0 };
        ops.cross_entropy(logits, &ws.targets[d - 1], &ws.weights[d - 1], &mut ws.losses, shape, z_loss, backward_scale);
        loss += ops.sum(&ws.losses);
        let Some(b) = backward.as_mut() else { continue };
        // logits now hold d(z_d); z_d = normed W^T.
        ops.matmul(logits, &p[head], b.d_normed, MatmulShape::linear_bwd_input(t, dim, vocab, false));
        ops.matmul(logits, &ws.normed, &mut b.grads[head], MatmulShape::linear_bwd_weight(t, dim, vocab));
        mtp_head_input_backward(ops, cfg, p, ws, h, b, d);
    }
    (loss / k as f64, weight / k as f64)
}

/// Depth `d`'s backward below its LM head: from d(normed) in `b.d_normed` through its norm and
/// projection into the gradients and `b.d_resid`.
fn mtp_head_input_backward<O: Ops>(ops: &O, cfg: &ModelConfig, p: &[O::Buf], ws: &mut MtpWorkspace<O>, h: &O::Buf, b: &mut MtpBackward<'_, O>, d: usize) {
    let (dim, t) = (cfg.hidden, ws.tokens);
    let rows = RowsShape { rows: t, dim };
    let (proj, norm) = (params::mtp_index(cfg, d, MtpSlot::Proj), params::mtp_index(cfg, d, MtpSlot::Norm));
    ops.fill(&mut ws.d_u, 0.0);
    ops.rmsnorm_bwd(&ws.u, &p[norm], &ws.inv_rms, b.d_normed, &mut ws.d_u, &mut b.grads[norm], rows);
    // u = h P^T: d(h) += d(u) P, d(P) += d(u)^T h.
    ops.matmul(&ws.d_u, &p[proj], b.d_resid, MatmulShape::linear_bwd_input(t, dim, dim, true));
    ops.matmul(&ws.d_u, h, &mut b.grads[proj], MatmulShape::linear_bwd_weight(t, dim, dim));
}
