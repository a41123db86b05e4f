//! Parameter layout and initialisation.
//!
//! Names follow the Hugging Face KORMo checkpoint so export is a rename-free copy; shapes are
//! torch's row-major `[out, in]` for linear layers (y = x W^T) and `[vocab, hidden]` for the
//! embedding and head. The order of [`layout`] is the canonical tensor order used everywhere
//! (model buffers, optimizer state, checkpoints):
//!
//! ```text
//! model.embed_tokens.weight                         [vocab, hidden]      Embedding
//! per layer i:
//!   model.layers.{i}.pre_attention_layernorm.weight [hidden]             Norm
//!   model.layers.{i}.self_attn.q_proj.weight        [heads*hd, hidden]   Linear
//!   model.layers.{i}.self_attn.k_proj.weight        [kv_heads*hd, hidden]
//!   model.layers.{i}.self_attn.v_proj.weight        [kv_heads*hd, hidden]
//!   model.layers.{i}.self_attn.o_proj.weight        [hidden, heads*hd]
//!   model.layers.{i}.pre_mlp_layernorm.weight       [hidden]             Norm
//!   model.layers.{i}.mlp.gate_proj.weight           [ffn, hidden]        Linear
//!   model.layers.{i}.mlp.up_proj.weight             [ffn, hidden]
//!   model.layers.{i}.mlp.down_proj.weight           [hidden, ffn]
//! model.norm.weight                                 [hidden]             Norm
//! lm_head.weight                                    [vocab, hidden]      Linear (absent when tied)
//! per multi-token-prediction depth d = 1..=mtp_depth (absent when mtp_depth = 0):
//!   mtp.{d}.proj.weight                             [hidden, hidden]     Linear
//!   mtp.{d}.norm.weight                             [hidden]             Norm
//! ```
//!
//! The MTP tensors come last so a model without them has exactly the layout (and indices) it
//! always had; they are kormo's own names (no Hugging Face model has them, see `kormo-hf`).
//!
//! Initialisation is normal(0, 0.02) for embedding and linear weights and 1 for norm weights
//! (KORMo's recipe). Each tensor draws from its own ChaCha8 stream (seed, stream = tensor index),
//! so any tensor — or a shard of one — can be initialised without generating the others.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::ModelConfig;

/// Standard deviation of the normal initialisation of embedding and linear weights.
pub const INIT_STD: f64 = 0.02;

/// Tensors in one decoder layer, in [`layout`] order.
pub const TENSORS_PER_LAYER: usize = 9;

/// What a tensor is; decides initialisation and weight decay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamKind {
    /// Token embedding table: normal init, no weight decay.
    Embedding,
    /// Projection matrix (attention, MLP, LM head): normal init, weight decay.
    Linear,
    /// RMSNorm gain: ones init, no weight decay.
    Norm,
}

/// One named parameter tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    /// Hugging Face tensor name.
    pub name: String,
    /// Row-major shape (`[out, in]` for matrices).
    pub shape: Vec<usize>,
    pub kind: ParamKind,
}

impl ParamSpec {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// KORMo decays everything except embeddings, norms and biases (there are no biases).
    pub fn weight_decay(&self) -> bool {
        self.kind == ParamKind::Linear
    }
}

/// Position of each tensor of layer `layer` in [`layout`] (index = 1 + layer * 9 + slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerSlot {
    AttnNorm = 0,
    Q = 1,
    K = 2,
    V = 3,
    O = 4,
    MlpNorm = 5,
    Gate = 6,
    Up = 7,
    Down = 8,
}

/// Index of `model.embed_tokens.weight` in [`layout`].
pub const EMBED_INDEX: usize = 0;

/// Index of a layer tensor in [`layout`].
pub fn layer_index(layer: usize, slot: LayerSlot) -> usize {
    1 + layer * TENSORS_PER_LAYER + slot as usize
}

/// Index of `model.norm.weight` in [`layout`].
pub fn final_norm_index(cfg: &ModelConfig) -> usize {
    1 + cfg.layers * TENSORS_PER_LAYER
}

/// Index of the tensor the LM head multiplies by: `lm_head.weight`, or the embedding when tied.
pub fn head_index(cfg: &ModelConfig) -> usize {
    if cfg.tie_embeddings {
        EMBED_INDEX
    } else {
        final_norm_index(cfg) + 1
    }
}

/// Tensors per multi-token-prediction depth, in [`layout`] order.
pub const TENSORS_PER_MTP_DEPTH: usize = 2;

/// Position of each tensor of one MTP depth in [`layout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtpSlot {
    Proj = 0,
    Norm = 1,
}

/// Index of a tensor of MTP depth `depth` (1-based: depth 1 predicts the token after the
/// next) in [`layout`].
pub fn mtp_index(cfg: &ModelConfig, depth: usize, slot: MtpSlot) -> usize {
    assert!((1..=cfg.mtp_depth).contains(&depth), "MTP depth {depth} of {}", cfg.mtp_depth);
    let first = final_norm_index(cfg) + if cfg.tie_embeddings { 1 } else { 2 };
    first + (depth - 1) * TENSORS_PER_MTP_DEPTH + slot as usize
}

/// Whether the tensor `name` is one of the multi-token-prediction heads' (`mtp.*`).
pub fn is_mtp_tensor(name: &str) -> bool {
    name.starts_with("mtp.")
}

/// A group of tensors used together: the unit of sharding, gathering and gradient
/// reduction (see `Model::forward_backward_with_hooks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    /// `model.embed_tokens.weight`.
    Embedding,
    /// The nine tensors of decoder layer `i`.
    Layer(usize),
    /// `model.norm.weight` and `lm_head.weight` (just the norm when tied), then the
    /// multi-token-prediction tensors when `mtp_depth > 0`.
    Head,
}

/// The units of `cfg` in forward order.
pub fn units(cfg: &ModelConfig) -> Vec<Unit> {
    let mut out = vec![Unit::Embedding];
    out.extend((0..cfg.layers).map(Unit::Layer));
    out.push(Unit::Head);
    out
}

/// Canonical indices of the tensors a unit owns (consecutive in [`layout`] order).
pub fn unit_tensors(cfg: &ModelConfig, unit: Unit) -> std::ops::Range<usize> {
    match unit {
        Unit::Embedding => EMBED_INDEX..EMBED_INDEX + 1,
        Unit::Layer(l) => {
            let first = layer_index(l, LayerSlot::AttnNorm);
            first..first + TENSORS_PER_LAYER
        }
        Unit::Head => {
            let end = if cfg.tie_embeddings { final_norm_index(cfg) + 1 } else { head_index(cfg) + 1 };
            final_norm_index(cfg)..end + cfg.mtp_depth * TENSORS_PER_MTP_DEPTH
        }
    }
}

/// The full parameter layout of `cfg` in canonical order.
pub fn layout(cfg: &ModelConfig) -> Vec<ParamSpec> {
    let spec = |name: String, shape: Vec<usize>, kind| ParamSpec { name, shape, kind };
    let (h, q, kv, f, v) = (cfg.hidden, cfg.q_dim(), cfg.kv_dim(), cfg.ffn, cfg.vocab);
    let mut specs = vec![spec("model.embed_tokens.weight".into(), vec![v, h], ParamKind::Embedding)];
    for i in 0..cfg.layers {
        let p = format!("model.layers.{i}");
        specs.push(spec(format!("{p}.pre_attention_layernorm.weight"), vec![h], ParamKind::Norm));
        specs.push(spec(format!("{p}.self_attn.q_proj.weight"), vec![q, h], ParamKind::Linear));
        specs.push(spec(format!("{p}.self_attn.k_proj.weight"), vec![kv, h], ParamKind::Linear));
        specs.push(spec(format!("{p}.self_attn.v_proj.weight"), vec![kv, h], ParamKind::Linear));
        specs.push(spec(format!("{p}.self_attn.o_proj.weight"), vec![h, q], ParamKind::Linear));
        specs.push(spec(format!("{p}.pre_mlp_layernorm.weight"), vec![h], ParamKind::Norm));
        specs.push(spec(format!("{p}.mlp.gate_proj.weight"), vec![f, h], ParamKind::Linear));
        specs.push(spec(format!("{p}.mlp.up_proj.weight"), vec![f, h], ParamKind::Linear));
        specs.push(spec(format!("{p}.mlp.down_proj.weight"), vec![h, f], ParamKind::Linear));
    }
    specs.push(spec("model.norm.weight".into(), vec![h], ParamKind::Norm));
    if !cfg.tie_embeddings {
        specs.push(spec("lm_head.weight".into(), vec![v, h], ParamKind::Linear));
    }
    for d in 1..=cfg.mtp_depth {
        specs.push(spec(format!("mtp.{d}.proj.weight"), vec![h, h], ParamKind::Linear));
        specs.push(spec(format!("mtp.{d}.norm.weight"), vec![h], ParamKind::Norm));
    }
    specs
}

/// Fills `out` (length `spec.numel()`) with tensor `index`'s initial values for `seed`.
pub fn init_tensor(spec: &ParamSpec, index: usize, seed: u64, out: &mut [f32]) {
    assert_eq!(out.len(), spec.numel(), "init buffer length for {}", spec.name);
    match spec.kind {
        ParamKind::Norm => out.fill(1.0),
        ParamKind::Embedding | ParamKind::Linear => {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(index as u64);
            fill_normal(&mut rng, INIT_STD, out);
        }
    }
}

/// Box-Muller: two uniforms give two independent normals (rand_distr is not a dependency).
fn fill_normal(rng: &mut ChaCha8Rng, std: f64, out: &mut [f32]) {
    for pair in out.chunks_mut(2) {
        // 1 - u lies in (0, 1], so the logarithm is finite.
        let radius = (-2.0 * (1.0 - rng.random::<f64>()).ln()).sqrt() * std;
        let angle = std::f64::consts::TAU * rng.random::<f64>();
        pair[0] = (radius * angle.cos()) as f32;
        if let Some(second) = pair.get_mut(1) {
            *second = (radius * angle.sin()) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_names_shapes_and_indices_agree() {
        let cfg = ModelConfig::tiny();
        let specs = layout(&cfg);
        assert_eq!(specs.len(), 1 + cfg.layers * TENSORS_PER_LAYER + 2);
        assert_eq!(specs[layer_index(1, LayerSlot::K)].name, "model.layers.1.self_attn.k_proj.weight");
        assert_eq!(specs[layer_index(1, LayerSlot::K)].shape, vec![cfg.kv_dim(), cfg.hidden]);
        assert_eq!(specs[layer_index(3, LayerSlot::Down)].shape, vec![cfg.hidden, cfg.ffn]);
        assert_eq!(specs[final_norm_index(&cfg)].name, "model.norm.weight");
        assert_eq!(specs[head_index(&cfg)].name, "lm_head.weight");
        assert!(specs[head_index(&cfg)].weight_decay());
        assert!(!specs[EMBED_INDEX].weight_decay());
        assert!(!specs[layer_index(0, LayerSlot::MlpNorm)].weight_decay());
    }

    #[test]
    fn units_cover_the_layout_once_in_order() {
        for tie in [false, true] {
            let mut cfg = ModelConfig::tiny();
            cfg.tie_embeddings = tie;
            let covered: Vec<usize> = units(&cfg).into_iter().flat_map(|u| unit_tensors(&cfg, u)).collect();
            assert_eq!(covered, (0..layout(&cfg).len()).collect::<Vec<_>>());
        }
    }

    #[test]
    fn mtp_tensors_come_last_in_the_head_unit() {
        for tie in [false, true] {
            let off = ModelConfig { tie_embeddings: tie, ..ModelConfig::tiny() };
            let on = ModelConfig { mtp_depth: 2, ..off.clone() };
            let (a, b) = (layout(&off), layout(&on));
            assert_eq!(b[..a.len()], a[..], "the layout without MTP is a prefix");
            assert_eq!(b.len(), a.len() + 2 * TENSORS_PER_MTP_DEPTH);
            assert_eq!(b[mtp_index(&on, 1, MtpSlot::Proj)].name, "mtp.1.proj.weight");
            assert_eq!(b[mtp_index(&on, 2, MtpSlot::Norm)].name, "mtp.2.norm.weight");
            assert_eq!(b[mtp_index(&on, 2, MtpSlot::Proj)].shape, vec![on.hidden, on.hidden]);
            assert!(b[mtp_index(&on, 1, MtpSlot::Proj)].weight_decay() && !b[mtp_index(&on, 1, MtpSlot::Norm)].weight_decay());
            assert_eq!(unit_tensors(&on, Unit::Head).end, b.len());
            let covered: Vec<usize> = units(&on).into_iter().flat_map(|u| unit_tensors(&on, u)).collect();
            assert_eq!(covered, (0..b.len()).collect::<Vec<_>>());
            assert!(b.iter().filter(|s| is_mtp_tensor(&s.name)).count() == 4 && !a.iter().any(|s| is_mtp_tensor(&s.name)));
        }
    }

    #[test]
    fn tied_layout_has_no_head() {
        let mut cfg = ModelConfig::tiny();
        cfg.tie_embeddings = true;
        let specs = layout(&cfg);
        assert!(specs.iter().all(|s| s.name != "lm_head.weight"));
        assert_eq!(head_index(&cfg), EMBED_INDEX);
    }

    fn init_all(cfg: &ModelConfig, seed: u64) -> Vec<Vec<f32>> {
        let specs = layout(cfg);
        let init = |(index, spec): (usize, &ParamSpec)| {
            let mut values = vec![0.0; spec.numel()];
            init_tensor(spec, index, seed, &mut values);
            values
        };
        specs.iter().enumerate().map(init).collect()
    }

    #[test]
    fn init_is_deterministic_normal_and_per_tensor() {
        let cfg = ModelConfig::tiny();
        let a = init_all(&cfg, 7);
        let b = init_all(&cfg, 7);
        let c = init_all(&cfg, 8);
        assert_eq!(a, b);
        assert_ne!(a[1 + 1], c[1 + 1]);
        // Two matrices of equal shape must not share a stream.
        assert_ne!(a[layer_index(0, LayerSlot::K)], a[layer_index(0, LayerSlot::V)]);
        assert!(a[layer_index(0, LayerSlot::AttnNorm)].iter().all(|&x| x == 1.0));
        let w = &a[layer_index(0, LayerSlot::Gate)];
        let n = w.len() as f64;
        let mean = w.iter().map(|&x| x as f64).sum::<f64>() / n;
        let std = (w.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!(mean.abs() < 0.001, "mean {mean}");
        assert!((std - INIT_STD).abs() < 0.001, "std {std}");
    }
}
