//! Rotary position embedding, Hugging Face "rotate half" layout (math in
//! [`kormo_model::Ops::rope_fwd`]). Angles are computed in f64 (HF uses f32; the difference
//! at long positions is below f32 resolution of the result) from each token's own position
//! id, so running and per-document positions are both supported. Backward is the inverse
//! rotation.

use kormo_model::RopeShape;

use crate::float::Float;
use crate::parallel;

const TOKENS_PER_ITEM: usize = 16;

/// Rotates `x` in place by `+angle` (`direction = 1.0`) or `-angle` (`-1.0`).
pub fn rope_rotate<T: Float>(threads: usize, x: &mut [T], positions: &[u32], s: RopeShape, theta: f32, direction: f64) {
    let (hd, half) = (s.head_dim, s.head_dim / 2);
    let row = s.heads * hd;
    assert_eq!(x.len(), s.tokens * row);
    assert_eq!(positions.len(), s.tokens);
    assert_eq!(hd % 2, 0, "rope: head_dim {hd} must be even");
    let inv_freq: Vec<f64> = (0..half).map(|i| (theta as f64).powf(-2.0 * i as f64 / hd as f64)).collect();
    let workers = parallel::threads_for(threads, x.len());
    let items = x.chunks_mut(TOKENS_PER_ITEM * row.max(1)).zip(positions.chunks(TOKENS_PER_ITEM));
    parallel::for_each(workers, items, |(x, positions)| {
        let mut cos = vec![T::ZERO; half];
        let mut sin = vec![T::ZERO; half];
        for (x, &pos) in x.chunks_mut(row.max(1)).zip(positions) {
            for i in 0..half {
                let angle = pos as f64 * inv_freq[i];
                cos[i] = T::from_f64(angle.cos());
                sin[i] = T::from_f64(direction * angle.sin());
            }
            for head in x.chunks_mut(hd) {
                let (lo, hi) = head.split_at_mut(half);
                for i in 0..half {
                    let (a, b) = (lo[i], hi[i]);
                    lo[i] = a * cos[i] - b * sin[i];
                    hi[i] = b * cos[i] + a * sin[i];
                }
            }
        }
    });
}
