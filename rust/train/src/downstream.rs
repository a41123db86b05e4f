//! Downstream benchmark scores during training: the recipe's `[downstream]` table names task
//! files (docs/eval.md) and an interval; every `interval` steps, and at the end of each phase,
//! the step loop gathers the full weights (collective) and rank 0 scores them with kormo_eval
//! on the CPU, appending one `{"record": "downstream", ...}` line per task and metric (and per
//! language) to metrics.jsonl, which `plot` draws beside the loss. Tasks and the tokenizer are
//! loaded before the first step, so a typo fails at once.

use crate::error::TrainError;
use crate::recipe::{Recipe, TokensConfig};
use kormo_hf::{NamedTensor, Weights};
use kormo_model::ParamSpec;
use serde_json::Value;

/// The loaded `[downstream]` section.
pub(crate) struct Downstream {
    tasks: Vec<kormo_eval::task::Task>,
    tokenizer: kormo_tokenizer::Tokenizer,
    interval: u64,
    threads: usize,
}

impl Downstream {
    /// The recipe's section, loaded (None without one). `threads`: the scorer's CPU threads.
    pub fn load(recipe: &Recipe, threads: usize) -> Result<Option<Downstream>, TrainError> {
        let Some(section) = &recipe.file.downstream else {
            return Ok(None);
        };
        let at = |key: &str, e: String| TrainError(format!("{}: key `downstream.{key}`: {e}", recipe.origin));
        let section = kormo_eval::DownstreamSection {
            tasks: section.tasks.iter().map(|t| recipe.base_dir.join(t)).collect(),
            ..section.clone()
        };
        let tasks = kormo_eval::load_tasks(&section).map_err(|e| at("tasks", e))?;
        let path = match (&section.tokenizer, &recipe.file.tokens) {
            (Some(path), _) | (None, TokensConfig::Bpe { tokenizer: path }) => recipe.base_dir.join(path),
            (None, _) => {
                return Err(at(
                    "tokenizer",
                    "give the tokenizer.json that encodes the prompts (the recipe's [tokens] names none)".into(),
                ))
            }
        };
        let tokenizer = kormo_tokenizer::hf::load(&path).map_err(|e| at("tokenizer", e.to_string()))?;
        Ok(Some(Downstream {
            tasks,
            tokenizer,
            interval: section.interval as u64,
            threads,
        }))
    }

    /// Whether scores are due after stage step `step` (`phase_done`: the phase's last step).
    pub fn is_due(&self, step: u64, phase_done: bool) -> bool {
        phase_done || step.is_multiple_of(self.interval)
    }

    /// The metrics records of `params` (the full f32 weights, in `specs` order) at `step`.
    pub fn records(
        &self,
        recipe: &Recipe,
        specs: &[ParamSpec],
        params: Vec<Vec<f32>>,
        step: u64,
    ) -> Result<Vec<Value>, TrainError> {
        let tensors = specs
            .iter()
            .zip(params)
            .map(|(spec, values)| NamedTensor {
                name: spec.name.clone(),
                shape: spec.shape.clone(),
                values,
            })
            .collect();
        let weights = Weights {
            config: recipe.model.clone(),
            tensors,
        };
        kormo_eval::in_loop_records(&weights, &self.tokenizer, &self.tasks, step as usize, self.threads)
            .map_err(|e| TrainError(format!("downstream evaluation at step {step}: {e}")))
    }
}

/// `downstream step 40: arc_easy (en) acc 0.5120 ± 0.0150`, the console line of a record.
pub(crate) fn line(record: &Value) -> String {
    let field = |key: &str| record.get(key).map_or_else(String::new, |v| v.as_str().map_or_else(|| v.to_string(), str::to_string));
    let score = record.get("score").and_then(Value::as_f64).unwrap_or(f64::NAN);
    let stderr = record
        .get("stderr")
        .and_then(Value::as_f64)
        .map_or_else(String::new, |e| format!(" ± {e:.4}"));
    format!(
        "downstream step {}: {} ({}) {} {score:.4}{stderr}",
        field("step"),
        field("task"),
        field("language"),
        field("metric")
    )
}
