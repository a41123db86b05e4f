//! Shared helpers of the trainer tests: the small test recipe and scratch directories.
// Each test binary uses a subset of these.
#![allow(dead_code)]

use kormo_train::recipe::Recipe;
use kormo_train::trainer::{run_stage, RunOptions, StageReport};
use std::path::{Path, PathBuf};

pub fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// tests/recipes/test-small.toml: the tiny recipe's structure at test size.
pub fn small_recipe() -> Recipe {
    Recipe::load(&repo().join("tests/recipes/test-small.toml")).unwrap()
}

pub fn scratch(name: &str) -> PathBuf {
    let base = std::env::var_os("TEST_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("kormo-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

pub fn options(stage: &str, run_dir: &Path) -> RunOptions {
    RunOptions {
        stage: stage.into(),
        run_dir: run_dir.to_path_buf(),
        max_steps: None,
        stop_after: None,
        seed: None,
        resume: false,
        // Fixed so runs are comparable everywhere (results do not depend on it, see kormo-cpu).
        threads: Some(2),
        log_every: 1,
        world_size: 1,
        // Golden losses are the f32 CPU reference's.
        backend: kormo_train::backend::BackendChoice::Cpu,
        init_hf: None,
        faults: Default::default(),
    }
}

/// Runs a stage that must succeed, without console output.
pub fn run_quiet(recipe: &Recipe, opts: &RunOptions) -> StageReport {
    run_stage(recipe, opts, &mut std::io::sink()).unwrap()
}

/// Runs a stage that must fail; its error message.
pub fn run_error(recipe: &Recipe, opts: &RunOptions) -> String {
    run_stage(recipe, opts, &mut std::io::sink())
        .unwrap_err()
        .to_string()
}
