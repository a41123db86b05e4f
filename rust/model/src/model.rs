//! The KORMo decoder: forward and hand-written backward over any [`Ops`] backend.
//!
//! Per layer (pre-norm): `a = RMSNorm(x)`, `q,k,v = a Wq^T, a Wk^T, a Wv^T`, RoPE on q and k,
//! causal same-document GQA attention, `x' = x + attn Wo^T`; `m = RMSNorm(x')`,
//! `x'' = x' + (silu(m Wg^T) * m Wu^T) Wd^T`. After the last layer a final RMSNorm and the LM head.
//!
//! With `norm = "mixln"` ([`crate::NormPlacement`]) the first [`ModelConfig::post_ln_layers`]
//! layers are post-LN instead: q, k, v are projections of `x` itself,
//! `s = x + attn Wo^T`, `x' = RMSNorm_a(s)`; gate and up are projections of `x'`,
//! `s' = x' + (silu(x' Wg^T) * x' Wu^T) Wd^T`, `x'' = RMSNorm_f(s')`, with the same two norm
//! tensors (`pre_attention_layernorm` = `RMSNorm_a`, `pre_mlp_layernorm` = `RMSNorm_f`). The
//! other layers, the final norm and the head are unchanged, so a model with `norm = "pre"` runs
//! exactly the ops it always did.
//!
//! Every activation that backward needs is kept per layer in a workspace that is allocated once
//! per batch shape and reused, so steady-state training allocates nothing on the backend.
//! With activation checkpointing ([`Model::set_activation_checkpointing`]) only each layer's
//! input is kept; all layers share one activation set, which the backward refills by running
//! the layer's forward again (the same function, so the same ops in the same order) just
//! before the layer's backward. [`ActivationMemory`] gives the workspace size either way.
//! Residual additions are fused into the projections (`matmul` with `accumulate`), and the
//! backward pass carries one residual-stream gradient that RMSNorm backward adds into.
//!
//! The passes run unit by unit ([`crate::params::Unit`]: embedding, each layer, head), and the
//! `*_with_hooks` entry points call [`UnitHooks`] around each unit so a sharded trainer can
//! gather parameters just in time and reduce gradients as soon as a unit's backward is done.
//!
//! Gradient normalisation: [`Model::forward_backward`] adds `grad_scale * d(sum_t w_t loss_t)`
//! to the gradient buffers. For the mean over one batch pass `1 / batch.loss_weight_sum()`;
//! with gradient accumulation pass `1 / (sum of loss weights over all micro-batches of the
//! step)` to every micro-batch (and over all data-parallel ranks when gradients are summed
//! across them), so the accumulated gradient is the gradient of the step's mean loss no matter
//! how tokens fall into micro-batches.

use crate::batch::{Batch, LossSum};
use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::ops::{AttentionShape, CrossEntropyShape, EmbeddingShape, MatmulShape, Ops, RopeShape, RowsShape};
use crate::head::{self, ChunkTargets, HeadBackward, HeadChunks, DEFAULT_HEAD_CHUNK_TOKENS};
use crate::mtp::{self, HeadScratch, MtpBackward, MtpWorkspace};
use crate::params::{self, LayerSlot, ParamSpec, Unit};

/// What one layer's backward needs from its forward, besides the layer's input (which lives in
/// `Workspace::residual` so that activation checkpointing can keep it alone).
///
/// A post-LN layer (Mix-LN) keeps the same set with three buffers holding other `[T, hidden]`
/// tensors: `normed_attn` the pre-norm sum `s = x + attn Wo^T`, `x_mid` its norm (the
/// residual stream after attention, as in a pre-LN layer) and `normed_mlp` the pre-norm sum
/// `s' = x_mid + ffn`; the inverse RMS are those of `s` and `s'`. So the workspace, and
/// [`ActivationMemory`], do not depend on the norm placement.
struct LayerActivations<B> {
    inv_rms_attn: B,
    normed_attn: B,
    /// q and k after RoPE.
    q: B,
    k: B,
    v: B,
    attn_out: B,
    lse: B,
    /// Residual stream after attention `[T, hidden]`.
    x_mid: B,
    inv_rms_mlp: B,
    normed_mlp: B,
    gate: B,
    up: B,
    swiglu: B,
}

/// Activations, batch inputs on the backend, and backward scratch for one batch shape.
///
/// Field for field this is what [`ActivationMemory::new`] counts; keep the two in step.
struct Workspace<O: Ops> {
    batch_size: usize,
    seq_len: usize,
    /// Cross-lingual attention for this batch (the model's setting when the batch was loaded).
    cross_lingual: bool,
    tokens: O::IdxBuf,
    targets: O::IdxBuf,
    doc_ids: O::IdxBuf,
    positions: O::IdxBuf,
    loss_weights: O::Buf,
    /// Residual stream `[T, hidden]` entering each layer, then leaving the last one:
    /// `residual[l]` is layer l's input, `residual[layers]` the final norm's input.
    residual: Vec<O::Buf>,
    /// One set per layer, or a single set shared by all layers under activation checkpointing.
    layers: Vec<LayerActivations<O::Buf>>,
    /// Under checkpointing, the layer whose activations the shared set holds.
    held_layer: Option<usize>,
    checkpointing: bool,
    inv_rms_final: O::Buf,
    normed_final: O::Buf,
    /// Logits, overwritten by their gradient in `forward_backward`; a one-element placeholder
    /// when the workspace was made for [`Model::log_probs`] alone (`has_logits` false) or when
    /// the head is chunked (`head` set).
    logits: O::Buf,
    has_logits: bool,
    /// The chunked head's buffers and the per-chunk targets and weights, when the head is
    /// chunked: logits kept and more tokens than [`Model::set_head_chunk_tokens`].
    head: Option<(HeadChunks<O>, ChunkTargets<O>)>,
    /// The chunked head's loss sum of the current pass, or its logits for [`Model::forward`].
    head_loss: f64,
    head_logits: Vec<f32>,
    losses: O::Buf,
    d_resid: O::Buf,
    d_normed: O::Buf,
    d_ffn: O::Buf,
    d_gate: O::Buf,
    d_up: O::Buf,
    d_attn: O::Buf,
    d_q: O::Buf,
    d_k: O::Buf,
    d_v: O::Buf,
    /// The multi-token-prediction heads' buffers (`mtp_depth > 0` and logits kept), else none.
    mtp: Option<MtpWorkspace<O>>,
}

impl<O: Ops> Workspace<O> {
    fn new(ops: &O, cfg: &ModelConfig, batch_size: usize, seq_len: usize, checkpointing: bool, has_logits: bool, head_chunk: usize) -> Self {
        let t = batch_size * seq_len;
        let chunked = (has_logits && t > head_chunk).then_some(head_chunk);
        let (h, q, kv, f) = (cfg.hidden, cfg.q_dim(), cfg.kv_dim(), cfg.ffn);
        let activation_sets = if checkpointing { 1 } else { cfg.layers };
        let layers = (0..activation_sets)
            .map(|_| LayerActivations {
                inv_rms_attn: ops.zeros(t),
                normed_attn: ops.zeros(t * h),
                q: ops.zeros(t * q),
                k: ops.zeros(t * kv),
                v: ops.zeros(t * kv),
                attn_out: ops.zeros(t * q),
                lse: ops.zeros(t * cfg.heads),
                x_mid: ops.zeros(t * h),
                inv_rms_mlp: ops.zeros(t),
                normed_mlp: ops.zeros(t * h),
                gate: ops.zeros(t * f),
                up: ops.zeros(t * f),
                swiglu: ops.zeros(t * f),
            })
            .collect();
        let zero_ids = vec![0u32; t];
        Workspace {
            batch_size,
            seq_len,
            cross_lingual: false,
            tokens: ops.upload_idx(&zero_ids),
            targets: ops.upload_idx(&zero_ids),
            doc_ids: ops.upload_idx(&zero_ids),
            positions: ops.upload_idx(&zero_ids),
            loss_weights: ops.zeros(t),
            residual: (0..=cfg.layers).map(|_| ops.zeros(t * h)).collect(),
            layers,
            held_layer: None,
            checkpointing,
            inv_rms_final: ops.zeros(t),
            normed_final: ops.zeros(t * h),
            logits: ops.zeros(if has_logits && chunked.is_none() { t * cfg.vocab } else { 1 }),
            has_logits,
            head: chunked.map(|c| (HeadChunks::new(ops, cfg, t, c), ChunkTargets::new(ops, t, c))),
            head_loss: 0.0,
            head_logits: Vec::new(),
            losses: ops.zeros(t),
            d_resid: ops.zeros(t * h),
            d_normed: ops.zeros(t * h),
            d_ffn: ops.zeros(t * f),
            d_gate: ops.zeros(t * f),
            d_up: ops.zeros(t * f),
            d_attn: ops.zeros(t * q),
            d_q: ops.zeros(t * q),
            d_k: ops.zeros(t * kv),
            d_v: ops.zeros(t * kv),
            mtp: (cfg.mtp_depth > 0 && has_logits).then(|| MtpWorkspace::new(ops, cfg, t, chunked)),
        }
    }

    /// Which activation set layer `l` uses.
    fn activation_set(&self, l: usize) -> usize {
        if self.checkpointing {
            0
        } else {
            l
        }
    }
}

/// Element counts of the model's workspace for one micro-batch: everything
/// [`Model::forward_backward`] keeps on the backend besides parameters and gradients. The
/// workspace is allocated once per batch shape, so this is also its peak (backend-internal
/// temporaries, if a backend has any, are not included).
///
/// With `T` tokens per micro-batch (`batch_size * seq_len`), `L` layers, hidden `h`, query width
/// `q = heads * head_dim`, KV width `kv = kv_heads * head_dim`, FFN width `f`, vocabulary `V`,
/// `H` query heads and `S` saved layer activation sets (`S = L`, or `S = 1` with activation
/// checkpointing, whose one set is reused by every layer and refilled by recomputation):
///
/// ```text
/// floats = S * T * (3h + 2q + 2kv + 3f + H + 2)   per-layer activations (normed inputs, x_mid,
///                                                  q, attn_out, k, v, gate, up, swiglu, lse,
///                                                  two inverse RMS)
///        + (L + 1) * T * h                         residual stream into each layer and out
///        + T * (h + V + 2)                         final norm output, logits, inverse RMS, losses
///        + T                                       loss weights
///        + T * (2h + 3f + 2q + 2kv)                backward scratch (one layer's gradients)
/// ids    = 4 * T                                   tokens, targets, document ids, positions (u32)
/// ```
///
/// With multi-token prediction (`mtp_depth = k > 0`) add `T * (3h + 2 + k)` floats (the heads'
/// projection output, its norm and gradient, inverse RMS, losses, and one weight vector per
/// depth) and `k * T` ids (targets per depth); the heads reuse the logits buffer.
///
/// With a chunked LM head ([`Model::set_head_chunk_tokens`], `C` tokens per chunk, used when
/// `T > C`; `N = ceil(T / C) * C` the tokens rounded up to whole chunks) the `T * V` logits
/// term becomes `C * (V + 2h + 1) + 1 + T * h` (one chunk's logits, gathered rows, their
/// gradient and losses, a one-float placeholder for the unused whole-batch logits, and the
/// chunks' input gradients gathered into one `[T, h]` buffer), plus `N` floats (the
/// chunked loss weights) and `2N` ids (the chunks' row ids and targets); MTP adds `k * N` floats
/// and `k * N` ids more (each depth's chunked weights and targets). The head thus frees about
/// `(T - C) * V` floats.
///
/// Checkpointing thus saves `(L - 1) * T * (3h + 2q + 2kv + 3f + H + 2)` floats, at the price
/// of one extra forward of every layer except the last (whose activations are still held when
/// the backward reaches it); the recomputation of a pre-LN layer skips the layer's down
/// projection and residual add, whose output backward never reads (a post-LN layer's backward
/// needs the FFN's pre-norm sum and its inverse RMS, so its recomputation runs the whole layer).
///
/// For the 1B proxy and one 4096-token micro-batch in f32, checkpointing takes the workspace
/// from about 10.2 GiB to 3.2 GiB (the logits, `T * V`, are then the largest part):
///
/// ```
/// use kormo_model::{ActivationMemory, ModelConfig};
/// let cfg = ModelConfig::proxy_1b();
/// assert_eq!(ActivationMemory::new(&cfg, 4096, false).bytes(4), 10_901_045_248);
/// assert_eq!(ActivationMemory::new(&cfg, 4096, true).bytes(4), 3_410_313_216);
/// ```
///
/// At 4 x 4096 tokens the default 4096-token head chunk keeps 4096 instead of 16,384 rows of
/// logits, 5.6 GiB less in f32:
///
/// ```
/// use kormo_model::{ActivationMemory, ModelConfig};
/// let cfg = ModelConfig::proxy_1b();
/// let whole = ActivationMemory::with_head_chunk(&cfg, 16384, true, 16384).bytes(4);
/// let chunked = ActivationMemory::new(&cfg, 16384, true).bytes(4);
/// assert_eq!(whole - chunked, 6_001_836_028); // 5.6 GiB: (16384 - 4096) * V floats less the chunk's buffers
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivationMemory {
    /// Elements of the backend's float type.
    pub floats: u64,
    /// u32 id elements.
    pub ids: u64,
}

impl ActivationMemory {
    /// The workspace of `cfg` for micro-batches of `batch_tokens` tokens with the default head
    /// chunk ([`DEFAULT_HEAD_CHUNK_TOKENS`]; see the type docs).
    pub fn new(cfg: &ModelConfig, batch_tokens: usize, checkpointing: bool) -> Self {
        Self::with_head_chunk(cfg, batch_tokens, checkpointing, DEFAULT_HEAD_CHUNK_TOKENS)
    }

    /// [`ActivationMemory::new`] with an LM head chunk of `head_chunk` tokens.
    pub fn with_head_chunk(cfg: &ModelConfig, batch_tokens: usize, checkpointing: bool, head_chunk: usize) -> Self {
        let t = batch_tokens as u64;
        let c = head_chunk.max(1) as u64;
        let [h, q, kv, f, v, heads, layers] =
            [cfg.hidden, cfg.q_dim(), cfg.kv_dim(), cfg.ffn, cfg.vocab, cfg.heads, cfg.layers].map(|x| x as u64);
        let saved_sets = if checkpointing { 1 } else { layers };
        let per_layer = t * (3 * h + 2 * q + 2 * kv + 3 * f + heads + 2);
        let k = cfg.mtp_depth as u64;
        // The logits and, when chunked, the chunked head's buffers (see the type docs).
        let (head_floats, head_ids) = if t > c {
            let padded = t.div_ceil(c) * c;
            (c * (v + 2 * h + 1) + 1 + t * h + padded * (1 + k), padded * (2 + k))
        } else {
            (t * v, 0)
        };
        let floats = saved_sets * per_layer
            + (layers + 1) * t * h
            + t * (h + 2)
            + head_floats
            + t
            + t * (2 * h + 3 * f + 2 * q + 2 * kv);
        let (mtp_floats, mtp_ids) = if k > 0 { (t * (3 * h + 2 + k), k * t) } else { (0, 0) };
        ActivationMemory { floats: floats + mtp_floats, ids: 4 * t + mtp_ids + head_ids }
    }

    /// Bytes with floats of `float_bytes` bytes each (4 for f32) and 4-byte ids.
    pub fn bytes(&self, float_bytes: u64) -> u64 {
        self.floats * float_bytes + self.ids * 4
    }
}

/// Bytes the model holds on its backend during training of micro-batches of a given size:
/// parameters, gradient accumulators (both `param_count * float_bytes`) and the workspace
/// ([`ActivationMemory`]). Optimizer state lives outside the model and is not included
/// (`kormo_optim::AdamW::state_bytes` reports it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPlan {
    pub params: u64,
    pub grads: u64,
    pub activations: u64,
}

impl MemoryPlan {
    /// The plan for `cfg` with floats of `float_bytes` bytes each.
    pub fn new(cfg: &ModelConfig, batch_tokens: usize, checkpointing: bool, float_bytes: u64) -> Self {
        let tensors = cfg.param_count() * float_bytes;
        MemoryPlan {
            params: tensors,
            grads: tensors,
            activations: ActivationMemory::new(cfg, batch_tokens, checkpointing).bytes(float_bytes),
        }
    }

    /// `params + grads + activations`.
    pub fn total(&self) -> u64 {
        self.params + self.grads + self.activations
    }
}

/// A decoder with its parameters and gradient accumulators on backend `O`.
pub struct Model<O: Ops> {
    config: ModelConfig,
    ops: O,
    specs: Vec<ParamSpec>,
    params: Vec<O::Buf>,
    grads: Vec<O::Buf>,
    z_loss: f32,
    cross_lingual_attention: bool,
    activation_checkpointing: bool,
    head_chunk_tokens: usize,
    workspace: Option<Workspace<O>>,
    /// Buffers of [`Model::log_probs`]'s head, sized for a number of queries.
    scoring: Option<ScoringWorkspace<O>>,
    /// Whether (and how) the current pass runs the MTP heads, and what they last measured.
    mtp_pass: MtpPass,
    /// The kind of the current pass whatever the MTP depth (the chunked head's schedule).
    head_pass: MtpPass,
    mtp_loss: (f64, f64),
}

/// What the multi-token-prediction heads do in the current pass (see [`crate::mtp`]).
#[derive(Debug, Clone, Copy, PartialEq)]
enum MtpPass {
    /// Not run (`forward`, `log_probs`, or `mtp_depth = 0`).
    Skip,
    /// Loss only, in the Head unit's forward.
    Evaluate,
    /// Loss and backward at this gradient scale, in the Head unit's backward.
    Train(f32),
}

/// The head of [`Model::log_probs`] over `rows` gathered tokens (queries padded to `rows`
/// with loss weight 0): the gathered final-norm rows `[rows, hidden]`, their logits
/// `[rows, vocab]`, the queried ids, the 0/1 weights and the per-row losses.
struct ScoringWorkspace<O: Ops> {
    rows: usize,
    positions: O::IdxBuf,
    ids: O::IdxBuf,
    weights: O::Buf,
    hidden: O::Buf,
    logits: O::Buf,
    losses: O::Buf,
}

impl<O: Ops> Model<O> {
    /// Builds a model with KORMo's initialisation for `seed` (see [`params::init_tensor`]) and
    /// zeroed gradients. Fails if the config is invalid.
    pub fn new(config: ModelConfig, ops: O, seed: u64) -> Result<Self, ModelError> {
        config.validate()?;
        let specs = params::layout(&config);
        let mut host = Vec::new();
        let mut params = Vec::with_capacity(specs.len());
        let mut grads = Vec::with_capacity(specs.len());
        for (index, spec) in specs.iter().enumerate() {
            host.resize(spec.numel(), 0.0);
            params::init_tensor(spec, index, seed, &mut host);
            let gain = config.init_gain(index);
            if gain != 1.0 {
                host.iter_mut().for_each(|x| *x = (*x as f64 * gain) as f32);
            }
            params.push(ops.upload(&host));
            grads.push(ops.zeros(spec.numel()));
        }
        Ok(Model { config, ops, specs, params, grads, z_loss: 0.0, cross_lingual_attention: false, activation_checkpointing: false, head_chunk_tokens: DEFAULT_HEAD_CHUNK_TOKENS, workspace: None, scoring: None, mtp_pass: MtpPass::Skip, head_pass: MtpPass::Skip, mtp_loss: (0.0, 0.0) })
    }

    /// A model holding `tensors` (host f32, one per [`params::layout`] entry, in that order)
    /// for forward passes only (`forward`, `evaluate`, `log_probs`): no initialisation runs and
    /// no gradient buffers are allocated, so it takes the parameters' memory alone (plus the
    /// workspace of its passes). [`Model::forward_backward`] and [`Model::read_grad`] on it are
    /// [`ModelError::NoGradients`]; [`Model::grads`] is empty.
    pub fn for_inference(config: ModelConfig, ops: O, tensors: &[&[f32]]) -> Result<Self, ModelError> {
        config.validate()?;
        let specs = params::layout(&config);
        if tensors.len() != specs.len() {
            return Err(ModelError::SizeMismatch { name: "(number of parameter tensors)".into(), expected: specs.len(), got: tensors.len() });
        }
        let mut params = Vec::with_capacity(specs.len());
        for (spec, values) in specs.iter().zip(tensors) {
            if values.len() != spec.numel() {
                return Err(ModelError::SizeMismatch { name: spec.name.clone(), expected: spec.numel(), got: values.len() });
            }
            params.push(ops.upload(values));
        }
        Ok(Model { config, ops, specs, params, grads: Vec::new(), z_loss: 0.0, cross_lingual_attention: false, activation_checkpointing: false, head_chunk_tokens: DEFAULT_HEAD_CHUNK_TOKENS, workspace: None, scoring: None, mtp_pass: MtpPass::Skip, head_pass: MtpPass::Skip, mtp_loss: (0.0, 0.0) })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn ops(&self) -> &O {
        &self.ops
    }

    /// Parameter tensors in canonical order (same order as [`Model::params`]).
    pub fn param_specs(&self) -> &[ParamSpec] {
        &self.specs
    }

    /// Parameter buffers in canonical order.
    pub fn params(&self) -> &[O::Buf] {
        &self.params
    }

    /// Mutable parameter buffers (an optimizer working on the backend writes here).
    pub fn params_mut(&mut self) -> &mut [O::Buf] {
        &mut self.params
    }

    /// Gradient buffers in canonical order.
    pub fn grads(&self) -> &[O::Buf] {
        &self.grads
    }

    /// Mutable gradient buffers (for clipping or cross-rank reduction in place).
    pub fn grads_mut(&mut self) -> &mut [O::Buf] {
        &mut self.grads
    }

    /// Parameters (mutable) and gradients together, for an optimizer updating in place:
    /// `adamw.step(params, grads, lr)`.
    pub fn params_and_grads_mut(&mut self) -> (&mut [O::Buf], &mut [O::Buf]) {
        (&mut self.params, &mut self.grads)
    }

    /// Canonical index of the tensor called `name`.
    pub fn param_index(&self, name: &str) -> Result<usize, ModelError> {
        self.specs
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| ModelError::UnknownParam(name.to_string()))
    }

    fn checked_index(&self, name: &str, len: usize) -> Result<usize, ModelError> {
        let index = self.param_index(name)?;
        let expected = self.specs[index].numel();
        if len != expected {
            return Err(ModelError::SizeMismatch { name: name.to_string(), expected, got: len });
        }
        Ok(index)
    }

    /// Copies parameter `name` into `out` (f32, `numel` elements).
    pub fn read_param(&self, name: &str, out: &mut [f32]) -> Result<(), ModelError> {
        let index = self.checked_index(name, out.len())?;
        self.ops.read(&self.params[index], out);
        Ok(())
    }

    /// Overwrites parameter `name` from `values` (f32, `numel` elements).
    pub fn write_param(&mut self, name: &str, values: &[f32]) -> Result<(), ModelError> {
        let index = self.checked_index(name, values.len())?;
        self.ops.write(&mut self.params[index], values);
        Ok(())
    }

    /// Copies the accumulated gradient of `name` into `out`.
    pub fn read_grad(&self, name: &str, out: &mut [f32]) -> Result<(), ModelError> {
        let index = self.checked_index(name, out.len())?;
        if self.grads.is_empty() {
            return Err(ModelError::NoGradients);
        }
        self.ops.read(&self.grads[index], out);
        Ok(())
    }

    /// Sets every gradient accumulator to zero (start of an optimizer step).
    pub fn zero_grads(&mut self) {
        for g in &mut self.grads {
            self.ops.fill(g, 0.0);
        }
    }

    /// z-loss coefficient added to the training loss (`z * logsumexp^2` per token; KORMo's code
    /// has 1e-5 available but off by default, so the default is 0).
    pub fn set_z_loss(&mut self, coefficient: f32) {
        self.z_loss = coefficient;
    }

    /// Cross-lingual document attention (XLDA, `[attention] mask = "xlda"`), off by default:
    /// the batches' doc ids carry their document's language in bit 31
    /// ([`crate::DOC_LANGUAGE_BIT`]) and a token also sees the earlier documents of its row in
    /// the other language.
    pub fn set_cross_lingual_attention(&mut self, on: bool) {
        self.cross_lingual_attention = on;
    }

    /// Activation checkpointing (off by default): when on, the forward keeps only each layer's
    /// input (the residual stream) and one shared set of layer activations, and the backward
    /// recomputes a layer's forward activations just before that layer's backward. The
    /// recomputation runs the same ops on the same inputs, so on a deterministic backend loss
    /// and gradients are bitwise identical to a run without checkpointing; the memory saved is
    /// given by [`ActivationMemory`].
    ///
    /// With [`UnitHooks`], the recomputation of `Layer(l)` happens inside that unit's backward
    /// window — after `before_backward(Layer(l))` has made its parameters available and before
    /// `after_backward(Layer(l))` — so FSDP's gather/release schedule is unchanged. It reads
    /// only the layer's own parameters, which must equal those of the forward (a re-gather of
    /// the same shards does).
    ///
    /// Changing the setting drops the workspace; the next pass allocates one in the new layout.
    pub fn set_activation_checkpointing(&mut self, on: bool) {
        if on != self.activation_checkpointing {
            self.activation_checkpointing = on;
            self.workspace = None;
        }
    }

    /// Tokens per chunk of the LM head and its cross-entropy (default
    /// [`DEFAULT_HEAD_CHUNK_TOKENS`], at least 1): a micro-batch of more tokens runs the head
    /// chunk by chunk ([`crate::head`]), so the logits take `chunk * vocab` floats instead of
    /// `tokens * vocab`; with fewer the head is unchunked, as it always was. Chunking changes the
    /// summation order of the loss and of the head weight's gradient (equal within rounding).
    /// Changing the setting drops the workspace.
    pub fn set_head_chunk_tokens(&mut self, tokens: usize) {
        let tokens = tokens.max(1);
        if tokens != self.head_chunk_tokens {
            self.head_chunk_tokens = tokens;
            self.workspace = None;
        }
    }

    /// See [`Model::set_head_chunk_tokens`].
    pub fn head_chunk_tokens(&self) -> usize {
        self.head_chunk_tokens
    }

    /// Whether activation checkpointing is on (see [`Model::set_activation_checkpointing`]).
    pub fn activation_checkpointing(&self) -> bool {
        self.activation_checkpointing
    }

    /// The workspace this model allocates for micro-batches of `batch_tokens` tokens
    /// (`batch_size * seq_len`) with its current checkpointing setting.
    pub fn activation_memory(&self, batch_tokens: usize) -> ActivationMemory {
        ActivationMemory::with_head_chunk(&self.config, batch_tokens, self.activation_checkpointing, self.head_chunk_tokens)
    }

    /// Parameters, gradients and workspace in bytes for micro-batches of `batch_tokens` tokens,
    /// with the backend's floats taking `float_bytes` bytes (see [`MemoryPlan`]).
    pub fn memory_plan(&self, batch_tokens: usize, float_bytes: u64) -> MemoryPlan {
        let activations = self.activation_memory(batch_tokens).bytes(float_bytes);
        MemoryPlan { activations, ..MemoryPlan::new(&self.config, batch_tokens, self.activation_checkpointing, float_bytes) }
    }

    /// Forward and backward pass; adds `grad_scale * d(sum_t w_t loss_t)/dθ` to the gradients
    /// (see the module docs for how to choose `grad_scale`) and returns the weighted loss sum
    /// (including the z-loss term when enabled).
    pub fn forward_backward(&mut self, batch: &Batch, grad_scale: f32) -> Result<LossSum, ModelError> {
        self.forward_backward_with_hooks(batch, grad_scale, &mut NoHooks)
    }

    /// [`Model::forward_backward`] with `hooks` called around every unit's forward and
    /// backward (see [`UnitHooks`] for the order).
    pub fn forward_backward_with_hooks(
        &mut self,
        batch: &Batch,
        grad_scale: f32,
        hooks: &mut dyn UnitHooks<O>,
    ) -> Result<LossSum, ModelError> {
        if self.grads.is_empty() {
            return Err(ModelError::NoGradients);
        }
        self.prepare(batch)?;
        self.set_mtp_pass(MtpPass::Train(grad_scale));
        self.run_forward(hooks);
        let mut loss = self.run_loss(grad_scale);
        self.run_backward(hooks);
        let ws = self.workspace.as_ref().expect("prepared");
        if ws.head.is_some() {
            // The chunked head computes its loss in the Head unit's backward.
            loss.weighted_loss = ws.head_loss;
        }
        Ok(self.with_mtp_loss(loss))
    }

    /// Loss without touching gradients (evaluation).
    pub fn evaluate(&mut self, batch: &Batch) -> Result<LossSum, ModelError> {
        self.evaluate_with_hooks(batch, &mut NoHooks)
    }

    /// [`Model::evaluate`] with forward hooks.
    pub fn evaluate_with_hooks(&mut self, batch: &Batch, hooks: &mut dyn UnitHooks<O>) -> Result<LossSum, ModelError> {
        self.prepare(batch)?;
        self.set_mtp_pass(MtpPass::Evaluate);
        self.run_forward(hooks);
        let loss = self.run_loss(0.0);
        Ok(self.with_mtp_loss(loss))
    }

    /// Logits `[batch_size * seq_len, vocab]` (row-major, f32) for `batch`; targets and loss
    /// weights are not used.
    pub fn forward(&mut self, batch: &Batch) -> Result<Vec<f32>, ModelError> {
        self.forward_with_hooks(batch, &mut NoHooks)
    }

    /// [`Model::forward`] with forward hooks.
    pub fn forward_with_hooks(&mut self, batch: &Batch, hooks: &mut dyn UnitHooks<O>) -> Result<Vec<f32>, ModelError> {
        self.prepare(batch)?;
        self.set_mtp_pass(MtpPass::Skip);
        self.run_forward(hooks);
        let ws = self.workspace.as_mut().expect("prepared");
        if ws.head.is_some() {
            return Ok(std::mem::take(&mut ws.head_logits));
        }
        let mut logits = vec![0.0; batch.num_tokens() * self.config.vocab];
        self.ops.read(&ws.logits, &mut logits);
        Ok(logits)
    }

    /// Log-softmax values of the logits the forward pass gives `batch`: for each `(t, id)` of
    /// `queries`, `log softmax(logits[t])[id]` where `t` indexes the batch's tokens
    /// (`b * seq_len + s`) — the log-probability of `id` following the tokens its row's
    /// document shows token `t`. Targets and loss weights of the batch are not used.
    ///
    /// Only the queried rows reach the LM head: their final-norm outputs are gathered on the
    /// backend (`embedding_fwd` with the `[tokens, hidden]` norm output as the table), projected
    /// to `[queries, vocab]` logits, and `cross_entropy` with the queried ids as targets gives
    /// `lse - z[id]`; only those `queries` floats come back to the host. The head thus costs
    /// `queries x hidden x vocab` instead of `tokens x hidden x vocab`, and a workspace made here
    /// holds no `[tokens, vocab]` logits. The values are the backend's float precision
    /// (f32 on the CPU reference, bf16 logits on CUDA), widened to f64.
    pub fn log_probs(&mut self, batch: &Batch, queries: &[(usize, u32)]) -> Result<Vec<f64>, ModelError> {
        let (n, vocab) = (batch.num_tokens(), self.config.vocab);
        if let Some(&(t, id)) = queries.iter().find(|&&(t, id)| t >= n || id as usize >= vocab) {
            return Err(ModelError::Batch(format!("log-prob query (token {t}, id {id}) is outside {n} tokens or vocab {vocab}")));
        }
        self.prepare_with(batch, false)?;
        for unit in params::units(&self.config) {
            match unit {
                Unit::Embedding => self.forward_embedding(),
                Unit::Layer(l) => self.forward_layer(l),
                Unit::Head => self.forward_final_norm(),
            }
        }
        Ok(self.head_log_probs(queries))
    }

    /// The head of [`Model::log_probs`] on the final-norm output left in the workspace.
    fn head_log_probs(&mut self, queries: &[(usize, u32)]) -> Vec<f64> {
        let (h, vocab) = (self.config.hidden, self.config.vocab);
        // Power-of-two capacity so that varying query counts reuse the buffers.
        let rows = queries.len().max(1).next_power_of_two();
        if self.scoring.as_ref().is_none_or(|s| s.rows != rows) {
            self.scoring = None;
            let ops = &self.ops;
            self.scoring = Some(ScoringWorkspace {
                rows,
                positions: ops.upload_idx(&vec![0; rows]),
                ids: ops.upload_idx(&vec![0; rows]),
                weights: ops.zeros(rows),
                hidden: ops.zeros(rows * h),
                logits: ops.zeros(rows * vocab),
                losses: ops.zeros(rows),
            });
        }
        let (ops, ws) = (&self.ops, self.workspace.as_ref().expect("prepared"));
        let s = self.scoring.as_mut().expect("just set");
        let (mut positions, mut ids, mut weights) = (vec![0u32; rows], vec![0u32; rows], vec![0f32; rows]);
        for (i, &(t, id)) in queries.iter().enumerate() {
            (positions[i], ids[i], weights[i]) = (t as u32, id, 1.0);
        }
        ops.write_idx(&mut s.positions, &positions);
        ops.write_idx(&mut s.ids, &ids);
        ops.write(&mut s.weights, &weights);
        let tokens = ws.batch_size * ws.seq_len;
        ops.embedding_fwd(&ws.normed_final, &s.positions, &mut s.hidden, EmbeddingShape { tokens: rows, vocab: tokens, dim: h });
        let head = &self.params[params::head_index(&self.config)];
        ops.matmul(&s.hidden, head, &mut s.logits, MatmulShape::linear_fwd(rows, h, vocab));
        ops.cross_entropy(&mut s.logits, &s.ids, &s.weights, &mut s.losses, CrossEntropyShape { tokens: rows, vocab }, 0.0, 0.0);
        let mut losses = vec![0.0; rows];
        ops.read(&s.losses, &mut losses);
        losses[..queries.len()].iter().map(|&l| -(l as f64)).collect()
    }

    /// Sets what the MTP heads do in the next pass (always `Skip` without MTP).
    fn set_mtp_pass(&mut self, pass: MtpPass) {
        self.mtp_pass = if self.config.mtp_depth > 0 { pass } else { MtpPass::Skip };
        self.head_pass = pass;
        self.mtp_loss = (0.0, 0.0);
    }

    /// `loss` with the MTP heads' loss sums of the pass just run (zeros without MTP).
    fn with_mtp_loss(&self, loss: LossSum) -> LossSum {
        let (mtp_weighted_loss, mtp_weight) = self.mtp_loss;
        LossSum { mtp_weighted_loss, mtp_weight, ..loss }
    }

    /// The MTP heads on the last layer's output; with `backward` their backward adds into the
    /// gradients and `d_resid` (see [`crate::mtp`]).
    fn run_mtp_heads(&mut self, grad_scale: f32, backward: bool) {
        let ws = self.workspace.as_mut().expect("prepared");
        let mws = ws.mtp.as_mut().expect("an MTP model's training workspace has MTP buffers");
        let grads = backward.then_some(MtpBackward { grads: &mut self.grads, d_normed: &mut ws.d_normed, d_resid: &mut ws.d_resid });
        let h = &ws.residual[self.config.layers];
        let scratch = match ws.head.as_mut() {
            Some((chunks, _)) => HeadScratch::Chunked(chunks),
            None => HeadScratch::Whole(&mut ws.logits),
        };
        self.mtp_loss = mtp::run_heads(&self.ops, &self.config, &self.params, mws, h, scratch, self.z_loss, grad_scale, grads);
    }

    /// Validates the batch, (re)allocates the workspace for its shape, and uploads its inputs.
    fn prepare(&mut self, batch: &Batch) -> Result<(), ModelError> {
        self.prepare_with(batch, true)
    }

    /// [`Model::prepare`]; `logits`: whether the pass needs the `[tokens, vocab]` logits (a
    /// workspace that has them serves either kind of pass).
    fn prepare_with(&mut self, batch: &Batch, logits: bool) -> Result<(), ModelError> {
        batch.validate(self.config.vocab)?;
        let reuse = matches!(&self.workspace, Some(ws) if ws.batch_size == batch.batch_size && ws.seq_len == batch.seq_len && (ws.has_logits || !logits));
        if !reuse {
            // Drop the old workspace first so two never coexist in device memory.
            self.workspace = None;
            let ws = Workspace::new(&self.ops, &self.config, batch.batch_size, batch.seq_len, self.activation_checkpointing, logits, self.head_chunk_tokens);
            self.workspace = Some(ws);
        }
        let ws = self.workspace.as_mut().expect("just set");
        ws.held_layer = None;
        ws.cross_lingual = self.cross_lingual_attention;
        self.ops.write_idx(&mut ws.tokens, &batch.tokens);
        // Ignored targets may hold any value; clamp them so a backend never sees wild ids.
        let targets: Vec<u32> = batch
            .targets
            .iter()
            .zip(&batch.loss_weights)
            .map(|(&t, &w)| if w > 0.0 { t } else { 0 })
            .collect();
        self.ops.write_idx(&mut ws.targets, &targets);
        self.ops.write_idx(&mut ws.doc_ids, &batch.doc_ids);
        self.ops.write_idx(&mut ws.positions, &batch.positions);
        self.ops.write(&mut ws.loss_weights, &batch.loss_weights);
        if let Some((_, chunk_targets)) = ws.head.as_mut() {
            chunk_targets.write(&self.ops, &targets, &batch.loss_weights);
        }
        if let Some(mws) = ws.mtp.as_mut() {
            mws.upload(&self.ops, batch);
        }
        Ok(())
    }

    fn run_forward(&mut self, hooks: &mut dyn UnitHooks<O>) {
        for unit in params::units(&self.config) {
            hooks.before_forward(&self.ops, unit, &mut self.params);
            match unit {
                Unit::Embedding => self.forward_embedding(),
                Unit::Layer(l) => self.forward_layer(l),
                Unit::Head => self.forward_head(),
            }
            hooks.after_forward(&self.ops, unit, &mut self.params);
        }
    }

    fn forward_embedding(&mut self) {
        let ws = self.workspace.as_mut().expect("prepared");
        let shape = EmbeddingShape { tokens: ws.batch_size * ws.seq_len, vocab: self.config.vocab, dim: self.config.hidden };
        self.ops.embedding_fwd(&self.params[params::EMBED_INDEX], &ws.tokens, &mut ws.residual[0], shape);
    }

    fn forward_layer(&mut self, l: usize) {
        let ws = self.workspace.as_mut().expect("prepared");
        let set = ws.activation_set(l);
        let (inputs, outputs) = ws.residual.split_at_mut(l + 1);
        let run = LayerRun {
            ops: &self.ops,
            cfg: &self.config,
            params: &self.params,
            batch_size: ws.batch_size,
            seq_len: ws.seq_len,
            positions: &ws.positions,
            doc_ids: &ws.doc_ids,
            cross_lingual: ws.cross_lingual,
        };
        layer_forward(&run, l, &inputs[l], &mut ws.layers[set], Some(&mut outputs[0]));
        ws.held_layer = Some(l);
    }

    fn forward_final_norm(&mut self) {
        let cfg = &self.config;
        let ws = self.workspace.as_mut().expect("prepared");
        let rows = RowsShape { rows: ws.batch_size * ws.seq_len, dim: cfg.hidden };
        let final_norm = &self.params[params::final_norm_index(cfg)];
        self.ops.rmsnorm_fwd(&ws.residual[self.config.layers], final_norm, &mut ws.normed_final, &mut ws.inv_rms_final, rows, cfg.rms_eps);
    }

    fn forward_head(&mut self) {
        if self.mtp_pass == MtpPass::Evaluate {
            // Before the next-token head: the MTP heads use the logits buffer as scratch.
            self.run_mtp_heads(0.0, false);
        }
        self.forward_final_norm();
        let cfg = &self.config;
        let ws = self.workspace.as_mut().expect("prepared");
        let t = ws.batch_size * ws.seq_len;
        let head = &self.params[params::head_index(cfg)];
        let Some((chunks, chunk_targets)) = ws.head.as_mut() else {
            self.ops.matmul(&ws.normed_final, head, &mut ws.logits, MatmulShape::linear_fwd(t, cfg.hidden, cfg.vocab));
            return;
        };
        // Chunked: training runs the head in its backward (the parameters are there then too);
        // evaluation takes the loss here, `forward` the logits, chunk by chunk.
        match self.head_pass {
            MtpPass::Train(_) => {}
            MtpPass::Evaluate => ws.head_loss = head::chunked_head(&self.ops, cfg, head, &ws.normed_final, chunks, chunk_targets, self.z_loss, None),
            MtpPass::Skip => ws.head_logits = chunks.read_logits(&self.ops, cfg, head, &ws.normed_final),
        }
    }

    /// Cross-entropy on the logits (which become their gradient) and the host-side loss sum.
    fn run_loss(&mut self, grad_scale: f32) -> LossSum {
        let ws = self.workspace.as_mut().expect("prepared");
        let t = ws.batch_size * ws.seq_len;
        if ws.head.is_some() {
            // The chunked head's loss: taken in the forward (evaluation) or the backward.
            return LossSum { weighted_loss: ws.head_loss, weight: self.ops.sum(&ws.loss_weights), ..LossSum::default() };
        }
        self.ops.cross_entropy(
            &mut ws.logits,
            &ws.targets,
            &ws.loss_weights,
            &mut ws.losses,
            CrossEntropyShape { tokens: t, vocab: self.config.vocab },
            self.z_loss,
            grad_scale,
        );
        LossSum { weighted_loss: self.ops.sum(&ws.losses), weight: self.ops.sum(&ws.loss_weights), ..LossSum::default() }
    }

    /// Backward from the logit gradient left in the workspace by `run_loss`, unit by unit in
    /// reverse order; `d_resid` carries the residual-stream gradient between units.
    fn run_backward(&mut self, hooks: &mut dyn UnitHooks<O>) {
        for unit in params::units(&self.config).into_iter().rev() {
            hooks.before_backward(&self.ops, unit, &mut self.params);
            match unit {
                Unit::Head => self.backward_head(),
                Unit::Layer(l) => self.backward_layer(l),
                Unit::Embedding => self.backward_embedding(),
            }
            hooks.after_backward(&self.ops, unit, &mut self.params, &mut self.grads);
        }
    }

    /// LM head and final norm; leaves d(x_out) in `d_resid`.
    fn backward_head(&mut self) {
        let cfg = &self.config;
        let (ops, p, g) = (&self.ops, &self.params, &mut self.grads);
        let ws = self.workspace.as_mut().expect("prepared");
        let t = ws.batch_size * ws.seq_len;
        let h = cfg.hidden;
        let head = params::head_index(cfg);
        let final_norm = params::final_norm_index(cfg);
        if let Some((chunks, chunk_targets)) = ws.head.as_mut() {
            let MtpPass::Train(grad_scale) = self.head_pass else { unreachable!("the head's backward runs in training") };
            let b = HeadBackward { grad_scale, dw: &mut g[head], dx: &mut ws.d_normed };
            ws.head_loss = head::chunked_head(ops, cfg, &p[head], &ws.normed_final, chunks, chunk_targets, self.z_loss, Some(b));
        } else {
            ops.matmul(&ws.logits, &p[head], &mut ws.d_normed, MatmulShape::linear_bwd_input(t, h, cfg.vocab, false));
            ops.matmul(&ws.logits, &ws.normed_final, &mut g[head], MatmulShape::linear_bwd_weight(t, h, cfg.vocab));
        }
        ops.fill(&mut ws.d_resid, 0.0);
        let rows = RowsShape { rows: t, dim: h };
        ops.rmsnorm_bwd(&ws.residual[cfg.layers], &p[final_norm], &ws.inv_rms_final, &ws.d_normed, &mut ws.d_resid, &mut g[final_norm], rows);
        if let MtpPass::Train(grad_scale) = self.mtp_pass {
            // The next-token head is done with the logits; the MTP heads add into d_resid.
            self.run_mtp_heads(grad_scale, true);
        }
    }

    /// One decoder layer; `d_resid` goes from d(layer output) to d(layer input). Under
    /// activation checkpointing the layer's activations are first recomputed from its input.
    fn backward_layer(&mut self, l: usize) {
        let cfg = &self.config;
        let (ops, p, g) = (&self.ops, &self.params, &mut self.grads);
        let ws = self.workspace.as_mut().expect("prepared");
        let set = ws.activation_set(l);
        if ws.checkpointing && ws.held_layer != Some(l) {
            let run = LayerRun {
                ops,
                cfg,
                params: p,
                batch_size: ws.batch_size,
                seq_len: ws.seq_len,
                positions: &ws.positions,
                doc_ids: &ws.doc_ids,
                cross_lingual: ws.cross_lingual,
            };
            if cfg.is_post_ln_layer(l) {
                // A post-LN layer's backward needs the FFN's pre-norm sum and inverse RMS, which
                // only the whole forward gives; it rewrites the kept output with the same values
                // (the next layer's backward, the only reader, is done).
                let (inputs, outputs) = ws.residual.split_at_mut(l + 1);
                layer_forward(&run, l, &inputs[l], &mut ws.layers[set], Some(&mut outputs[0]));
            } else {
                // The layer output (next layer's input) is kept already; backward never reads it.
                layer_forward(&run, l, &ws.residual[l], &mut ws.layers[set], None);
            }
            ws.held_layer = Some(l);
        }
        if cfg.is_post_ln_layer(l) {
            post_ln_layer_backward(ops, cfg, p, g, ws, l);
            return;
        }
        let t = ws.batch_size * ws.seq_len;
        let (h, q_dim, kv_dim, f) = (cfg.hidden, cfg.q_dim(), cfg.kv_dim(), cfg.ffn);
        let rows = RowsShape { rows: t, dim: h };
        let attn = attention_shape(cfg, ws.batch_size, ws.seq_len, ws.cross_lingual);
        let idx = |slot| params::layer_index(l, slot);
        let (x_in, a) = (&ws.residual[l], &ws.layers[set]);
        // MLP: d_resid is d(layer output) = d(x_mid) through the skip path.
        ops.matmul(&ws.d_resid, &p[idx(LayerSlot::Down)], &mut ws.d_ffn, MatmulShape::linear_bwd_input(t, f, h, false));
        ops.matmul(&ws.d_resid, &a.swiglu, &mut g[idx(LayerSlot::Down)], MatmulShape::linear_bwd_weight(t, f, h));
        ops.swiglu_bwd(&a.gate, &a.up, &ws.d_ffn, &mut ws.d_gate, &mut ws.d_up, t * f);
        ops.matmul(&ws.d_gate, &p[idx(LayerSlot::Gate)], &mut ws.d_normed, MatmulShape::linear_bwd_input(t, h, f, false));
        ops.matmul(&ws.d_up, &p[idx(LayerSlot::Up)], &mut ws.d_normed, MatmulShape::linear_bwd_input(t, h, f, true));
        ops.matmul(&ws.d_gate, &a.normed_mlp, &mut g[idx(LayerSlot::Gate)], MatmulShape::linear_bwd_weight(t, h, f));
        ops.matmul(&ws.d_up, &a.normed_mlp, &mut g[idx(LayerSlot::Up)], MatmulShape::linear_bwd_weight(t, h, f));
        ops.rmsnorm_bwd(&a.x_mid, &p[idx(LayerSlot::MlpNorm)], &a.inv_rms_mlp, &ws.d_normed, &mut ws.d_resid, &mut g[idx(LayerSlot::MlpNorm)], rows);

        // Attention: d_resid is now d(x_mid) = d(x_in) through the skip path.
        ops.matmul(&ws.d_resid, &p[idx(LayerSlot::O)], &mut ws.d_attn, MatmulShape::linear_bwd_input(t, q_dim, h, false));
        ops.matmul(&ws.d_resid, &a.attn_out, &mut g[idx(LayerSlot::O)], MatmulShape::linear_bwd_weight(t, q_dim, h));
        ops.attention_bwd(&a.q, &a.k, &a.v, &ws.doc_ids, &a.attn_out, &a.lse, &ws.d_attn, &mut ws.d_q, &mut ws.d_k, &mut ws.d_v, attn);
        ops.rope_bwd(&mut ws.d_q, &ws.positions, rope_shape(t, cfg.heads, cfg), cfg.rope_theta);
        ops.rope_bwd(&mut ws.d_k, &ws.positions, rope_shape(t, cfg.kv_heads, cfg), cfg.rope_theta);
        ops.matmul(&ws.d_q, &p[idx(LayerSlot::Q)], &mut ws.d_normed, MatmulShape::linear_bwd_input(t, h, q_dim, false));
        ops.matmul(&ws.d_k, &p[idx(LayerSlot::K)], &mut ws.d_normed, MatmulShape::linear_bwd_input(t, h, kv_dim, true));
        ops.matmul(&ws.d_v, &p[idx(LayerSlot::V)], &mut ws.d_normed, MatmulShape::linear_bwd_input(t, h, kv_dim, true));
        ops.matmul(&ws.d_q, &a.normed_attn, &mut g[idx(LayerSlot::Q)], MatmulShape::linear_bwd_weight(t, h, q_dim));
        ops.matmul(&ws.d_k, &a.normed_attn, &mut g[idx(LayerSlot::K)], MatmulShape::linear_bwd_weight(t, h, kv_dim));
        ops.matmul(&ws.d_v, &a.normed_attn, &mut g[idx(LayerSlot::V)], MatmulShape::linear_bwd_weight(t, h, kv_dim));
        ops.rmsnorm_bwd(x_in, &p[idx(LayerSlot::AttnNorm)], &a.inv_rms_attn, &ws.d_normed, &mut ws.d_resid, &mut g[idx(LayerSlot::AttnNorm)], rows);
    }

    fn backward_embedding(&mut self) {
        let ws = self.workspace.as_mut().expect("prepared");
        let shape = EmbeddingShape { tokens: ws.batch_size * ws.seq_len, vocab: self.config.vocab, dim: self.config.hidden };
        self.ops.embedding_bwd(&ws.d_resid, &ws.tokens, &mut self.grads[params::EMBED_INDEX], shape);
    }
}

/// Backward of post-LN layer `l` (Mix-LN), from the activations its forward left in the
/// workspace; `d_resid` goes from d(layer output) to d(layer input) as for a pre-LN layer.
/// `d_normed` holds the gradient of each pre-norm sum (RMSNorm backward adds into it), which
/// then flows both into the skip path (copied into `d_resid`) and into the sublayer.
fn post_ln_layer_backward<O: Ops>(ops: &O, cfg: &ModelConfig, p: &[O::Buf], g: &mut [O::Buf], ws: &mut Workspace<O>, l: usize) {
    let set = ws.activation_set(l);
    let t = ws.batch_size * ws.seq_len;
    let (h, q_dim, kv_dim, f) = (cfg.hidden, cfg.q_dim(), cfg.kv_dim(), cfg.ffn);
    let rows = RowsShape { rows: t, dim: h };
    let attn = attention_shape(cfg, ws.batch_size, ws.seq_len, ws.cross_lingual);
    let idx = |slot| params::layer_index(l, slot);
    let (x_in, a) = (&ws.residual[l], &ws.layers[set]);
    // FFN: output = Norm_f(s'), s' = α x_mid + ffn(x_mid); d_normed = d(s').
    let alpha = cfg.residual_scale();
    let norm = idx(LayerSlot::MlpNorm);
    post_norm_bwd(ops, (&a.normed_mlp, &p[norm], &a.inv_rms_mlp), &mut g[norm], (&mut ws.d_resid, &mut ws.d_normed), rows, alpha);
    ops.matmul(&ws.d_normed, &p[idx(LayerSlot::Down)], &mut ws.d_ffn, MatmulShape::linear_bwd_input(t, f, h, false));
    ops.matmul(&ws.d_normed, &a.swiglu, &mut g[idx(LayerSlot::Down)], MatmulShape::linear_bwd_weight(t, f, h));
    ops.swiglu_bwd(&a.gate, &a.up, &ws.d_ffn, &mut ws.d_gate, &mut ws.d_up, t * f);
    ops.matmul(&ws.d_gate, &p[idx(LayerSlot::Gate)], &mut ws.d_resid, MatmulShape::linear_bwd_input(t, h, f, true));
    ops.matmul(&ws.d_up, &p[idx(LayerSlot::Up)], &mut ws.d_resid, MatmulShape::linear_bwd_input(t, h, f, true));
    ops.matmul(&ws.d_gate, &a.x_mid, &mut g[idx(LayerSlot::Gate)], MatmulShape::linear_bwd_weight(t, h, f));
    ops.matmul(&ws.d_up, &a.x_mid, &mut g[idx(LayerSlot::Up)], MatmulShape::linear_bwd_weight(t, h, f));

    // Attention: d_resid is d(x_mid), x_mid = Norm_a(s), s = α x_in + attn(x_in); d_normed = d(s).
    let norm = idx(LayerSlot::AttnNorm);
    post_norm_bwd(ops, (&a.normed_attn, &p[norm], &a.inv_rms_attn), &mut g[norm], (&mut ws.d_resid, &mut ws.d_normed), rows, alpha);
    ops.matmul(&ws.d_normed, &p[idx(LayerSlot::O)], &mut ws.d_attn, MatmulShape::linear_bwd_input(t, q_dim, h, false));
    ops.matmul(&ws.d_normed, &a.attn_out, &mut g[idx(LayerSlot::O)], MatmulShape::linear_bwd_weight(t, q_dim, h));
    ops.attention_bwd(&a.q, &a.k, &a.v, &ws.doc_ids, &a.attn_out, &a.lse, &ws.d_attn, &mut ws.d_q, &mut ws.d_k, &mut ws.d_v, attn);
    ops.rope_bwd(&mut ws.d_q, &ws.positions, rope_shape(t, cfg.heads, cfg), cfg.rope_theta);
    ops.rope_bwd(&mut ws.d_k, &ws.positions, rope_shape(t, cfg.kv_heads, cfg), cfg.rope_theta);
    ops.matmul(&ws.d_q, &p[idx(LayerSlot::Q)], &mut ws.d_resid, MatmulShape::linear_bwd_input(t, h, q_dim, true));
    ops.matmul(&ws.d_k, &p[idx(LayerSlot::K)], &mut ws.d_resid, MatmulShape::linear_bwd_input(t, h, kv_dim, true));
    ops.matmul(&ws.d_v, &p[idx(LayerSlot::V)], &mut ws.d_resid, MatmulShape::linear_bwd_input(t, h, kv_dim, true));
    ops.matmul(&ws.d_q, x_in, &mut g[idx(LayerSlot::Q)], MatmulShape::linear_bwd_weight(t, h, q_dim));
    ops.matmul(&ws.d_k, x_in, &mut g[idx(LayerSlot::K)], MatmulShape::linear_bwd_weight(t, h, kv_dim));
    ops.matmul(&ws.d_v, x_in, &mut g[idx(LayerSlot::V)], MatmulShape::linear_bwd_weight(t, h, kv_dim));
}

/// The backward of a post-LN sublayer's `y = Norm(s)`, `s = α x + f(x)`: from `d(y)` in
/// `d.0` (`d_resid`), `d(s)` into `d.1` (`d_normed`, where `f`'s backward starts) and
/// `α d(s)` into `d.0`, the residual's share of `d(x)` that `f`'s input gradients then add to.
/// `norm` is the norm's saved input `s`, its weight and inverse RMS.
fn post_norm_bwd<O: Ops>(ops: &O, norm: (&O::Buf, &O::Buf, &O::Buf), dweight: &mut O::Buf, d: (&mut O::Buf, &mut O::Buf), rows: RowsShape, alpha: f32) {
    let (s, weight, inv_rms) = norm;
    let (d_resid, d_normed) = d;
    ops.fill(d_normed, 0.0);
    ops.rmsnorm_bwd(s, weight, inv_rms, d_resid, d_normed, dweight, rows);
    ops.copy(d_normed, d_resid);
    if alpha != 1.0 {
        ops.scale(d_resid, alpha);
    }
}

/// Everything a layer's forward reads besides its input and its activation set.
struct LayerRun<'a, O: Ops> {
    ops: &'a O,
    cfg: &'a ModelConfig,
    params: &'a [O::Buf],
    batch_size: usize,
    seq_len: usize,
    positions: &'a O::IdxBuf,
    doc_ids: &'a O::IdxBuf,
    cross_lingual: bool,
}

/// Layer `l`'s forward from `x_in` into the activation set `a`, and, when `x_next` is given,
/// the layer output `x_mid + mlp` (post-LN: `Norm_f(x_mid + mlp)`) into it. Used by the forward
/// and by the checkpointed backward's recomputation (without `x_next` for a pre-LN layer; a
/// post-LN layer always needs it), so both run exactly the same ops.
fn layer_forward<O: Ops>(
    run: &LayerRun<'_, O>,
    l: usize,
    x_in: &O::Buf,
    a: &mut LayerActivations<O::Buf>,
    x_next: Option<&mut O::Buf>,
) {
    let (ops, cfg) = (run.ops, run.cfg);
    let t = run.batch_size * run.seq_len;
    let (h, q_dim, kv_dim, f) = (cfg.hidden, cfg.q_dim(), cfg.kv_dim(), cfg.ffn);
    let rows = RowsShape { rows: t, dim: h };
    let attn = attention_shape(cfg, run.batch_size, run.seq_len, run.cross_lingual);
    let accumulate = |mut s: MatmulShape| {
        s.accumulate = true;
        s
    };
    let w = |slot| &run.params[params::layer_index(l, slot)];
    // Attention reads the layer input itself in a post-LN layer, its norm in a pre-LN one.
    let post_ln = cfg.is_post_ln_layer(l);
    if !post_ln {
        ops.rmsnorm_fwd(x_in, w(LayerSlot::AttnNorm), &mut a.normed_attn, &mut a.inv_rms_attn, rows, cfg.rms_eps);
    }
    let attn_in = if post_ln { x_in } else { &a.normed_attn };
    ops.matmul(attn_in, w(LayerSlot::Q), &mut a.q, MatmulShape::linear_fwd(t, h, q_dim));
    ops.matmul(attn_in, w(LayerSlot::K), &mut a.k, MatmulShape::linear_fwd(t, h, kv_dim));
    ops.matmul(attn_in, w(LayerSlot::V), &mut a.v, MatmulShape::linear_fwd(t, h, kv_dim));
    ops.rope_fwd(&mut a.q, run.positions, rope_shape(t, cfg.heads, cfg), cfg.rope_theta);
    ops.rope_fwd(&mut a.k, run.positions, rope_shape(t, cfg.kv_heads, cfg), cfg.rope_theta);
    ops.attention_fwd(&a.q, &a.k, &a.v, run.doc_ids, &mut a.attn_out, &mut a.lse, attn);
    if post_ln {
        // Post-LN (Mix-LN's first layers, every DeepNorm layer): s = α x + Attn(x),
        // x_mid = Norm_a(s); s' = α x_mid + FFN(x_mid), x_next = Norm_f(s'). `normed_attn` holds
        // s, `normed_mlp` s'; α = cfg.residual_scale() (1 but for DeepNorm).
        let x_next = x_next.expect("a post-LN layer's forward always writes its output");
        let alpha = cfg.residual_scale();
        ops.copy(x_in, &mut a.normed_attn);
        if alpha != 1.0 {
            ops.scale(&mut a.normed_attn, alpha);
        }
        ops.matmul(&a.attn_out, w(LayerSlot::O), &mut a.normed_attn, accumulate(MatmulShape::linear_fwd(t, q_dim, h)));
        ops.rmsnorm_fwd(&a.normed_attn, w(LayerSlot::AttnNorm), &mut a.x_mid, &mut a.inv_rms_attn, rows, cfg.rms_eps);
        ops.matmul(&a.x_mid, w(LayerSlot::Gate), &mut a.gate, MatmulShape::linear_fwd(t, h, f));
        ops.matmul(&a.x_mid, w(LayerSlot::Up), &mut a.up, MatmulShape::linear_fwd(t, h, f));
        ops.swiglu_fwd(&a.gate, &a.up, &mut a.swiglu, t * f);
        ops.copy(&a.x_mid, &mut a.normed_mlp);
        if alpha != 1.0 {
            ops.scale(&mut a.normed_mlp, alpha);
        }
        ops.matmul(&a.swiglu, w(LayerSlot::Down), &mut a.normed_mlp, accumulate(MatmulShape::linear_fwd(t, f, h)));
        ops.rmsnorm_fwd(&a.normed_mlp, w(LayerSlot::MlpNorm), x_next, &mut a.inv_rms_mlp, rows, cfg.rms_eps);
        return;
    }
    ops.copy(x_in, &mut a.x_mid);
    ops.matmul(&a.attn_out, w(LayerSlot::O), &mut a.x_mid, accumulate(MatmulShape::linear_fwd(t, q_dim, h)));
    ops.rmsnorm_fwd(&a.x_mid, w(LayerSlot::MlpNorm), &mut a.normed_mlp, &mut a.inv_rms_mlp, rows, cfg.rms_eps);
    ops.matmul(&a.normed_mlp, w(LayerSlot::Gate), &mut a.gate, MatmulShape::linear_fwd(t, h, f));
    ops.matmul(&a.normed_mlp, w(LayerSlot::Up), &mut a.up, MatmulShape::linear_fwd(t, h, f));
    ops.swiglu_fwd(&a.gate, &a.up, &mut a.swiglu, t * f);
    if let Some(x_next) = x_next {
        ops.copy(&a.x_mid, x_next);
        ops.matmul(&a.swiglu, w(LayerSlot::Down), x_next, accumulate(MatmulShape::linear_fwd(t, f, h)));
    }
}

/// Callbacks around each unit's use, for fully sharded data parallelism: gather a unit's
/// parameters before it runs, release them after, reduce-scatter its gradients once they are
/// complete. For every pass, units come in [`params::units`] order for the forward and in
/// reverse order for the backward:
///
/// ```text
/// forward:  before_forward(u) -> u's forward -> after_forward(u)      for u = Embedding, Layer(0..), Head
/// backward: before_backward(u) -> u's backward -> after_backward(u)   for u = Head, .., Layer(0), Embedding
/// ```
///
/// With activation checkpointing a layer's recomputed forward is part of its backward, so it
/// runs between `before_backward(Layer(l))` and `after_backward(Layer(l))`; no extra calls.
///
/// Hooks receive all parameter (and gradient) buffers; a unit reads only the tensors of
/// [`params::unit_tensors`] — except that with tied embeddings the Head also reads the
/// embedding tensor and adds into its gradient, which is complete only after
/// `after_backward(Embedding)`.
pub trait UnitHooks<O: Ops> {
    fn before_forward(&mut self, _ops: &O, _unit: Unit, _params: &mut [O::Buf]) {}
    fn after_forward(&mut self, _ops: &O, _unit: Unit, _params: &mut [O::Buf]) {}
    fn before_backward(&mut self, _ops: &O, _unit: Unit, _params: &mut [O::Buf]) {}
    fn after_backward(&mut self, _ops: &O, _unit: Unit, _params: &mut [O::Buf], _grads: &mut [O::Buf]) {}
}

/// Hooks that do nothing: all parameters stay resident.
struct NoHooks;

impl<O: Ops> UnitHooks<O> for NoHooks {}

fn attention_shape(cfg: &ModelConfig, batch: usize, seq: usize, cross_lingual: bool) -> AttentionShape {
    AttentionShape { batch, seq, heads: cfg.heads, kv_heads: cfg.kv_heads, head_dim: cfg.head_dim, cross_lingual }
}

fn rope_shape(tokens: usize, heads: usize, cfg: &ModelConfig) -> RopeShape {
    RopeShape { tokens, heads, head_dim: cfg.head_dim }
}
