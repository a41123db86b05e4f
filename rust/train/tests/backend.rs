//! `--backend` and `--benchmark` through the command line and the binary, and the recipe's
//! `activation_checkpointing` key. None of these need a GPU: the test recipe's head dim 16 has
//! no CUDA kernel, so auto picks the CPU (saying why) on every machine and `--backend=cuda` is
//! refused on every machine; the CUDA runs themselves are device checks (docs/gpu.md).

mod common;

use common::{options, repo, run_quiet, scratch, small_recipe};
use std::process::Command;

fn cli(args: &[String]) -> (Result<(), String>, String) {
    let mut out = Vec::new();
    let result = kormo_train::cli::run(args, &mut out);
    (result, String::from_utf8(out).unwrap())
}

fn small_args(dir: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let recipe = repo().join("tests/recipes/test-small.toml");
    let mut args = vec![
        "--stage=pretrain1".to_string(),
        format!("--config={}", recipe.display()),
        format!("--run-dir={}", dir.display()),
        "--threads=2".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

#[test]
fn benchmark_on_the_cpu_reports_and_writes_json() {
    let dir = scratch("benchmark");
    let (result, out) = cli(&small_args(
        &dir,
        &["--benchmark", "--benchmark-steps=3", "--benchmark-warmup=1"],
    ));
    result.unwrap();
    assert!(out.starts_with("backend: cpu ("), "{out}");
    assert!(out.contains("MFU: n/a (CPU backend)"), "{out}");
    let file = dir.join("benchmark-pretrain1.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let number = |key: &str| {
        json[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key}: {json}"))
    };
    assert_eq!(json["backend"], "cpu");
    assert_eq!(json["forward_backward_s"].as_array().unwrap().len(), 3);
    assert_eq!(json["optimizer_s"].as_array().unwrap().len(), 3);
    assert!(json["mfu"].is_null() && json["peak_flops"].is_null());
    // The derived numbers follow from the measured ones and the stage's shape.
    let recipe = small_recipe();
    let phase = &recipe.stage("pretrain1").unwrap().phases[0];
    assert_eq!(json["seq_len"], phase.seq_len);
    assert_eq!(number("tokens_per_step"), phase.tokens_per_step() as f64);
    let step = phase.grad_accum as f64 * number("forward_backward_median_s")
        + number("optimizer_median_s");
    assert!((number("step_s") - step).abs() < 1e-12 * step.max(1.0));
    assert!(number("tokens_per_s") > 0.0);
    let flops = number("tokens_per_s") * number("flops_per_token");
    assert!((number("flops_per_s") - flops).abs() < 1e-9 * flops);
    assert!(number("last_loss").is_finite());
    // Nothing was trained or checkpointed.
    assert!(!dir.join("pretrain1").join("final").exists());
}

#[test]
fn explicit_cuda_without_a_usable_device_exits_2_with_the_reason() {
    let dir = scratch("backend-cuda");
    let output = Command::new(env!("CARGO_BIN_EXE_train"))
        .args(small_args(&dir, &["--backend=cuda", "--max-steps=1"]))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("error: --backend=cuda: "), "{stderr}");
    // Either there is no device, or the model's head dim 16 has no kernel.
    assert!(
        stderr.contains("no CUDA device") || stderr.contains("head_dim 16"),
        "{stderr}"
    );
    let (result, _) = cli(&small_args(&dir, &["--backend=cuda", "--world-size=2"]));
    assert!(result.unwrap_err().contains("--world-size=2"));
}

#[test]
fn auto_says_which_backend_and_why_then_the_memory_estimate() {
    let dir = scratch("backend-auto");
    let (result, out) = cli(&small_args(&dir, &["--max-steps=2", "--log-every=1"]));
    result.unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[1].starts_with("backend: cpu ("), "{out}");
    assert!(
        lines[1].contains("no CUDA device") || lines[1].contains("CUDA not usable"),
        "{out}"
    );
    assert!(
        out.contains("memory (estimated peak on the host, micro-batches of")
            && out.contains("activation checkpointing off"),
        "{out}"
    );
    // An explicit cpu says nothing about CUDA.
    let (result, out) = cli(&small_args(&dir, &["--max-steps=1", "--backend=cpu"]));
    result.unwrap();
    assert!(
        out.contains("backend: cpu (f32 reference, 2 threads)"),
        "{out}"
    );
}

#[test]
fn activation_checkpointing_is_a_stage_key_and_changes_no_result() {
    // The key parses from a recipe file ...
    let dir = scratch("checkpointing");
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(repo().join("tests/recipes/test-small.toml")).unwrap();
    let marked = text.replacen(
        "[stages.pretrain1]\n",
        "[stages.pretrain1]\nactivation_checkpointing = true\n",
        1,
    );
    assert_ne!(
        marked, text,
        "test-small.toml has a [stages.pretrain1] table"
    );
    let file = dir.join("checkpointed.toml");
    std::fs::write(&file, marked).unwrap();
    let recipe = kormo_train::recipe::Recipe::load(&file).unwrap();
    assert!(recipe.stage("pretrain1").unwrap().activation_checkpointing);
    assert!(!recipe.stage("pretrain2").unwrap().activation_checkpointing);
    // ... leaves the recipe hash alone (a run may resume with it switched) ...
    let plain = small_recipe();
    assert_eq!(recipe.hash(), plain.hash());
    // ... and gives the same losses, bit for bit (the model recomputes with the same ops).
    let mut opts = options("pretrain1", &dir.join("on"));
    opts.max_steps = Some(4);
    let on = run_quiet(&recipe, &opts);
    opts.run_dir = dir.join("off");
    let off = run_quiet(&plain, &opts);
    let losses = |r: &kormo_train::trainer::StageReport| {
        r.logged
            .iter()
            .map(|m| m.loss.to_bits())
            .collect::<Vec<_>>()
    };
    assert_eq!(losses(&on).len(), 4);
    assert_eq!(losses(&on), losses(&off));
}
