//! Mix-LN (`norm = "mixln"`) on the CPU reference: the forward against a naive decoder written
//! from the formulation (post-LN `x = Norm(x + Attn(x))`, `x = Norm(x + FFN(x))` in the first
//! layers, pre-LN after), every tensor's gradient against central differences in f64 with the
//! post/pre boundary inside the stack (and with every layer post-LN, and tied embeddings), and
//! `norm = "pre"` spelled out giving bitwise the default model. Activation checkpointing with
//! Mix-LN is tested in `checkpointing.rs`.

mod common;

use common::{assert_model_gradients, check_against_naive_decoder, micro_config, packed_batch, rng};
use kormo_cpu::CpuOps;
use kormo_model::{Batch, Model, ModelConfig, NormPlacement, DEFAULT_MIXLN_POST_FRACTION};
use rand::Rng;

/// 4 layers, the first two post-LN: the boundary lies between layers 1 and 2.
fn mixln_config() -> ModelConfig {
    ModelConfig { layers: 4, norm: NormPlacement::MixLn, mixln_post_fraction: 0.5, ..micro_config() }
}

/// Central differences of the mean loss (z-loss on) for `samples` entries of every tensor.
fn check_model_gradients(cfg: ModelConfig, samples: usize) {
    let batch = packed_batch(&[&[3, 4], &[2, 2, 3]], cfg.vocab as u32, false, 31);
    let mut model = Model::new(cfg, CpuOps::<f64>::with_threads(2), 7).unwrap();
    let mut r = rng(32);
    // Larger-than-init weights and norm gains away from 1 so every path carries a visible
    // gradient and a norm applied in the wrong place shows.
    for (spec, p) in model.param_specs().to_vec().iter().zip(model.params_mut()) {
        for x in p.iter_mut() {
            *x = if spec.shape.len() == 1 { 1.0 + r.random_range(-0.4..0.4) } else { *x * 10.0 };
        }
    }
    model.set_z_loss(1e-3);
    assert_model_gradients(&mut model, &batch, samples, &mut r);
}

#[test]
fn mixln_gradients_match_finite_differences_across_the_boundary() {
    let cfg = mixln_config();
    assert_eq!(cfg.post_ln_layers(), 2);
    check_model_gradients(cfg, 8);
}

#[test]
fn mixln_gradients_match_finite_differences_with_one_post_ln_layer_and_tied_embeddings() {
    // MixLN's default fraction: floor(0.25 * 4) = 1 post-LN layer.
    let cfg = ModelConfig { mixln_post_fraction: DEFAULT_MIXLN_POST_FRACTION, tie_embeddings: true, ..mixln_config() };
    assert_eq!(cfg.post_ln_layers(), 1);
    check_model_gradients(cfg, 6);
}

#[test]
fn all_post_ln_gradients_match_finite_differences() {
    let cfg = ModelConfig { layers: 2, mixln_post_fraction: 1.0, ..mixln_config() };
    assert_eq!(cfg.post_ln_layers(), 2);
    check_model_gradients(cfg, 6);
}

/// The forward against a naive decoder written from the formulation (per-row loops, Hugging
/// Face `rotate_half` RoPE, `repeat_kv`, explicit causal same-document mask), sharing no code
/// with the model or the ops: layers below `post_ln_layers` are `x = Norm_a(x + Attn(x))`,
/// `x = Norm_f(x + FFN(x))`, the others `x = x + Attn(Norm_a(x))`, `x = x + FFN(Norm_f(x))`.
#[test]
fn mixln_forward_matches_naive_reference_decoder() {
    for cfg in [mixln_config(), ModelConfig { layers: 3, mixln_post_fraction: 1.0, ..mixln_config() }, micro_config()] {
        check_against_naive_decoder(cfg, (41, 42, 43));
    }
}

/// Loss, logits and gradients as raw bits after two accumulated micro-batches.
fn run_bits(cfg: &ModelConfig) -> (Vec<u64>, Vec<u32>, Vec<Vec<u32>>) {
    let vocab = cfg.vocab as u32;
    let batches: Vec<Batch> = vec![packed_batch(&[&[3, 5, 1], &[9]], vocab, false, 51), packed_batch(&[&[2, 4, 3], &[6, 3]], vocab, true, 52)];
    let mut model = Model::new(cfg.clone(), CpuOps::<f32>::with_threads(2), 53).unwrap();
    for p in model.params_mut() {
        p.iter_mut().for_each(|x| *x *= 5.0);
    }
    model.set_z_loss(1e-3);
    model.zero_grads();
    let losses = batches.iter().map(|b| model.forward_backward(b, 0.05).unwrap().weighted_loss.to_bits()).collect();
    let logits = model.forward(&batches[0]).unwrap().iter().map(|x| x.to_bits()).collect();
    let grads = model.grads().iter().map(|g| g.iter().map(|x| x.to_bits()).collect()).collect();
    (losses, logits, grads)
}

/// `norm = "pre"` written out (with the default fraction) is the default config, and its
/// loss, logits and gradients are bitwise those of the default; Mix-LN gives another network.
#[test]
fn explicit_pre_norm_is_bitwise_the_default_model() {
    let default = ModelConfig { layers: 4, ..micro_config() };
    let explicit = ModelConfig { norm: NormPlacement::Pre, mixln_post_fraction: DEFAULT_MIXLN_POST_FRACTION, ..default.clone() };
    assert_eq!(default.norm, NormPlacement::Pre);
    assert_eq!(default.post_ln_layers(), 0);
    assert!((0..default.layers).all(|l| !default.is_post_ln_layer(l)));
    let want = run_bits(&default);
    assert!(run_bits(&explicit) == want, "explicit norm = pre differs from the default");
    let mixln = run_bits(&ModelConfig { norm: NormPlacement::MixLn, ..default });
    assert_ne!(mixln.0, want.0, "Mix-LN must change the loss");
}

/// DeepNorm (`norm = "deepnorm"`): every layer post-LN with the residual scaled by
/// `α = (2N)^(1/4)`; its gradients against central differences (untied and tied), its forward
/// against the naive decoder (which scales the residual itself), and its initialisation: the
/// value, output and FFN projections are the pre-LN model's draws times `β = (8N)^(-1/4)`,
/// every other tensor the same draws.
fn deepnorm_config() -> ModelConfig {
    ModelConfig { layers: 3, norm: NormPlacement::DeepNorm, ..micro_config() }
}

#[test]
fn deepnorm_gradients_match_finite_differences() {
    let cfg = deepnorm_config();
    assert_eq!(cfg.post_ln_layers(), 3);
    assert!((cfg.residual_scale() - 6f32.powf(0.25)).abs() < 1e-6);
    check_model_gradients(cfg.clone(), 6);
    check_model_gradients(ModelConfig { tie_embeddings: true, ..cfg }, 4);
}

#[test]
fn deepnorm_forward_matches_naive_reference_decoder() {
    check_against_naive_decoder(deepnorm_config(), (44, 45, 46));
}

#[test]
fn deepnorm_initialisation_scales_value_output_and_ffn_projections() {
    let cfg = deepnorm_config();
    let deep = Model::new(cfg.clone(), CpuOps::<f32>::with_threads(1), 9).unwrap();
    let pre = Model::new(ModelConfig { norm: NormPlacement::Pre, ..cfg.clone() }, CpuOps::<f32>::with_threads(1), 9).unwrap();
    let beta = (8.0 * cfg.layers as f64).powf(-0.25);
    let scaled = ["self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"];
    let mut seen = 0;
    for ((spec, d), p) in deep.param_specs().iter().zip(deep.params()).zip(pre.params()) {
        let gain = if scaled.iter().any(|s| spec.name.contains(s)) { beta } else { 1.0 };
        seen += usize::from(gain != 1.0);
        for (a, b) in d.iter().zip(p) {
            assert_eq!(*a, (*b as f64 * gain) as f32, "{}", spec.name);
        }
    }
    assert_eq!(seen, 5 * cfg.layers);
    // A mixln fraction with deepnorm is a mistake, said with the setting.
    let bad = ModelConfig { mixln_post_fraction: 0.5, ..cfg };
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.contains("mixln_post_fraction") && e.contains("deepnorm"), "{e}");
}
