//! Mix-LN (`norm = "mixln"`) on the CPU reference: the forward against a naive decoder written
//! from the formulation (post-LN `x = Norm(x + Attn(x))`, `x = Norm(x + FFN(x))` in the first
//! layers, pre-LN after), every tensor's gradient against central differences in f64 with the
//! post/pre boundary inside the stack (and with every layer post-LN, and tied embeddings), and
//! `norm = "pre"` spelled out giving bitwise the default model. Activation checkpointing with
//! Mix-LN is tested in `checkpointing.rs`.

mod common;

use common::{micro_config, packed_batch, rng};
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
    model.zero_grads();
    model.forward_backward(&batch, (1.0 / batch.loss_weight_sum()) as f32).unwrap();
    let grads: Vec<Vec<f64>> = model.grads().to_vec();
    let specs = model.param_specs().to_vec();
    let step = 1e-5;
    for (index, spec) in specs.iter().enumerate() {
        let picks: Vec<usize> = (0..samples).map(|_| r.random_range(0..spec.numel())).collect();
        let mut nonzero = 0;
        for &j in &picks {
            let saved = model.params()[index][j];
            model.params_mut()[index][j] = saved + step;
            let plus = model.evaluate(&batch).unwrap().mean();
            model.params_mut()[index][j] = saved - step;
            let minus = model.evaluate(&batch).unwrap().mean();
            model.params_mut()[index][j] = saved;
            let numeric = (plus - minus) / (2.0 * step);
            let analytic = grads[index][j];
            let tolerance = 1e-7 + 1e-5 * numeric.abs().max(analytic.abs());
            assert!((numeric - analytic).abs() <= tolerance, "{}[{j}]: analytic {analytic} vs finite difference {numeric}", spec.name);
            if numeric.abs() > 1e-8 {
                nonzero += 1;
            }
        }
        // Embedding rows of tokens absent from the batch legitimately have zero gradient.
        assert!(nonzero > 0, "{}: all sampled gradients are zero", spec.name);
    }
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
        check_against_naive_decoder(cfg);
    }
}

fn check_against_naive_decoder(cfg: ModelConfig) {
    let batch = packed_batch(&[&[3, 4, 1], &[8]], cfg.vocab as u32, false, 41);
    let mut model = Model::new(cfg.clone(), CpuOps::<f64>::new(), 42).unwrap();
    let mut r = rng(43);
    for (spec, p) in model.param_specs().to_vec().iter().zip(model.params_mut()) {
        for x in p.iter_mut() {
            *x = if spec.shape.len() == 1 { 1.0 + r.random_range(-0.3..0.3) } else { *x * 10.0 };
        }
    }
    let logits = model.forward(&batch).unwrap();

    type Rows = Vec<Vec<f64>>;
    let param = |name: &str| model.params()[model.param_index(name).unwrap()].clone();
    let linear = |x: &[Vec<f64>], w: &[f64]| -> Rows {
        let inputs = x[0].len();
        x.iter().map(|row| w.chunks(inputs).map(|wr| row.iter().zip(wr).map(|(a, b)| a * b).sum()).collect()).collect()
    };
    let rmsnorm = |x: &[Vec<f64>], w: &[f64]| -> Rows {
        x.iter()
            .map(|row| {
                let r = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / row.len() as f64 + cfg.rms_eps as f64).sqrt();
                row.iter().zip(w).map(|(v, g)| v * r * g).collect()
            })
            .collect()
    };
    let add = |a: &[Vec<f64>], b: &[Vec<f64>]| -> Rows { a.iter().zip(b).map(|(a, b)| a.iter().zip(b).map(|(a, b)| a + b).collect()).collect() };
    let hd = cfg.head_dim;
    let rope = |x: &[Vec<f64>], positions: &[u32]| -> Rows {
        let inv: Vec<f64> = (0..hd).step_by(2).map(|i| 1.0 / (cfg.rope_theta as f64).powf(i as f64 / hd as f64)).collect();
        x.iter()
            .zip(positions)
            .map(|(row, &pos)| {
                let emb: Vec<f64> = inv.iter().chain(&inv).map(|f| pos as f64 * f).collect();
                let mut out = Vec::with_capacity(row.len());
                for v in row.chunks(hd) {
                    let rotated: Vec<f64> = v[hd / 2..].iter().map(|t| -t).chain(v[..hd / 2].iter().copied()).collect();
                    out.extend((0..hd).map(|i| v[i] * emb[i].cos() + rotated[i] * emb[i].sin()));
                }
                out
            })
            .collect()
    };
    let s = batch.seq_len;
    for b in 0..batch.batch_size {
        let row = b * s..(b + 1) * s;
        let (tokens, docs, positions) = (&batch.tokens[row.clone()], &batch.doc_ids[row.clone()], &batch.positions[row]);
        let embed = param("model.embed_tokens.weight");
        let mut x: Rows = tokens.iter().map(|&t| embed[t as usize * cfg.hidden..][..cfg.hidden].to_vec()).collect();
        for l in 0..cfg.layers {
            let p = |n: &str| param(&format!("model.layers.{l}.{n}"));
            let attention = |n: &[Vec<f64>]| -> Rows {
                let q = rope(&linear(n, &p("self_attn.q_proj.weight")), positions);
                let k = rope(&linear(n, &p("self_attn.k_proj.weight")), positions);
                let v = linear(n, &p("self_attn.v_proj.weight"));
                let mut attn = vec![vec![0.0; cfg.q_dim()]; s];
                for h in 0..cfg.heads {
                    let g = h / (cfg.heads / cfg.kv_heads);
                    for i in 0..s {
                        let visible: Vec<usize> = (0..s).filter(|&j| j <= i && docs[j] == docs[i]).collect();
                        let scores: Vec<f64> = visible
                            .iter()
                            .map(|&j| (0..hd).map(|e| q[i][h * hd + e] * k[j][g * hd + e]).sum::<f64>() / (hd as f64).sqrt())
                            .collect();
                        let z: f64 = scores.iter().map(|sc| sc.exp()).sum();
                        for (&j, sc) in visible.iter().zip(&scores) {
                            for e in 0..hd {
                                attn[i][h * hd + e] += sc.exp() / z * v[j][g * hd + e];
                            }
                        }
                    }
                }
                linear(&attn, &p("self_attn.o_proj.weight"))
            };
            let ffn = |n: &[Vec<f64>]| -> Rows {
                let gate = linear(n, &p("mlp.gate_proj.weight"));
                let up = linear(n, &p("mlp.up_proj.weight"));
                let act: Rows = gate.iter().zip(&up).map(|(g, u)| g.iter().zip(u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect()).collect();
                linear(&act, &p("mlp.down_proj.weight"))
            };
            let (norm_a, norm_f) = (p("pre_attention_layernorm.weight"), p("pre_mlp_layernorm.weight"));
            if l < cfg.post_ln_layers() {
                x = rmsnorm(&add(&x, &attention(&x)), &norm_a);
                x = rmsnorm(&add(&x, &ffn(&x)), &norm_f);
            } else {
                x = add(&x, &attention(&rmsnorm(&x, &norm_a)));
                x = add(&x, &ffn(&rmsnorm(&x, &norm_f)));
            }
        }
        let want = linear(&rmsnorm(&x, &param("model.norm.weight")), &param("lm_head.weight"));
        for (i, want_row) in want.iter().enumerate() {
            let got = &logits[(b * s + i) * cfg.vocab..][..cfg.vocab];
            for (g, w) in got.iter().zip(want_row) {
                // Logits come back as f32.
                assert!((*g as f64 - w).abs() < 1e-5 * w.abs().max(1.0), "{:?} row {b} token {i}: {g} vs {w}", cfg.norm);
            }
        }
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
