//! Shared helpers for the CPU backend tests: seeded random inputs, central finite differences
//! in f64, and a micro model config with packed multi-document batches.

#![allow(dead_code)] // each test binary uses a different subset

use kormo_cpu::CpuOps;
use kormo_model::{Batch, LossSum, Model, ModelConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// `len` values uniform in `[-scale, scale)`.
pub fn random_vec(rng: &mut ChaCha8Rng, len: usize, scale: f64) -> Vec<f64> {
    (0..len).map(|_| rng.random_range(-scale..scale)).collect()
}

/// Step of the central differences: small enough for O(h^2) truncation to vanish at the
/// tolerances below, large enough that f64 cancellation stays around 1e-11.
pub const FD_STEP: f64 = 1e-5;

/// Compares `analytic[i]` with the central difference of `loss` in `x[i]` for the given
/// indices (all of them when `indices` is None); `x` is restored afterwards.
pub fn check_gradient(
    what: &str,
    x: &mut [f64],
    analytic: &[f64],
    indices: Option<&[usize]>,
    mut loss: impl FnMut(&[f64]) -> f64,
) {
    assert_eq!(x.len(), analytic.len(), "{what}: gradient length");
    let all: Vec<usize> = (0..x.len()).collect();
    let indices = indices.unwrap_or(&all);
    let mut nonzero = 0;
    for &i in indices {
        let saved = x[i];
        x[i] = saved + FD_STEP;
        let plus = loss(x);
        x[i] = saved - FD_STEP;
        let minus = loss(x);
        x[i] = saved;
        let numeric = (plus - minus) / (2.0 * FD_STEP);
        let tolerance = 1e-7 + 1e-5 * numeric.abs().max(analytic[i].abs());
        assert!(
            (numeric - analytic[i]).abs() <= tolerance,
            "{what}[{i}]: analytic {} vs finite difference {numeric}",
            analytic[i]
        );
        if numeric.abs() > 1e-9 {
            nonzero += 1;
        }
    }
    // A check where every gradient is zero would pass for a broken backward too.
    assert!(nonzero * 2 >= indices.len(), "{what}: only {nonzero} of {} gradients are non-zero", indices.len());
}

/// `sum_i a[i] * b[i]`.
pub fn weighted_sum(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Small enough for finite differences over every tensor, with GQA (2 query heads per KV
/// head) and odd sizes.
pub fn micro_config() -> ModelConfig {
    ModelConfig {
        hidden: 10,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: 4,
        ffn: 14,
        vocab: 13,
        rms_eps: 1e-5,
        rope_theta: 500_000.0,
        tie_embeddings: false,
        ..ModelConfig::tiny()
    }
}

/// Document lengths per row, with KORMo's running positions (0..seq) unless `reset`.
pub fn packed_batch(docs_per_row: &[&[usize]], vocab: u32, reset_positions: bool, seed: u64) -> Batch {
    let mut r = rng(seed);
    let seq_len: usize = docs_per_row[0].iter().sum();
    let mut batch = Batch { batch_size: docs_per_row.len(), seq_len, ..Batch::default() };
    for docs in docs_per_row {
        assert_eq!(docs.iter().sum::<usize>(), seq_len);
        let mut pos = 0u32;
        for (doc, &len) in docs.iter().enumerate() {
            for i in 0..len {
                batch.tokens.push(r.random_range(0..vocab));
                batch.targets.push(r.random_range(0..vocab));
                // Mixed weights: ignored tokens, half weight, normal.
                batch.loss_weights.push([1.0, 0.0, 0.5, 1.0][r.random_range(0..4)]);
                batch.doc_ids.push(doc as u32);
                batch.positions.push(if reset_positions { i as u32 } else { pos });
                pos += 1;
            }
        }
    }
    batch
}

/// The model's forward against a naive decoder written directly from Hugging Face Llama's
/// semantics (per-row loops, `rotate_half` RoPE with `cat(freqs, freqs)`, `repeat_kv` head
/// mapping, explicit causal same-document mask), sharing no code with the ops; Mix-LN's first
/// layers post-LN where `cfg` has them. Weights: the model's init at `model_seed`, norm gains
/// drawn around 1 and matrices scaled up so every term matters.
pub fn check_against_naive_decoder(cfg: ModelConfig, (batch_seed, model_seed, init_seed): (u64, u64, u64)) {
    let batch = packed_batch(&[&[3, 4, 1], &[8]], cfg.vocab as u32, false, batch_seed);
    let mut model = Model::new(cfg.clone(), CpuOps::<f64>::new(), model_seed).unwrap();
    let mut r = rng(init_seed);
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
                let alpha = cfg.residual_scale() as f64;
                let scaled = |x: &Rows| -> Rows { x.iter().map(|r| r.iter().map(|v| alpha * v).collect()).collect() };
                x = rmsnorm(&add(&scaled(&x), &attention(&x)), &norm_a);
                x = rmsnorm(&add(&scaled(&x), &ffn(&x)), &norm_f);
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

/// The whole model's gradients (from one `forward_backward` of `batch`) against central
/// differences of the mean loss, for `samples` entries of every tensor drawn with `r`; every
/// tensor must show some non-zero gradient among them.
pub fn assert_model_gradients(model: &mut Model<CpuOps<f64>>, batch: &Batch, samples: usize, r: &mut ChaCha8Rng) {
    assert_model_gradients_of(model, batch, samples, r, LossSum::mean);
}

/// [`assert_model_gradients`] of another objective of the evaluated loss (e.g. with MTP,
/// `LossSum::objective(mtp_loss_weight)`).
pub fn assert_model_gradients_of(
    model: &mut Model<CpuOps<f64>>,
    batch: &Batch,
    samples: usize,
    r: &mut ChaCha8Rng,
    objective: impl Fn(&LossSum) -> f64,
) {
    model.zero_grads();
    model.forward_backward(batch, (1.0 / batch.loss_weight_sum()) as f32).unwrap();
    let grads: Vec<Vec<f64>> = model.grads().to_vec();
    let specs = model.param_specs().to_vec();
    for (index, spec) in specs.iter().enumerate() {
        let picks: Vec<usize> = (0..samples).map(|_| r.random_range(0..spec.numel())).collect();
        let mut nonzero = 0;
        for &j in &picks {
            let saved = model.params()[index][j];
            model.params_mut()[index][j] = saved + FD_STEP;
            let plus = objective(&model.evaluate(batch).unwrap());
            model.params_mut()[index][j] = saved - FD_STEP;
            let minus = objective(&model.evaluate(batch).unwrap());
            model.params_mut()[index][j] = saved;
            let numeric = (plus - minus) / (2.0 * FD_STEP);
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
