//! Shared by the integration tests: a small random model and a scratch folder.

use kormo_hf::{NamedTensor, Weights};
use kormo_model::{params, ModelConfig, ParamKind};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;

/// A 2-layer GQA model small enough for f64 NumPy and quick tests.
pub fn small_config() -> ModelConfig {
    ModelConfig { hidden: 48, layers: 2, heads: 4, kv_heads: 2, head_dim: 16, ffn: 96, vocab: 80, rms_eps: 1e-5, rope_theta: 10_000.0, tie_embeddings: false, ..ModelConfig::tiny() }
}

/// Random weights, larger than the 0.02 init so attention is far from uniform, and norm gains
/// away from 1 so a swapped or missing norm shows up.
pub fn random_weights(config: &ModelConfig, seed: u64) -> Weights {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let tensors = params::layout(config)
        .into_iter()
        .map(|spec| {
            let values = (0..spec.numel())
                .map(|_| match spec.kind {
                    ParamKind::Norm => rng.random_range(0.5..1.5),
                    _ => rng.random_range(-0.3..0.3),
                })
                .collect();
            NamedTensor { name: spec.name, shape: spec.shape, values }
        })
        .collect();
    Weights { config: config.clone(), tensors }
}

/// A fresh empty folder under TEST_TMPDIR (Bazel) or the system temp dir.
pub fn scratch(name: &str) -> PathBuf {
    let base = std::env::var_os("TEST_TMPDIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("kormo-hf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
