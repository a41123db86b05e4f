//! kormo-curate: the KORMo paper's Algorithm 1, difficulty curation of reasoning data.
//!
//! Two judge models (or more) answer every question; a sample is kept when all of them answer
//! it incorrectly (stage 1). The survivors are labelled by judges asked how hard the problem
//! is; a sample is kept when a consensus labels it hard (stage 2). The paper keeps ~1% of STEM
//! and ~11% of math samples this way (Qwen-30B and Qwen-4B as solvers).
//!
//! * [`config`] — the TOML config (fields, judges, prompts, extraction, labels, consensus).
//! * [`extract`] — templates, answer extraction and comparison, labels (no regular expressions).
//! * [`judge`] — kormo models in process, OpenAI-compatible endpoints over HTTP.
//! * [`progress`] — the append-only, fsync'd progress file that makes a curation resumable.
//! * [`run`] — the curation loop, the curated dataset and the report.
//!
//! Binary: `curate` (docs/curate.md).

pub mod config;
pub mod extract;
pub mod judge;
pub mod progress;
pub mod run;
