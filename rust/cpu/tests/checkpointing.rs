//! Activation checkpointing on the CPU reference: loss, logits and every gradient are bitwise
//! equal to the run that keeps all activations (several micro-batches of different shapes,
//! multi-document rows, z-loss, tied and untied heads), and the workspace the model really
//! allocates — counted by a backend wrapper that tallies every allocation — matches
//! [`ActivationMemory`] and shrinks with checkpointing. The same holds for Mix-LN models
//! (`norm = "mixln"`, whose post-LN layers recompute their whole forward). The hook order under
//! checkpointing is tested with the other hook tests in `model.rs`.

mod common;

use std::cell::Cell;

use common::{micro_config, packed_batch};
use kormo_cpu::CpuOps;
use kormo_model::{
    ActivationMemory, AttentionShape, Batch, CrossEntropyShape, EmbeddingShape, LossSum, MatmulShape, MemoryPlan,
    Model, ModelConfig, NormPlacement, Ops, RopeShape, RowsShape,
};

/// Micro-batches of different shapes (the workspace is reallocated between them), each with
/// several documents per row and mixed loss weights.
fn micro_batches(vocab: usize) -> Vec<Batch> {
    let vocab = vocab as u32;
    vec![
        packed_batch(&[&[3, 5, 1], &[9]], vocab, false, 201),
        packed_batch(&[&[2, 4, 3], &[6, 3]], vocab, true, 202),
        packed_batch(&[&[4, 7, 5]], vocab, false, 203),
    ]
}

/// Accumulates all micro-batches into fresh gradients; returns the losses, the logits of the
/// first batch, and the gradients as raw bits (so `-0.0 != 0.0` and NaNs compare exactly).
fn run(cfg: &ModelConfig, checkpointing: bool) -> (Vec<LossSum>, Vec<u32>, Vec<Vec<u32>>) {
    let batches = micro_batches(cfg.vocab);
    let mut model = Model::new(cfg.clone(), CpuOps::<f32>::with_threads(2), 13).unwrap();
    // Larger-than-init weights so activations and gradients are far from trivial.
    for p in model.params_mut() {
        p.iter_mut().for_each(|x| *x *= 5.0);
    }
    model.set_z_loss(1e-3);
    model.set_activation_checkpointing(checkpointing);
    assert_eq!(model.activation_checkpointing(), checkpointing);
    let total: f64 = batches.iter().map(Batch::loss_weight_sum).sum();
    model.zero_grads();
    let losses = batches.iter().map(|b| model.forward_backward(b, (1.0 / total) as f32).unwrap()).collect();
    let logits = model.forward(&batches[0]).unwrap().iter().map(|x| x.to_bits()).collect();
    let grads = model.grads().iter().map(|g| g.iter().map(|x| x.to_bits()).collect()).collect();
    (losses, logits, grads)
}

fn check_bitwise_equal(cfg: ModelConfig) {
    let (plain_losses, plain_logits, plain_grads) = run(&cfg, false);
    let (losses, logits, grads) = run(&cfg, true);
    assert_eq!(losses, plain_losses);
    assert_eq!(logits, plain_logits);
    let specs = kormo_model::params::layout(&cfg);
    for ((spec, got), want) in specs.iter().zip(&grads).zip(&plain_grads) {
        assert!(got == want, "{}: gradient differs with activation checkpointing", spec.name);
        assert!(got.iter().any(|&bits| f32::from_bits(bits) != 0.0), "{}: all-zero gradient", spec.name);
    }
}

#[test]
fn checkpointed_loss_and_gradients_are_bitwise_equal() {
    check_bitwise_equal(ModelConfig { layers: 3, ..micro_config() });
}

#[test]
fn checkpointed_loss_and_gradients_are_bitwise_equal_with_tied_embeddings() {
    check_bitwise_equal(ModelConfig { layers: 3, tie_embeddings: true, ..micro_config() });
}

/// Mix-LN: the first two of four layers post-LN (the boundary inside the stack), then every
/// layer post-LN; tied and untied.
#[test]
fn checkpointed_mixln_loss_and_gradients_are_bitwise_equal() {
    let mixln = ModelConfig { layers: 4, norm: NormPlacement::MixLn, mixln_post_fraction: 0.5, ..micro_config() };
    assert_eq!(mixln.post_ln_layers(), 2);
    check_bitwise_equal(mixln.clone());
    check_bitwise_equal(ModelConfig { tie_embeddings: true, ..mixln.clone() });
    check_bitwise_equal(ModelConfig { layers: 3, mixln_post_fraction: 1.0, ..mixln });
    // DeepNorm: every layer post-LN with the residual scaled.
    check_bitwise_equal(ModelConfig { layers: 3, norm: NormPlacement::DeepNorm, ..micro_config() });
}

/// Multi-token prediction: the heads read the last layer's output, which checkpointing keeps,
/// so depths 1 and 2 (tied and untied) are bitwise equal with and without it.
#[test]
fn checkpointed_mtp_loss_and_gradients_are_bitwise_equal() {
    check_bitwise_equal(ModelConfig { layers: 3, mtp_depth: 1, ..micro_config() });
    check_bitwise_equal(ModelConfig { layers: 3, mtp_depth: 2, mtp_loss_weight: 0.5, tie_embeddings: true, ..micro_config() });
}

/// Switching checkpointing on a model that already has a workspace takes effect on the next
/// pass (the workspace is rebuilt in the new layout).
#[test]
fn toggling_checkpointing_between_steps_keeps_results() {
    let cfg = ModelConfig { layers: 3, ..micro_config() };
    let batch = packed_batch(&[&[5, 6], &[11]], cfg.vocab as u32, false, 211);
    let mut model = Model::new(cfg, CpuOps::<f32>::with_threads(2), 14).unwrap();
    let step = |model: &mut Model<CpuOps<f32>>| {
        model.zero_grads();
        let loss = model.forward_backward(&batch, 0.05).unwrap();
        (loss, model.grads().to_vec())
    };
    let plain = step(&mut model);
    model.set_activation_checkpointing(true);
    let checkpointed = step(&mut model);
    model.set_activation_checkpointing(false);
    assert!(checkpointed == plain);
    assert!(step(&mut model) == plain);
}

/// `CpuOps<f32>` that counts the float and id elements it allocates; everything else is
/// delegated unchanged.
#[derive(Default)]
struct CountingOps {
    inner: CpuOps<f32>,
    floats: Cell<u64>,
    ids: Cell<u64>,
}

impl CountingOps {
    fn take_counts(&self) -> ActivationMemory {
        ActivationMemory { floats: self.floats.replace(0), ids: self.ids.replace(0) }
    }
}

impl Ops for CountingOps {
    type Buf = Vec<f32>;
    type IdxBuf = Vec<u32>;

    fn zeros(&self, len: usize) -> Vec<f32> {
        self.floats.set(self.floats.get() + len as u64);
        self.inner.zeros(len)
    }
    fn upload(&self, host: &[f32]) -> Vec<f32> {
        self.floats.set(self.floats.get() + host.len() as u64);
        self.inner.upload(host)
    }
    fn upload_idx(&self, host: &[u32]) -> Vec<u32> {
        self.ids.set(self.ids.get() + host.len() as u64);
        self.inner.upload_idx(host)
    }
    fn write(&self, dst: &mut Vec<f32>, host: &[f32]) {
        self.inner.write(dst, host)
    }
    fn write_idx(&self, dst: &mut Vec<u32>, host: &[u32]) {
        self.inner.write_idx(dst, host)
    }
    fn read(&self, src: &Vec<f32>, host: &mut [f32]) {
        self.inner.read(src, host)
    }
    fn sum(&self, x: &Vec<f32>) -> f64 {
        self.inner.sum(x)
    }
    fn fill(&self, x: &mut Vec<f32>, value: f32) {
        self.inner.fill(x, value)
    }
    fn copy(&self, src: &Vec<f32>, dst: &mut Vec<f32>) {
        self.inner.copy(src, dst)
    }
    fn scale(&self, x: &mut Vec<f32>, alpha: f32) {
        self.inner.scale(x, alpha)
    }
    fn add_assign(&self, dst: &mut Vec<f32>, src: &Vec<f32>) {
        self.inner.add_assign(dst, src)
    }
    fn matmul(&self, a: &Vec<f32>, b: &Vec<f32>, c: &mut Vec<f32>, shape: MatmulShape) {
        self.inner.matmul(a, b, c, shape)
    }
    fn rmsnorm_fwd(&self, x: &Vec<f32>, w: &Vec<f32>, y: &mut Vec<f32>, inv_rms: &mut Vec<f32>, shape: RowsShape, eps: f32) {
        self.inner.rmsnorm_fwd(x, w, y, inv_rms, shape, eps)
    }
    fn rmsnorm_bwd(
        &self,
        x: &Vec<f32>,
        w: &Vec<f32>,
        inv_rms: &Vec<f32>,
        dy: &Vec<f32>,
        dx: &mut Vec<f32>,
        dw: &mut Vec<f32>,
        shape: RowsShape,
    ) {
        self.inner.rmsnorm_bwd(x, w, inv_rms, dy, dx, dw, shape)
    }
    fn rope_fwd(&self, x: &mut Vec<f32>, positions: &Vec<u32>, shape: RopeShape, theta: f32) {
        self.inner.rope_fwd(x, positions, shape, theta)
    }
    fn rope_bwd(&self, dx: &mut Vec<f32>, positions: &Vec<u32>, shape: RopeShape, theta: f32) {
        self.inner.rope_bwd(dx, positions, shape, theta)
    }
    fn attention_fwd(
        &self,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        doc_ids: &Vec<u32>,
        out: &mut Vec<f32>,
        lse: &mut Vec<f32>,
        shape: AttentionShape,
    ) {
        self.inner.attention_fwd(q, k, v, doc_ids, out, lse, shape)
    }
    fn attention_bwd(
        &self,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        doc_ids: &Vec<u32>,
        out: &Vec<f32>,
        lse: &Vec<f32>,
        dout: &Vec<f32>,
        dq: &mut Vec<f32>,
        dk: &mut Vec<f32>,
        dv: &mut Vec<f32>,
        shape: AttentionShape,
    ) {
        self.inner.attention_bwd(q, k, v, doc_ids, out, lse, dout, dq, dk, dv, shape)
    }
    fn swiglu_fwd(&self, gate: &Vec<f32>, up: &Vec<f32>, h: &mut Vec<f32>, len: usize) {
        self.inner.swiglu_fwd(gate, up, h, len)
    }
    fn swiglu_bwd(&self, gate: &Vec<f32>, up: &Vec<f32>, dh: &Vec<f32>, dgate: &mut Vec<f32>, dup: &mut Vec<f32>, len: usize) {
        self.inner.swiglu_bwd(gate, up, dh, dgate, dup, len)
    }
    fn embedding_fwd(&self, table: &Vec<f32>, tokens: &Vec<u32>, out: &mut Vec<f32>, shape: EmbeddingShape) {
        self.inner.embedding_fwd(table, tokens, out, shape)
    }
    fn embedding_bwd(&self, dout: &Vec<f32>, tokens: &Vec<u32>, dtable: &mut Vec<f32>, shape: EmbeddingShape) {
        self.inner.embedding_bwd(dout, tokens, dtable, shape)
    }
    fn cross_entropy(
        &self,
        logits: &mut Vec<f32>,
        targets: &Vec<u32>,
        weights: &Vec<f32>,
        losses: &mut Vec<f32>,
        shape: CrossEntropyShape,
        z_loss: f32,
        grad_scale: f32,
    ) {
        self.inner.cross_entropy(logits, targets, weights, losses, shape, z_loss, grad_scale)
    }
}

/// The workspace a training pass allocates, counted element by element, equals the documented
/// formula with and without checkpointing; later passes of the same shape allocate nothing;
/// parameters and gradients match the plan; checkpointing saves exactly `L - 1` layer sets.
#[test]
fn activation_memory_matches_the_allocated_workspace() {
    check_activation_memory(ModelConfig { layers: 4, ..micro_config() });
}

/// Post-LN layers reuse the pre-LN activation set, so Mix-LN allocates the same workspace.
#[test]
fn mixln_activation_memory_matches_the_allocated_workspace() {
    check_activation_memory(ModelConfig { layers: 4, norm: NormPlacement::MixLn, mixln_post_fraction: 0.5, ..micro_config() });
}

/// MTP adds its documented buffers (and reuses the logits).
#[test]
fn mtp_activation_memory_matches_the_allocated_workspace() {
    let cfg = ModelConfig { layers: 3, mtp_depth: 2, ..micro_config() };
    check_activation_memory(cfg.clone());
    let (t, h) = (100u64, cfg.hidden as u64);
    let off = ActivationMemory::new(&ModelConfig { mtp_depth: 0, ..cfg.clone() }, 100, false);
    let on = ActivationMemory::new(&cfg, 100, false);
    assert_eq!((on.floats - off.floats, on.ids - off.ids), (t * (3 * h + 2 + 2), 2 * t));
}

fn check_activation_memory(cfg: ModelConfig) {
    let batch = packed_batch(&[&[3, 4, 2], &[9]], cfg.vocab as u32, false, 221);
    let tokens = batch.num_tokens();
    let float_bytes = std::mem::size_of::<f32>() as u64;
    let mut measured = Vec::new();
    for checkpointing in [false, true] {
        let mut model = Model::new(cfg.clone(), CountingOps::default(), 15).unwrap();
        model.set_activation_checkpointing(checkpointing);
        let tensors = model.ops().take_counts();
        assert_eq!(tensors, ActivationMemory { floats: 2 * cfg.param_count(), ids: 0 }, "parameters + gradients");

        model.forward_backward(&batch, 0.1).unwrap();
        let workspace = model.ops().take_counts();
        assert_eq!(workspace, model.activation_memory(tokens), "checkpointing {checkpointing}");
        assert_eq!(workspace, ActivationMemory::new(&cfg, tokens, checkpointing));
        model.forward_backward(&batch, 0.1).unwrap();
        assert_eq!(model.ops().take_counts(), ActivationMemory { floats: 0, ids: 0 }, "steady state allocates");

        let plan = model.memory_plan(tokens, float_bytes);
        let want = MemoryPlan {
            params: cfg.param_count() * float_bytes,
            grads: cfg.param_count() * float_bytes,
            activations: workspace.floats * float_bytes + workspace.ids * 4,
        };
        assert_eq!(plan, want);
        assert_eq!(plan.total(), want.params + want.grads + want.activations);
        measured.push(workspace.floats);
    }
    let (h, q, kv, f) = (cfg.hidden, cfg.q_dim(), cfg.kv_dim(), cfg.ffn);
    let layer_set = (tokens * (3 * h + 2 * q + 2 * kv + 3 * f + cfg.heads + 2)) as u64;
    assert_eq!(measured[0] - measured[1], (cfg.layers as u64 - 1) * layer_set);
}

/// A chunked LM head (chunks that do not divide the batch's tokens, MTP on) allocates what
/// the estimate with that chunk says, and nothing more in steady state.
#[test]
fn chunked_head_activation_memory_matches_the_allocated_workspace() {
    let cfg = ModelConfig { layers: 2, mtp_depth: 1, ..micro_config() };
    let batch = packed_batch(&[&[3, 4, 2], &[9]], cfg.vocab as u32, false, 221);
    let tokens = batch.num_tokens();
    for chunk in [1, 4, tokens - 1] {
        let mut model = Model::new(cfg.clone(), CountingOps::default(), 15).unwrap();
        model.set_head_chunk_tokens(chunk);
        model.ops().take_counts();
        model.forward_backward(&batch, 0.1).unwrap();
        let workspace = model.ops().take_counts();
        assert_eq!(workspace, model.activation_memory(tokens), "chunk {chunk}");
        assert_eq!(workspace, ActivationMemory::with_head_chunk(&cfg, tokens, false, chunk));
        model.forward_backward(&batch, 0.1).unwrap();
        model.evaluate(&batch).unwrap();
        assert_eq!(model.ops().take_counts(), ActivationMemory { floats: 0, ids: 0 }, "steady state allocates");
    }
}
