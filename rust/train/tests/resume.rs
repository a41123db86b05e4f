//! Stop-and-resume equals an uninterrupted run, bit for bit: every logged loss, the final
//! weights and the AdamW moments. The interruption points fall inside a phase and across the
//! long_context -> reasoning boundary (where the optimizer is re-initialised), with gradient
//! accumulation in the reasoning phase.

mod common;

use common::{options, run_error, scratch, small_recipe};
use kormo_checkpoint::Checkpoint;
use kormo_train::metrics::read_metrics;
use kormo_train::trainer::{run_stage, MODEL_FILE, OPTIMIZER_FILE};

fn tensors(dir: &std::path::Path, file: &str) -> Vec<(String, Vec<u32>)> {
    let checkpoint = Checkpoint::load(dir).unwrap();
    let file = checkpoint.file(file).unwrap();
    file.tensors()
        .keys()
        .map(|name| {
            (
                name.clone(),
                file.raw(name)
                    .unwrap()
                    .chunks(4)
                    .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn resume_is_bitwise_identical_to_straight_run() {
    let recipe = small_recipe();
    let max_steps = Some(6);

    let straight_dir = scratch("straight");
    let mut opts = options("midtrain", &straight_dir);
    opts.max_steps = max_steps;
    let straight = run_stage(&recipe, &opts, &mut std::io::sink()).unwrap();
    assert!(straight.completed);
    assert_eq!(straight.logged.len(), 12);

    let split_dir = scratch("split");
    let mut opts = options("midtrain", &split_dir);
    opts.max_steps = max_steps;
    opts.stop_after = Some(4);
    let first = run_stage(&recipe, &opts, &mut std::io::sink()).unwrap();
    assert!(!first.completed);
    assert!(
        first.checkpoint.ends_with("checkpoints/step-000000004"),
        "{:?}",
        first.checkpoint
    );
    // A crash after logging step 5 but before its checkpoint: resuming drops that line.
    let mut ghost = first.logged.last().unwrap().clone();
    ghost.step = 5;
    ghost.loss = 123.0;
    let metrics_path = split_dir.join("midtrain/metrics.jsonl");
    let mut text = std::fs::read_to_string(&metrics_path).unwrap();
    text.push_str(&format!("{}\n", serde_json::to_string(&ghost).unwrap()));
    std::fs::write(&metrics_path, text).unwrap();
    opts.resume = true;
    let second = run_stage(&recipe, &opts, &mut std::io::sink()).unwrap();
    assert!(
        !second.completed,
        "4 more steps end inside the reasoning phase"
    );
    let third = run_stage(&recipe, &opts, &mut std::io::sink()).unwrap();
    assert!(third.completed);

    let resumed: Vec<_> = first
        .logged
        .iter()
        .chain(&second.logged)
        .chain(&third.logged)
        .cloned()
        .collect();
    let key = |m: &kormo_train::metrics::StepMetrics| {
        (
            m.phase.clone(),
            m.step,
            m.phase_step,
            m.loss.to_bits(),
            m.lr.to_bits(),
            m.grad_norm.to_bits(),
            m.tokens,
        )
    };
    assert_eq!(
        resumed.iter().map(key).collect::<Vec<_>>(),
        straight.logged.iter().map(key).collect::<Vec<_>>()
    );
    let phases: Vec<&str> = resumed.iter().map(|m| m.phase.as_str()).collect();
    assert_eq!(
        phases[3..8],
        [
            "long_context",
            "long_context",
            "long_context",
            "reasoning",
            "reasoning"
        ]
    );

    let a = straight_dir.join("midtrain/final");
    let b = split_dir.join("midtrain/final");
    assert_eq!(tensors(&a, MODEL_FILE), tensors(&b, MODEL_FILE));
    assert_eq!(tensors(&a, OPTIMIZER_FILE), tensors(&b, OPTIMIZER_FILE));
    let (ma, mb) = (
        Checkpoint::load(&a).unwrap().manifest,
        Checkpoint::load(&b).unwrap().manifest,
    );
    assert_eq!(
        ma.run, mb.run,
        "step, phase, rng state and data cursor agree"
    );

    // The metrics file of the resumed run holds every step once, in order (JSON text keeps the
    // values to within the last bit: serde_json's default float parser may round differently).
    let logged = read_metrics(&split_dir.join("midtrain/metrics.jsonl")).unwrap();
    assert_eq!(logged.len(), straight.logged.len());
    for (file, memory) in logged.iter().zip(&straight.logged) {
        assert_eq!(
            (&file.phase, file.step, file.tokens),
            (&memory.phase, memory.step, memory.tokens)
        );
        assert!(
            (file.loss - memory.loss).abs() <= 1e-14 * memory.loss.abs(),
            "{} vs {}",
            file.loss,
            memory.loss
        );
    }

    // Stopping exactly at the phase boundary: the next phase starts with a fresh optimizer,
    // as in the straight run.
    let boundary_dir = scratch("boundary");
    let mut boundary = options("midtrain", &boundary_dir);
    boundary.max_steps = max_steps;
    boundary.stop_after = Some(6);
    let head = run_stage(&recipe, &boundary, &mut std::io::sink()).unwrap();
    assert!(!head.completed && head.logged.last().unwrap().phase == "long_context");
    let tail = run_stage(&recipe, &boundary.with_resume(), &mut std::io::sink()).unwrap();
    let joined: Vec<_> = head.logged.iter().chain(&tail.logged).map(key).collect();
    assert_eq!(joined, straight.logged.iter().map(key).collect::<Vec<_>>());
    assert_eq!(
        tensors(&boundary_dir.join("midtrain/final"), MODEL_FILE),
        tensors(&a, MODEL_FILE)
    );

    // Resuming a finished stage does nothing and says so.
    let again = run_stage(&recipe, &opts, &mut std::io::sink()).unwrap();
    assert!(again.completed && again.logged.is_empty());
}

#[test]
fn resume_refuses_a_changed_run() {
    let recipe = small_recipe();
    let dir = scratch("changed");
    let mut opts = options("pretrain1", &dir);
    opts.max_steps = Some(4);
    opts.stop_after = Some(2);
    run_stage(&recipe, &opts, &mut std::io::sink()).unwrap();
    opts.resume = true;
    opts.seed = Some(99);
    let err = run_error(&recipe, &opts);
    assert!(err.contains("seed 1234, this run has 99"), "{err}");
    opts.seed = None;
    opts.max_steps = Some(5);
    let err = run_error(&recipe, &opts);
    assert!(err.contains("phase length"), "{err}");
    let mut other = recipe.clone();
    other.file.optimizer.lr = 1e-3;
    opts.max_steps = Some(4);
    let err = run_error(&other, &opts);
    assert!(err.contains("recipe hash"), "{err}");
    let err = run_error(&recipe, &options("sft", &dir).with_resume());
    assert!(
        err.contains("no checkpoint in") && err.contains("sft"),
        "{err}"
    );
}

/// The small test recipe with `model_keys` added to its `[model]` table, written into `dir`.
fn small_recipe_with(dir: &std::path::Path, model_keys: &str) -> kormo_train::recipe::Recipe {
    let text = std::fs::read_to_string(common::repo().join("tests/recipes/test-small.toml")).unwrap();
    let preset = "[model]\npreset = \"tiny\"\n";
    assert!(text.contains(preset));
    let path = dir.join("recipe.toml");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(&path, text.replacen(preset, &format!("{preset}{model_keys}"), 1)).unwrap();
    kormo_train::recipe::Recipe::load(&path).unwrap()
}

#[test]
fn a_mixln_recipe_trains_and_resumes_bitwise() {
    // `[model] norm = "mixln"` in a recipe: the tiny shape with its first layer post-LN.
    let dir = scratch("mixln");
    let recipe = small_recipe_with(&dir, "norm = \"mixln\"\nmixln_post_fraction = 0.5\n");
    assert_eq!(recipe.model.post_ln_layers(), 1);
    assert_ne!(recipe.hash(), small_recipe().hash());

    let mut opts = options("pretrain1", &dir.join("straight"));
    opts.max_steps = Some(6);
    let straight = run_stage(&recipe, &opts, &mut std::io::sink()).unwrap();
    assert!(straight.logged.iter().all(|m| m.loss.is_finite()));
    let mut pre = options("pretrain1", &dir.join("pre"));
    pre.max_steps = Some(6);
    let plain = run_stage(&small_recipe(), &pre, &mut std::io::sink()).unwrap();
    assert_ne!(straight.logged[5].loss, plain.logged[5].loss, "MixLN trains another model");

    let split = dir.join("split");
    let mut opts = options("pretrain1", &split);
    opts.max_steps = Some(6);
    opts.stop_after = Some(3);
    assert!(!run_stage(&recipe, &opts, &mut std::io::sink()).unwrap().completed);
    let resumed = run_stage(&recipe, &opts.clone().with_resume(), &mut std::io::sink()).unwrap();
    assert!(resumed.completed);
    let losses = |dir: &std::path::Path| -> Vec<u64> {
        read_metrics(&dir.join("pretrain1/metrics.jsonl")).unwrap().iter().map(|m| m.loss.to_bits()).collect()
    };
    assert_eq!(losses(&split), losses(&dir.join("straight")));
    assert_eq!(
        tensors(&resumed.checkpoint, MODEL_FILE),
        tensors(&straight.checkpoint, MODEL_FILE)
    );
    // The checkpoint records its architecture, so tools given the plain preset read it as the
    // Mix-LN model it is (and `hf export` refuses it, rust/hf/tests/mixln.rs).
    let read = kormo_hf::Weights::from_checkpoint(&straight.checkpoint, &kormo_model::ModelConfig::tiny()).unwrap();
    assert_eq!(read.config, recipe.model);
}

#[test]
fn an_mtp_recipe_trains_reports_both_losses_and_resumes_bitwise() {
    // `[model] mtp_depth = 2` in a recipe: two multi-token-prediction heads on the tiny shape.
    let dir = scratch("mtp");
    let recipe = small_recipe_with(&dir, "mtp_depth = 2\nmtp_loss_weight = 0.5\n");
    assert_eq!((recipe.model.mtp_depth, recipe.model.mtp_loss_weight), (2, 0.5));
    assert_ne!(recipe.hash(), small_recipe().hash());

    let mut opts = options("pretrain1", &dir.join("straight"));
    opts.max_steps = Some(6);
    let straight = run_stage(&recipe, &opts, &mut std::io::sink()).unwrap();
    assert!(straight.logged.iter().all(|m| m.loss.is_finite() && m.mtp_loss.is_some_and(f64::is_finite)));
    let mut plain_opts = options("pretrain1", &dir.join("plain"));
    plain_opts.max_steps = Some(6);
    let plain = run_stage(&small_recipe(), &plain_opts, &mut std::io::sink()).unwrap();
    assert!(plain.logged.iter().all(|m| m.mtp_loss.is_none()));
    // The first step's next-token loss is the same model's (the MTP tensors come last and the
    // shared ones initialise alike); after updates the MTP gradient makes another model.
    assert_eq!(straight.logged[0].loss.to_bits(), plain.logged[0].loss.to_bits());
    assert_ne!(straight.logged[5].loss, plain.logged[5].loss);
    let line = std::fs::read_to_string(dir.join("straight/pretrain1/metrics.jsonl")).unwrap();
    assert!(line.contains("\"mtp_loss\":"), "{line}");
    let line = std::fs::read_to_string(dir.join("plain/pretrain1/metrics.jsonl")).unwrap();
    assert!(!line.contains("mtp"), "{line}");

    let split = dir.join("split");
    let mut opts = options("pretrain1", &split);
    opts.max_steps = Some(6);
    opts.stop_after = Some(3);
    assert!(!run_stage(&recipe, &opts, &mut std::io::sink()).unwrap().completed);
    let resumed = run_stage(&recipe, &opts.clone().with_resume(), &mut std::io::sink()).unwrap();
    assert!(resumed.completed);
    let losses = |dir: &std::path::Path| -> Vec<(u64, Option<u64>)> {
        read_metrics(&dir.join("pretrain1/metrics.jsonl")).unwrap().iter().map(|m| (m.loss.to_bits(), m.mtp_loss.map(f64::to_bits))).collect()
    };
    assert_eq!(losses(&split), losses(&dir.join("straight")));
    let checkpoint = tensors(&resumed.checkpoint, MODEL_FILE);
    assert_eq!(checkpoint, tensors(&straight.checkpoint, MODEL_FILE));
    assert_eq!(checkpoint.iter().filter(|(name, _)| name.starts_with("mtp.")).count(), 4, "the MTP heads are checkpointed");
}

#[test]
fn a_causal_mask_recipe_trains_another_model_and_resumes_bitwise() {
    let dir = scratch("causal-mask");
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(common::repo().join("tests/recipes/test-small.toml")).unwrap();
    let path = dir.join("causal.toml");
    std::fs::write(&path, format!("{text}\n[attention]\nmask = \"causal\"\n")).unwrap();
    let recipe = kormo_train::recipe::Recipe::load(&path).unwrap();
    let run = |recipe: &kormo_train::recipe::Recipe, name: &str, stop: Option<u64>| {
        let mut opts = options("pretrain1", &dir.join(name));
        opts.max_steps = Some(6);
        opts.stop_after = stop;
        let report = run_stage(recipe, &opts, &mut std::io::sink()).unwrap();
        if stop.is_some() {
            run_stage(recipe, &opts.with_resume(), &mut std::io::sink()).unwrap()
        } else {
            report
        }
    };
    let straight = run(&recipe, "straight", None);
    let document = run(&small_recipe(), "document", None);
    // test-small packs several documents per row: seeing across them changes every loss after
    // the first update.
    assert_ne!(straight.logged[5].loss, document.logged[5].loss);
    let split = run(&recipe, "split", Some(3));
    let losses = |dir: &std::path::Path| -> Vec<u64> {
        read_metrics(&dir.join("pretrain1/metrics.jsonl")).unwrap().iter().map(|m| m.loss.to_bits()).collect()
    };
    assert_eq!(losses(&dir.join("split")), losses(&dir.join("straight")));
    assert_eq!(tensors(&split.checkpoint, MODEL_FILE), tensors(&straight.checkpoint, MODEL_FILE));
}
