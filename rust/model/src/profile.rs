//! Per-op time breakdown for benchmarks: one aggregation shared by every backend.
//!
//! A backend that can time its ops owns a switch (off by default) and, while a benchmark has it
//! on ([`Ops::start_op_profile`] .. [`Ops::finish_op_profile`]), records the time of every op
//! call under the op's label: the `Ops` method name, with GEMMs split by their transposes
//! ([`matmul_label`]: the three linear-layer products forward, input gradient, weight gradient).
//! How a call is timed is the backend's business: the CPU backend reads the wall clock around
//! the call ([`OpTimer`]), which is exact because its ops are synchronous; the CUDA backend
//! records a pair of events on its stream and reads them after the benchmark's synchronize.
//! Either way the times land in an [`OpProfile`] (calls, seconds and GEMM FLOPs per label), which
//! [`OpProfile::breakdown`] turns into the report rows against the profiled wall time.
//!
//! Switched off, an op pays one relaxed atomic load.
//!
//! [`Ops::start_op_profile`]: crate::Ops::start_op_profile
//! [`Ops::finish_op_profile`]: crate::Ops::finish_op_profile

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

use crate::MatmulShape;

/// The label of a matmul call: `matmul fwd` (`x·Wᵀ`, a linear layer's forward),
/// `matmul bwd-input` (`dy·W`), `matmul bwd-weight` (`dyᵀ·x`), from [`MatmulShape`]'s
/// transposes (the model's three linear-layer shapes); `matmul other` for anything else.
pub fn matmul_label(shape: &MatmulShape) -> &'static str {
    match (shape.trans_a, shape.trans_b) {
        (false, true) => "matmul fwd",
        (false, false) => "matmul bwd-input",
        (true, false) => "matmul bwd-weight",
        (true, true) => "matmul other",
    }
}

impl MatmulShape {
    /// Floating-point operations of the product: `2 m n k`.
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }
}

/// Totals of one op label.
#[derive(Clone, Debug, PartialEq)]
pub struct OpTotal {
    pub op: &'static str,
    pub calls: u64,
    pub seconds: f64,
    /// Floating-point operations of the calls (GEMMs; 0 for the other ops).
    pub flops: f64,
}

/// Per-op totals of a profiled span, in order of each label's first call.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OpProfile {
    totals: Vec<OpTotal>,
}

impl OpProfile {
    /// Adds one call of `op` that took `seconds` and did `flops` (0 where not counted).
    pub fn record(&mut self, op: &'static str, seconds: f64, flops: f64) {
        match self.totals.iter_mut().find(|t| t.op == op) {
            Some(t) => {
                t.calls += 1;
                t.seconds += seconds;
                t.flops += flops;
            }
            None => self.totals.push(OpTotal { op, calls: 1, seconds, flops }),
        }
    }

    pub fn totals(&self) -> &[OpTotal] {
        &self.totals
    }

    /// Sum of all op times.
    pub fn seconds(&self) -> f64 {
        self.totals.iter().map(|t| t.seconds).sum()
    }

    /// The report of `micro_batches` profiled forward+backward passes that took `wall_s` in all:
    /// rows by decreasing time, and the remainder no op accounts for.
    pub fn breakdown(&self, wall_s: f64, micro_batches: usize, timing: &str) -> OpBreakdown {
        let per = micro_batches.max(1) as f64;
        let mut ops: Vec<OpRow> = self
            .totals
            .iter()
            .map(|t| OpRow {
                op: t.op.to_string(),
                calls_per_micro_batch: t.calls as f64 / per,
                ms_per_micro_batch: 1e3 * t.seconds / per,
                share: if wall_s > 0.0 { t.seconds / wall_s } else { 0.0 },
                tflops: (t.flops > 0.0 && t.seconds > 0.0).then(|| t.flops / t.seconds / 1e12),
            })
            .collect();
        ops.sort_by(|a, b| b.ms_per_micro_batch.total_cmp(&a.ms_per_micro_batch));
        let ops_s = self.seconds();
        OpBreakdown {
            timing: timing.to_string(),
            micro_batches,
            wall_ms_per_micro_batch: 1e3 * wall_s / per,
            ops_ms_per_micro_batch: 1e3 * ops_s / per,
            unaccounted_ms_per_micro_batch: 1e3 * (wall_s - ops_s) / per,
            ops,
        }
    }
}

/// One row of the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OpRow {
    pub op: String,
    pub calls_per_micro_batch: f64,
    pub ms_per_micro_batch: f64,
    /// Of the profiled forward+backward wall time.
    pub share: f64,
    /// Achieved rate, for the ops whose FLOPs are counted (GEMMs: `2 m n k` per call).
    pub tflops: Option<f64>,
}

/// The per-op breakdown of profiled forward+backward passes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OpBreakdown {
    /// How the op times were taken (backend's words).
    pub timing: String,
    /// Profiled micro-batches the numbers average over.
    pub micro_batches: usize,
    /// Wall time of a profiled forward+backward (zero_grads to synchronize).
    pub wall_ms_per_micro_batch: f64,
    /// Sum of the op times.
    pub ops_ms_per_micro_batch: f64,
    /// Wall minus ops: launch gaps, host work and waits between ops.
    pub unaccounted_ms_per_micro_batch: f64,
    /// By decreasing time.
    pub ops: Vec<OpRow>,
}

impl OpBreakdown {
    /// The table as text lines (no trailing newline).
    pub fn render(&self) -> String {
        let mut s = format!(
            "per-op breakdown ({} profiled micro-batch{}, after and apart from the timed iterations; {}):\n",
            self.micro_batches,
            if self.micro_batches == 1 { "" } else { "es" },
            self.timing
        );
        let _ = writeln!(s, "  {:<20} {:>8} {:>10} {:>7} {:>8}", "op", "calls", "ms", "share", "TFLOP/s");
        let pct = |ms: f64| {
            if self.wall_ms_per_micro_batch > 0.0 {
                100.0 * ms / self.wall_ms_per_micro_batch
            } else {
                0.0
            }
        };
        for r in &self.ops {
            let rate = r.tflops.map_or(String::new(), |t| format!("{t:.3}"));
            let line = format!(
                "  {:<20} {:>8} {:>10.3} {:>6.1}% {:>8}",
                r.op,
                r.calls_per_micro_batch,
                r.ms_per_micro_batch,
                100.0 * r.share,
                rate
            );
            let _ = writeln!(s, "{}", line.trim_end());
        }
        for (what, ms) in [
            ("sum of ops", self.ops_ms_per_micro_batch),
            ("unaccounted", self.unaccounted_ms_per_micro_batch),
            ("forward+backward", self.wall_ms_per_micro_batch),
        ] {
            let _ = writeln!(s, "  {:<20} {:>8} {:>10.3} {:>6.1}%", what, "", ms, pct(ms));
        }
        s.push_str("  (unaccounted = launch gaps, host work and waits between ops)");
        s
    }
}

/// A switchable wall-clock op timer for synchronous backends (the CPU's): while on, every
/// [`OpTimer::time`] guard adds its lifetime to the profile. Shared by a backend's clones.
#[derive(Debug, Default)]
pub struct OpTimer {
    on: AtomicBool,
    profile: Mutex<OpProfile>,
}

impl OpTimer {
    /// Clears the profile and starts recording.
    pub fn start(&self) {
        *self.lock() = OpProfile::default();
        self.on.store(true, Ordering::Relaxed);
    }

    /// Stops recording and returns what was recorded since [`OpTimer::start`].
    pub fn finish(&self) -> OpProfile {
        self.on.store(false, Ordering::Relaxed);
        std::mem::take(&mut *self.lock())
    }

    /// Times one call of `op` (doing `flops`): the returned guard records when it drops. Off,
    /// it reads no clock.
    pub fn time(&self, op: &'static str, flops: f64) -> OpClock<'_> {
        let start = self.on.load(Ordering::Relaxed).then(Instant::now);
        OpClock { timer: self, op, flops, start }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OpProfile> {
        self.profile.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// See [`OpTimer::time`].
pub struct OpClock<'a> {
    timer: &'a OpTimer,
    op: &'static str,
    flops: f64,
    start: Option<Instant>,
}

impl Drop for OpClock<'_> {
    fn drop(&mut self) {
        if let Some(start) = self.start {
            let seconds = start.elapsed().as_secs_f64();
            self.timer.lock().record(self.op, seconds, self.flops);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_the_linear_layer_shapes() {
        assert_eq!(matmul_label(&MatmulShape::linear_fwd(4, 8, 16)), "matmul fwd");
        assert_eq!(matmul_label(&MatmulShape::linear_bwd_input(4, 8, 16, true)), "matmul bwd-input");
        assert_eq!(matmul_label(&MatmulShape::linear_bwd_weight(4, 8, 16)), "matmul bwd-weight");
        assert_eq!(MatmulShape::linear_fwd(4, 8, 16).flops(), 2.0 * 4.0 * 8.0 * 16.0);
    }

    #[test]
    fn profile_aggregates_and_reports_the_remainder() {
        let mut p = OpProfile::default();
        p.record("matmul fwd", 0.002, 4e9);
        p.record("rmsnorm_fwd", 0.001, 0.0);
        p.record("matmul fwd", 0.002, 4e9);
        assert_eq!(p.totals().len(), 2);
        assert_eq!(p.totals()[0].calls, 2);
        let b = p.breakdown(0.010, 2, "test");
        assert_eq!(b.ops[0].op, "matmul fwd");
        assert_eq!(b.ops[0].calls_per_micro_batch, 1.0);
        assert!((b.ops[0].ms_per_micro_batch - 2.0).abs() < 1e-12);
        assert!((b.ops[0].share - 0.4).abs() < 1e-12);
        assert!((b.ops[0].tflops.unwrap() - 2.0).abs() < 1e-9);
        assert_eq!(b.ops[1].tflops, None);
        assert!((b.unaccounted_ms_per_micro_batch - 2.5).abs() < 1e-12);
        let text = b.render();
        assert!(text.contains("matmul fwd") && text.contains("unaccounted"), "{text}");
    }

    #[test]
    fn the_wall_clock_timer_records_only_while_on() {
        let timer = OpTimer::default();
        drop(timer.time("fill", 0.0));
        timer.start();
        drop(timer.time("fill", 0.0));
        drop(timer.time("fill", 0.0));
        let p = timer.finish();
        assert_eq!(p.totals().len(), 1);
        assert_eq!(p.totals()[0].calls, 2);
        drop(timer.time("fill", 0.0));
        assert!(timer.finish().totals().is_empty());
    }
}
