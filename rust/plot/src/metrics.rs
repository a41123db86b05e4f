//! Training curves of a run directory: every `RUN_DIR/<stage>/metrics.jsonl` (one JSON object
//! per logged step, written by the trainer) becomes charts of loss, learning rate, gradient
//! norm, throughput, any `eval*` metric and each (task, metric) of `"kind": "downstream"`
//! records (docs/eval.md), one PNG per metric with one line per stage.
//!
//! Stages are laid end to end on a shared "step" axis (a stage's steps are offset by the last
//! step of the stages before it, in pipeline order pretrain1, pretrain2, midtrain, sft, then
//! any other folder by name), so the whole pipeline reads as one curve in stage colours; a
//! stage with several phases (midtrain: long context, then reasoning) gets one line per phase.
//! Lines are parsed as generic JSON so new fields need no change here; a malformed line is an
//! error naming the file and line.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::chart::{LineChart, Series};

/// Pipeline order of the stages kormo trains.
const STAGE_ORDER: [&str; 4] = ["pretrain1", "pretrain2", "midtrain", "sft"];

/// The metrics file of one stage.
#[derive(Debug, Clone, PartialEq)]
pub struct StageMetrics {
    pub stage: String,
    pub records: Vec<Map<String, Value>>,
}

/// Metrics every trainer line has: (JSON key, output file stem, chart title).
const TRAINING_METRICS: [(&str, &str, &str); 4] = [
    ("loss", "loss", "training loss"),
    ("lr", "lr", "learning rate"),
    ("grad_norm", "grad_norm", "gradient norm (before clipping)"),
    ("tokens_per_s", "throughput", "throughput (tokens/s)"),
];

/// Reads one `metrics.jsonl`.
pub fn read_metrics_file(path: &Path) -> Result<Vec<Map<String, Value>>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let mut records = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(map)) => records.push(map),
            Ok(_) => return Err(format!("{}:{}: expected a JSON object", path.display(), n + 1)),
            Err(e) => return Err(format!("{}:{}: not valid JSON: {e}", path.display(), n + 1)),
        }
    }
    Ok(records)
}

/// Every stage of `run_dir` that has a `metrics.jsonl`, in pipeline order.
pub fn read_run(run_dir: &Path) -> Result<Vec<StageMetrics>, String> {
    let entries = std::fs::read_dir(run_dir).map_err(|e| format!("{}: cannot list run directory: {e}", run_dir.display()))?;
    let mut stages = Vec::new();
    for entry in entries.filter_map(|e| e.ok()) {
        let path = entry.path().join("metrics.jsonl");
        if path.is_file() {
            let stage = entry.file_name().to_string_lossy().into_owned();
            stages.push(StageMetrics { stage, records: read_metrics_file(&path)? });
        }
    }
    if stages.is_empty() {
        return Err(format!("{}: no <stage>/metrics.jsonl found (is this a run directory?)", run_dir.display()));
    }
    let rank = |s: &str| STAGE_ORDER.iter().position(|&o| o == s).unwrap_or(STAGE_ORDER.len());
    stages.sort_by(|a, b| rank(&a.stage).cmp(&rank(&b.stage)).then(a.stage.cmp(&b.stage)));
    Ok(stages)
}

/// What one chart shows: output file stem, title, y label and how a record yields its value.
type Metric = (String, String, String, Box<dyn Fn(&Map<String, Value>) -> Option<f64>>);

/// One chart per metric: the training metrics present in any stage, every `eval*` key, then
/// every (task, metric) of the `{"kind": "downstream"}` records (docs/eval.md), so benchmark
/// curves sit beside the loss.
pub fn charts(stages: &[StageMetrics]) -> Vec<(String, LineChart)> {
    let stem_of = |key: &str| -> String { key.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect() };
    let field = |key: String| -> Box<dyn Fn(&Map<String, Value>) -> Option<f64>> { Box::new(move |r| if r.get("kind").is_some_and(|k| k == "downstream") { None } else { r.get(&key).and_then(Value::as_f64) }) };
    let mut metrics: Vec<Metric> = TRAINING_METRICS.iter().map(|&(key, stem, title)| (stem.to_string(), title.to_string(), key.to_string(), field(key.to_string()))).collect();
    let records = || stages.iter().flat_map(|s| s.records.iter());
    let mut eval_keys: Vec<String> = records().flat_map(|r| r.keys()).filter(|k| k.starts_with("eval")).cloned().collect();
    eval_keys.sort();
    eval_keys.dedup();
    for key in eval_keys {
        metrics.push((stem_of(&key), key.replace('_', " "), key.clone(), field(key)));
    }
    let mut downstream: Vec<(String, String)> = records()
        .filter(|r| r.get("kind").is_some_and(|k| k == "downstream"))
        .filter_map(|r| Some((r.get("task")?.as_str()?.to_string(), r.get("metric")?.as_str()?.to_string())))
        .collect();
    downstream.sort();
    downstream.dedup();
    for (task, metric) in downstream {
        let (t, m) = (task.clone(), metric.clone());
        let value: Box<dyn Fn(&Map<String, Value>) -> Option<f64>> =
            Box::new(move |r| (r.get("kind")? == "downstream" && r.get("task")? == t.as_str() && r.get("metric")? == m.as_str()).then(|| r.get("score")?.as_f64()).flatten());
        metrics.push((stem_of(&format!("downstream_{task}_{metric}")), format!("{task} ({metric})"), metric, value));
    }
    metrics.into_iter().filter_map(|(stem, title, y_label, value)| {
        let series = stage_series(stages, &*value);
        (!series.is_empty()).then(|| (stem, LineChart { title, x_label: "step (stages end to end)".into(), y_label, series }))
    }).collect()
}

/// The points `value` picks out of each stage, stages end to end on the step axis, one line
/// per phase (midtrain has two), named stage:phase when there are several.
fn stage_series(stages: &[StageMetrics], value: &dyn Fn(&Map<String, Value>) -> Option<f64>) -> Vec<Series> {
    let mut offset = 0.0;
    let mut series = Vec::new();
    for stage in stages {
        let mut last_step: f64 = 0.0;
        let mut phases: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        for (i, record) in stage.records.iter().enumerate() {
            let step = record.get("step").and_then(Value::as_f64).unwrap_or((i + 1) as f64);
            last_step = last_step.max(step);
            let phase = record.get("phase").and_then(Value::as_str).unwrap_or("").to_string();
            let Some(y) = value(record) else { continue };
            match phases.iter_mut().find(|(p, _)| *p == phase) {
                Some((_, points)) => points.push((offset + step, y)),
                None => phases.push((phase, vec![(offset + step, y)])),
            }
        }
        offset += last_step;
        let several = phases.len() > 1;
        for (phase, points) in phases {
            let name = if several { format!("{}:{phase}", stage.stage) } else { stage.stage.clone() };
            series.push(Series { name, points });
        }
    }
    series
}

/// Renders the charts of `run_dir` into `out_dir` (created); returns the PNG paths.
pub fn plot_run(run_dir: &Path, out_dir: &Path) -> Result<Vec<PathBuf>, String> {
    let stages = read_run(run_dir)?;
    let charts = charts(&stages);
    if charts.is_empty() {
        return Err(format!("{}: the metrics files hold none of loss, lr, grad_norm, tokens_per_s, eval* or downstream records", run_dir.display()));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| format!("{}: cannot create: {e}", out_dir.display()))?;
    let mut written = Vec::new();
    for (stem, chart) in charts {
        let path = out_dir.join(format!("{stem}.png"));
        chart.render().save_png(&path)?;
        written.push(path);
    }
    Ok(written)
}
