//! The ablation runner: recipe variants of one base recipe, each trained by the `train` binary
//! (a subprocess) with the same seed and step cap — so the same data order — into its own
//! folder, then their loss curves on one chart and a summary table.
//!
//! A variant is a set of recipe key overrides (`"optimizer.lr" = 1e-3`, dotted paths into the
//! base recipe's tables); its recipe is written to `OUT/<variant>/recipe.toml` and trained with
//! `train --config` so the file that produced a curve sits beside it. `train` checks the keys,
//! so a misspelt one fails that variant with train's own message.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use kormo_plot::{LineChart, Series};
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AblationSpec {
    /// Base recipe file; relative paths are against the spec's folder.
    pub base: PathBuf,
    /// The stage every variant trains (default pretrain1).
    #[serde(default = "default_stage")]
    pub stage: String,
    /// Optimizer steps of each variant (`train --max-steps`).
    pub max_steps: u64,
    /// One seed for all variants (model init and data order); default the recipe's.
    pub seed: Option<u64>,
    /// Extra `train` arguments for every variant (e.g. ["--backend", "cpu"]).
    #[serde(default)]
    pub train_args: Vec<String>,
    #[serde(rename = "variant")]
    pub variants: Vec<Variant>,
}

fn default_stage() -> String {
    "pretrain1".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub name: String,
    /// Recipe overrides: dotted key -> value.
    #[serde(default)]
    pub set: BTreeMap<String, toml::Value>,
}

/// One variant's outcome.
#[derive(Debug, Serialize)]
pub struct VariantSummary {
    pub name: String,
    pub steps: u64,
    pub final_loss: f64,
    /// Throughput of the last logged step.
    pub tokens_per_s: f64,
    pub tokens: u64,
}

impl AblationSpec {
    pub fn load(path: &Path) -> Result<AblationSpec, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut spec: AblationSpec = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if spec.base.is_relative() {
            spec.base = path.parent().unwrap_or(Path::new(".")).join(&spec.base);
        }
        let mut names = std::collections::HashSet::new();
        for v in &spec.variants {
            let safe = !v.name.is_empty() && v.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !safe || v.name.starts_with('.') || !names.insert(v.name.as_str()) {
                return Err(format!("{}: variant name {:?} must be unique and of [A-Za-z0-9._-]", path.display(), v.name));
            }
        }
        if spec.variants.is_empty() {
            return Err(format!("{}: no [[variant]]", path.display()));
        }
        Ok(spec)
    }
}

/// `base` with each dotted key of `set` replaced (missing tables are created).
pub fn apply_overrides(base: &str, set: &BTreeMap<String, toml::Value>) -> Result<String, String> {
    let mut table: toml::Table = base.parse().map_err(|e| format!("base recipe: {e}"))?;
    for (key, value) in set {
        let parts: Vec<&str> = key.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!("override key {key:?} has an empty part"));
        }
        let mut at = &mut table;
        for part in &parts[..parts.len() - 1] {
            let entry = at.entry(part.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            at = entry.as_table_mut().ok_or_else(|| format!("override key {key:?}: {part:?} is not a table in the base recipe"))?;
        }
        at.insert(parts[parts.len() - 1].to_string(), value.clone());
    }
    toml::to_string(&table).map_err(|e| e.to_string())
}

/// Trains one variant into `dir` (recipe.toml, run/, train.log).
pub fn train_variant(spec: &AblationSpec, variant: &Variant, base: &str, train_bin: &Path, dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let recipe = apply_overrides(base, &variant.set).map_err(|e| format!("variant {}: {e}", variant.name))?;
    let recipe_path = dir.join("recipe.toml");
    std::fs::write(&recipe_path, recipe).map_err(|e| format!("{}: {e}", recipe_path.display()))?;
    let log_path = dir.join("train.log");
    let log = std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let mut command = Command::new(train_bin);
    command
        .args(["--stage", &spec.stage, "--max-steps", &spec.max_steps.to_string(), "--log-every", "1"])
        .arg("--config")
        .arg(&recipe_path)
        .arg("--run-dir")
        .arg(dir.join("run"))
        .args(&spec.train_args)
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    if let Some(seed) = spec.seed {
        command.args(["--seed", &seed.to_string()]);
    }
    let status = command.status().map_err(|e| format!("{}: cannot start train: {e}", train_bin.display()))?;
    if !status.success() {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(format!("variant {}: train exited with {status}; {}:\n{}", variant.name, log_path.display(), tail.join("\n")));
    }
    Ok(())
}

/// The step records (loss per step) of a variant's metrics file.
pub fn step_records(metrics: &Path) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, String> {
    let lines = kormo_plot::metrics::read_metrics_file(metrics)?;
    Ok(lines.into_iter().filter(|l| l.get("record").is_none() && l.get("loss").and_then(|v| v.as_f64()).is_some()).collect())
}

/// Summary and loss curve of a trained variant.
pub fn summarize(name: &str, metrics: &Path) -> Result<(VariantSummary, Series), String> {
    let records = step_records(metrics)?;
    let last = records.last().ok_or_else(|| format!("{}: no step records", metrics.display()))?;
    let num = |k: &str| last.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
    let points = records
        .iter()
        .filter_map(|r| Some((r.get("step")?.as_f64()?, r.get("loss")?.as_f64()?)))
        .collect();
    let summary = VariantSummary {
        name: name.to_string(),
        steps: num("step") as u64,
        final_loss: num("loss"),
        tokens_per_s: num("tokens_per_s"),
        tokens: num("tokens") as u64,
    };
    Ok((summary, Series { name: name.to_string(), points }))
}

/// Runs every variant, then writes `OUT/loss.png`, `OUT/summary.md` and `OUT/summary.json`.
pub fn run(spec: &AblationSpec, train_bin: &Path, out: &Path, progress: &mut dyn FnMut(&str)) -> Result<Vec<VariantSummary>, String> {
    let base = std::fs::read_to_string(&spec.base).map_err(|e| format!("{}: {e}", spec.base.display()))?;
    let mut summaries = Vec::new();
    let mut series = Vec::new();
    for v in &spec.variants {
        let dir = out.join(&v.name);
        progress(&format!("variant {}: training into {}", v.name, dir.display()));
        train_variant(spec, v, &base, train_bin, &dir)?;
        let (s, line) = summarize(&v.name, &dir.join("run").join(&spec.stage).join("metrics.jsonl"))?;
        summaries.push(s);
        series.push(line);
    }
    let chart = LineChart { title: format!("{} loss by variant", spec.stage), x_label: "step".into(), y_label: "loss".into(), series };
    chart.render().save_png(&out.join("loss.png"))?;
    let json = serde_json::to_string_pretty(&summaries).map_err(|e| e.to_string())?;
    std::fs::write(out.join("summary.json"), json).map_err(|e| format!("{}: {e}", out.display()))?;
    std::fs::write(out.join("summary.md"), summary_markdown(&summaries)).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(summaries)
}

pub fn summary_markdown(summaries: &[VariantSummary]) -> String {
    let mut out = String::from("| variant | steps | final loss | tokens | tokens/s |\n|---|---:|---:|---:|---:|\n");
    for s in summaries {
        out.push_str(&format!("| {} | {} | {:.4} | {} | {:.0} |\n", s.name, s.steps, s.final_loss, s.tokens, s.tokens_per_s));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_and_create_keys() {
        let mut set = BTreeMap::new();
        set.insert("optimizer.lr".to_string(), toml::Value::Float(1e-3));
        set.insert("model.extra.depth".to_string(), toml::Value::Integer(2));
        let out: toml::Table = apply_overrides("[optimizer]\nlr = 3e-3\nbeta1 = 0.9\n", &set).unwrap().parse().unwrap();
        assert_eq!(out["optimizer"]["lr"].as_float(), Some(1e-3));
        assert_eq!(out["optimizer"]["beta1"].as_float(), Some(0.9));
        assert_eq!(out["model"]["extra"]["depth"].as_integer(), Some(2));
        let mut bad = BTreeMap::new();
        bad.insert("optimizer.lr.x".to_string(), toml::Value::Integer(1));
        let err = apply_overrides("[optimizer]\nlr = 3e-3\n", &bad).unwrap_err();
        assert!(err.contains("\"lr\" is not a table"), "{err}");
    }
}
