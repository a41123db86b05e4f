//! Shared helpers for the CPU backend tests: seeded random inputs and central finite
//! differences in f64.

#![allow(dead_code)] // each test binary uses a different subset

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
