//! What the eval tests share: a small random model whose logits are not flat.

use kormo_cpu::CpuOps;
use kormo_hf::Weights;
use kormo_model::{Model, ModelConfig, ParamKind};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The tiny architecture with 2 layers and `vocab` ids, weights scaled up (norm gains drawn
/// from [0.5, 1.5), every other tensor times 8) so logits are not flat.
pub fn weights(vocab: usize, seed: u64) -> Weights {
    let mut config = ModelConfig::tiny();
    config.layers = 2;
    config.vocab = vocab;
    let model = Model::new(config, CpuOps::<f32>::with_threads(1), seed).unwrap();
    let mut w = Weights::from_model(&model);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (t, spec) in w.tensors.iter_mut().zip(model.param_specs()) {
        for x in &mut t.values {
            *x = match spec.kind {
                ParamKind::Norm => rng.random_range(0.5..1.5),
                _ => *x * 8.0,
            };
        }
    }
    w
}
