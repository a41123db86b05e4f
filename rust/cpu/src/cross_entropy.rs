//! Weighted cross-entropy with z-loss, loss and logit gradient in one pass over each row
//! (math in [`kormo_model::Ops::cross_entropy`]). The logits are overwritten by their gradient
//! so the largest activation of the model is never held twice.

use kormo_model::CrossEntropyShape;

use crate::float::Float;
use crate::parallel;

const TOKENS_PER_ITEM: usize = 8;

#[allow(clippy::too_many_arguments)]
pub fn cross_entropy<T: Float>(
    threads: usize,
    logits: &mut [T],
    targets: &[u32],
    weights: &[T],
    losses: &mut [T],
    s: CrossEntropyShape,
    z_loss: f32,
    grad_scale: f32,
) {
    let v = s.vocab;
    assert_eq!(logits.len(), s.tokens * v);
    assert_eq!(targets.len(), s.tokens);
    assert_eq!(weights.len(), s.tokens);
    assert_eq!(losses.len(), s.tokens);
    let (z_loss, grad_scale) = (T::from_f32(z_loss), T::from_f32(grad_scale));
    let two = T::from_f64(2.0);
    let workers = parallel::threads_for(threads, logits.len());
    let items = logits
        .chunks_mut(TOKENS_PER_ITEM * v.max(1))
        .zip(targets.chunks(TOKENS_PER_ITEM))
        .zip(weights.chunks(TOKENS_PER_ITEM))
        .zip(losses.chunks_mut(TOKENS_PER_ITEM));
    parallel::for_each(workers, items, |(((logits, targets), weights), losses)| {
        for (((row, &target), &w), loss) in logits.chunks_mut(v.max(1)).zip(targets).zip(weights).zip(losses) {
            if w == T::ZERO {
                row.fill(T::ZERO);
                *loss = T::ZERO;
                continue;
            }
            let max = row.iter().fold(T::NEG_INFINITY, |m, &z| m.max(z));
            let target = target as usize;
            let target_logit = row[target];
            // One exp per logit: the row keeps exp(z - max) until it is scaled into p.
            let mut sum = T::ZERO;
            for z in row.iter_mut() {
                *z = (*z - max).exp();
                sum += *z;
            }
            let lse = max + sum.ln();
            *loss = w * (lse - target_logit + z_loss * lse * lse);
            // d/dz of lse - z_t + c lse^2 is p (1 + 2 c lse) - onehot, with p = exp(z - max) / sum.
            let p_scale = grad_scale * w * (T::ONE + two * z_loss * lse) / sum;
            for z in row.iter_mut() {
                *z *= p_scale;
            }
            row[target] -= grad_scale * w;
        }
    });
}
