//! Shared helpers for the CPU backend tests: seeded random inputs, central finite differences
//! in f64, and a micro model config with packed multi-document batches.

#![allow(dead_code)] // each test binary uses a different subset

use kormo_model::{Batch, ModelConfig};
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
