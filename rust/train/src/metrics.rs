//! Progress lines for people and a JSONL metrics file for tools.
//!
//! RUN_DIR/STAGE/metrics.jsonl gets one JSON object per logged step (all phases of the stage,
//! appended across resumes); the console gets the same numbers as one aligned line. Other
//! records share the file and carry a `"record"` field: `"event"` ([`EventRecord`]: a skipped
//! update, a restored checkpoint, a preemption, ...) and `"eval"` ([`EvalRecord`]: held-out loss
//! of one source). Step lines have no `"record"` field, so older files read the same.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// One logged step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    pub stage: String,
    pub phase: String,
    /// Optimizer steps taken in the stage (all phases), 1-based.
    pub step: u64,
    /// Optimizer steps taken in this phase, 1-based.
    pub phase_step: u64,
    pub phase_steps: u64,
    /// Mean next-token loss (with `[model] mtp_depth > 0` too, so runs with and without
    /// multi-token prediction compare).
    pub loss: f64,
    /// With `[model] mtp_depth > 0`: the mean loss of the multi-token-prediction heads over
    /// all depths (not weighted by `mtp_loss_weight`); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtp_loss: Option<f64>,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens consumed in the stage so far.
    pub tokens: u64,
    pub tokens_per_s: f64,
    /// Seconds spent training in this invocation.
    pub elapsed_s: f64,
    /// Estimated seconds until the end of the stage.
    pub eta_s: f64,
    /// The outlier guard skipped this step's update (always logged).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
}

impl StepMetrics {
    pub fn progress_line(&self) -> String {
        let width = self.phase_steps.to_string().len();
        format!(
            "{:>12} step {:>width$}/{} | loss {:.4}{} | lr {:.2e} | grad norm {:.3} | {:>6} tok/s | ETA {}",
            self.phase,
            self.phase_step,
            self.phase_steps,
            self.loss,
            self.mtp_loss.map(|l| format!(" | mtp loss {l:.4}")).unwrap_or_default(),
            self.lr,
            self.grad_norm,
            human_count(self.tokens_per_s),
            human_duration(self.eta_s),
        ) + if self.skipped { " | update skipped" } else { "" }
    }
}

/// Something that happened besides a normal step, e.g. `outlier_skip`, `nonfinite_restore`,
/// `checkpoint_fallback`, `preempted`, `stale_lock`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Always `"event"`.
    pub record: String,
    pub stage: String,
    pub phase: String,
    /// Stage step the event belongs to.
    pub step: u64,
    pub event: String,
    pub message: String,
}

impl EventRecord {
    pub fn new(stage: &str, phase: &str, step: u64, event: &str, message: String) -> EventRecord {
        EventRecord {
            record: "event".into(),
            stage: stage.into(),
            phase: phase.into(),
            step,
            event: event.into(),
            message,
        }
    }
}

/// Held-out loss of one data source after stage step `step`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Always `"eval"`.
    pub record: String,
    pub stage: String,
    pub phase: String,
    pub step: u64,
    pub source: String,
    /// Mean loss per trained token of the held-out rows.
    pub loss: f64,
    pub perplexity: f64,
    /// Trained (loss-weighted) tokens the mean is over.
    pub tokens: f64,
}

impl EvalRecord {
    pub fn line(&self) -> String {
        format!(
            "{:>12} eval at step {} | {:>10} | held-out loss {:.4} | ppl {:.2} | {} tokens",
            self.phase, self.step, self.source, self.loss, self.perplexity, self.tokens
        )
    }
}

/// Appends lines to a JSONL file.
pub struct MetricsFile {
    file: std::fs::File,
    path: std::path::PathBuf,
}

impl MetricsFile {
    /// Opens `path` for appending (`truncate`: start it afresh).
    pub fn open(path: &Path, truncate: bool) -> Result<MetricsFile, String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("{}: cannot create directory: {e}", dir.display()))?;
        }
        let cannot =
            |e: std::io::Error| format!("{}: cannot open metrics file: {e}", path.display());
        if truncate {
            std::fs::write(path, "").map_err(cannot)?;
        }
        // Always O_APPEND: [`truncate_after`] may shorten the file while it is open, and
        // appends must then land at the new end.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(cannot)?;
        Ok(MetricsFile {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Appends one record (a [`StepMetrics`], [`EventRecord`] or [`EvalRecord`]).
    pub fn append<T: Serialize>(&mut self, record: &T) -> Result<(), String> {
        let line = serde_json::to_string(record).expect("metrics serialise");
        writeln!(self.file, "{line}")
            .map_err(|e| format!("{}: cannot write metrics: {e}", self.path.display()))
    }

    /// Drops the lines logged after stage step `step` (steps undone by a restore).
    pub fn truncate_after(&mut self, step: u64) -> Result<(), String> {
        truncate_after(&self.path, step)
    }
}

/// Reads the step lines of a metrics file back (tests, tools).
pub fn read_metrics(path: &Path) -> Result<Vec<StepMetrics>, String> {
    read_lines(path, None)
}

/// Reads the records of kind `record` (`"event"`, `"eval"`) of a metrics file.
pub fn read_records<T: serde::de::DeserializeOwned>(
    path: &Path,
    record: &str,
) -> Result<Vec<T>, String> {
    read_lines(path, Some(record))
}

fn read_lines<T: serde::de::DeserializeOwned>(
    path: &Path,
    record: Option<&str>,
) -> Result<Vec<T>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = |e: serde_json::Error| format!("{}:{}: {e}", path.display(), i + 1);
        let value: serde_json::Value = serde_json::from_str(line).map_err(at)?;
        if value.get("record").and_then(|r| r.as_str()) == record {
            out.push(serde_json::from_str(line).map_err(at)?);
        }
    }
    Ok(out)
}

/// Drops the lines of `path` logged after stage step `step` (no file: nothing to do).
pub fn truncate_after(path: &Path, step: u64) -> Result<(), String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let step_of = |line: &str| {
        serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("step")?.as_u64())
    };
    let kept: String = text
        .lines()
        .filter(|line| step_of(line).is_some_and(|s| s <= step))
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(path, kept)
        .map_err(|e| format!("{}: cannot rewrite metrics: {e}", path.display()))
}

/// 1234 -> "1.2k", 2_500_000 -> "2.5M", 10.8e9 -> "10.8B" (counts of parameters and tokens).
pub fn human_count(value: f64) -> String {
    match value {
        v if v >= 1e12 => format!("{:.1}T", v / 1e12),
        v if v >= 1e9 => format!("{:.1}B", v / 1e9),
        v if v >= 1e6 => format!("{:.1}M", v / 1e6),
        v if v >= 1e3 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

/// 75.0 -> "1m15s".
pub fn human_duration(seconds: f64) -> String {
    if !seconds.is_finite() {
        return "?".into();
    }
    let s = seconds.round() as u64;
    match s {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_counts_and_durations() {
        assert_eq!(human_count(999.0), "999");
        assert_eq!(human_count(1234.0), "1.2k");
        assert_eq!(human_count(2_500_000.0), "2.5M");
        assert_eq!(human_count(10_756_624_384.0), "10.8B");
        assert_eq!(human_count(1.8e12), "1.8T");
        assert_eq!(human_duration(75.0), "1m15s");
        assert_eq!(human_duration(3.2), "3s");
        assert_eq!(human_duration(7260.0), "2h01m");
        assert_eq!(human_duration(f64::INFINITY), "?");
    }
}
