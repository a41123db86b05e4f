//! Stability and fault handling of the trainer, each through the real code path: the outlier
//! guard skipping a spiking update, NaN recovery from the last good checkpoint (and its bound),
//! a damaged checkpoint at resume, shards of another tokenizer, a full disk while
//! checkpointing, and two jobs on one run directory. (Preemption by signal: tests/preempt.rs.)

mod common;

use common::{options, run_error, run_quiet, scratch, small_recipe};
use kormo_checkpoint::Checkpoint;
use kormo_train::metrics::{read_metrics, read_records, EventRecord, StepMetrics};
use kormo_train::recipe::{Recipe, TokensConfig};
use kormo_train::trainer::{run_stage, MODEL_FILE};
use std::path::Path;

/// The small recipe with the guard armed after 4 steps, checkpoints every `every` steps.
fn recipe(every: u64) -> Recipe {
    let mut recipe = small_recipe();
    recipe.file.stability.outlier_window = 8;
    recipe.file.stability.outlier_warmup = 4;
    recipe.file.checkpoint.every_steps = every;
    recipe.file.checkpoint.keep_last = 100;
    recipe
}

fn events(dir: &Path, stage: &str) -> Vec<EventRecord> {
    read_records(&dir.join(stage).join("metrics.jsonl"), "event").unwrap()
}

fn weights(checkpoint: &Path) -> Vec<(String, Vec<u8>)> {
    let checkpoint = Checkpoint::load(checkpoint).unwrap();
    let file = checkpoint.file(MODEL_FILE).unwrap();
    file.tensors()
        .keys()
        .map(|name| (name.clone(), file.raw(name).unwrap().to_vec()))
        .collect()
}

fn step_dir(dir: &Path, stage: &str, step: u64) -> std::path::PathBuf {
    dir.join(stage)
        .join("checkpoints")
        .join(kormo_checkpoint::step_dir_name(step))
}

fn losses(logged: &[StepMetrics]) -> Vec<(u64, u64)> {
    logged.iter().map(|m| (m.step, m.loss.to_bits())).collect()
}

#[test]
fn outlier_guard_skips_the_spiking_update() {
    let recipe = recipe(1);
    let clean_dir = scratch("guard-clean");
    let mut opts = options("pretrain1", &clean_dir);
    opts.max_steps = Some(10);
    let clean = run_quiet(&recipe, &opts);
    assert!(
        events(&clean_dir, "pretrain1").is_empty(),
        "no spike in a normal run"
    );

    let spiky_dir = scratch("guard-spike");
    let mut opts = options("pretrain1", &spiky_dir);
    opts.max_steps = Some(10);
    opts.faults.loss_override.insert(8, 50.0);
    let mut out = Vec::new();
    let spiky = run_stage(&recipe, &opts, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("event outlier_skip: step 8: loss 50.0000 is"),
        "{text}"
    );

    let events = events(&spiky_dir, "pretrain1");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (events[0].event.as_str(), events[0].step),
        ("outlier_skip", 8)
    );
    assert!(
        events[0]
            .message
            .contains("stability.outlier_threshold = 5"),
        "{events:?}"
    );
    let logged = read_metrics(&spiky_dir.join("pretrain1/metrics.jsonl")).unwrap();
    assert_eq!(
        logged
            .iter()
            .filter(|m| m.skipped)
            .map(|m| m.step)
            .collect::<Vec<_>>(),
        [8]
    );
    // Steps before the spike are untouched; the skipped step left the weights as they were
    // after step 7, so every later step differs from the clean run.
    assert_eq!(losses(&spiky.logged[..7]), losses(&clean.logged[..7]));
    assert_eq!(
        weights(&step_dir(&spiky_dir, "pretrain1", 8)),
        weights(&step_dir(&clean_dir, "pretrain1", 7))
    );
    assert_ne!(spiky.logged[8].loss, clean.logged[8].loss);
    assert!(spiky.completed);

    // The guard's history is in the checkpoint: stopping at step 6 and resuming scores step 8
    // against the same window and skips it again, bit for bit.
    let split_dir = scratch("guard-split");
    let mut opts = options("pretrain1", &split_dir);
    opts.max_steps = Some(10);
    opts.stop_after = Some(6);
    opts.faults.loss_override.insert(8, 50.0);
    let head = run_quiet(&recipe, &opts);
    let tail = run_quiet(&recipe, &opts.with_resume());
    let joined: Vec<_> = head.logged.iter().chain(&tail.logged).cloned().collect();
    assert_eq!(losses(&joined), losses(&spiky.logged));
    assert_eq!(
        weights(&split_dir.join("pretrain1/final")),
        weights(&spiky_dir.join("pretrain1/final"))
    );
}

#[test]
fn nonfinite_loss_restores_the_last_good_checkpoint() {
    let recipe = recipe(3);
    let dir = scratch("nan");
    let mut opts = options("pretrain1", &dir);
    opts.max_steps = Some(8);
    opts.faults.loss_override.insert(5, f64::NAN);
    let mut out = Vec::new();
    let report = run_stage(&recipe, &opts, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(report.completed);
    assert!(text.contains("event nonfinite_restore: loss NaN"), "{text}");
    let events = events(&dir, "pretrain1");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (events[0].event.as_str(), events[0].step),
        ("nonfinite_restore", 3)
    );
    assert!(
        events[0].message.contains("step-000000003")
            && events[0].message.contains("not finite at step 5")
            && events[0].message.contains("restore 1 of at most 3"),
        "{events:?}"
    );
    // Every step is logged once, in order, the undone steps 4 and 5 only in their replay.
    let logged = read_metrics(&dir.join("pretrain1/metrics.jsonl")).unwrap();
    assert_eq!(
        logged.iter().map(|m| m.step).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6, 7, 8]
    );
    assert!(logged.iter().all(|m| m.loss.is_finite()));
    assert_eq!(
        report.logged.iter().map(|m| m.step).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6, 7, 8]
    );
    // The replay reads fresh data (the stream moved on), so step 4 differs from the first try.
    let straight_dir = scratch("nan-straight");
    let mut straight = options("pretrain1", &straight_dir);
    straight.max_steps = Some(8);
    let straight = run_quiet(&recipe, &straight);
    assert_eq!(losses(&report.logged[..3]), losses(&straight.logged[..3]));
    assert_ne!(report.logged[3].loss, straight.logged[3].loss);
    assert_eq!(
        Checkpoint::load(&dir.join("pretrain1/final"))
            .unwrap()
            .manifest
            .run
            .step,
        8
    );

    // Bounded: a second fault with retries = 1 is a clear failure.
    let mut strict = recipe.clone();
    strict.file.stability.nonfinite_retries = 1;
    let dir = scratch("nan-bound");
    let mut opts = options("pretrain1", &dir);
    opts.max_steps = Some(8);
    opts.faults.loss_override.insert(5, f64::NAN);
    opts.faults.loss_override.insert(6, f64::INFINITY);
    let err = run_error(&strict, &opts);
    assert!(
        err.contains("not finite at step 6")
            && err.contains("after 1 restores")
            && err.contains("stability.nonfinite_retries = 1"),
        "{err}"
    );
    // Before any checkpoint of the phase there is nothing to restore.
    let dir = scratch("nan-early");
    let mut opts = options("pretrain1", &dir);
    opts.max_steps = Some(8);
    opts.faults.loss_override.insert(2, f64::NAN);
    let err = run_error(&recipe, &opts);
    assert!(
        err.contains("not finite at step 2") && err.contains("no checkpoint of this phase"),
        "{err}"
    );
}

#[test]
fn damaged_checkpoint_at_resume_falls_back_to_the_previous_one() {
    let recipe = recipe(3);
    let straight_dir = scratch("fallback-straight");
    let mut opts = options("pretrain1", &straight_dir);
    opts.max_steps = Some(9);
    let straight = run_quiet(&recipe, &opts);

    let dir = scratch("fallback");
    let mut opts = options("pretrain1", &dir);
    opts.max_steps = Some(9);
    opts.stop_after = Some(7);
    let first = run_quiet(&recipe, &opts);
    // Step 7's weights lose their tail (a crash or a bad disk after the save).
    let model = step_dir(&dir, "pretrain1", 7).join(MODEL_FILE);
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    let mut out = Vec::new();
    let second = run_stage(&recipe, &opts.clone().with_resume(), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("event checkpoint_fallback: checkpoint")
            && text.contains("step-000000007 is damaged")
            && text.contains("truncated")
            && text.contains("falling back to")
            && text.contains("resume:"),
        "{text}"
    );
    assert_eq!(
        text.matches("checkpoint_fallback").count(),
        1,
        "printed once: {text}"
    );
    assert!(second.completed);
    let events = events(&dir, "pretrain1");
    assert_eq!(
        events
            .iter()
            .map(|e| (e.event.as_str(), e.step))
            .collect::<Vec<_>>(),
        [("checkpoint_fallback", 6)]
    );
    // Steps 7 to 9 are replayed from step 6: the result is the uninterrupted run's.
    let joined: Vec<_> = first.logged[..6]
        .iter()
        .chain(&second.logged)
        .cloned()
        .collect();
    assert_eq!(losses(&joined), losses(&straight.logged));
    assert_eq!(
        weights(&dir.join("pretrain1/final")),
        weights(&straight_dir.join("pretrain1/final"))
    );

    // When nothing loads, the error lists every damaged checkpoint.
    for checkpoint in [
        "final",
        "checkpoints/step-000000003",
        "checkpoints/step-000000006",
    ] {
        std::fs::write(
            dir.join("pretrain1").join(checkpoint).join(MODEL_FILE),
            b"junk",
        )
        .unwrap();
    }
    let err = run_error(&recipe, &opts.with_resume());
    assert!(
        err.contains("every checkpoint in") && err.matches("model.safetensors").count() >= 3,
        "{err}"
    );
}

#[test]
fn shards_of_another_tokenizer_are_refused_by_name() {
    let mut recipe = small_recipe();
    let specials = recipe.special_tokens();
    recipe.file.tokens = TokensConfig::Tokenizer {
        bos: specials.bos,
        eos: specials.eos,
        think: specials.think,
        pad: specials.pad,
        fingerprint: Some("my-bpe-v1".into()),
    };
    let dir = scratch("fingerprint");
    let mut opts = options("pretrain1", &dir);
    opts.max_steps = Some(1);
    let err = run_error(&recipe, &opts);
    assert!(
        err.contains(&dir.join("data/web").display().to_string())
            && err.contains(".kts")
            && err.contains("tokenizer fingerprint \"kormo-byte-vocab-v1\"")
            && err.contains("\"my-bpe-v1\"")
            && err.contains("key sources.web")
            && err.contains("[tokens] table"),
        "{err}"
    );
}

#[test]
fn full_disk_while_checkpointing_keeps_the_previous_checkpoint() {
    let recipe = recipe(3);
    let straight_dir = scratch("disk-straight");
    let mut opts = options("pretrain1", &straight_dir);
    opts.max_steps = Some(8);
    let straight = run_quiet(&recipe, &opts);
    let checkpoint_bytes: u64 = std::fs::read_dir(step_dir(&straight_dir, "pretrain1", 3))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();

    // Room for one checkpoint and a half: the save at step 6 runs out of space.
    let dir = scratch("disk");
    let mut opts = options("pretrain1", &dir);
    opts.max_steps = Some(8);
    opts.faults.checkpoint_disk_budget = Some(checkpoint_bytes * 3 / 2);
    let err = run_error(&recipe, &opts);
    let previous = step_dir(&dir, "pretrain1", 3);
    assert!(
        err.contains("No space left on device")
            && err.contains("the disk is full")
            && err.contains(&format!(
                "the last good checkpoint, {}, is intact",
                previous.display()
            )),
        "{err}"
    );
    assert_eq!(Checkpoint::load(&previous).unwrap().manifest.run.step, 3);
    let left: Vec<_> = std::fs::read_dir(dir.join("pretrain1/checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        left,
        [kormo_checkpoint::step_dir_name(3)],
        "no partial checkpoint left"
    );
    let failed = events(&dir, "pretrain1");
    assert_eq!(failed.len(), 1);
    assert_eq!(
        (failed[0].event.as_str(), failed[0].step),
        ("checkpoint_failed", 6)
    );

    // With space again, --resume continues from step 3 as if nothing happened.
    opts.faults.checkpoint_disk_budget = None;
    let resumed = run_quiet(&recipe, &opts.with_resume());
    assert_eq!(losses(&resumed.logged), losses(&straight.logged[3..]));
}

#[test]
fn second_job_on_a_run_directory_is_refused() {
    let recipe = small_recipe();
    let dir = scratch("lock");
    let (held, _) = kormo_train::lock::RunLock::acquire(&dir).unwrap();
    let mut opts = options("pretrain1", &dir);
    opts.max_steps = Some(1);
    let err = run_error(&recipe, &opts);
    assert!(
        err.contains("is in use by another train job")
            && err.contains(&dir.join("train.lock").display().to_string()),
        "{err}"
    );
    drop(held);
    // A lock left by a killed job is taken over, and the run says so.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    std::fs::write(dir.join("train.lock"), format!("{dead}\n")).unwrap();
    let mut out = Vec::new();
    run_stage(&recipe, &opts, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("event stale_lock: replaced the stale lock")
            && text.contains(&format!("process {dead}")),
        "{text}"
    );
    assert_eq!(events(&dir, "pretrain1")[0].event, "stale_lock");
    assert!(!dir.join("train.lock").exists(), "released at the end");
}

#[test]
fn z_loss_from_the_recipe_reaches_the_model() {
    let mut recipe = small_recipe();
    let dir = scratch("zloss-off");
    let mut opts = options("pretrain1", &dir);
    opts.max_steps = Some(1);
    let off = run_quiet(&recipe, &opts).logged[0].loss;
    recipe.file.stability.z_loss = 1e-2;
    let dir = scratch("zloss-on");
    let mut opts = options("pretrain1", &dir);
    opts.max_steps = Some(1);
    let mut out = Vec::new();
    let on = run_stage(&recipe, &opts, &mut out).unwrap().logged[0].loss;
    assert!(String::from_utf8(out).unwrap().contains("z-loss: 1e-2"));
    // Same weights and data at step 1: the difference is the z term, 1e-2 * logsumexp^2 with
    // logsumexp near ln(384) for a fresh model's near-uniform logits.
    let expected = 1e-2 * (384f64).ln().powi(2);
    assert!(
        ((on - off) - expected).abs() < 0.1 * expected,
        "off {off}, on {on}, expected difference ~{expected}"
    );
}
