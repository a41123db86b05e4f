//! Stage chaining, checkpoints on disk, metrics, and the user-facing errors of `train`.

mod common;

use common::{options, repo, run_error, scratch, small_recipe};
use kormo_checkpoint::Checkpoint;
use kormo_train::metrics::read_metrics;
use kormo_train::trainer::{run_stage, MODEL_FILE};

#[test]
fn stages_chain_through_final_checkpoints() {
    let recipe = small_recipe();
    let dir = scratch("chain");
    let mut opts = options("pretrain1", &dir);
    opts.max_steps = Some(7);
    opts.log_every = 3;
    let mut out = Vec::new();
    let report = run_stage(&recipe, &opts, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("backend: cpu")
            && text.contains("parameters")
            && text.contains("data (pretrain1): web 1"),
        "{text}"
    );
    assert!(text.contains("init: from scratch"), "{text}");
    // Logged: first step, every 3rd, last.
    let steps: Vec<u64> = report.logged.iter().map(|m| m.phase_step).collect();
    assert_eq!(steps, [1, 3, 6, 7]);
    let metrics = read_metrics(&dir.join("pretrain1/metrics.jsonl")).unwrap();
    let steps_in_file: Vec<u64> = metrics.iter().map(|m| m.phase_step).collect();
    assert_eq!(steps_in_file, steps);
    for (file, memory) in metrics.iter().zip(&report.logged) {
        assert!(
            (file.loss - memory.loss).abs() <= 1e-14 * memory.loss,
            "{} vs {}",
            file.loss,
            memory.loss
        );
    }
    assert!(metrics
        .iter()
        .all(|m| m.tokens_per_s > 0.0 && m.elapsed_s > 0.0 && m.lr > 0.0 && m.grad_norm > 0.0));
    assert_eq!(metrics.last().unwrap().tokens, 7 * 64 * 4);
    // Periodic checkpoints every 3 steps, keep_last 2, plus the final one.
    let periodic: Vec<u64> = kormo_checkpoint::list_steps(&dir.join("pretrain1/checkpoints"))
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(periodic, [3, 6]);
    let final_ckpt = Checkpoint::load(&dir.join("pretrain1/final")).unwrap();
    assert_eq!(
        (
            final_ckpt.manifest.run.step,
            final_ckpt.manifest.run.stage.as_str()
        ),
        (7, "pretrain1")
    );
    assert!(
        final_ckpt.manifest.run.data_cursor["taken"][0]
            .as_u64()
            .unwrap()
            > 0
    );

    // pretrain2 starts from pretrain1's final weights, with a fresh optimizer.
    let mut out = Vec::new();
    let mut opts2 = options("pretrain2", &dir);
    opts2.max_steps = Some(2);
    run_stage(&recipe, &opts2, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("init: weights of")
            && text.contains("pretrain1/final")
            && text.contains("fresh optimizer"),
        "{text}"
    );
    let first_loss_p2 = read_metrics(&dir.join("pretrain2/metrics.jsonl")).unwrap()[0].loss;
    assert!(
        first_loss_p2 < metrics[0].loss,
        "pretrain2 starts from trained weights ({first_loss_p2} vs {})",
        metrics[0].loss
    );

    // A rerun of a stage without --resume starts it afresh.
    opts.max_steps = Some(2);
    run_stage(&recipe, &opts, &mut std::io::sink()).unwrap();
    assert!(kormo_checkpoint::list_steps(&dir.join("pretrain1/checkpoints")).is_empty());
    assert_eq!(
        read_metrics(&dir.join("pretrain1/metrics.jsonl"))
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn missing_init_checkpoint_names_the_command() {
    let mut recipe = small_recipe();
    let dir = scratch("noinit");
    let mut out = Vec::new();
    let mut opts = options("sft", &dir);
    opts.max_steps = Some(1);
    run_stage(&recipe, &opts, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("tools/bazel run //rust:train -- --stage=midtrain")
            && text.contains("starts from scratch instead"),
        "{text}"
    );

    recipe.file.scratch_if_init_missing = false;
    let err = run_error(&recipe, &opts);
    assert!(
        err.contains("final checkpoint of stage midtrain, which is missing"),
        "{err}"
    );
    // The command names the recipe file that ran (its `name` is no preset).
    assert!(
        err.contains(&format!(
            "tools/bazel run //rust:train -- --stage=midtrain --config={}",
            recipe.origin
        )),
        "{err}"
    );
}

#[test]
fn corrupt_init_checkpoint_is_an_error_naming_the_file() {
    let recipe = small_recipe();
    let dir = scratch("corrupt");
    let mut opts = options("pretrain1", &dir);
    opts.max_steps = Some(1);
    run_stage(&recipe, &opts, &mut std::io::sink()).unwrap();
    let weights = dir.join("pretrain1/final").join(MODEL_FILE);
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() - 10]).unwrap();
    let err = run_error(&recipe, &options("pretrain2", &dir));
    assert!(
        err.contains("model.safetensors") && err.contains("truncated"),
        "{err}"
    );
}

#[test]
fn command_line_errors_are_messages() {
    let run = |args: &[&str]| {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        kormo_train::cli::run(&args, &mut std::io::sink())
    };
    // tiny's head dim 32 has no CUDA kernel, so this fails with or without a GPU.
    let err = run(&["--stage=midtrain", "--backend=cuda"]).unwrap_err();
    assert!(err.starts_with("--backend=cuda: "), "{err}");
    let err = run(&["--stage=pretrain3"]).unwrap_err();
    assert!(err.contains("unknown stage `pretrain3`"), "{err}");
    let missing = repo().join("configs/nope.toml");
    let err = run(&["--stage=sft", &format!("--config={}", missing.display())]).unwrap_err();
    assert!(
        err.contains("nope.toml") && err.contains("cannot read recipe"),
        "{err}"
    );
    let dir = scratch("cli-data");
    let err = run(&[
        "--stage=pretrain1",
        "--config=kormo-10.8b",
        &format!("--run-dir={}", dir.display()),
        "--max-steps=1",
    ]);
    let err = err.unwrap_err();
    assert!(
        err.contains("data/kormo/code_math/manifest.json") && err.contains("key sources.code_math"),
        "{err}"
    );
    let mut help = Vec::new();
    let args = vec!["--help".to_string()];
    kormo_train::cli::run(&args, &mut help).unwrap();
    assert!(String::from_utf8(help).unwrap().contains("--stage=NAME"));
}
