//! DeviceFsdpRank on one GPU (world size 1, real NCCL on its own stream) against the two
//! references it must equal: the single-GPU step (`Model<CudaOps>` + `DeviceAdamW`, what
//! `train --backend=cuda` runs) and the host FSDP engine driving the same CUDA model
//! (`FsdpRank<CudaOps>` over an in-process communicator). At world size 1 sharding changes
//! nothing numerically; what differs is the order of f32 additions (gradients reduced per
//! micro-batch instead of accumulated by the GEMMs, the norm summed per shard segment) and the
//! CUDA kernels' own atomics (embedding and attention backward), so:
//! * step 0's loss (before any update, same bf16 weights, deterministic forward kernels) must
//!   agree to 1e-6 relative (bitwise on the H100), step 1's to 1e-5 (the device FSDP was
//!   bitwise equal to the single-GPU step there; the host FSDP's host AdamW is not);
//! * from step 2 on the runs drift apart through the kernels' f32 atomics, the references
//!   among themselves as much (see LOSS_TOL): losses and the evaluation within 5e-4 relative,
//!   norms 5e-3;
//! * final f32 masters: L2 of the difference within 5% of the L2 of the weights' movement
//!   over the run (a wrong offset or scale moves by O(1) of it; rounding-order noise in
//!   elements whose gradient nearly cancels can flip an AdamW sign, so no max-abs bound).
//!
//! The bf16-wire case compares only with the host FSDP in bf16 (the single-GPU step does not
//! round gradients). Also checked: steps after the second allocate no device memory (the
//! first `full_shard` step already; `shard_grad_op` makes its layers' gradient buffers in the
//! second step, the first one holding the model's initial ones), `hybrid` with a second
//! (replica-group) communicator at 1 x 1 against the single-GPU step, an
//! evaluation equals the single-GPU one, and a sharded checkpoint round trip restores the
//! masters and moments bitwise.
//!
//! Without libnccl, the CUDA driver, a device or built kernels it prints "skipped"; under
//! cargo it then passes, under Bazel (TEST_SRCDIR set) it exits 77 (reported as skipped).
//! Everything is printed before any assertion, so a failure can be read from the log alone.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kormo_cuda::optim::DeviceAdamW;
use kormo_cuda::CudaOps;
use kormo_dist::nccl::{nccl_available, unique_id_blob, NcclComm};
use kormo_dist::sharded_checkpoint::{self, ShardedCheckpoint};
use kormo_dist::{
    DeviceFsdpRank, FsdpConfig, FsdpEngine, FsdpRank, LocalComm, ReduceDtype, Strategy,
};
use kormo_model::{Batch, Model, ModelConfig};
use kormo_optim::{AdamWConfig, ParamInfo};

const SEED: u64 = 5;
const STEPS: usize = 6;
const ACCUMULATION: usize = 2;
const ROWS: usize = 2;
const SEQ: usize = 128;
const LR: f64 = 1e-3;
/// Low enough that the first steps clip (the clip path is exercised), high enough that later
/// ones may not.
const CLIP: f64 = 1.0;

/// From the third step on, runs that differ only in the order of f32 additions drift apart
/// through the kernels' nondeterministic atomics. Measured on an H100 (2026-11-26) between the
/// two references themselves (host FSDP vs single GPU), and likewise for the device FSDP:
/// losses up to 5e-5 relative, norms 4.4e-4, masters 5.4e-3 of the movement, growing with
/// the step. The bounds are about ten times that; the single-GPU step against a second run
/// of itself is printed as the noise floor.
const LOSS_TOL: f64 = 5e-4;
const NORM_TOL: f64 = 5e-3;
const MASTER_TOL: f64 = 5e-2;

/// One GPU, one test at a time.
static GPU: Mutex<()> = Mutex::new(());

fn skip(why: &str) {
    eprintln!("skipped: {why}");
    if std::env::var_os("TEST_SRCDIR").is_some() {
        std::process::exit(77);
    }
}

/// A CudaOps on device 0, or why not.
fn device() -> Result<CudaOps, String> {
    if !nccl_available() {
        return Err("no libnccl or CUDA driver library".into());
    }
    CudaOps::new(0).map_err(|e| format!("no usable CUDA backend: {e}"))
}

fn config(tied: bool) -> ModelConfig {
    ModelConfig {
        hidden: 256,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: 64,
        ffn: 512,
        vocab: 512,
        tie_embeddings: tied,
        ..ModelConfig::tiny()
    }
}

fn splitmix(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Micro-batch `index`: random tokens with a learnable target rule, two documents per row
/// (ids non-decreasing, positions restarting), some tokens untrained or half-weighted.
fn micro_batch(index: usize, vocab: usize) -> Batch {
    let n = ROWS * SEQ;
    let salt = (index * n) as u64 * 7919;
    let tokens: Vec<u32> = (0..n)
        .map(|i| (splitmix(salt + i as u64) % vocab as u64) as u32)
        .collect();
    let targets = tokens
        .iter()
        .map(|&t| ((t as u64 * 5 + 1) % vocab as u64) as u32)
        .collect();
    let split = |row: usize| 17 + (index * 13 + row * 29) % (SEQ - 30);
    let doc_ids = (0..n)
        .map(|i| u32::from(i % SEQ >= split(i / SEQ)))
        .collect();
    let positions = (0..n)
        .map(|i| {
            let (row, s) = (i / SEQ, i % SEQ);
            (if s >= split(row) { s - split(row) } else { s }) as u32
        })
        .collect();
    let loss_weights = (0..n)
        .map(|i| match splitmix(salt + 1_000_003 + i as u64) % 10 {
            0 => 0.0,
            1 => 0.5,
            _ => 1.0,
        })
        .collect();
    Batch {
        tokens,
        targets,
        loss_weights,
        doc_ids,
        positions,
        batch_size: ROWS,
        seq_len: SEQ,
    }
}

fn step_batches(step: usize, vocab: usize) -> Vec<Batch> {
    (0..ACCUMULATION)
        .map(|m| micro_batch(step * ACCUMULATION + m, vocab))
        .collect()
}

fn adamw() -> AdamWConfig {
    AdamWConfig::default()
}

fn fsdp_config(strategy: Strategy, reduce_dtype: ReduceDtype) -> FsdpConfig {
    FsdpConfig {
        strategy,
        hybrid_group_size: None,
        reduce_dtype,
        grad_clip: CLIP,
    }
}

/// What one path did: per step mean loss and gradient norm, the final f32 masters per tensor.
struct Run {
    losses: Vec<f64>,
    norms: Vec<f64>,
    masters: Vec<Vec<f32>>,
    /// Float-buffer allocations during each step (device path only).
    allocations: Vec<u64>,
    eval_loss: f64,
}

fn read_params(model: &Model<CudaOps>) -> Vec<Vec<f32>> {
    kormo_dist::single::read_params(model).unwrap()
}

fn eval_batch(vocab: usize) -> Batch {
    micro_batch(10_000, vocab)
}

/// The single-GPU step, as the trainer's CUDA backend runs it.
fn single_gpu(cfg: &ModelConfig) -> Run {
    let ops = CudaOps::new(0).unwrap();
    let mut model = Model::new(cfg.clone(), ops.clone(), SEED).unwrap();
    let infos: Vec<ParamInfo> = kormo_cuda::optim::param_infos(model.param_specs());
    let initial = read_params(&model);
    let slices: Vec<&[f32]> = initial.iter().map(Vec::as_slice).collect();
    let mut opt = DeviceAdamW::new(&ops, adamw(), infos, &slices).unwrap();
    let (mut losses, mut norms) = (Vec::new(), Vec::new());
    for step in 0..STEPS {
        let batches = step_batches(step, cfg.vocab);
        let weight: f64 = batches.iter().map(Batch::loss_weight_sum).sum();
        let scale = (1.0 / weight) as f32;
        model.zero_grads();
        let mut loss = kormo_model::LossSum::default();
        for b in &batches {
            loss = loss.add(model.forward_backward(b, scale).unwrap());
        }
        let (params, grads) = model.params_and_grads_mut();
        let norm = opt.clip_grad_norm(&ops, grads, Some(CLIP)).unwrap();
        opt.apply(&ops, params, grads, LR).unwrap();
        losses.push(loss.mean());
        norms.push(norm);
    }
    let masters = (0..model.param_specs().len())
        .map(|i| opt.master(&ops, i))
        .collect();
    let eval_loss = model.evaluate(&eval_batch(cfg.vocab)).unwrap().mean();
    Run {
        losses,
        norms,
        masters,
        allocations: Vec::new(),
        eval_loss,
    }
}

/// The host FSDP engine (host shards and AdamW) on the CUDA model, world size 1.
fn host_fsdp(cfg: &ModelConfig, fsdp: &FsdpConfig) -> Run {
    let ops = CudaOps::new(0).unwrap();
    let model = Model::new(cfg.clone(), ops, SEED).unwrap();
    let comm = LocalComm::group(1, Duration::from_secs(60)).pop().unwrap();
    let mut rank = FsdpRank::new(Arc::new(comm), model, adamw(), fsdp.clone()).unwrap();
    let (mut losses, mut norms) = (Vec::new(), Vec::new());
    for step in 0..STEPS {
        let outcome = rank.step(&step_batches(step, cfg.vocab), LR).unwrap();
        assert!(
            outcome.updated,
            "host FSDP step {step}: norm {} not finite",
            outcome.grad_norm
        );
        losses.push(outcome.loss.mean());
        norms.push(outcome.grad_norm);
    }
    let masters = rank.full_params().unwrap();
    let eval_loss = rank.evaluate(&eval_batch(cfg.vocab)).unwrap().mean();
    Run {
        losses,
        norms,
        masters,
        allocations: Vec::new(),
        eval_loss,
    }
}

fn nccl_comm(ops: &CudaOps) -> NcclComm {
    let stream = ops
        .kernels()
        .context()
        .new_stream()
        .expect("a second stream for NCCL");
    NcclComm::init(stream, 0, 1, &unique_id_blob().expect("NCCL unique id")).expect("NCCL init")
}

fn device_rank(cfg: &ModelConfig, fsdp: &FsdpConfig) -> DeviceFsdpRank {
    let ops = CudaOps::new(0).unwrap();
    let model = Model::new(cfg.clone(), ops.clone(), SEED).unwrap();
    DeviceFsdpRank::new(nccl_comm(&ops), model, adamw(), fsdp.clone()).unwrap()
}

/// The device FSDP engine, world size 1 over NCCL.
fn device_fsdp(cfg: &ModelConfig, fsdp: &FsdpConfig) -> Run {
    let mut rank = device_rank(cfg, fsdp);
    let (mut losses, mut norms, mut allocations) = (Vec::new(), Vec::new(), Vec::new());
    for step in 0..STEPS {
        let before = rank.ops().memory().allocations;
        let outcome = rank.step(&step_batches(step, cfg.vocab), LR).unwrap();
        rank.ops().synchronize().unwrap();
        allocations.push(rank.ops().memory().allocations - before);
        assert!(
            outcome.updated,
            "device FSDP step {step}: norm {} not finite",
            outcome.grad_norm
        );
        losses.push(outcome.loss.mean());
        norms.push(outcome.grad_norm);
    }
    let memory = rank.ops().memory();
    println!(
        "    device FSDP memory: live {} MiB, peak {} MiB; full params held now {} (peak {}), grads {} (peak {}); last schedule {} events",
        memory.live_bytes >> 20,
        memory.peak_bytes >> 20,
        rank.residency().current,
        rank.residency().peak,
        rank.gradient_residency().current,
        rank.gradient_residency().peak,
        rank.last_step_schedule().len()
    );
    let masters = rank.full_params().unwrap();
    let eval_loss = rank.evaluate(&eval_batch(cfg.vocab)).unwrap().mean();
    Run {
        losses,
        norms,
        masters,
        allocations,
        eval_loss,
    }
}

/// `value <= tolerance`, false for NaN.
fn within(value: f64, tolerance: f64) -> bool {
    value <= tolerance
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-30)
}

/// L2 of `a - b` over L2 of the movement `b - initial`, and the largest |a - b| with where.
fn master_diff(
    a: &[Vec<f32>],
    b: &[Vec<f32>],
    initial: &[Vec<f32>],
    names: &[String],
) -> (f64, f64, String) {
    let (mut diff, mut moved, mut max, mut at) = (0.0f64, 0.0f64, 0.0f64, String::new());
    for (t, ((x, y), w0)) in a.iter().zip(b).zip(initial).enumerate() {
        assert_eq!(x.len(), y.len(), "{}: lengths differ", names[t]);
        for (i, ((&x, &y), &w)) in x.iter().zip(y).zip(w0).enumerate() {
            let d = (x as f64 - y as f64).abs();
            diff += d * d;
            moved += (y as f64 - w as f64).powi(2);
            if d > max || d.is_nan() {
                max = d;
                at = format!("{}[{i}]: {x} vs {y} (initial {w})", names[t]);
            }
        }
    }
    (diff.sqrt() / moved.sqrt().max(1e-30), max, at)
}

/// Compares `got` with `want`, printing everything; returns the failures.
fn compare(
    label: &str,
    got: &Run,
    want: &Run,
    initial: &[Vec<f32>],
    names: &[String],
) -> Vec<String> {
    let mut failures = Vec::new();
    println!("  {label}:");
    for step in 0..STEPS {
        let (lr_, nr) = (
            rel(got.losses[step], want.losses[step]),
            rel(got.norms[step], want.norms[step]),
        );
        println!(
            "    step {step}: loss {:.9} vs {:.9} (rel {lr_:.2e}{}), norm {:.7} vs {:.7} (rel {nr:.2e})",
            got.losses[step],
            want.losses[step],
            if got.losses[step] == want.losses[step] { ", bitwise" } else { "" },
            got.norms[step],
            want.norms[step]
        );
        let (loss_tol, norm_tol) = match step {
            0 => (1e-6, 1e-5),
            1 => (1e-5, 1e-4),
            _ => (LOSS_TOL, NORM_TOL),
        };
        if !within(lr_, loss_tol) {
            failures.push(format!(
                "{label}: step {step} loss rel diff {lr_:.2e} > {loss_tol:e}"
            ));
        }
        if !within(nr, norm_tol) {
            failures.push(format!(
                "{label}: step {step} grad norm rel diff {nr:.2e} > {norm_tol:e}"
            ));
        }
    }
    let (relative, max, at) = master_diff(&got.masters, &want.masters, initial, names);
    println!("    masters: |diff| / |movement| = {relative:.2e}; max |diff| {max:.3e} at {at}");
    if !within(relative, MASTER_TOL) {
        failures.push(format!(
            "{label}: masters differ by {relative:.2e} of the movement (> {MASTER_TOL:e}); max at {at}"
        ));
    }
    let er = rel(got.eval_loss, want.eval_loss);
    println!(
        "    evaluation loss {:.9} vs {:.9} (rel {er:.2e})",
        got.eval_loss, want.eval_loss
    );
    if !within(er, LOSS_TOL) {
        failures.push(format!(
            "{label}: evaluation loss rel diff {er:.2e} > {LOSS_TOL:e}"
        ));
    }
    failures
}

/// Runs one path; a panic (CudaOps panics on driver errors) becomes a failure, so the other
/// paths and cases still run and print.
fn guarded(what: &str, failures: &mut Vec<String>, run: impl FnOnce() -> Run) -> Option<Run> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(run) => Some(run),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            println!("  {what} PANICKED: {message}");
            failures.push(format!("{what} panicked: {message}"));
            None
        }
    }
}

#[test]
fn device_fsdp_matches_the_single_gpu_step_and_the_host_fsdp() {
    let _gpu = GPU.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(why) = device() {
        return skip(&why);
    }
    let cases = [
        (Strategy::FullShard, false, ReduceDtype::F32),
        (Strategy::ShardGradOp, false, ReduceDtype::F32),
        (Strategy::FullShard, true, ReduceDtype::F32),
        (Strategy::ShardGradOp, true, ReduceDtype::F32),
        (Strategy::FullShard, false, ReduceDtype::Bf16),
    ];
    let mut failures = Vec::new();
    let mut singles: Vec<(bool, Option<Run>)> = Vec::new();
    for (strategy, tied, reduce_dtype) in cases {
        let cfg = config(tied);
        let fsdp = fsdp_config(strategy, reduce_dtype);
        let label = format!("{strategy:?}/tied={tied}/reduce={reduce_dtype:?}");
        println!("case {label}: {STEPS} steps x {ACCUMULATION} micro-batches of {ROWS}x{SEQ}");
        let initial =
            read_params(&Model::new(cfg.clone(), CudaOps::new(0).unwrap(), SEED).unwrap());
        let names: Vec<String> = kormo_model::params::layout(&cfg)
            .iter()
            .map(|s| s.name.clone())
            .collect();
        let device = guarded(&format!("{label}: device FSDP"), &mut failures, || {
            device_fsdp(&cfg, &fsdp)
        });
        if let Some(device) = &device {
            println!(
                "    device FSDP allocations per step: {:?}",
                device.allocations
            );
            if device.allocations.iter().skip(2).any(|&a| a != 0) {
                failures.push(format!(
                    "{label}: steps after the second allocated {:?}",
                    device.allocations
                ));
            }
        }
        let host = guarded(
            &format!("{label}: host FSDP<CudaOps>"),
            &mut failures,
            || host_fsdp(&cfg, &fsdp),
        );
        if let (Some(device), Some(host)) = (&device, &host) {
            failures.extend(compare(
                &format!("{label}: device FSDP vs host FSDP<CudaOps>"),
                device,
                host,
                &initial,
                &names,
            ));
        }
        if reduce_dtype == ReduceDtype::F32 {
            if !singles.iter().any(|(t, _)| *t == tied) {
                let single = guarded(&format!("{label}: single GPU"), &mut failures, || {
                    single_gpu(&cfg)
                });
                // The noise floor: the same single-GPU run again (printed, not checked).
                if let Some(first) = &single {
                    let mut ignored = Vec::new();
                    if let Some(again) =
                        guarded("single GPU, second run", &mut ignored, || single_gpu(&cfg))
                    {
                        compare(
                            &format!("{label}: NOISE FLOOR, single GPU vs itself (not checked)"),
                            &again,
                            first,
                            &initial,
                            &names,
                        );
                    }
                }
                singles.push((tied, single));
            }
            if let Some(single) = &singles.iter().find(|(t, _)| *t == tied).unwrap().1 {
                if let Some(device) = &device {
                    failures.extend(compare(
                        &format!("{label}: device FSDP vs single GPU (DeviceAdamW)"),
                        device,
                        single,
                        &initial,
                        &names,
                    ));
                }
                if let Some(host) = &host {
                    failures.extend(compare(
                        &format!("{label}: host FSDP<CudaOps> vs single GPU (reference check)"),
                        host,
                        single,
                        &initial,
                        &names,
                    ));
                }
            }
        }
    }
    if !failures.is_empty() {
        println!("FAILURES:");
        for f in &failures {
            println!("  {f}");
        }
    }
    assert!(
        failures.is_empty(),
        "{} comparisons failed (see above)",
        failures.len()
    );
}

#[test]
fn device_fsdp_checkpoints_round_trip_through_the_sharded_format() {
    let _gpu = GPU.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(why) = device() {
        return skip(&why);
    }
    let cfg = config(false);
    let fsdp = fsdp_config(Strategy::FullShard, ReduceDtype::F32);
    let mut trained = device_rank(&cfg, &fsdp);
    for step in 0..2 {
        trained.step(&step_batches(step, cfg.vocab), LR).unwrap();
    }
    let dir = std::env::temp_dir().join(format!("kormo-device-fsdp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run = kormo_checkpoint::RunState {
        step: 2,
        stage: "test".into(),
        phase: "p".into(),
        config_hash: "h".into(),
        rng_state: serde_json::json!({}),
        data_cursor: serde_json::json!({}),
        trainer: serde_json::json!({}),
    };
    sharded_checkpoint::save(&trained, &dir, &run).unwrap();
    let mut restored = device_rank(&cfg, &fsdp);
    ShardedCheckpoint::open(&dir)
        .unwrap()
        .restore(&mut restored)
        .unwrap();
    let (a, b) = (
        trained.host_shards().unwrap(),
        restored.host_shards().unwrap(),
    );
    println!(
        "checkpoint: step {} -> {}; shards equal: {}",
        a.1,
        b.1,
        a.0 == b.0
    );
    assert_eq!(a.1, b.1, "step count");
    assert!(a.0 == b.0, "restored shards differ from the saved ones");
    // The next step from either gives the same loss (the bf16 shards follow the masters).
    let next = step_batches(2, cfg.vocab);
    let (x, y) = (
        trained.step(&next, LR).unwrap(),
        restored.step(&next, LR).unwrap(),
    );
    println!(
        "checkpoint: next loss {:.9} vs {:.9}",
        x.loss.mean(),
        y.loss.mean()
    );
    assert!(
        rel(x.loss.mean(), y.loss.mean()) <= 1e-6,
        "loss after restore differs"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn poisoned_releases_change_nothing_on_the_device() {
    // Release::PoisonNan fills every released unit with NaN (in the model's own buffers): any
    // read of a unit outside its window would make the loss NaN. The losses must equal the
    // default (Free, buffers pooled) run's: step 0 bitwise, step 1 to 1e-5.
    let _gpu = GPU.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(why) = device() {
        return skip(&why);
    }
    for (strategy, tied) in [(Strategy::FullShard, true), (Strategy::ShardGradOp, false)] {
        let cfg = config(tied);
        let fsdp = fsdp_config(strategy, ReduceDtype::F32);
        let mut losses = Vec::new();
        for release in [kormo_dist::Release::Free, kormo_dist::Release::PoisonNan] {
            let mut rank = device_rank(&cfg, &fsdp);
            rank.set_release(release);
            let mut mine = Vec::new();
            for step in 0..2 {
                mine.push(
                    rank.step(&step_batches(step, cfg.vocab), LR)
                        .unwrap()
                        .loss
                        .mean(),
                );
            }
            mine.push(rank.evaluate(&eval_batch(cfg.vocab)).unwrap().mean());
            println!("{strategy:?} tied={tied} {release:?}: losses (2 steps, evaluation) {mine:?}");
            losses.push(mine);
        }
        let (free, poison) = (&losses[0], &losses[1]);
        assert!(
            poison.iter().all(|l| l.is_finite()),
            "{strategy:?}: a released unit was read"
        );
        assert!(
            rel(poison[0], free[0]) <= 1e-6
                && rel(poison[1], free[1]) <= 1e-5
                && rel(poison[2], free[2]) <= 1e-4,
            "{strategy:?}: poisoned {poison:?} vs free {free:?}"
        );
    }
}

#[test]
fn hybrid_with_a_replica_communicator_matches_the_single_gpu_step() {
    // World size 1 as 1 shard group x 1 replica group: two NCCL communicators (each on its own
    // stream); the replica all-reduce is an identity, so the run must match the single-GPU
    // step within the noise floor, with one ReplicaAllReduce per unit in the schedule.
    let _gpu = GPU.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(why) = device() {
        return skip(&why);
    }
    let cfg = config(false);
    let fsdp = FsdpConfig {
        hybrid_group_size: Some(1),
        ..fsdp_config(Strategy::Hybrid, ReduceDtype::F32)
    };
    let ops = CudaOps::new(0).unwrap();
    let model = Model::new(cfg.clone(), ops.clone(), SEED).unwrap();
    let refused = DeviceFsdpRank::new(nccl_comm(&ops), model, adamw(), fsdp.clone())
        .err()
        .map(|e| e.to_string());
    println!("hybrid without a replica communicator: {refused:?}");
    assert!(refused.is_some_and(|e| e.contains("new_hybrid")));
    let model = Model::new(cfg.clone(), ops.clone(), SEED).unwrap();
    let mut rank =
        DeviceFsdpRank::new_hybrid(nccl_comm(&ops), nccl_comm(&ops), model, adamw(), fsdp).unwrap();
    assert_eq!(
        (rank.world_rank(), rank.world_size(), rank.replica_rank()),
        (0, 1, 0)
    );
    let (mut losses, mut norms) = (Vec::new(), Vec::new());
    for step in 0..STEPS {
        let outcome = rank.step(&step_batches(step, cfg.vocab), LR).unwrap();
        losses.push(outcome.loss.mean());
        norms.push(outcome.grad_norm);
    }
    let replica_events = rank
        .last_step_schedule()
        .iter()
        .filter(|e| matches!(e, kormo_dist::ScheduleEvent::ReplicaAllReduce(_)))
        .count();
    println!(
        "hybrid: {replica_events} replica all-reduces in the last step for {} units",
        rank.units().len()
    );
    let hybrid = Run {
        losses,
        norms,
        masters: rank.full_params().unwrap(),
        allocations: Vec::new(),
        eval_loss: rank.evaluate(&eval_batch(cfg.vocab)).unwrap().mean(),
    };
    drop(rank);
    let initial = read_params(&Model::new(cfg.clone(), ops, SEED).unwrap());
    let names: Vec<String> = kormo_model::params::layout(&cfg)
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let failures = compare(
        "hybrid 1x1 device FSDP vs single GPU",
        &hybrid,
        &single_gpu(&cfg),
        &initial,
        &names,
    );
    assert_eq!(
        replica_events,
        cfg.layers + 2,
        "one replica all-reduce per unit"
    );
    assert!(failures.is_empty(), "{failures:?}");
}
