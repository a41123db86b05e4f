//! The LM head and its cross-entropy, chunked over tokens so that the `[tokens, vocab]` logits
//! are never materialised (a row gather and scatter around one chunk-sized GEMM and cross-entropy).
//!
//! With `T` tokens and a chunk of `C < T` tokens ([`crate::Model::set_head_chunk_tokens`]), the
//! head runs `ceil(T / C)` chunks one after the other, each through the same existing ops:
//!
//! ```text
//! x_c      = gather(x, rows_c)                    embedding_fwd with x [T, hidden] as the table
//! z_c      = x_c W^T                              matmul  [C, vocab], the one logits buffer
//! loss_c   = cross_entropy(z_c)                   z_c becomes d(z_c), scaled by grad_scale * w
//! d(x_c)   = d(z_c) W                             matmul
//! dW      += d(z_c)^T x_c                         matmul (weight gradients always accumulate)
//! d(x)[rows_c] += d(x_c)                          embedding_bwd onto a zeroed [T, hidden]
//! ```
//!
//! (gathered in a buffer of the head's own, then copied into the caller's `d(x)`: see
//! `HeadChunks::dx_all`).
//!
//! The last chunk is padded to `C` rows with copies of its first row, loss weight 0: their
//! loss and logit gradient are exactly zero, so they add exact zeros to `dW` and `d(x)`. Per
//! chunk the targets and weights are uploaded from the host with the batch. So every chunk has
//! the one shape the backends' ops check, and CPU and CUDA run the same code. The logits take
//! `C * vocab` floats instead of `T * vocab`; the chunk's gathered rows, their gradient and the
//! per-chunk targets and weights add a little (see [`crate::ActivationMemory`]).
//!
//! With `T <= C` the model runs the unchunked head exactly as before (one `[T, vocab]` logits
//! buffer, the same ops in the same order), so results, and bitwise expectations, are
//! unchanged. With chunks the loss sum and `dW` are summed in another order: equal within
//! float rounding, not bitwise.

use crate::config::ModelConfig;
use crate::ops::{CrossEntropyShape, EmbeddingShape, MatmulShape, Ops};

/// Default [`crate::Model::set_head_chunk_tokens`]: 4096 tokens, so the logits of a 125,184
/// vocabulary take 2 GiB in f32 (1 GiB in bf16) whatever the micro-batch.
pub const DEFAULT_HEAD_CHUNK_TOKENS: usize = 4096;

/// Number of chunks of `chunk` tokens covering `tokens`.
pub(crate) fn chunk_count(tokens: usize, chunk: usize) -> usize {
    tokens.div_ceil(chunk)
}

/// The chunked head's scratch, shared by the next-token head and the MTP heads: per chunk the
/// token rows it gathers, and one chunk's gathered rows, logits, their gradients and losses.
pub(crate) struct HeadChunks<O: Ops> {
    tokens: usize,
    chunk: usize,
    rows: Vec<O::IdxBuf>,
    x: O::Buf,
    logits: O::Buf,
    dx: O::Buf,
    /// `[tokens, hidden]`: the chunks' input gradients scattered together, then copied into
    /// the caller's `d(x)`. A buffer of its own because a backend may keep a scatter-add target
    /// in another precision than the layers' gradients (CudaOps: f32), and switching the
    /// caller's buffer back and forth would reallocate it every step.
    dx_all: O::Buf,
    losses: O::Buf,
}

impl<O: Ops> HeadChunks<O> {
    pub(crate) fn new(ops: &O, cfg: &ModelConfig, tokens: usize, chunk: usize) -> Self {
        let rows = (0..chunk_count(tokens, chunk))
            .map(|i| {
                let start = i * chunk;
                let ids: Vec<u32> = (0..chunk).map(|r| (if start + r < tokens { start + r } else { start }) as u32).collect();
                ops.upload_idx(&ids)
            })
            .collect();
        HeadChunks {
            tokens,
            chunk,
            rows,
            x: ops.zeros(chunk * cfg.hidden),
            logits: ops.zeros(chunk * cfg.vocab),
            dx: ops.zeros(chunk * cfg.hidden),
            dx_all: ops.zeros(tokens * cfg.hidden),
            losses: ops.zeros(chunk),
        }
    }

    /// Reads the logits `x W^T` (`[tokens, vocab]`, f32) to the host chunk by chunk.
    pub(crate) fn read_logits(&mut self, ops: &O, cfg: &ModelConfig, w: &O::Buf, x: &O::Buf) -> Vec<f32> {
        let (h, vocab, c) = (cfg.hidden, cfg.vocab, self.chunk);
        let mut out = vec![0.0; self.tokens * vocab];
        let mut host = vec![0.0; c * vocab];
        for (i, rows) in self.rows.iter().enumerate() {
            ops.embedding_fwd(x, rows, &mut self.x, EmbeddingShape { tokens: c, vocab: self.tokens, dim: h });
            ops.matmul(&self.x, w, &mut self.logits, MatmulShape::linear_fwd(c, h, vocab));
            ops.read(&self.logits, &mut host);
            let start = i * c;
            let n = c.min(self.tokens - start);
            out[start * vocab..(start + n) * vocab].copy_from_slice(&host[..n * vocab]);
        }
        out
    }
}

/// One head's targets and loss weights split into chunks (the last padded with weight 0).
pub(crate) struct ChunkTargets<O: Ops> {
    chunk: usize,
    targets: Vec<O::IdxBuf>,
    weights: Vec<O::Buf>,
}

impl<O: Ops> ChunkTargets<O> {
    pub(crate) fn new(ops: &O, tokens: usize, chunk: usize) -> Self {
        let n = chunk_count(tokens, chunk);
        ChunkTargets {
            chunk,
            targets: (0..n).map(|_| ops.upload_idx(&vec![0; chunk])).collect(),
            weights: (0..n).map(|_| ops.zeros(chunk)).collect(),
        }
    }

    /// Uploads `targets` and `weights` (`[tokens]` each, ignored targets already clamped).
    pub(crate) fn write(&mut self, ops: &O, targets: &[u32], weights: &[f32]) {
        let c = self.chunk;
        let (mut t, mut w) = (vec![0u32; c], vec![0f32; c]);
        for (i, (tb, wb)) in self.targets.iter_mut().zip(&mut self.weights).enumerate() {
            let start = i * c;
            let n = c.min(targets.len() - start);
            t.fill(0);
            w.fill(0.0);
            t[..n].copy_from_slice(&targets[start..start + n]);
            w[..n].copy_from_slice(&weights[start..start + n]);
            ops.write_idx(tb, &t);
            ops.write(wb, &w);
        }
    }
}

/// Where a head's backward writes: the head weight's gradient (`dW += ...`) and the input
/// gradient `d(x)` `[tokens, hidden]` (overwritten).
pub(crate) struct HeadBackward<'a, O: Ops> {
    pub grad_scale: f32,
    pub dw: &'a mut O::Buf,
    pub dx: &'a mut O::Buf,
}

/// The chunked head on `x` (`[tokens, hidden]`) with weight `w`: returns `sum_t w_t loss_t`
/// and, with `backward`, adds the gradients (see the module docs).
#[allow(clippy::too_many_arguments)]
pub(crate) fn chunked_head<O: Ops>(
    ops: &O,
    cfg: &ModelConfig,
    w: &O::Buf,
    x: &O::Buf,
    ch: &mut HeadChunks<O>,
    tg: &ChunkTargets<O>,
    z_loss: f32,
    mut backward: Option<HeadBackward<'_, O>>,
) -> f64 {
    let (h, vocab, c) = (cfg.hidden, cfg.vocab, ch.chunk);
    let gather = EmbeddingShape { tokens: c, vocab: ch.tokens, dim: h };
    if backward.is_some() {
        ops.fill(&mut ch.dx_all, 0.0);
    }
    let grad_scale = backward.as_ref().map_or(0.0, |b| b.grad_scale);
    let mut loss = 0.0;
    for (i, rows) in ch.rows.iter().enumerate() {
        ops.embedding_fwd(x, rows, &mut ch.x, gather);
        ops.matmul(&ch.x, w, &mut ch.logits, MatmulShape::linear_fwd(c, h, vocab));
        let shape = CrossEntropyShape { tokens: c, vocab };
        ops.cross_entropy(&mut ch.logits, &tg.targets[i], &tg.weights[i], &mut ch.losses, shape, z_loss, grad_scale);
        loss += ops.sum(&ch.losses);
        let Some(b) = backward.as_mut() else { continue };
        ops.matmul(&ch.logits, w, &mut ch.dx, MatmulShape::linear_bwd_input(c, h, vocab, false));
        ops.matmul(&ch.logits, &ch.x, b.dw, MatmulShape::linear_bwd_weight(c, h, vocab));
        ops.embedding_bwd(&ch.dx, rows, &mut ch.dx_all, gather);
    }
    if let Some(b) = backward {
        ops.copy(&ch.dx_all, b.dx);
    }
    loss
}
