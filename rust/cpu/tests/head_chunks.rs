//! The token-chunked LM head (`kormo_model::head`, `Model::set_head_chunk_tokens`) against the
//! unchunked head (a chunk of at least the batch's tokens), on the CPU reference: losses, MTP
//! losses, every gradient and the forward logits agree in f64 to ~1e-12 relative and in f32
//! within rounding, with z-loss, loss weights including zeros, tied and untied embeddings, MTP
//! depth 1, and chunk sizes that do and do not divide the token count; evaluation agrees too;
//! the whole-model finite-difference check passes with a 3-token chunk; and the workspace
//! shrinks as the memory estimate says.

mod common;

use common::{assert_model_gradients_of, micro_config, packed_batch, rng};
use kormo_cpu::{CpuOps, Float};
use kormo_model::{ActivationMemory, Batch, Model, ModelConfig};

/// Loss sums, MTP loss sums, every gradient and the forward logits of `cfg` on `batch` with a
/// head chunk of `chunk` tokens (model weights scaled up so every path matters).
fn run<T: Float>(cfg: &ModelConfig, batch: &Batch, chunk: usize) -> (Vec<f64>, Vec<Vec<f64>>, Vec<f32>) {
    let mut model = Model::new(cfg.clone(), CpuOps::<T>::with_threads(2), 7).unwrap();
    for p in model.params_mut() {
        p.iter_mut().for_each(|x| *x *= T::from_f32(10.0));
    }
    model.set_z_loss(1e-3);
    model.set_head_chunk_tokens(chunk);
    model.zero_grads();
    let scale = 1.0 / batch.loss_weight_sum() as f32;
    let train = model.forward_backward(batch, scale).unwrap();
    let eval = model.evaluate(batch).unwrap();
    let losses = vec![train.weighted_loss, train.weight, train.mtp_weighted_loss, train.mtp_weight, eval.weighted_loss, eval.mtp_weighted_loss];
    let grads = model.grads().iter().map(|g| g.iter().map(|x| x.to_f64()).collect()).collect();
    let logits = model.forward(batch).unwrap();
    (losses, grads, logits)
}

fn rel_diff(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-30);
    a.iter().zip(b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn check_chunks<T: Float>(cfg: ModelConfig, tolerance: f64) {
    let batch = packed_batch(&[&[3, 4], &[2, 2, 3]], cfg.vocab as u32, false, 11);
    let t = batch.num_tokens();
    assert!(batch.loss_weights.contains(&0.0), "the batch has ignored tokens");
    let (want_losses, want_grads, want_logits) = run::<T>(&cfg, &batch, t);
    for chunk in [1, 3, 5, t - 1, t, 2 * t] {
        let (losses, grads, logits) = run::<T>(&cfg, &batch, chunk);
        assert!(rel_diff(&losses, &want_losses) < tolerance, "chunk {chunk}: losses {losses:?} vs {want_losses:?}");
        for (i, (g, w)) in grads.iter().zip(&want_grads).enumerate() {
            let d = rel_diff(g, w);
            assert!(d < tolerance, "chunk {chunk}: gradient {i} differs by {d:e} (relative)");
        }
        let (l, w): (Vec<f64>, Vec<f64>) = logits.iter().zip(&want_logits).map(|(&a, &b)| (a as f64, b as f64)).unzip();
        assert!(rel_diff(&l, &w) < tolerance.max(1e-6), "chunk {chunk}: forward logits");
    }
}

#[test]
fn chunked_head_equals_unchunked_in_f64() {
    check_chunks::<f64>(micro_config(), 1e-12);
}

#[test]
fn chunked_head_equals_unchunked_in_f64_with_tied_embeddings() {
    check_chunks::<f64>(ModelConfig { tie_embeddings: true, ..micro_config() }, 1e-12);
}

#[test]
fn chunked_head_equals_unchunked_in_f64_with_mtp() {
    check_chunks::<f64>(ModelConfig { mtp_depth: 1, ..micro_config() }, 1e-12);
    check_chunks::<f64>(ModelConfig { mtp_depth: 1, tie_embeddings: true, ..micro_config() }, 1e-12);
}

#[test]
fn chunked_head_equals_unchunked_in_f32() {
    check_chunks::<f32>(micro_config(), 1e-5);
    check_chunks::<f32>(ModelConfig { mtp_depth: 1, tie_embeddings: true, ..micro_config() }, 1e-5);
}

#[test]
fn whole_model_gradients_match_finite_differences_with_a_chunked_head() {
    for cfg in [micro_config(), ModelConfig { tie_embeddings: true, mtp_depth: 1, ..micro_config() }] {
        let batch = packed_batch(&[&[3, 4], &[2, 2, 3]], cfg.vocab as u32, false, 11);
        let mut model = Model::new(cfg, CpuOps::<f64>::with_threads(2), 5).unwrap();
        for p in model.params_mut() {
            p.iter_mut().for_each(|x| *x *= 10.0);
        }
        model.set_z_loss(1e-3);
        model.set_head_chunk_tokens(3);
        let weight = model.config().mtp_loss_weight as f64;
        assert_model_gradients_of(&mut model, &batch, 6, &mut rng(12), |l| l.objective(weight));
    }
}

/// The chunked workspace is what the estimate says (counted through the model's own
/// estimate, which the checkpointing tests check against allocations), and it frees the
/// logits' `(T - C) * V` floats less the chunk's own buffers (which, at this toy vocabulary,
/// are the larger part).
#[test]
fn memory_estimate_shrinks_by_the_unmaterialised_logits() {
    let cfg = ModelConfig { mtp_depth: 1, ..micro_config() };
    let (t, c) = (100usize, 8usize);
    let whole = ActivationMemory::with_head_chunk(&cfg, t, false, t);
    let chunked = ActivationMemory::with_head_chunk(&cfg, t, false, c);
    let (v, h, k) = (cfg.vocab as u64, cfg.hidden as u64, 1u64);
    let padded = t.div_ceil(c) as u64 * c as u64;
    // One chunk's rows, their gradient and losses, the logits placeholder, the gathered [T, h]
    // input gradient, the chunked loss weights.
    let extra = c as u64 * (2 * h + 1) + 1 + t as u64 * h + padded * (1 + k);
    assert_eq!(whole.floats + extra, chunked.floats + (t - c) as u64 * v);
    assert_eq!(chunked.ids - whole.ids, padded * (2 + k));
    let mut model = Model::new(cfg.clone(), CpuOps::<f32>::new(), 0).unwrap();
    model.set_head_chunk_tokens(c);
    assert_eq!(model.activation_memory(t), chunked);
}
