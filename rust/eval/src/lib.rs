//! kormo-eval: downstream benchmark evaluation of kormo models, scored as lm-evaluation-harness
//! scores them (docs/eval.md).
//!
//! * [`task`] — task files (harness field names) and JSONL documents.
//! * [`prompt`] — zero/few-shot contexts with seeded shot choice.
//! * [`score`] — choice log-likelihoods (context once per question) and greedy generation.
//! * [`metrics`] — acc, acc_norm, exact_match and their standard errors.
//!
//! Binary: `eval`.

pub mod metrics;
pub mod prompt;
pub mod score;
pub mod task;

use serde_json::{json, Value};

pub use score::{Scorer, TaskResult};

/// Results as JSON: per task, its metrics with stderr, throughput and per-example values.
pub fn to_json(results: &[TaskResult], model: &str) -> Value {
    let tasks: Vec<Value> = results
        .iter()
        .map(|r| {
            let metrics: serde_json::Map<String, Value> = r.scores.iter().map(|s| (s.metric.to_string(), json!({"score": s.value, "stderr": s.stderr}))).collect();
            json!({"task": r.task, "language": r.language, "shots": r.shots, "metrics": metrics, "questions_per_s": r.questions_per_s, "examples": r.examples})
        })
        .collect();
    json!({"model": model, "tasks": tasks})
}

/// The Markdown table: task, shots, metric, score, stderr.
pub fn to_markdown(results: &[TaskResult]) -> String {
    let mut s = String::from("| task | shots | metric | score | stderr |\n|---|---:|---|---:|---:|\n");
    for r in results {
        for m in &r.scores {
            s.push_str(&format!("| {} | {} | {} | {:.4} | {:.4} |\n", r.task, r.shots, m.metric, m.value, m.stderr));
        }
    }
    s
}
