//! kormo-eval: downstream benchmark evaluation of kormo models, scored as lm-evaluation-harness
//! scores them (docs/eval.md).
//!
//! * [`task`] — task files (harness field names) and JSONL documents.
//! * [`prompt`] — zero/few-shot contexts with seeded shot choice.
//! * [`loglik`] — batched choice log-likelihoods over `Model<O: Ops>` (CPU or CUDA): requests
//!   sorted and packed by length, single-token choices sharing their context's document.
//! * [`score`] — a task's questions through [`loglik`] (multiple choice) or greedy generation.
//! * [`metrics`] — acc, acc_norm, exact_match and their standard errors.
//!
//! Binary: `eval`.

pub mod loglik;
pub mod metrics;
pub mod prompt;
pub mod pyrandom;
pub mod score;
pub mod task;

use kormo_model::{Model, Ops};
use serde_json::{json, Value};

pub use loglik::Packing;
pub use score::{Scorer, TaskResult};

/// A forward-only model of `weights` on `ops` for the scorer: [`Model::for_inference`] (the
/// parameters alone, no gradient buffers) with activation checkpointing on, so a forward pass
/// keeps one layer's activations at a time.
pub fn scoring_model<O: Ops>(weights: &kormo_hf::Weights, ops: O) -> Result<Model<O>, String> {
    let tensors: Vec<&[f32]> = weights.tensors.iter().map(|t| t.values.as_slice()).collect();
    let mut model = Model::for_inference(weights.config.clone(), ops, &tensors).map_err(|e| e.to_string())?;
    model.set_activation_checkpointing(true);
    Ok(model)
}

/// Results as JSON: per task, its metrics with stderr, throughput (questions/s, scored tokens/s,
/// forward passes and rows of the multiple-choice scorer) and per-example values.
pub fn to_json(results: &[TaskResult], model: &str) -> Value {
    let tasks: Vec<Value> = results
        .iter()
        .map(|r| {
            let metrics: serde_json::Map<String, Value> = r.scores.iter().map(|s| (s.metric.to_string(), json!({"score": s.value, "stderr": s.stderr}))).collect();
            let s = &r.stats;
            json!({
                "task": r.task, "language": r.language, "shots": r.shots, "metrics": metrics,
                "questions_per_s": r.questions_per_s, "tokens_per_s": r.tokens_per_s,
                "forward_passes": s.forwards, "forward_rows": s.rows, "row_tokens": s.seq, "documents": s.documents,
                "scored_tokens": s.tokens, "padding_tokens": s.padding,
                "examples": r.examples,
            })
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

/// The recipe section of downstream evaluation during training: which task files to score
/// and every how many optimizer steps; `tokenizer`: the tokenizer.json that encodes the
/// prompts when the recipe's `[tokens]` names none (pre-tokenized shards).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DownstreamSection {
    pub tasks: Vec<std::path::PathBuf>,
    pub interval: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<std::path::PathBuf>,
}

/// Loads the section's tasks once (at trainer start, so a typo fails before step 1).
pub fn load_tasks(section: &DownstreamSection) -> Result<Vec<task::Task>, String> {
    if section.interval == 0 {
        return Err("downstream.interval must be at least 1".into());
    }
    section.tasks.iter().map(|p| task::Task::load(p)).collect()
}

/// Scores `weights` (the trainer's current parameters) on `tasks` and returns the
/// metrics.jsonl records of `step`: one `{"record": "downstream", "kind": "downstream", ...}`
/// per task and metric, then one per language and metric averaging that language's tasks
/// (docs/eval.md). Multiple choice runs through the batched scorer on `CpuOps<f32>` with
/// `threads` threads (a [`scoring_model`] of `weights`: a second copy of the parameters on the
/// host, no gradients), generation through the KV-cache decoder, made only when a task generates.
pub fn in_loop_records(weights: &kormo_hf::Weights, tok: &kormo_tokenizer::Tokenizer, tasks: &[task::Task], step: usize, threads: usize) -> Result<Vec<Value>, String> {
    let bos = tok.special_id("<|BOS|>").ok_or("the tokenizer has no <|BOS|>")?;
    let eot = tok.special_id("<|EOT|>").ok_or("the tokenizer has no <|EOT|>")?;
    let mut model = scoring_model(weights, kormo_cpu::CpuOps::<f32>::with_threads(threads))?;
    let generates = tasks.iter().any(|t| t.spec.output_type == task::OutputType::GenerateUntil);
    let mut decoder = generates.then(|| kormo_generate::Decoder::new(weights, threads));
    let mut scorer = Scorer { model: &mut model, decoder: decoder.as_mut(), tok, bos, eot, packing: Packing::default() };
    let results = tasks.iter().map(|t| scorer.run(t)).collect::<Result<Vec<_>, _>>()?;
    let mut records = Vec::new();
    let mut by_language: std::collections::BTreeMap<(String, &'static str), Vec<f64>> = Default::default();
    for r in &results {
        let language = r.language.clone().unwrap_or_else(|| "all".into());
        for s in &r.scores {
            records.push(json!({"record": "downstream", "kind": "downstream", "step": step, "task": r.task, "language": language, "shots": r.shots, "metric": s.metric, "score": s.value, "stderr": s.stderr}));
            by_language.entry((language.clone(), s.metric)).or_default().push(s.value);
        }
    }
    for ((language, metric), scores) in by_language {
        let mean = scores.iter().sum::<f64>() / scores.len() as f64;
        records.push(json!({"record": "downstream", "kind": "downstream", "step": step, "task": format!("mean_{language}"), "language": language, "metric": metric, "score": mean, "tasks": scores.len()}));
    }
    Ok(records)
}
