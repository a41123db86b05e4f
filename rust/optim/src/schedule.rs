//! Learning-rate schedules: warmup-stable-decay (KORMo's), cosine, constant.
//!
//! Conventions (all schedules): `step` is the 0-based index of the optimizer update about to
//! be taken, out of `total_steps`. Warmup lasts `ceil(warmup_fraction * total_steps)` steps
//! and rises linearly as `peak * (step + 1) / warmup_steps`, so the first update already
//! moves the weights (Hugging Face starts at exactly 0, which wastes one step) and the last
//! warmup step reaches the peak. Decay phases end at the last step (`total_steps - 1`) with
//! exactly `min_lr_ratio * peak`; steps past the end stay there.
//!
//! * `WarmupStableDecay`: warmup, then the peak, then a linear decay over the last
//!   `round(decay_fraction * total_steps)` steps. KORMo's recipe gives warmup 3% and min ratio
//!   0.05 but not the decay length or shape; linear over the last 10–20% is the common WSD
//!   choice (MiniCPM, OLMo 2 annealing), default here 0.2.
//! * `Cosine`: warmup, then half a cosine from the peak to the minimum over the remaining steps.
//! * `Constant`: warmup, then the peak forever (`min_lr_ratio` and `decay_fraction` unused).

use serde::{Deserialize, Serialize};

use crate::error::OptimError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    WarmupStableDecay,
    Cosine,
    Constant,
}

fn default_kind() -> ScheduleKind {
    ScheduleKind::WarmupStableDecay
}
fn default_warmup_fraction() -> f64 {
    0.03
}
fn default_decay_fraction() -> f64 {
    0.2
}
fn default_min_lr_ratio() -> f64 {
    0.05
}

/// A learning-rate schedule over a run of `total_steps` optimizer updates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrSchedule {
    #[serde(default = "default_kind")]
    pub kind: ScheduleKind,
    /// Peak learning rate (KORMo pretraining: 7e-4).
    pub peak_lr: f64,
    pub total_steps: u64,
    #[serde(default = "default_warmup_fraction")]
    pub warmup_fraction: f64,
    /// Length of the final decay as a fraction of the run (warmup-stable-decay only).
    #[serde(default = "default_decay_fraction")]
    pub decay_fraction: f64,
    /// Final learning rate as a fraction of the peak (decaying schedules).
    #[serde(default = "default_min_lr_ratio")]
    pub min_lr_ratio: f64,
}

impl LrSchedule {
    /// KORMo's pretraining schedule: WSD, warmup 3%, decay over the last 20%, min ratio 0.05.
    pub fn kormo(peak_lr: f64, total_steps: u64) -> Self {
        LrSchedule {
            kind: ScheduleKind::WarmupStableDecay,
            peak_lr,
            total_steps,
            warmup_fraction: default_warmup_fraction(),
            decay_fraction: default_decay_fraction(),
            min_lr_ratio: default_min_lr_ratio(),
        }
    }

    /// Checks ranges; the error names the key.
    pub fn validate(&self) -> Result<(), OptimError> {
        let fraction = |key, value: f64| {
            if (0.0..=1.0).contains(&value) {
                Ok(())
            } else {
                Err(OptimError::Config { key, message: format!("{value} must be between 0 and 1") })
            }
        };
        if !(self.peak_lr.is_finite() && self.peak_lr >= 0.0) {
            return Err(OptimError::Config { key: "peak_lr", message: format!("{} must be finite and >= 0", self.peak_lr) });
        }
        if self.total_steps == 0 {
            return Err(OptimError::Config { key: "total_steps", message: "must be at least 1".into() });
        }
        fraction("warmup_fraction", self.warmup_fraction)?;
        fraction("decay_fraction", self.decay_fraction)?;
        fraction("min_lr_ratio", self.min_lr_ratio)?;
        if self.kind == ScheduleKind::WarmupStableDecay && self.warmup_steps() + self.decay_steps() > self.total_steps {
            return Err(OptimError::Config {
                key: "decay_fraction",
                message: format!(
                    "warmup ({}) and decay ({}) steps exceed total_steps {}",
                    self.warmup_steps(),
                    self.decay_steps(),
                    self.total_steps
                ),
            });
        }
        Ok(())
    }

    /// Number of warmup steps.
    pub fn warmup_steps(&self) -> u64 {
        (self.warmup_fraction * self.total_steps as f64).ceil() as u64
    }

    /// Number of final decay steps of warmup-stable-decay.
    pub fn decay_steps(&self) -> u64 {
        (self.decay_fraction * self.total_steps as f64).round() as u64
    }

    /// Learning rate for update `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        let warmup = self.warmup_steps();
        if step < warmup {
            return self.peak_lr * (step + 1) as f64 / warmup as f64;
        }
        let min_lr = self.peak_lr * self.min_lr_ratio;
        // Fraction of the decay phase [start, last step] done at `step`, in [0, 1].
        let progress = |start: u64| {
            let last = self.total_steps.saturating_sub(1);
            if step >= last || last <= start {
                1.0
            } else {
                step.saturating_sub(start) as f64 / (last - start) as f64
            }
        };
        match self.kind {
            ScheduleKind::Constant => self.peak_lr,
            ScheduleKind::Cosine => {
                let p = progress(warmup);
                min_lr + (self.peak_lr - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
            ScheduleKind::WarmupStableDecay => {
                let decay_start = self.total_steps - self.decay_steps();
                if step < decay_start {
                    self.peak_lr
                } else {
                    self.peak_lr - (self.peak_lr - min_lr) * progress(decay_start)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12 * b.abs().max(1.0)
    }

    #[test]
    fn wsd_key_points() {
        let s = LrSchedule::kormo(7e-4, 1000);
        s.validate().unwrap();
        assert_eq!(s.warmup_steps(), 30);
        assert_eq!(s.decay_steps(), 200);
        assert!(close(s.lr(0), 7e-4 / 30.0));
        assert!(close(s.lr(14), 7e-4 * 15.0 / 30.0));
        assert!(close(s.lr(29), 7e-4));
        assert!(close(s.lr(30), 7e-4));
        assert!(close(s.lr(799), 7e-4));
        assert!(close(s.lr(800), 7e-4));
        // Halfway through the decay: midpoint of peak and min.
        let mid = 800.0 + 199.0 / 2.0;
        assert!(close(s.lr(mid as u64), 7e-4 - (7e-4 - 3.5e-5) * ((mid as u64 - 800) as f64 / 199.0)));
        assert!(close(s.lr(999), 3.5e-5));
        assert!(close(s.lr(5000), 3.5e-5));
        assert!(s.lr(900) < s.lr(850));
    }

    #[test]
    fn cosine_key_points() {
        let s = LrSchedule { kind: ScheduleKind::Cosine, warmup_fraction: 0.1, ..LrSchedule::kormo(1.0, 101) };
        assert_eq!(s.warmup_steps(), 11);
        assert!(close(s.lr(10), 1.0));
        assert!(close(s.lr(11), 1.0));
        // Steps 11..=100: 89 intervals; the middle one (step 55.5) is not an integer, so check
        // the exact formula at 56 and the end points.
        let p = (56.0 - 11.0) / 89.0;
        assert!(close(s.lr(56), 0.05 + 0.95 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())));
        assert!(close(s.lr(100), 0.05));
    }

    #[test]
    fn constant_and_no_warmup() {
        let s = LrSchedule { kind: ScheduleKind::Constant, warmup_fraction: 0.0, ..LrSchedule::kormo(3e-4, 10) };
        assert!((0..20).all(|step| close(s.lr(step), 3e-4)));
        let one = LrSchedule::kormo(1.0, 1);
        one.validate().unwrap();
        assert!(close(one.lr(0), 1.0), "a one-step run warms up to the peak");
    }

    #[test]
    fn validation_names_keys() {
        let s = LrSchedule { warmup_fraction: 0.5, decay_fraction: 0.6, ..LrSchedule::kormo(1.0, 100) };
        assert!(s.validate().unwrap_err().to_string().contains("decay_fraction"));
        let s = LrSchedule { min_lr_ratio: 2.0, ..LrSchedule::kormo(1.0, 100) };
        assert!(s.validate().unwrap_err().to_string().contains("min_lr_ratio"));
        let s = LrSchedule { total_steps: 0, ..LrSchedule::kormo(1.0, 100) };
        assert!(s.validate().unwrap_err().to_string().contains("total_steps"));
    }
}
