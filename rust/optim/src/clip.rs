//! Global gradient-norm clipping (torch's `clip_grad_norm_` semantics). The norm is summed in
//! f64 in tensor order, so it is deterministic and exact enough for any model size; data-
//! parallel callers add [`sum_of_squares`] across ranks and take the square root themselves.

/// `sum_i g_i^2` over every tensor, in f64.
pub fn sum_of_squares<G: AsRef<[f32]>>(grads: &[G]) -> f64 {
    grads
        .iter()
        .map(|g| g.as_ref().iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
        .sum()
}

/// Global L2 norm of all gradients.
pub fn grad_norm<G: AsRef<[f32]>>(grads: &[G]) -> f64 {
    sum_of_squares(grads).sqrt()
}

/// Scales all gradients by `max_norm / (norm + 1e-6)` when their global norm exceeds
/// `max_norm`, and returns the norm before clipping. A non-finite norm leaves the gradients
/// untouched; the caller should skip that step.
pub fn clip_grad_norm<G: AsMut<[f32]> + AsRef<[f32]>>(grads: &mut [G], max_norm: f64) -> f64 {
    let norm = grad_norm(grads);
    if norm.is_finite() && norm > max_norm {
        let scale = (max_norm / (norm + 1e-6)) as f32;
        for g in grads.iter_mut() {
            g.as_mut().iter_mut().for_each(|x| *x *= scale);
        }
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clips_to_max_norm_and_returns_pre_clip_norm() {
        let mut grads = vec![vec![3.0f32, 0.0], vec![4.0f32]];
        let norm = clip_grad_norm(&mut grads, 1.0);
        assert!((norm - 5.0).abs() < 1e-12);
        assert!((grad_norm(&grads) - 1.0).abs() < 1e-5);
        assert!((grads[0][0] / grads[1][0] - 0.75).abs() < 1e-6, "direction kept");
    }

    #[test]
    fn small_or_non_finite_norms_are_left_alone() {
        let mut grads = vec![vec![0.3f32, -0.4]];
        assert!((clip_grad_norm(&mut grads, 1.0) - 0.5).abs() < 1e-7);
        assert_eq!(grads, vec![vec![0.3f32, -0.4]]);
        let mut bad = vec![vec![f32::NAN, 1.0]];
        assert!(clip_grad_norm(&mut bad, 1.0).is_nan());
        assert_eq!(bad[0][1], 1.0);
    }
}
