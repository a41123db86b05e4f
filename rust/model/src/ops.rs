//! The backend interface: every numerical primitive the decoder needs, nothing more.
//!
//! Buffers are opaque (`Ops::Buf` holds floats in the backend's precision, `Ops::IdxBuf` holds
//! u32 ids) so the same model code drives the CPU reference (f32 or f64) and the CUDA backend.
//! Host data crosses only through [`Ops::upload`], [`Ops::write`] and [`Ops::read`] (always f32
//! on the host side). Every op takes its sizes in an explicit shape struct and checks nothing
//! about them beyond what it needs to stay memory-safe; the model validates user input first.
//!
//! Layout conventions (all row-major):
//! * activations `[tokens, width]` with `tokens = batch * seq` and token `t = b * seq + s`;
//! * attention tensors `[tokens, heads, head_dim]` (that is, the projection output as is);
//! * weights `[out, in]` as in torch, so a linear layer is `y = x W^T`.
//!
//! Accumulation convention: forward ops overwrite their outputs. Backward ops overwrite
//! activation gradients unless the doc says `+=`; gradients of *parameters* (`dweight`,
//! `dtable`) are always accumulated so micro-batches add up without extra copies, and the
//! RMSNorm input gradient is accumulated because a pre-norm's input is the residual stream,
//! whose gradient already holds the skip path.

/// Sizes of `C[m, n] (= or +=) alpha * op(A)[m, k] · op(B)[k, n]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MatmulShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// `A` is stored `[k, m]` and used transposed (otherwise `[m, k]`).
    pub trans_a: bool,
    /// `B` is stored `[n, k]` and used transposed (otherwise `[k, n]`).
    pub trans_b: bool,
    /// Add into `C` instead of overwriting it.
    pub accumulate: bool,
    /// Scale of the product.
    pub alpha: f32,
}

impl MatmulShape {
    /// Linear layer forward `y[rows, out] = x[rows, in] · W[out, in]^T`.
    pub fn linear_fwd(rows: usize, in_dim: usize, out_dim: usize) -> Self {
        MatmulShape { m: rows, n: out_dim, k: in_dim, trans_a: false, trans_b: true, accumulate: false, alpha: 1.0 }
    }

    /// Linear layer input gradient `dx[rows, in] (= or +=) dy[rows, out] · W[out, in]`.
    pub fn linear_bwd_input(rows: usize, in_dim: usize, out_dim: usize, accumulate: bool) -> Self {
        MatmulShape { m: rows, n: in_dim, k: out_dim, trans_a: false, trans_b: false, accumulate, alpha: 1.0 }
    }

    /// Linear layer weight gradient `dW[out, in] += dy[rows, out]^T · x[rows, in]`.
    pub fn linear_bwd_weight(rows: usize, in_dim: usize, out_dim: usize) -> Self {
        MatmulShape { m: out_dim, n: in_dim, k: rows, trans_a: true, trans_b: false, accumulate: true, alpha: 1.0 }
    }
}

/// `rows` independent vectors of length `dim`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowsShape {
    pub rows: usize,
    pub dim: usize,
}

/// RoPE on `x[tokens, heads, head_dim]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RopeShape {
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
}

/// Attention over `batch` rows of `seq` tokens; q has `heads` heads, k and v `kv_heads`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Cross-lingual document attention (XLDA, docs/recipes.md): bit 31 of a doc id is its
    /// document's language and bits 0-30 the document's number, and a token also sees the
    /// earlier tokens of its row whose document is in the other language ([`attention_visible`]).
    pub cross_lingual: bool,
}

/// Bit 31 of a doc id under cross-lingual attention: the document's language (0 or 1).
pub const DOC_LANGUAGE_BIT: u32 = 1 << 31;

/// Whether query token with doc id `query_doc` sees an earlier (or the same) token with doc id
/// `key_doc`: same document, or, with `cross_lingual`, a document of the other language.
pub fn attention_visible(query_doc: u32, key_doc: u32, cross_lingual: bool) -> bool {
    query_doc == key_doc || (cross_lingual && (query_doc ^ key_doc) & DOC_LANGUAGE_BIT != 0)
}

impl AttentionShape {
    /// The shape without cross-lingual attention.
    pub fn new(batch: usize, seq: usize, heads: usize, kv_heads: usize, head_dim: usize) -> AttentionShape {
        AttentionShape { batch, seq, heads, kv_heads, head_dim, cross_lingual: false }
    }

    /// Number of tokens (`batch * seq`).
    pub fn tokens(&self) -> usize {
        self.batch * self.seq
    }
}

/// Embedding lookup of `tokens` ids into a `[vocab, dim]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddingShape {
    pub tokens: usize,
    pub vocab: usize,
    pub dim: usize,
}

/// Cross-entropy over `logits[tokens, vocab]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrossEntropyShape {
    pub tokens: usize,
    pub vocab: usize,
}

/// Numerical backend. See the module docs for layouts and accumulation rules.
pub trait Ops {
    /// Device buffer of floats (the backend's precision).
    type Buf;
    /// Device buffer of u32 ids (tokens, targets, document ids, positions).
    type IdxBuf;

    /// A new buffer of `len` zeros.
    fn zeros(&self, len: usize) -> Self::Buf;
    /// A new buffer holding `host` (converted to the backend precision).
    fn upload(&self, host: &[f32]) -> Self::Buf;
    /// A new id buffer holding `host`.
    fn upload_idx(&self, host: &[u32]) -> Self::IdxBuf;
    /// Overwrites `dst` (same length) with `host`.
    fn write(&self, dst: &mut Self::Buf, host: &[f32]);
    /// Overwrites the id buffer `dst` (same length) with `host`.
    fn write_idx(&self, dst: &mut Self::IdxBuf, host: &[u32]);
    /// Copies `src` (converted to f32) into `host` (same length).
    fn read(&self, src: &Self::Buf, host: &mut [f32]);
    /// `sum_i x[i]`, accumulated in f64 from the backend's own precision (loss reporting; an
    /// f64 backend must not lose digits to an f32 round trip, or finite differences fail).
    fn sum(&self, x: &Self::Buf) -> f64;

    /// `x[i] = value`.
    fn fill(&self, x: &mut Self::Buf, value: f32);
    /// `dst[i] = src[i]` (same length).
    fn copy(&self, src: &Self::Buf, dst: &mut Self::Buf);
    /// `x[i] *= alpha` (gradient clipping on the device).
    fn scale(&self, x: &mut Self::Buf, alpha: f32);
    /// `dst[i] += src[i]` (gradient sums across replicas; the model itself fuses its residual
    /// additions into `matmul` with `accumulate`).
    fn add_assign(&self, dst: &mut Self::Buf, src: &Self::Buf);

    /// `C (= or +=) alpha * op(A) · op(B)`, see [`MatmulShape`].
    fn matmul(&self, a: &Self::Buf, b: &Self::Buf, c: &mut Self::Buf, shape: MatmulShape);

    /// RMSNorm forward per row r: `inv_rms[r] = 1 / sqrt(mean_j x[r,j]^2 + eps)`,
    /// `y[r,j] = x[r,j] * inv_rms[r] * weight[j]`. `inv_rms` (`[rows]`) is kept for backward.
    fn rmsnorm_fwd(
        &self,
        x: &Self::Buf,
        weight: &Self::Buf,
        y: &mut Self::Buf,
        inv_rms: &mut Self::Buf,
        shape: RowsShape,
        eps: f32,
    );

    /// RMSNorm backward. With `n = x * inv_rms` and `g = dy * weight`:
    /// `dx[r,j] += inv_rms[r] * (g[r,j] - n[r,j] * mean_i(g[r,i] * n[r,i]))` and
    /// `dweight[j] += sum_r dy[r,j] * n[r,j]`.
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_bwd(
        &self,
        x: &Self::Buf,
        weight: &Self::Buf,
        inv_rms: &Self::Buf,
        dy: &Self::Buf,
        dx: &mut Self::Buf,
        dweight: &mut Self::Buf,
        shape: RowsShape,
    );

    /// RoPE in place, Hugging Face "rotate half" convention: for each token t, head, and
    /// `i < head_dim / 2`, with `a = positions[t] * theta^(-2i / head_dim)`,
    /// `(x[i], x[i + d/2]) <- (x[i] cos a - x[i + d/2] sin a, x[i + d/2] cos a + x[i] sin a)`.
    fn rope_fwd(&self, x: &mut Self::Buf, positions: &Self::IdxBuf, shape: RopeShape, theta: f32);

    /// RoPE backward in place: the rotation is orthogonal, so the gradient is rotated by `-a`.
    fn rope_bwd(&self, dx: &mut Self::Buf, positions: &Self::IdxBuf, shape: RopeShape, theta: f32);

    /// Causal, same-document, grouped-query attention forward. For row b, query position i,
    /// head h (KV head `h / (heads / kv_heads)`), the visible keys are
    /// `J(i) = { j <= i : doc_ids[b,j] == doc_ids[b,i] }` (with `shape.cross_lingual`, also the
    /// keys of documents in the other language: [`attention_visible`]);
    /// `s_j = q_i · k_j / sqrt(head_dim)`, `lse[b,h,i] = log sum_{j in J} exp(s_j)`,
    /// `out_i = sum_{j in J} exp(s_j - lse) v_j`. `out` is `[tokens, heads, head_dim]`,
    /// `lse` is `[tokens, heads]` and kept for backward. Every query sees at least itself.
    #[allow(clippy::too_many_arguments)]
    fn attention_fwd(
        &self,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        doc_ids: &Self::IdxBuf,
        out: &mut Self::Buf,
        lse: &mut Self::Buf,
        shape: AttentionShape,
    );

    /// Attention backward (overwrites `dq`, `dk`, `dv`). With `p_ij = exp(s_ij - lse_i)` and
    /// `D_i = dout_i · out_i`: `dv_j = sum_i p_ij dout_i`, `ds_ij = p_ij (dout_i · v_j - D_i)`,
    /// `dq_i = sum_j ds_ij k_j / sqrt(d)`, `dk_j = sum_i ds_ij q_i / sqrt(d)`; KV-head gradients
    /// sum over the query heads that share them.
    #[allow(clippy::too_many_arguments)]
    fn attention_bwd(
        &self,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        doc_ids: &Self::IdxBuf,
        out: &Self::Buf,
        lse: &Self::Buf,
        dout: &Self::Buf,
        dq: &mut Self::Buf,
        dk: &mut Self::Buf,
        dv: &mut Self::Buf,
        shape: AttentionShape,
    );

    /// SwiGLU forward over `len` elements: `h = silu(gate) * up`, `silu(g) = g / (1 + e^-g)`.
    fn swiglu_fwd(&self, gate: &Self::Buf, up: &Self::Buf, h: &mut Self::Buf, len: usize);

    /// SwiGLU backward (overwrites): `dup = dh * silu(gate)`,
    /// `dgate = dh * up * sigmoid(gate) * (1 + gate * (1 - sigmoid(gate)))`.
    fn swiglu_bwd(
        &self,
        gate: &Self::Buf,
        up: &Self::Buf,
        dh: &Self::Buf,
        dgate: &mut Self::Buf,
        dup: &mut Self::Buf,
        len: usize,
    );

    /// Embedding lookup: `out[t, :] = table[tokens[t], :]`.
    fn embedding_fwd(&self, table: &Self::Buf, tokens: &Self::IdxBuf, out: &mut Self::Buf, shape: EmbeddingShape);

    /// Embedding backward, scatter-add: `dtable[tokens[t], :] += dout[t, :]`.
    fn embedding_bwd(&self, dout: &Self::Buf, tokens: &Self::IdxBuf, dtable: &mut Self::Buf, shape: EmbeddingShape);

    /// Weighted cross-entropy with optional z-loss, loss and gradient in one pass; `logits` is
    /// overwritten by its gradient. Per token t with `w = weights[t]`, `lse = log sum_v e^{z_v}`,
    /// `p = softmax(z)`:
    /// `losses[t] = w * (lse - z[targets[t]] + z_loss * lse^2)` and
    /// `dlogits[t, v] = grad_scale * w * (p_v - [v == targets[t]] + 2 z_loss lse p_v)`.
    /// Tokens with `w == 0` get zero loss and gradient and their target is never read.
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy(
        &self,
        logits: &mut Self::Buf,
        targets: &Self::IdxBuf,
        weights: &Self::Buf,
        losses: &mut Self::Buf,
        shape: CrossEntropyShape,
        z_loss: f32,
        grad_scale: f32,
    );

    /// Starts a per-op time profile (benchmarks, [`crate::profile`]): from now on every op call
    /// of this backend and its clones is timed under its label, until
    /// [`Ops::finish_op_profile`]. `Err` says why the backend cannot (the default: no op timers).
    fn start_op_profile(&self) -> Result<(), String> {
        Err("this backend has no op timers".into())
    }

    /// Stops the profile and returns the per-op times since [`Ops::start_op_profile`], after
    /// waiting for the calls to finish; `Err` says why there is none (profiling failed, or the
    /// backend has no op timers).
    fn finish_op_profile(&self) -> Result<crate::profile::OpProfile, String> {
        Err("this backend has no op timers".into())
    }
}
