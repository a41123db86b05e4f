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

/// The ops one forward+backward of `config` calls, with their counts, from the model's
/// structure: per layer 2 RMSNorms, 7 linear layers (q, k, v, o, gate, up, down), RoPE on q and
/// k, attention, SwiGLU and 2 residual copies; then the final norm and LM head, the loss, the
/// embedding; `zero_grads` fills every gradient and the head backward clears `d_resid`. With
/// activation checkpointing every layer but the last (still held) recomputes its forward
/// without the down projection and its copy.
fn expected_op_calls(
    config: &kormo_model::ModelConfig,
    checkpointing: bool,
) -> std::collections::BTreeMap<&'static str, u64> {
    let l = config.layers as u64;
    let recomputed = if checkpointing { l - 1 } else { 0 };
    let tensors = kormo_model::params::layout(config).len() as u64;
    [
        ("write", 1),     // loss weights
        ("write_idx", 4), // tokens, targets, document ids, positions
        ("fill", tensors + 1),
        ("embedding_fwd", 1),
        ("embedding_bwd", 1),
        ("rmsnorm_fwd", 2 * l + 1 + 2 * recomputed),
        ("rmsnorm_bwd", 2 * l + 1),
        ("matmul fwd", 7 * l + 1 + 6 * recomputed),
        ("matmul bwd-input", 7 * l + 1),
        ("matmul bwd-weight", 7 * l + 1),
        ("rope_fwd", 2 * l + 2 * recomputed),
        ("rope_bwd", 2 * l),
        ("attention_fwd", l + recomputed),
        ("attention_bwd", l),
        ("swiglu_fwd", l + recomputed),
        ("swiglu_bwd", l),
        ("copy", 2 * l + recomputed),
        ("cross_entropy", 1),
        ("sum", 2), // the loss and the weight sums
    ]
    .into_iter()
    .collect()
}

/// Runs `--benchmark` on the CPU for `recipe` and checks the per-op breakdown in its output and
/// JSON against the model's structure and the measured wall time.
fn check_op_breakdown(recipe: &std::path::Path, dir: &std::path::Path) {
    let args: Vec<String> = vec![
        "--stage=pretrain1".into(),
        format!("--config={}", recipe.display()),
        format!("--run-dir={}", dir.display()),
        "--threads=2".into(),
        "--benchmark".into(),
        "--benchmark-steps=1".into(),
        "--benchmark-warmup=1".into(),
    ];
    let (result, out) = cli(&args);
    result.unwrap();
    assert!(
        out.contains("per-op breakdown (2 profiled micro-batches"),
        "{out}"
    );
    assert!(out.contains("wall clock around each op call"), "{out}");
    assert!(out.contains("unaccounted"), "{out}");
    assert!(!out.contains("n/a (no op timers"), "{out}");
    let loaded = kormo_train::recipe::Recipe::load(recipe).unwrap();
    let checkpointing = loaded.stage("pretrain1").unwrap().activation_checkpointing;
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("benchmark-pretrain1.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json["activation_checkpointing"], checkpointing);
    assert!(json["op_breakdown_error"].is_null(), "{json}");
    let breakdown = &json["op_breakdown"];
    let number = |v: &serde_json::Value| v.as_f64().unwrap_or_else(|| panic!("{breakdown}"));
    let rows = breakdown["ops"].as_array().unwrap();
    // Exactly the ops the model calls, each as often as its structure says.
    let got: std::collections::BTreeMap<&str, u64> = rows
        .iter()
        .map(|r| {
            let calls = number(&r["calls_per_micro_batch"]);
            assert_eq!(calls.fract(), 0.0, "{r}");
            (r["op"].as_str().unwrap(), calls as u64)
        })
        .collect();
    assert_eq!(got, expected_op_calls(&loaded.model, checkpointing));
    // Each op is printed, and only GEMMs have a FLOP rate.
    for r in rows {
        let op = r["op"].as_str().unwrap();
        assert!(
            out.lines().any(|line| line.trim_start().starts_with(op)),
            "{op}: {out}"
        );
        assert!(number(&r["ms_per_micro_batch"]) >= 0.0, "{r}");
        assert_eq!(r["tflops"].is_number(), op.starts_with("matmul"), "{r}");
    }
    // The op times add up to no more than the wall time they were measured in.
    let (ops, wall) = (
        number(&breakdown["ops_ms_per_micro_batch"]),
        number(&breakdown["wall_ms_per_micro_batch"]),
    );
    let rows_sum: f64 = rows.iter().map(|r| number(&r["ms_per_micro_batch"])).sum();
    assert!(
        (rows_sum - ops).abs() < 1e-9 * wall.max(1.0),
        "{rows_sum} vs {ops}"
    );
    assert!(
        ops > 0.0 && ops <= wall + 1e-6,
        "ops {ops} ms, wall {wall} ms"
    );
    let unaccounted = number(&breakdown["unaccounted_ms_per_micro_batch"]);
    assert!((wall - ops - unaccounted).abs() < 1e-9 * wall.max(1.0));
    let shares: f64 = rows.iter().map(|r| number(&r["share"])).sum();
    assert!((shares - ops / wall).abs() < 1e-9, "{shares}");
}

#[test]
fn benchmark_breaks_forward_backward_down_per_op_on_the_cpu() {
    check_op_breakdown(&repo().join("configs/tiny.toml"), &scratch("op-breakdown"));
}

#[test]
fn op_breakdown_counts_the_recomputation_of_activation_checkpointing() {
    let dir = scratch("op-breakdown-checkpointing");
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(repo().join("tests/recipes/test-small.toml")).unwrap();
    let marked = text.replacen(
        "[stages.pretrain1]\n",
        "[stages.pretrain1]\nactivation_checkpointing = true\n",
        1,
    );
    assert_ne!(marked, text);
    let file = dir.join("checkpointed.toml");
    std::fs::write(&file, marked).unwrap();
    check_op_breakdown(&file, &dir.join("run"));
}
