//! The outlier guard: skips an optimizer update whose loss or gradient norm is a spike.
//!
//! Like llm.c's outlier detector: for each of the two series, keep the last `window` values and
//! score a new value as z = (x - mean) / std over them (population std). When the history holds
//! at least `warmup` values and either z exceeds `threshold`, the step's update is skipped (the
//! data is still consumed). Every value, spike or not, then joins the history, so a lasting
//! level shift (a new phase's data) stops counting as a spike after a few steps instead of
//! blocking training. Only upward spikes count; a falling loss is never skipped.
//!
//! The history is part of the trainer state in checkpoints (as f64 bit patterns, so resuming
//! decides exactly as the uninterrupted run would).

use crate::recipe::StabilityConfig;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// The saved form of a guard's history (values as `f64::to_bits`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardState {
    pub losses: Vec<u64>,
    pub grad_norms: Vec<u64>,
}

/// Why a step was judged a spike.
#[derive(Clone, Debug, PartialEq)]
pub struct Spike {
    /// `loss` or `grad_norm`.
    pub metric: &'static str,
    pub value: f64,
    pub mean: f64,
    pub z: f64,
    /// Values the mean and deviation were taken over.
    pub history: usize,
}

#[derive(Clone, Debug)]
pub struct OutlierGuard {
    window: usize,
    threshold: f64,
    warmup: usize,
    losses: VecDeque<f64>,
    grad_norms: VecDeque<f64>,
}

impl OutlierGuard {
    pub fn new(config: &StabilityConfig) -> OutlierGuard {
        OutlierGuard {
            window: config.outlier_window,
            threshold: config.outlier_threshold,
            warmup: config.outlier_warmup,
            losses: VecDeque::new(),
            grad_norms: VecDeque::new(),
        }
    }

    /// Scores a step's (finite) loss and grad norm, adds them to the history, and returns the
    /// spike that should skip the update, if any.
    pub fn observe(&mut self, loss: f64, grad_norm: f64) -> Option<Spike> {
        let spike = [
            ("loss", &self.losses, loss),
            ("grad_norm", &self.grad_norms, grad_norm),
        ]
        .into_iter()
        .find_map(|(metric, history, value)| {
            self.score(history, value)
                .filter(|&(z, _)| z > self.threshold)
                .map(|(z, mean)| Spike {
                    metric,
                    value,
                    mean,
                    z,
                    history: history.len(),
                })
        });
        for (history, value) in [(&mut self.losses, loss), (&mut self.grad_norms, grad_norm)] {
            if history.len() == self.window {
                history.pop_front();
            }
            history.push_back(value);
        }
        spike
    }

    /// (z, mean) of `value` against `history`, when the guard is armed and the history varies.
    fn score(&self, history: &VecDeque<f64>, value: f64) -> Option<(f64, f64)> {
        if self.threshold <= 0.0 || history.len() < self.warmup {
            return None;
        }
        let n = history.len() as f64;
        let mean = history.iter().sum::<f64>() / n;
        let variance = history.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
        let std = variance.sqrt();
        (std > 0.0).then(|| ((value - mean) / std, mean))
    }

    pub fn state(&self) -> GuardState {
        let bits = |h: &VecDeque<f64>| h.iter().map(|v| v.to_bits()).collect();
        GuardState {
            losses: bits(&self.losses),
            grad_norms: bits(&self.grad_norms),
        }
    }

    /// Continues from a saved history (the newest `window` values are kept).
    pub fn restore(&mut self, state: &GuardState) {
        let values = |bits: &[u64]| -> VecDeque<f64> {
            let skip = bits.len().saturating_sub(self.window);
            bits[skip..].iter().map(|&b| f64::from_bits(b)).collect()
        };
        self.losses = values(&state.losses);
        self.grad_norms = values(&state.grad_norms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(window: usize, threshold: f64, warmup: usize) -> OutlierGuard {
        OutlierGuard::new(&StabilityConfig {
            outlier_window: window,
            outlier_threshold: threshold,
            outlier_warmup: warmup,
            ..StabilityConfig::default()
        })
    }

    /// A noisy, slowly falling loss curve (deterministic, never constant).
    fn curve(i: usize) -> (f64, f64) {
        let noise = ((i as f64 * 12.9898).sin() * 43758.5453).fract() * 0.05;
        (3.0 - 0.002 * i as f64 + noise, 0.8 + noise)
    }

    #[test]
    fn spike_after_warmup_is_flagged_with_its_z_score() {
        let mut g = guard(16, 5.0, 8);
        // Before warm-up, even a huge value passes.
        for i in 0..7 {
            let (l, n) = curve(i);
            assert_eq!(g.observe(l, n), None);
        }
        assert_eq!(
            g.observe(100.0, 0.8),
            None,
            "7 values of history < warmup 8"
        );
        let mut g = guard(16, 5.0, 8);
        for i in 0..40 {
            let (l, n) = curve(i);
            assert_eq!(g.observe(l, n), None, "step {i}");
        }
        // Reference z-score from the window's last 16 values, computed independently.
        let history: Vec<f64> = (24..40).map(|i| curve(i).0).collect();
        let mean = history.iter().sum::<f64>() / 16.0;
        let std = (history.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 16.0).sqrt();
        let spike = g
            .observe(mean + 6.0 * std, 0.8)
            .expect("6 sigma is a spike");
        assert_eq!(spike.metric, "loss");
        assert!(
            (spike.z - 6.0).abs() < 1e-9 && (spike.mean - mean).abs() < 1e-12,
            "{spike:?}"
        );
        // Grad-norm spikes count too; 4 sigma does not.
        let (l, _) = curve(41);
        assert_eq!(g.observe(l, 50.0).map(|s| s.metric), Some("grad_norm"));
        let mut quiet = guard(16, 5.0, 8);
        for i in 0..40 {
            let (l, n) = curve(i);
            quiet.observe(l, n);
        }
        assert_eq!(quiet.observe(mean + 4.0 * std, 0.8), None);
        // A falling loss is never a spike.
        assert_eq!(quiet.observe(-100.0, 0.0), None);
    }

    #[test]
    fn level_shift_stops_being_skipped_and_zero_threshold_disables() {
        let mut g = guard(8, 3.0, 4);
        for i in 0..8 {
            let (l, n) = curve(i);
            g.observe(l, n);
        }
        let skipped = (0..8).filter(|_| g.observe(6.0, 0.8).is_some()).count();
        assert!((1..8).contains(&skipped), "{skipped}");
        assert_eq!(g.observe(6.0, 0.8), None);
        let mut off = guard(8, 0.0, 4);
        for i in 0..8 {
            let (l, n) = curve(i);
            off.observe(l, n);
        }
        assert_eq!(off.observe(1e9, 1e9), None);
    }

    #[test]
    fn state_round_trips_exactly() {
        let mut a = guard(8, 5.0, 4);
        for i in 0..11 {
            let (l, n) = curve(i);
            a.observe(l, n);
        }
        let json = serde_json::to_string(&a.state()).unwrap();
        let mut b = guard(8, 5.0, 4);
        b.restore(&serde_json::from_str(&json).unwrap());
        assert_eq!(b.state(), a.state());
        assert_eq!(a.state().losses.len(), 8);
        for i in 11..30 {
            let (l, n) = curve(i);
            let spike = if i % 7 == 0 { 10.0 } else { l };
            assert_eq!(a.observe(spike, n), b.observe(spike, n));
        }
    }
}
