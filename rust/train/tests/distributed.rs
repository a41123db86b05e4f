//! `train --world-size N` on CPU: the same stage trained by 2 FSDP ranks (threads) gives the
//! losses of world size 1 within kormo-dist's stated tolerance (docs/distributed.md: 1e-6
//! relative; the difference is float reassociation of the gradient sum), for every strategy,
//! across a phase boundary and with gradient accumulation; its checkpoints are the
//! single-process format, so they resume at any world size.
//!
//! Weights: AdamW divides by sqrt(v), so the few components whose gradient is near zero (e.g.
//! rows only `<think>` targets touch, masked in the reasoning phase) turn reassociation noise
//! into visible differences: observed at most 6.6e-5 on 2 of 1024 elements after 8 steps, and
//! under 1.5% of any tensor's elements off by more than 1e-6. The check is that at most 1% of
//! each tensor's elements differ by more than 1e-5 and none by more than lr / 30 = 1e-4,
//! while a real bug (a dropped row, a wrong scale, a stale shard) moves most elements by
//! O(lr) = 3e-3 per step.

mod common;

use common::{options, run_error, scratch, small_recipe};
use kormo_checkpoint::Checkpoint;
use kormo_train::metrics::{read_records, EvalRecord, StepMetrics};
use kormo_train::recipe::{DistConfig, Recipe};
use kormo_train::trainer::{run_stage, RunOptions, StageReport, MODEL_FILE};
use std::path::Path;

const LOSS_TOLERANCE: f64 = 1e-6;
const WEIGHT_TOLERANCE: f32 = 1e-4;
/// Elements of a tensor allowed to differ by more than 1e-5.
const NOISY_FRACTION: f64 = 0.01;

fn run(
    recipe: &Recipe,
    stage: &str,
    name: &str,
    world_size: usize,
    edit: impl Fn(&mut RunOptions),
) -> (StageReport, std::path::PathBuf) {
    let dir = scratch(name);
    let mut opts = options(stage, &dir);
    opts.max_steps = Some(4);
    opts.world_size = world_size;
    edit(&mut opts);
    (run_stage(recipe, &opts, &mut std::io::sink()).unwrap(), dir)
}

fn weights(checkpoint: &Path) -> Vec<(String, Vec<f32>)> {
    let checkpoint = Checkpoint::load(checkpoint).unwrap();
    let file = checkpoint.file(MODEL_FILE).unwrap();
    file.tensors()
        .keys()
        .map(|name| (name.clone(), file.f32(name, None).unwrap()))
        .collect()
}

fn assert_close(
    what: &str,
    a: &[StepMetrics],
    b: &[StepMetrics],
    dir_a: &Path,
    dir_b: &Path,
    stage: &str,
) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (x, y) in a.iter().zip(b) {
        assert_eq!(
            (x.step, &x.phase, x.tokens),
            (y.step, &y.phase, y.tokens),
            "{what}"
        );
        let relative = (x.loss - y.loss).abs() / y.loss.abs();
        assert!(
            relative <= LOSS_TOLERANCE,
            "{what}: step {}: {} vs {} ({relative:e})",
            x.step,
            x.loss,
            y.loss
        );
        assert!(
            (x.grad_norm - y.grad_norm).abs() <= 1e-5 * y.grad_norm,
            "{what}: step {}",
            x.step
        );
    }
    let final_a = weights(&dir_a.join(stage).join("final"));
    let final_b = weights(&dir_b.join(stage).join("final"));
    assert_eq!(final_a.len(), final_b.len());
    for ((name, wa), (_, wb)) in final_a.iter().zip(&final_b) {
        let worst = wa
            .iter()
            .zip(wb)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        let noisy = wa
            .iter()
            .zip(wb)
            .filter(|(x, y)| (*x - *y).abs() > 1e-5)
            .count();
        assert!(
            worst <= WEIGHT_TOLERANCE,
            "{what}: {name} differs by {worst}"
        );
        assert!(
            noisy as f64 <= NOISY_FRACTION * wa.len() as f64,
            "{what}: {noisy} of {} elements of {name} differ by more than 1e-5",
            wa.len()
        );
    }
}

#[test]
fn two_ranks_match_one_for_every_strategy() {
    let recipe = small_recipe();
    let (single, single_dir) = run(&recipe, "pretrain1", "dist-single", 1, |_| {});
    for (name, strategy, group) in [
        ("full_shard", kormo_dist::Strategy::FullShard, None),
        ("shard_grad_op", kormo_dist::Strategy::ShardGradOp, None),
        ("hybrid", kormo_dist::Strategy::Hybrid, Some(1)),
    ] {
        let mut recipe = recipe.clone();
        recipe.file.dist = Some(DistConfig {
            strategy,
            hybrid_group_size: group,
            ..DistConfig::default()
        });
        let (two, two_dir) = run(&recipe, "pretrain1", &format!("dist-{name}"), 2, |_| {});
        assert!(two.completed);
        assert_close(
            name,
            &two.logged,
            &single.logged,
            &two_dir,
            &single_dir,
            "pretrain1",
        );
    }
}

#[test]
fn two_ranks_across_phases_and_accumulation_and_resume() {
    // Held-out evaluation on, so its sharded path is compared too.
    let mut recipe = small_recipe();
    recipe.file.eval.every_steps = 3;
    recipe.file.eval.holdout_documents = 4;
    recipe.file.eval.rows = 4;
    let (single, single_dir) = run(&recipe, "midtrain", "dist-mid-single", 1, |_| {});
    let mut out = Vec::new();
    let dir = scratch("dist-mid-two");
    let mut opts = options("midtrain", &dir);
    opts.max_steps = Some(4);
    opts.world_size = 2;
    let two = run_stage(&recipe, &opts, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("distributed: 2 ranks") && text.contains("strategy full_shard"),
        "{text}"
    );
    assert!(
        text.contains("each of 2 ranks takes 2 of the 4 rows per step in micro-batches of 2"),
        "{text}"
    );
    assert_close(
        "midtrain",
        &two.logged,
        &single.logged,
        &dir,
        &single_dir,
        "midtrain",
    );
    let evals = |dir: &Path| -> Vec<EvalRecord> {
        read_records(&dir.join("midtrain/metrics.jsonl"), "eval").unwrap()
    };
    let (evals_two, evals_one) = (evals(&dir), evals(&single_dir));
    // Steps 3, 4 (end of long_context), 6, 8 (end of reasoning), two sources each.
    assert_eq!(evals_two.len(), 8);
    assert_eq!(evals_two.len(), evals_one.len());
    for (a, b) in evals_two.iter().zip(&evals_one) {
        assert_eq!((a.step, &a.source, a.tokens), (b.step, &b.source, b.tokens));
        assert!(
            (a.loss - b.loss).abs() <= LOSS_TOLERANCE * b.loss,
            "{a:?} vs {b:?}"
        );
    }

    // Stop inside the second phase at world size 2, resume at 2: the same run, bit for bit.
    let split_dir = scratch("dist-mid-split");
    let mut split = options("midtrain", &split_dir);
    split.max_steps = Some(4);
    split.world_size = 2;
    split.stop_after = Some(6);
    let head = run_stage(&recipe, &split, &mut std::io::sink()).unwrap();
    assert!(!head.completed && head.checkpoint.ends_with("checkpoints/step-000000006"));
    let tail = run_stage(&recipe, &split.clone().with_resume(), &mut std::io::sink()).unwrap();
    let bits = |m: &StepMetrics| (m.step, m.loss.to_bits(), m.grad_norm.to_bits());
    assert_eq!(
        head.logged
            .iter()
            .chain(&tail.logged)
            .map(bits)
            .collect::<Vec<_>>(),
        two.logged.iter().map(bits).collect::<Vec<_>>()
    );
    assert_eq!(
        weights(&split_dir.join("midtrain/final")),
        weights(&dir.join("midtrain/final"))
    );

    // The world-size-2 checkpoint is the single-process format: world size 1 resumes it.
    let one_dir = scratch("dist-mid-one");
    let mut one = options("midtrain", &one_dir);
    one.max_steps = Some(4);
    one.world_size = 2;
    one.stop_after = Some(6);
    run_stage(&recipe, &one, &mut std::io::sink()).unwrap();
    one.world_size = 1;
    let rest = run_stage(&recipe, &one.with_resume(), &mut std::io::sink()).unwrap();
    assert!(rest.completed);
    assert_close(
        "resumed at 1",
        &rest.logged,
        &single.logged[6..],
        &one_dir,
        &single_dir,
        "midtrain",
    );
}

#[test]
fn rows_or_groups_that_do_not_divide_over_the_ranks_are_a_recipe_error() {
    let recipe = small_recipe();
    let dir = scratch("dist-rows");
    let mut opts = options("pretrain1", &dir);
    opts.max_steps = Some(1);
    opts.world_size = 3;
    let err = run_error(&recipe, &opts);
    assert!(
        err.contains("stages.pretrain1.phases[0]")
            && err.contains("4 rows per step do not divide over --world-size 3"),
        "{err}"
    );
    let mut with_eval = recipe.clone();
    with_eval.file.eval.every_steps = 1;
    with_eval.file.eval.rows = 3;
    opts.world_size = 2;
    let err = run_error(&with_eval, &opts);
    assert!(
        err.contains("key `eval.rows`: 3 rows do not divide over --world-size 2"),
        "{err}"
    );
    // hybrid: shard groups of 4 ranks do not fit 2 ranks (refused before any step, on the
    // thread path as on the process paths, CPU and CUDA).
    let mut hybrid = recipe.clone();
    hybrid.file.dist = Some(DistConfig {
        strategy: kormo_dist::Strategy::Hybrid,
        hybrid_group_size: Some(4),
        ..DistConfig::default()
    });
    let err = run_error(&hybrid, &opts);
    assert!(
        err.contains(
            "key `dist.hybrid_group_size`: 4 ranks per shard group do not divide --world-size 2"
        ),
        "{err}"
    );
}

#[test]
fn non_finite_steps_restore_the_last_good_checkpoint_on_every_rank() {
    // As tests/faults.rs at world size 1: checkpoints every 3 steps, step 5 reports a NaN loss.
    let mut recipe = small_recipe();
    recipe.file.checkpoint.every_steps = 3;
    recipe.file.checkpoint.keep_last = 100;
    let nan_at = |steps: &[(u64, f64)]| {
        let steps = steps.to_vec();
        move |opts: &mut RunOptions| {
            opts.max_steps = Some(8);
            opts.faults.loss_override.extend(steps.iter().copied());
        }
    };
    let (single, single_dir) = run(
        &recipe,
        "pretrain1",
        "dist-nan-1",
        1,
        nan_at(&[(5, f64::NAN)]),
    );
    let (two, two_dir) = run(
        &recipe,
        "pretrain1",
        "dist-nan-2",
        2,
        nan_at(&[(5, f64::NAN)]),
    );
    assert!(two.completed);
    let events = |dir: &Path| -> Vec<(String, u64)> {
        read_records::<kormo_train::metrics::EventRecord>(
            &dir.join("pretrain1/metrics.jsonl"),
            "event",
        )
        .unwrap()
        .into_iter()
        .map(|e| (e.event, e.step))
        .collect()
    };
    assert_eq!(events(&two_dir), [("nonfinite_restore".to_string(), 3)]);
    assert_eq!(events(&two_dir), events(&single_dir));
    // One step loop at every world size: the event is the same record, word for word (its
    // run directory and the gradient norm's last float digits aside), at 1 and at 2 ranks.
    let messages = |dir: &Path| -> Vec<String> {
        read_records::<kormo_train::metrics::EventRecord>(
            &dir.join("pretrain1/metrics.jsonl"),
            "event",
        )
        .unwrap()
        .into_iter()
        .map(|e| {
            let message = e.message.replace(&dir.display().to_string(), "RUN_DIR");
            let (head, rest) = message.split_once("grad norm ").expect("names the norm");
            let (norm, tail) = rest.split_once(' ').expect("a number");
            let norm: f64 = norm.parse().expect("the norm is a number");
            format!("{head}grad norm {norm:.5} {tail}")
        })
        .collect()
    };
    assert_eq!(messages(&two_dir), messages(&single_dir));
    assert!(
        messages(&single_dir)[0].contains("restored RUN_DIR/pretrain1/checkpoints/step-"),
        "{:?}",
        messages(&single_dir)
    );
    // Every step logged once, the undone 4 and 5 only in their replay (on fresh data), and
    // the replay equals world size 1's replay.
    let logged =
        kormo_train::metrics::read_metrics(&two_dir.join("pretrain1/metrics.jsonl")).unwrap();
    assert_eq!(
        logged.iter().map(|m| m.step).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6, 7, 8]
    );
    assert_close(
        "nan restore",
        &two.logged,
        &single.logged,
        &two_dir,
        &single_dir,
        "pretrain1",
    );

    // Bounded: a second fault with retries = 1 is a clear failure on every rank.
    let mut strict = recipe.clone();
    strict.file.stability.nonfinite_retries = 1;
    let dir = scratch("dist-nan-bound");
    let mut opts = options("pretrain1", &dir);
    nan_at(&[(5, f64::NAN), (6, f64::INFINITY)])(&mut opts);
    opts.world_size = 2;
    let err = run_error(&strict, &opts);
    assert!(
        err.contains("rank 0: phase pretrain1")
            && err.contains("not finite at step 6")
            && err.contains("after 1 restores")
            && err.contains("stability.nonfinite_retries = 1"),
        "{err}"
    );
    // Before any checkpoint of the phase there is nothing to restore.
    let dir = scratch("dist-nan-early");
    let mut opts = options("pretrain1", &dir);
    nan_at(&[(2, f64::NAN)])(&mut opts);
    opts.world_size = 2;
    let err = run_error(&recipe, &opts);
    assert!(
        err.contains("not finite at step 2") && err.contains("no checkpoint of this phase"),
        "{err}"
    );
}

#[test]
fn full_disk_at_two_ranks_keeps_the_previous_checkpoint_on_every_rank() {
    // As tests/faults.rs at world size 1: room for one checkpoint and a half, so the save at
    // step 6 runs out of space; every rank stops, nothing partial is left, --resume continues.
    let mut recipe = small_recipe();
    recipe.file.checkpoint.every_steps = 3;
    recipe.file.checkpoint.keep_last = 100;
    let eight_steps = |opts: &mut RunOptions| opts.max_steps = Some(8);
    let (straight, straight_dir) = run(&recipe, "pretrain1", "dist-disk-straight", 2, eight_steps);
    let checkpoints = |dir: &Path| dir.join("pretrain1/checkpoints");
    let step_dir =
        |dir: &Path, step: u64| checkpoints(dir).join(kormo_checkpoint::step_dir_name(step));
    let checkpoint_bytes: u64 = std::fs::read_dir(step_dir(&straight_dir, 3))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();

    let dir = scratch("dist-disk");
    let mut opts = options("pretrain1", &dir);
    eight_steps(&mut opts);
    opts.world_size = 2;
    opts.faults.checkpoint_disk_budget = Some(checkpoint_bytes * 3 / 2);
    let err = run_error(&recipe, &opts);
    let previous = step_dir(&dir, 3);
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
    let left: Vec<_> = std::fs::read_dir(checkpoints(&dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        left,
        [kormo_checkpoint::step_dir_name(3)],
        "no partial checkpoint or shards left"
    );
    let failed: Vec<_> = read_records::<kormo_train::metrics::EventRecord>(
        &dir.join("pretrain1/metrics.jsonl"),
        "event",
    )
    .unwrap()
    .into_iter()
    .map(|e| (e.event, e.step))
    .collect();
    assert_eq!(failed, [("checkpoint_failed".to_string(), 6)]);

    // With space again, two ranks resume from step 3 as if nothing happened.
    opts.faults.checkpoint_disk_budget = None;
    opts.resume = true;
    let resumed = kormo_train::trainer::run_stage(&recipe, &opts, &mut std::io::sink()).unwrap();
    let bits = |logged: &[StepMetrics]| {
        logged
            .iter()
            .map(|m| (m.step, m.loss.to_bits()))
            .collect::<Vec<_>>()
    };
    assert_eq!(bits(&resumed.logged), bits(&straight.logged[3..]));
}

#[test]
fn outlier_guard_skips_the_same_step_at_two_ranks_as_at_one() {
    // As in tests/faults.rs: the guard armed after 4 steps, step 8 reporting a loss spike.
    let mut recipe = small_recipe();
    recipe.file.stability.outlier_window = 8;
    recipe.file.stability.outlier_warmup = 4;
    let spiky = |opts: &mut RunOptions| {
        opts.max_steps = Some(10);
        opts.faults.loss_override.insert(8, 50.0);
    };
    let (one, one_dir) = run(&recipe, "pretrain1", "dist-guard-one", 1, spiky);
    let (two, two_dir) = run(&recipe, "pretrain1", "dist-guard-two", 2, spiky);
    let (_, clean_dir) = run(&recipe, "pretrain1", "dist-guard-clean", 2, |opts| {
        opts.max_steps = Some(10)
    });
    let events = |dir: &Path| -> Vec<(String, u64, String)> {
        read_records::<kormo_train::metrics::EventRecord>(
            &dir.join("pretrain1/metrics.jsonl"),
            "event",
        )
        .unwrap()
        .into_iter()
        .map(|e| (e.event, e.step, e.message))
        .collect()
    };
    let skipped = |logged: &[StepMetrics]| -> Vec<u64> {
        logged
            .iter()
            .filter(|m| m.skipped)
            .map(|m| m.step)
            .collect()
    };
    assert!(events(&clean_dir).is_empty(), "no spike in a normal run");
    let (events_one, events_two) = (events(&one_dir), events(&two_dir));
    assert_eq!(events_two.len(), 1, "{events_two:?}");
    assert_eq!(
        (events_two[0].0.as_str(), events_two[0].1),
        ("outlier_skip", 8)
    );
    assert!(
        events_two[0].2.starts_with("loss 50.0000 is")
            && events_two[0].2.contains("stability.outlier_threshold = 5"),
        "{events_two:?}"
    );
    assert_eq!(
        events_one.iter().map(|e| (&e.0, e.1)).collect::<Vec<_>>(),
        events_two.iter().map(|e| (&e.0, e.1)).collect::<Vec<_>>()
    );
    assert_eq!(skipped(&two.logged), [8]);
    assert_eq!(skipped(&one.logged), [8]);
    // The same steps, losses and final weights as world size 1, where step 8 was skipped too.
    assert_close(
        "guard",
        &two.logged,
        &one.logged,
        &two_dir,
        &one_dir,
        "pretrain1",
    );
    // And the skip mattered: the run differs from the clean one after step 8.
    let clean = weights(&clean_dir.join("pretrain1/final"));
    assert_ne!(weights(&two_dir.join("pretrain1/final")), clean);
}
