//! One stage of a recipe, top to bottom: pick the start (resume, init checkpoint, or scratch),
//! then for each phase build the data mixture and a fresh optimizer, run the steps (micro-batches
//! with gradient accumulation, global-norm clipping, AdamW at the scheduled LR), log, and
//! checkpoint; finally write RUN_DIR/STAGE/final, which the next stage starts from.
//!
//! Determinism: the model init, the data order and every update depend only on the recipe, the
//! seed and the step, and a checkpoint holds all of the state (weights, AdamW moments and step
//! count, data cursor, phase/step counters), so stopping and resuming gives bit-identical
//! weights and losses to an uninterrupted run (tests/resume.rs).

use crate::backend::{BackendChoice, MemoryEstimate, Optimizer, Selected, TrainBackend};
use crate::guard::{GuardState, OutlierGuard};
use crate::lock::RunLock;
use crate::metrics::{human_count, EvalRecord, EventRecord, MetricsFile, StepMetrics};
use crate::progress::{
    checkpoint_target, is_eval_step, log_event, log_outlier_skip, preempted_record, Progress,
};
use crate::recipe::{PhaseConfig, Recipe, ScheduleConfig, ScheduleKind, StageConfig};
use kormo_checkpoint::{Checkpoint, DiskBudget, RunState, Tensor};
use kormo_cpu::CpuOps;
use kormo_data::synthetic::{self, SyntheticSpec};
use kormo_data::{DataCursor, Loader, PackedRows, PackingOptions, Source};
use kormo_model::{Batch, LossSum, Model, Ops};
use kormo_optim::{AdamWConfig, LrSchedule};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The backend of the distributed ranks (and the single-process loop without a GPU).
pub(crate) type Backend = CpuOps<f32>;

/// f32 weights as loaded from a checkpoint or model folder, kept for a backend whose optimizer
/// holds the weights of record ([`Optimizer::KEEPS_MASTER_WEIGHTS`]); None otherwise.
pub(crate) type LoadedWeights = Option<Vec<Vec<f32>>>;

pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// How to run a stage (the command line minus parsing).
#[derive(Clone, Debug, PartialEq)]
pub struct RunOptions {
    pub stage: String,
    pub run_dir: PathBuf,
    pub max_steps: Option<u64>,
    pub stop_after: Option<u64>,
    pub seed: Option<u64>,
    pub resume: bool,
    pub threads: Option<usize>,
    pub log_every: u64,
    /// Ranks (threads of this process, kormo_dist) that train the stage; 1 is the plain trainer.
    pub world_size: usize,
    /// Where the single-process loop runs (`--backend`).
    pub backend: BackendChoice,
    /// Start from this Hugging Face model folder instead of the stage's `init` (not resuming).
    pub init_hf: Option<PathBuf>,
    /// Injected faults (tests of the recovery paths); empty in normal runs.
    pub faults: Faults,
}

/// Faults to inject, so tests exercise the real recovery code paths.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// Stage step -> the mean loss that step reports instead of the measured one (once each:
    /// a NaN here is a transient fault that a restore gets past).
    pub loss_override: BTreeMap<u64, f64>,
    /// Checkpoint writes of this invocation fail like a full disk after this many bytes.
    pub checkpoint_disk_budget: Option<u64>,
}

impl RunOptions {
    /// The same options continuing from the newest checkpoint.
    pub fn with_resume(mut self) -> RunOptions {
        self.resume = true;
        self
    }
}

/// What a stage run did.
#[derive(Clone, Debug)]
pub struct StageReport {
    /// Every logged step of this invocation.
    pub logged: Vec<StepMetrics>,
    /// The stage ran to its end (false: stopped early by `stop_after`).
    pub completed: bool,
    /// The checkpoint written last (the final one when completed).
    pub checkpoint: PathBuf,
}

/// A user-facing error; `train` prints it and exits with code 2.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainError(pub String);

impl std::fmt::Display for TrainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TrainError {}

macro_rules! into_train_error {
    ($($t:ty),*) => {$(
        impl From<$t> for TrainError {
            fn from(e: $t) -> Self {
                TrainError(e.to_string())
            }
        }
    )*};
}
into_train_error!(
    crate::recipe::RecipeError,
    kormo_data::DataError,
    kormo_checkpoint::CheckpointError,
    kormo_model::ModelError,
    kormo_optim::OptimError,
    String
);

/// Trainer counters stored in every checkpoint (besides model, optimizer and data state).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TrainerState {
    pub seed: u64,
    pub phase_index: usize,
    /// Steps done in the phase.
    pub phase_step: u64,
    /// Length of the phase (after `--max-steps`).
    pub phase_steps: u64,
    /// Tokens consumed in the stage.
    pub tokens: u64,
    /// The outlier guard's history in the phase.
    #[serde(default)]
    pub guard: GuardState,
}

pub(crate) fn trainer_state(checkpoint: &Checkpoint) -> Result<TrainerState, TrainError> {
    serde_json::from_value(checkpoint.manifest.run.trainer.clone()).map_err(|e| {
        TrainError(format!(
            "{}: bad trainer state: {e}",
            checkpoint
                .dir
                .join(kormo_checkpoint::MANIFEST_FILE)
                .display()
        ))
    })
}

/// The newest periodic checkpoint of `stage` inside phase `phase_index` that loads cleanly.
pub(crate) fn last_good_checkpoint(
    checkpoints_dir: &Path,
    stage: &str,
    phase_index: usize,
) -> Option<(PathBuf, Checkpoint, TrainerState)> {
    kormo_checkpoint::list_steps(checkpoints_dir)
        .into_iter()
        .rev()
        .find_map(|(_, dir)| {
            let checkpoint = Checkpoint::load(&dir).ok()?;
            let state = trainer_state(&checkpoint).ok()?;
            (checkpoint.manifest.run.stage == stage
                && state.phase_index == phase_index
                && state.phase_step < state.phase_steps)
                .then_some((dir, checkpoint, state))
        })
}

/// Where a stage run begins.
pub(crate) struct Start {
    pub phase_index: usize,
    pub phase_step: u64,
    pub step: u64,
    pub tokens: u64,
    /// Optimizer and data state to restore into the first phase (resume only).
    pub resumed: Option<Checkpoint>,
    /// The f32 weights the model was loaded with, for a backend that keeps master weights.
    pub weights: LoadedWeights,
}

impl Start {
    /// The phase step that phase `phase_index` begins at in this run.
    pub fn first_step(&self, phase_index: usize) -> u64 {
        if phase_index == self.phase_index {
            self.phase_step
        } else {
            0
        }
    }
}

/// Progress output (stdout for the binary, a buffer or sink in tests).
pub(crate) fn say(out: &mut dyn Write, line: impl AsRef<str>) {
    // Console output is best effort: a closed pipe must not abort training.
    let _ = writeln!(out, "{}", line.as_ref());
}

/// Runs stage `opts.stage` of `recipe` on the backend `opts.backend` selects.
pub fn run_stage(
    recipe: &Recipe,
    opts: &RunOptions,
    out: &mut dyn Write,
) -> Result<StageReport, TrainError> {
    run_stage_launched(recipe, opts, None, out)
}

/// [`run_stage`] as one rank of a multi-process job when `launch` is given (launch.rs): the
/// backend on the device of its local rank, the ranks met before anything touches the run
/// directory, rank 0 alone preparing it (lock, data, metrics) and reporting on `out`.
pub fn run_stage_launched(
    recipe: &Recipe,
    opts: &RunOptions,
    launch: Option<&crate::launch::Launch>,
    out: &mut dyn Write,
) -> Result<StageReport, TrainError> {
    let cpu = opts.threads.map(Backend::with_threads).unwrap_or_default();
    let threads = cpu.threads();
    let ordinal = launch.map_or(0, |l| l.env.local_rank);
    let selected =
        crate::backend::select_on(opts.backend, &recipe.model, opts.world_size, ordinal)?;
    let line = selected.describe(threads);
    let group = launch
        .map(|l| l.connect().map_err(TrainError))
        .transpose()?;
    let dist_timeout = launch.map_or(std::time::Duration::from_secs(600), |l| l.timeout);
    let mut sink = std::io::sink();
    let out: &mut dyn Write = match &group {
        Some(group) => {
            let rank = kormo_dist::HostTransport::rank(group.as_ref());
            say(
                out,
                format!(
                    "launch: rank {rank}: all {} ranks connected",
                    kormo_dist::HostTransport::world_size(group.as_ref())
                ),
            );
            if rank == 0 {
                out
            } else {
                say(
                    out,
                    format!("launch: rank {rank} is quiet from here on; rank 0 reports"),
                );
                &mut sink
            }
        }
        None => out,
    };
    match selected {
        Selected::Cpu { .. } => {
            let available = available_host_memory();
            run_stage_on(
                recipe,
                opts,
                (group, dist_timeout),
                cpu,
                threads,
                &line,
                available,
                out,
            )
        }
        Selected::Cuda { ops, device } => {
            let available = Some(device.total_memory_bytes as u64);
            run_stage_on(
                recipe,
                opts,
                (group, dist_timeout),
                ops,
                threads,
                &line,
                available,
                out,
            )
        }
    }
}

/// [`run_stage`] on backend `ops`, announced by `backend_line`; `threads`: CPU threads (the
/// distributed ranks and the host optimizer use them); `available`: the backend's memory;
/// `group`: the ranks of a launched multi-process job (this process is one) and the time a rank
/// may wait for the others.
#[allow(clippy::too_many_arguments)]
fn run_stage_on<O: TrainBackend + crate::dist::DistBackend>(
    recipe: &Recipe,
    opts: &RunOptions,
    (group, dist_timeout): (
        Option<std::sync::Arc<dyn kormo_dist::HostTransport>>,
        std::time::Duration,
    ),
    ops: O,
    threads: usize,
    backend_line: &str,
    available: Option<u64>,
    out: &mut dyn Write,
) -> Result<StageReport, TrainError> {
    let stage = recipe.stage(&opts.stage).ok_or_else(|| {
        TrainError(format!(
            "unknown stage `{}` (pretrain1, pretrain2, midtrain or sft)",
            opts.stage
        ))
    })?;
    let seed = opts.seed.unwrap_or(recipe.file.seed);
    let stage_dir = opts.run_dir.join(&opts.stage);
    let checkpoints_dir = stage_dir.join("checkpoints");
    let phase_steps: Vec<u64> = stage
        .phases
        .iter()
        .map(|p| {
            opts.max_steps
                .map_or(p.total_steps(), |cap| p.total_steps().min(cap))
        })
        .collect();

    // Rank 0 of a launched job prepares the run directory (lock, data, checkpoints, metrics)
    // while the others wait at a barrier, then they read what it prepared.
    let rank0 = group
        .as_ref()
        .is_none_or(|g| kormo_dist::HostTransport::rank(g.as_ref()) == 0);
    let barrier = |g: &std::sync::Arc<dyn kormo_dist::HostTransport>| {
        kormo_dist::Collectives::barrier(g.as_ref())
            .map_err(|e| TrainError(format!("waiting for rank 0 to prepare the run: {e}")))
    };
    // One job per run directory, held until this function returns (by rank 0 for all ranks).
    let (_lock, stale_lock) = if rank0 {
        let (lock, stale) = RunLock::acquire(&opts.run_dir)?;
        (Some(lock), stale)
    } else {
        barrier(group.as_ref().expect("a rank other than 0 is launched"))?;
        (None, None)
    };
    // Events before the metrics file is open (it is truncated or trimmed first).
    let mut early_events = Vec::new();
    if let Some(pid) = stale_lock {
        early_events.push((
            "stale_lock",
            format!(
                "replaced the stale lock {} of process {pid}, which is no longer running",
                opts.run_dir.join(crate::lock::LOCK_FILE).display()
            ),
        ));
    }

    // The backend and the model's size (checked against the memory before allocating).
    let m = &recipe.model;
    say(
        out,
        format!(
            "kormo train: recipe `{}` ({}), stage {}, run dir {}",
            recipe.file.name,
            recipe.origin,
            opts.stage,
            opts.run_dir.display()
        ),
    );
    say(out, backend_line);
    say(out, format!(
        "model: {} parameters (hidden {}, {} layers, {} heads / {} kv heads of {}, ffn {}, vocab {})",
        human_count(m.param_count() as f64), m.hidden, m.layers, m.heads, m.kv_heads, m.head_dim, m.ffn, m.vocab
    ));

    // Data for every phase, opened (and synthetic corpora generated) before any training, so a
    // missing file stops the run now rather than hours in.
    let mut fingerprint = recipe.tokenizer_fingerprint().map(str::to_string);
    let mut loaders = open_phase_data(recipe, opts, stage, seed, &mut fingerprint, rank0, out)?;
    let micro_batch_tokens = stage
        .phases
        .iter()
        .map(|p| p.seq_len * p.micro_batch)
        .max()
        .unwrap_or(0);
    let memory = MemoryEstimate::new::<O>(m, micro_batch_tokens, stage.activation_checkpointing);
    say(
        out,
        format!(
            "memory (estimated peak on the {}, micro-batches of {micro_batch_tokens} tokens, activation checkpointing {}): {}",
            O::MEMORY,
            if stage.activation_checkpointing { "on" } else { "off" },
            memory.describe()
        ),
    );
    check_memory::<O>(&memory, available)?;
    let mut model = Model::new(recipe.model.clone(), ops, seed)?;
    model.set_activation_checkpointing(stage.activation_checkpointing);
    let stability = &recipe.file.stability;
    model.set_z_loss(stability.z_loss as f32);
    if stability.z_loss > 0.0 {
        say(
            out,
            format!("z-loss: {:e} x logsumexp^2 per token", stability.z_loss),
        );
    }

    // Where to start: a checkpoint of this stage, the previous stage's final weights, or scratch.
    let mut start = if opts.resume {
        resume_point(
            recipe,
            opts,
            seed,
            &crate::run_state::Expected {
                recipe,
                stage,
                phase_steps: &phase_steps,
                data: &loaders,
            },
            &stage_dir,
            &mut model,
            &mut early_events,
            out,
        )?
    } else {
        if rank0 {
            std::fs::remove_dir_all(&checkpoints_dir).or_else(ignore_missing)?;
            std::fs::remove_dir_all(stage_dir.join("final")).or_else(ignore_missing)?;
        }
        let weights = initialise(recipe, stage, opts, &mut model, out)?;
        Start {
            phase_index: 0,
            phase_step: 0,
            step: 0,
            tokens: 0,
            resumed: None,
            weights,
        }
    };
    let mut resumed = start.resumed.take();
    let mut weights = start.weights.take();
    let metrics_path = stage_dir.join("metrics.jsonl");
    let metrics = if rank0 {
        if opts.resume {
            // Lines logged after the checkpoint (a crash between log and save) are replayed below.
            crate::metrics::truncate_after(&metrics_path, start.step)?;
        }
        let mut metrics = MetricsFile::open(&metrics_path, !opts.resume)?;
        let start_phase = stage
            .phases
            .get(start.phase_index)
            .map_or("", |p| p.name.as_str());
        for (event, message) in early_events {
            let record = EventRecord::new(&opts.stage, start_phase, start.step, event, message);
            log_event(out, &mut metrics, &record)?;
        }
        Some(metrics)
    } else {
        None
    };
    let final_dir = stage_dir.join("final");
    if group.is_some() || opts.world_size > 1 {
        let mut data = vec![loaders];
        if group.is_none() {
            // Every thread rank needs its own data stream (the same one); rank 0's was opened
            // above.
            for _ in 1..opts.world_size {
                let sink = &mut std::io::sink();
                data.push(open_phase_data(
                    recipe,
                    opts,
                    stage,
                    seed,
                    &mut fingerprint,
                    false,
                    sink,
                )?);
            }
        }
        let params = match weights.take() {
            Some(loaded) => loaded,
            None => crate::backend::read_params(&model)?,
        };
        let rank_ops = model.ops().clone();
        drop(model);
        let prepared = crate::dist::Prepared {
            shared: crate::dist::Shared {
                recipe,
                opts,
                stage,
                seed,
                phase_steps,
                checkpoints_dir,
                final_dir,
                params,
                start: Start { resumed, ..start },
                threads_per_rank: (threads / opts.world_size).max(1),
            },
            data,
            metrics,
        };
        return match group {
            Some(group) => {
                if rank0 {
                    // The run directory is ready: the other ranks may read it.
                    barrier(&group)?;
                }
                crate::dist::run_process(prepared, group, rank_ops, dist_timeout, out)
            }
            None => crate::dist::run_threads(prepared, out),
        };
    }
    let mut metrics = metrics.expect("a single process is rank 0");
    let mut report = StageReport {
        logged: Vec::new(),
        completed: false,
        checkpoint: final_dir.clone(),
    };
    let disk = opts
        .faults
        .checkpoint_disk_budget
        .map_or_else(DiskBudget::unlimited, DiskBudget::fail_after);
    let mut loss_overrides = opts.faults.loss_override.clone();
    let mut restores = 0u32;
    // The newest checkpoint this invocation wrote (named when a later save fails).
    let mut last_saved: Option<PathBuf> = None;
    let mut progress = Progress::new(&opts.stage, stage, &phase_steps, &start);
    for (phase_index, phase) in stage.phases.iter().enumerate().skip(start.phase_index) {
        let total = phase_steps[phase_index];
        let mut phase_step = start.first_step(phase_index);
        if phase_step >= total {
            continue;
        }
        let event = |step: u64, event: &str, message: String| {
            EventRecord::new(&opts.stage, &phase.name, step, event, message)
        };
        // Data: the phase's mixture, deterministic from the seed, packed KORMo-style.
        let PhaseData {
            mut loader,
            held_out,
        } = loaders[phase_index].take().expect("each phase runs once");
        // Optimizer: fresh at every phase boundary, restored when resuming inside the phase.
        let mut adamw =
            O::Optimizer::create(adamw_config(recipe), &model, threads, weights.take())?;
        let mut guard = OutlierGuard::new(stability);
        if let Some(checkpoint) = resumed.take() {
            restore_optimizer_and_data(&checkpoint, &mut adamw, &mut loader)?;
            guard.restore(&trainer_state(&checkpoint)?.guard);
        }
        let (peak_lr, schedule) = recipe.phase_schedule(phase);
        let lr_schedule = lr_schedule(peak_lr, &schedule, total)?;
        say(out, format!(
            "phase {}: {total} steps x {} tokens (seq {}, micro batch {}, grad accum {}), peak lr {peak_lr:.1e} {}{}",
            phase.name, phase.tokens_per_step(), phase.seq_len, phase.micro_batch, phase.grad_accum, serde_name(&schedule.kind),
            if phase.mask_think_token { ", <think> excluded from the loss" } else { "" }
        ));

        while phase_step < total {
            let lr = lr_schedule.lr(phase_step);
            let grad_clip = recipe.file.optimizer.grad_clip;
            let mut loss = compute_gradients(&mut model, &mut loader, phase)?;
            // Norm (and clipping) first: the checks below decide whether the update happens.
            let grad_norm = adamw.clip_grad_norm(&mut model, grad_clip)?;
            progress.advance(phase);
            let step = progress.step;
            if let Some(value) = loss_overrides.remove(&step) {
                // Fault injection (tests): this step measured `value` as its mean loss.
                loss = LossSum {
                    weighted_loss: value * loss.weight,
                    weight: loss.weight,
                };
            }

            if !(loss.mean().is_finite() && grad_norm.is_finite()) {
                // Restore the last good checkpoint of this phase; the data stream moves on, so
                // the batches that led here are not replayed.
                let what = format!(
                    "loss {} / grad norm {grad_norm} is not finite at step {step}",
                    loss.mean()
                );
                if restores >= stability.nonfinite_retries {
                    return Err(TrainError(format!(
                        "phase {}: {what}, after {restores} restores of the last good checkpoint \
                         (stability.nonfinite_retries = {}); lower the learning rate or check the data",
                        phase.name, stability.nonfinite_retries
                    )));
                }
                let Some((dir, checkpoint, state)) =
                    last_good_checkpoint(&checkpoints_dir, &opts.stage, phase_index)
                else {
                    return Err(TrainError(format!(
                        "phase {}: {what}, and no checkpoint of this phase exists in {} to restore \
                         (checkpoint.every_steps = {}); lower the learning rate or checkpoint more often",
                        phase.name,
                        checkpoints_dir.display(),
                        recipe.file.checkpoint.every_steps
                    )));
                };
                restores += 1;
                let loaded = load_weights(&checkpoint, &mut model)?;
                adamw = O::Optimizer::create(adamw_config(recipe), &model, threads, loaded)?;
                restore_optimizer(&checkpoint, &mut adamw)?;
                guard.restore(&state.guard);
                let step = checkpoint.manifest.run.step;
                progress.step = step;
                phase_step = state.phase_step;
                progress.tokens = state.tokens;
                // The steps after the checkpoint are undone: so are their metrics lines.
                crate::metrics::truncate_after(&metrics_path, step)?;
                report.logged.retain(|m| m.step <= step);
                let record = event(step, "nonfinite_restore", format!(
                    "{what}; restored {} (step {step}, restore {restores} of at most {}) and continue on fresh data",
                    dir.display(), stability.nonfinite_retries
                ));
                log_event(out, &mut metrics, &record)?;
                continue;
            }
            let spike = guard.observe(loss.mean(), grad_norm);
            match &spike {
                Some(spike) => log_outlier_skip(
                    out,
                    &mut metrics,
                    (&opts.stage, &phase.name, step),
                    spike,
                    stability.outlier_threshold,
                )?,
                None => adamw.apply(&mut model, lr)?,
            }
            phase_step += 1;
            let done = phase_step;
            if Progress::is_log_step(done, total, opts.log_every) || spike.is_some() {
                let entry = progress.step_metrics(
                    phase_index,
                    done,
                    loss.mean(),
                    lr,
                    grad_norm,
                    spike.is_some(),
                );
                say(out, entry.progress_line());
                metrics.append(&entry)?;
                report.logged.push(entry);
            }
            if is_eval_step(recipe, step, done, total) {
                for source in &held_out {
                    let record = evaluate(&mut model, source, phase, recipe, &opts.stage, step)?;
                    say(out, record.line());
                    metrics.append(&record)?;
                }
            }

            let state = progress.trainer_state(seed, phase_index, done, guard.state());
            let stage_done = phase_index + 1 == stage.phases.len() && done == total;
            let phase_done = done == total;
            let preempted = crate::signals::stop_requested().filter(|_| !stage_done);
            let stopping = (opts.stop_after == Some(progress.steps_this_run)
                || preempted.is_some())
                && !stage_done;
            let to_save = checkpoint_target(
                recipe,
                step,
                stage_done,
                stopping,
                &final_dir,
                &checkpoints_dir,
            );
            if let Some(dir) = to_save {
                let saved = save(
                    recipe,
                    &opts.stage,
                    &phase.name,
                    step,
                    &state,
                    &model,
                    &mut adamw,
                    &loader.cursor(),
                    &dir,
                    &disk,
                );
                if let Err(e) = saved {
                    let fallback = match &last_saved {
                        Some(previous) => format!("the last good checkpoint, {}, is intact; continue from it with --resume", previous.display()),
                        None if opts.resume => "the checkpoint this run resumed from is intact; continue from it with --resume".into(),
                        None => "no checkpoint of this run was written yet".into(),
                    };
                    let record = event(step, "checkpoint_failed", format!("{e}\n{fallback}"));
                    say(out, format!("event checkpoint_failed: {}", record.message));
                    // Best effort: the disk may be what failed.
                    let _ = metrics.append(&record);
                    return Err(TrainError(record.message));
                }
                last_saved = Some(dir.clone());
                if !stage_done {
                    kormo_checkpoint::keep_last(
                        &checkpoints_dir,
                        recipe.file.checkpoint.keep_last,
                    )?;
                }
                report.checkpoint = dir;
            }
            if let Some(signal) = preempted {
                let record =
                    preempted_record(&opts.stage, &phase.name, step, signal, &report.checkpoint);
                log_event(out, &mut metrics, &record)?;
                return Ok(report);
            }
            if stopping {
                say(out, progress.stopped_line(&report.checkpoint));
                return Ok(report);
            }
            if phase_done && !stage_done && <O::Optimizer as Optimizer<O>>::KEEPS_MASTER_WEIGHTS {
                // The next phase's fresh optimizer starts from these master weights.
                weights = Some(adamw.weights(&model)?);
            }
        }
    }
    report.completed = true;
    for line in crate::progress::stage_end_lines(recipe, &opts.stage, &progress, 1, &report) {
        say(out, line);
    }
    Ok(report)
}

/// Forward and backward over all micro-batches of one step, so the gradient is the mean over
/// every trained token of the step however they fall into micro-batches. Returns the step's
/// loss (clipping and the update are the caller's, around its NaN and outlier checks).
fn compute_gradients<O: Ops>(
    model: &mut Model<O>,
    loader: &mut Loader,
    phase: &PhaseConfig,
) -> Result<LossSum, TrainError> {
    let batches = (0..phase.grad_accum)
        .map(|_| loader.next_rows(phase.micro_batch).map(to_batch))
        .collect::<Result<Vec<Batch>, _>>()?;
    let weight: f64 = batches.iter().map(Batch::loss_weight_sum).sum();
    let grad_scale = if weight > 0.0 {
        (1.0 / weight) as f32
    } else {
        0.0
    };
    model.zero_grads();
    let mut loss = LossSum::default();
    for batch in &batches {
        loss = loss.add(model.forward_backward(batch, grad_scale)?);
    }
    Ok(loss)
}

/// Held-out loss of one source: the first `eval.rows` rows of its held-out documents (the
/// same rows every time), in micro-batches of the phase's shape. Gradients are not touched.
fn evaluate<O: Ops>(
    model: &mut Model<O>,
    source: &Source,
    phase: &PhaseConfig,
    recipe: &Recipe,
    stage: &str,
    step: u64,
) -> Result<EvalRecord, TrainError> {
    let mut loader = held_out_rows(source, phase, recipe)?;
    let mut sum = LossSum::default();
    let mut rows = recipe.file.eval.rows;
    while rows > 0 {
        let take = rows.min(phase.micro_batch);
        sum = sum.add(model.evaluate(&to_batch(loader.next_rows(take)?))?);
        rows -= take;
    }
    Ok(eval_record(source, phase, stage, step, sum))
}

/// The stream of a source's held-out rows, packed as the phase packs, always from the start.
pub(crate) fn held_out_rows(
    source: &Source,
    phase: &PhaseConfig,
    recipe: &Recipe,
) -> Result<Loader, TrainError> {
    Ok(Loader::new(
        vec![source.clone()],
        packing_options(recipe, phase),
        0,
    )?)
}

pub(crate) fn eval_record(
    source: &Source,
    phase: &PhaseConfig,
    stage: &str,
    step: u64,
    sum: LossSum,
) -> EvalRecord {
    let loss = sum.mean();
    EvalRecord {
        record: "eval".into(),
        stage: stage.into(),
        phase: phase.name.clone(),
        step,
        source: source.name.clone(),
        loss,
        perplexity: loss.exp(),
        tokens: sum.weight,
    }
}

/// Refuses a run whose estimated peak cannot fit in `available` bytes (the host's available
/// memory or the device's), instead of dying in the allocator hours later.
pub(crate) fn check_memory<O: TrainBackend>(
    estimate: &MemoryEstimate,
    available: Option<u64>,
) -> Result<(), TrainError> {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    match available {
        Some(available) if estimate.total() > available => Err(TrainError(format!(
            "training needs about {:.1} GiB of {} memory ({}); {:.1} GiB are available \
             (use a smaller recipe such as --config=tiny, a smaller micro_batch, \
             activation_checkpointing = true in the stage, or a GPU backend)",
            gib(estimate.total()),
            O::MEMORY,
            estimate.describe(),
            gib(available)
        ))),
        _ => Ok(()),
    }
}

/// MemAvailable of /proc/meminfo, where there is one.
pub(crate) fn available_host_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kib| kib * 1024)
}

fn ignore_missing(e: std::io::Error) -> Result<(), TrainError> {
    if e.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(TrainError(e.to_string()))
    }
}

/// ` --config=...` that loads this recipe again (see [`Recipe::config_arg`]); empty for the
/// default (built-in tiny).
pub(crate) fn config_flag(recipe: &Recipe) -> String {
    recipe
        .config_arg()
        .map_or_else(String::new, |arg| format!(" --config={arg}"))
}

/// Loads the init stage's final weights (optimizer state starts afresh at a stage boundary).
/// Returns the loaded f32 weights when the backend keeps master weights.
fn initialise<O: TrainBackend>(
    recipe: &Recipe,
    stage: &StageConfig,
    opts: &RunOptions,
    model: &mut Model<O>,
    out: &mut dyn Write,
) -> Result<LoadedWeights, TrainError> {
    if let Some(folder) = &opts.init_hf {
        return init_from_hf(recipe, folder, model, out);
    }
    if let Some(folder) = stage.init.strip_prefix("hf:") {
        return init_from_hf(recipe, &recipe.base_dir.join(folder), model, out);
    }
    if stage.init == "scratch" {
        say(
            out,
            "init: from scratch (normal(0, 0.02) weights, unit norms)",
        );
        return Ok(None);
    }
    let dir = opts.run_dir.join(&stage.init).join("final");
    if !dir.join(kormo_checkpoint::MANIFEST_FILE).is_file() {
        let how = format!(
            "tools/bazel run //rust:train -- --stage={}{}",
            stage.init,
            config_flag(recipe)
        );
        if recipe.file.scratch_if_init_missing {
            say(out, format!(
                "init: no {} checkpoint at {} (it is made by `{how}`); the {} recipe starts from scratch instead",
                stage.init, dir.display(), recipe.file.name
            ));
            return Ok(None);
        }
        return Err(TrainError(format!(
            "stage {} starts from the final checkpoint of stage {}, which is missing: {}\nmake it with: {how}",
            opts.stage, stage.init, dir.display()
        )));
    }
    let checkpoint = Checkpoint::load(&dir)?;
    let weights = load_weights(&checkpoint, model)?;
    say(
        out,
        format!(
            "init: weights of {} (step {}), fresh optimizer state",
            dir.display(),
            checkpoint.manifest.run.step
        ),
    );
    Ok(weights)
}

/// Loads the weights of a Hugging Face model folder (kormo_hf: KORMo or Llama naming, f32 or
/// bf16), whose config.json must describe the recipe's model.
fn init_from_hf<O: TrainBackend>(
    recipe: &Recipe,
    folder: &Path,
    model: &mut Model<O>,
    out: &mut dyn Write,
) -> Result<LoadedWeights, TrainError> {
    let weights = kormo_hf::load_hf_folder(folder).map_err(|e| TrainError(e.to_string()))?;
    if weights.config != recipe.model {
        let ours = serde_json::to_value(&recipe.model).expect("config serialises");
        let theirs = serde_json::to_value(&weights.config).expect("config serialises");
        let differing: Vec<String> = ours
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(key, value)| theirs.get(key.as_str()) != Some(value))
            .map(|(key, value)| {
                format!(
                    "{key}: folder {}, recipe {value}",
                    theirs.get(key.as_str()).unwrap_or(&serde_json::Value::Null)
                )
            })
            .collect();
        return Err(TrainError(format!(
            "{}: the model in config.json is not the recipe's model ({}); set [model] in {} to match",
            folder.join("config.json").display(),
            differing.join("; "),
            recipe.origin
        )));
    }
    for tensor in &weights.tensors {
        model.write_param(&tensor.name, &tensor.values)?;
    }
    say(
        out,
        format!(
            "init: weights of Hugging Face folder {}, fresh optimizer state",
            folder.display()
        ),
    );
    // The masters must follow the model's tensor order, which the folder need not have.
    Ok(if <O::Optimizer as Optimizer<O>>::KEEPS_MASTER_WEIGHTS {
        let mut by_name: BTreeMap<String, Vec<f32>> = weights
            .tensors
            .into_iter()
            .map(|t| (t.name, t.values))
            .collect();
        Some(
            model
                .param_specs()
                .iter()
                .map(|spec| {
                    by_name.remove(&spec.name).ok_or_else(|| {
                        TrainError(format!("{}: no tensor {}", folder.display(), spec.name))
                    })
                })
                .collect::<Result<_, _>>()?,
        )
    } else {
        None
    })
}

/// Finds the newest checkpoint of this stage that loads cleanly and loads its weights; the
/// optimizer and data state are restored once the phase's optimizer and loader exist. A
/// checkpoint that fails its size or checksum checks (a crash or a bad disk) is skipped for
/// the one before it, with a message and an event; a checkpoint of another recipe, seed or
/// length is an error, since falling back would not help.
#[allow(clippy::too_many_arguments)]
fn resume_point<O: TrainBackend>(
    recipe: &Recipe,
    opts: &RunOptions,
    seed: u64,
    expected: &crate::run_state::Expected<'_>,
    stage_dir: &Path,
    model: &mut Model<O>,
    events: &mut Vec<(&'static str, String)>,
    out: &mut dyn Write,
) -> Result<Start, TrainError> {
    kormo_checkpoint::recover_interrupted(&stage_dir.join("checkpoints"));
    kormo_checkpoint::recover_interrupted(stage_dir);
    let mut candidates: Vec<(u64, PathBuf)> =
        kormo_checkpoint::list_steps(&stage_dir.join("checkpoints"));
    let final_dir = stage_dir.join("final");
    if final_dir.join(kormo_checkpoint::MANIFEST_FILE).is_file() {
        candidates.push((u64::MAX, final_dir));
    }
    candidates.sort();
    if candidates.is_empty() {
        return Err(TrainError(format!(
            "--resume: no checkpoint in {} (run without --resume to start stage {})",
            stage_dir.display(),
            opts.stage
        )));
    }
    let mut damaged = Vec::new();
    let (dir, checkpoint) = loop {
        let Some((_, dir)) = candidates.pop() else {
            return Err(TrainError(format!(
                "--resume: every checkpoint in {} is damaged:\n  {}\n(run without --resume to start stage {} again)",
                stage_dir.display(),
                damaged.join("\n  "),
                opts.stage
            )));
        };
        match Checkpoint::load(&dir) {
            Ok(checkpoint) => break (dir, checkpoint),
            Err(e) => {
                let message = format!("{e}");
                if let Some((_, previous)) = candidates.last() {
                    let line = format!(
                        "checkpoint {} is damaged ({message}); falling back to {}",
                        dir.display(),
                        previous.display()
                    );
                    // Printed and logged with the other early events (log_event).
                    events.push(("checkpoint_fallback", line));
                }
                damaged.push(message);
            }
        }
    };
    let run = &checkpoint.manifest.run;
    let mismatch = |what: &str, theirs: String, ours: String| {
        TrainError(format!(
            "--resume: {} was written with {what} {theirs}, this run has {ours}",
            dir.display()
        ))
    };
    if run.stage != opts.stage {
        return Err(mismatch("stage", run.stage.clone(), opts.stage.clone()));
    }
    if run.config_hash != recipe.hash() {
        return Err(mismatch(
            "recipe hash",
            run.config_hash.clone(),
            recipe.hash(),
        ));
    }
    let state = trainer_state(&checkpoint)?;
    if state.seed != seed {
        return Err(mismatch("seed", state.seed.to_string(), seed.to_string()));
    }
    crate::run_state::validate(&checkpoint, &state, expected)?;
    let weights = load_weights(&checkpoint, model)?;
    say(
        out,
        format!(
            "resume: {} (stage step {}, phase {} step {})",
            dir.display(),
            run.step,
            run.phase,
            state.phase_step
        ),
    );
    let phase_done = state.phase_step >= state.phase_steps;
    Ok(Start {
        phase_index: state.phase_index + phase_done as usize,
        phase_step: if phase_done { 0 } else { state.phase_step },
        step: run.step,
        tokens: state.tokens,
        resumed: (!phase_done).then_some(checkpoint),
        weights,
    })
}

/// Loads a checkpoint's weights into `model`; keeps the f32 values when the backend's optimizer
/// holds the weights of record.
fn load_weights<O: TrainBackend>(
    checkpoint: &Checkpoint,
    model: &mut Model<O>,
) -> Result<LoadedWeights, TrainError> {
    let file = checkpoint.file(MODEL_FILE)?;
    let specs = model.param_specs().to_vec();
    let mut kept = Vec::new();
    for spec in &specs {
        let values = file.f32(&spec.name, Some(&spec.shape))?;
        model.write_param(&spec.name, &values)?;
        if <O::Optimizer as Optimizer<O>>::KEEPS_MASTER_WEIGHTS {
            kept.push(values);
        }
    }
    Ok(<O::Optimizer as Optimizer<O>>::KEEPS_MASTER_WEIGHTS.then_some(kept))
}

pub(crate) fn adamw_config(recipe: &Recipe) -> AdamWConfig {
    let o = &recipe.file.optimizer;
    AdamWConfig {
        beta1: o.beta1,
        beta2: o.beta2,
        eps: o.eps,
        weight_decay: o.weight_decay,
    }
}

fn restore_optimizer<O: Ops>(
    checkpoint: &Checkpoint,
    adamw: &mut impl Optimizer<O>,
) -> Result<(), TrainError> {
    let file = checkpoint.file(OPTIMIZER_FILE)?;
    for name in adamw.state_names() {
        adamw.load_state_tensor(&name, &file.f32(&name, None)?)?;
    }
    let step = file.u64("step", Some(&[1]))?;
    adamw.set_step_count(step[0]);
    Ok(())
}

fn restore_optimizer_and_data<O: Ops>(
    checkpoint: &Checkpoint,
    adamw: &mut impl Optimizer<O>,
    loader: &mut Loader,
) -> Result<(), TrainError> {
    restore_optimizer(checkpoint, adamw)?;
    restore_data(checkpoint, loader)
}

/// Continues `loader` from the checkpoint's data cursor.
pub(crate) fn restore_data(checkpoint: &Checkpoint, loader: &mut Loader) -> Result<(), TrainError> {
    let cursor: DataCursor = serde_json::from_value(checkpoint.manifest.run.data_cursor.clone())
        .map_err(|e| {
            TrainError(format!(
                "{}: bad data cursor: {e}",
                checkpoint
                    .dir
                    .join(kormo_checkpoint::MANIFEST_FILE)
                    .display()
            ))
        })?;
    loader.restore(&cursor)?;
    Ok(())
}

/// The manifest's run state of a checkpoint at `step`.
pub(crate) fn run_state(
    recipe: &Recipe,
    stage: &str,
    phase: &str,
    step: u64,
    state: &TrainerState,
    cursor: &DataCursor,
) -> RunState {
    RunState {
        step,
        stage: stage.to_string(),
        phase: phase.to_string(),
        config_hash: recipe.hash(),
        // Training draws no random numbers besides the data order, whose ChaCha8 position is in
        // the data cursor; the seed reproduces the model init.
        rng_state: serde_json::json!({ "seed": state.seed, "data_rng_word_pos": cursor.rng_word_pos }),
        data_cursor: serde_json::to_value(cursor).expect("cursor serialises"),
        trainer: serde_json::to_value(state).expect("state serialises"),
    }
}

#[allow(clippy::too_many_arguments)]
fn save<O: Ops>(
    recipe: &Recipe,
    stage: &str,
    phase: &str,
    step: u64,
    state: &TrainerState,
    model: &Model<O>,
    adamw: &mut impl Optimizer<O>,
    cursor: &DataCursor,
    dir: &Path,
    disk: &DiskBudget,
) -> Result<(), TrainError> {
    // Both backends' state is read back to the host in kormo_optim's names: one format.
    let weights = model
        .param_specs()
        .iter()
        .zip(adamw.weights(model)?)
        .map(|(spec, values)| Tensor::f32(spec.name.clone(), spec.shape.clone(), &values))
        .collect();
    let mut optimizer = Vec::new();
    for name in adamw.state_names() {
        let values = adamw.state_tensor(&name)?;
        optimizer.push(Tensor::f32(name, vec![values.len()], &values));
    }
    optimizer.push(Tensor::u64("step", vec![1], &[adamw.step_count()]));
    kormo_checkpoint::save_with_budget(
        dir,
        run_state(recipe, stage, phase, step, state, cursor),
        &[(MODEL_FILE, weights), (OPTIMIZER_FILE, optimizer)],
        disk,
    )?;
    Ok(())
}

pub(crate) fn lr_schedule(
    peak: f64,
    s: &ScheduleConfig,
    total_steps: u64,
) -> Result<LrSchedule, TrainError> {
    let schedule = LrSchedule {
        kind: match s.kind {
            ScheduleKind::Wsd => kormo_optim::ScheduleKind::WarmupStableDecay,
            ScheduleKind::Cosine => kormo_optim::ScheduleKind::Cosine,
        },
        peak_lr: peak,
        total_steps,
        warmup_fraction: s.warmup_fraction,
        decay_fraction: s.decay_fraction,
        min_lr_ratio: s.min_lr_ratio,
    };
    schedule.validate()?;
    Ok(schedule)
}

/// The model's batch of packed rows.
pub fn to_batch(rows: PackedRows) -> Batch {
    Batch {
        batch_size: rows.rows,
        seq_len: rows.seq_len,
        tokens: rows.tokens,
        targets: rows.targets,
        loss_weights: rows.loss_weights,
        doc_ids: rows.doc_ids,
        positions: rows.positions,
    }
}

/// The data of every phase of `stage` (opened, and synthetic corpora generated, up front).
fn open_phase_data(
    recipe: &Recipe,
    opts: &RunOptions,
    stage: &StageConfig,
    seed: u64,
    fingerprint: &mut Option<String>,
    install: bool,
    out: &mut dyn Write,
) -> Result<Vec<Option<PhaseData>>, TrainError> {
    // `install`: copy the recipe's tokenizer into the run directory (once per run directory:
    // rank 0's job when several processes share it).
    if install {
        if let Some(path) = recipe
            .install_tokenizer(&opts.run_dir)
            .map_err(TrainError)?
        {
            say(out, format!("tokenizer: {}", path.display()));
        }
    }
    stage
        .phases
        .iter()
        .map(|phase| {
            build_loader(
                recipe,
                &opts.stage,
                phase,
                &opts.run_dir,
                seed,
                fingerprint,
                out,
            )
            .map(Some)
        })
        .collect()
}

/// A phase's training stream and the held-out part of each of its sources (empty when
/// evaluation is off).
pub(crate) struct PhaseData {
    pub loader: Loader,
    pub held_out: Vec<Source>,
}

/// Opens (generating synthetic corpora when needed) the sources of a phase's mixture, checks
/// that their shards carry the run's tokenizer `fingerprint` (the first source's, when the
/// recipe does not fix one), and splits off the held-out documents when evaluation is on.
fn build_loader(
    recipe: &Recipe,
    stage: &str,
    phase: &PhaseConfig,
    run_dir: &Path,
    seed: u64,
    fingerprint: &mut Option<String>,
    out: &mut dyn Write,
) -> Result<PhaseData, TrainError> {
    let mut sources = Vec::new();
    let mut held_out = Vec::new();
    let mut described = Vec::new();
    for (name, &weight) in &phase.mixture {
        let config = recipe.file.sources.get(name).ok_or_else(|| {
            TrainError(format!(
                "{}: key `{}`: source `{name}` is not defined under [sources]",
                recipe.origin, phase.name
            ))
        })?;
        let (manifest, origin) = match (&config.path, config.synthetic) {
            (Some(path), _) => (recipe.base_dir.join(path), "".to_string()),
            (None, Some(kind)) => {
                let dir = run_dir.join("data").join(name);
                // The corpus depends on the recipe's seed, not --seed, so the cache stays valid.
                let spec = SyntheticSpec {
                    kind,
                    documents: config.documents.unwrap_or(0),
                    seed: recipe.file.seed ^ fnv(name),
                };
                let generated = synthetic::ensure(&dir, &spec, &recipe.synthetic_vocabulary())?;
                let how = if generated { "generated" } else { "cached" };
                (
                    dir.join(synthetic::MANIFEST_FILE),
                    format!("synthetic {}, {how}, ", serde_name(&kind)),
                )
            }
            (None, None) => {
                return Err(TrainError(format!(
                    "{}: key `sources.{name}`: give `path` or `synthetic`",
                    recipe.origin
                )))
            }
        };
        let source = Source::open(name, weight, &manifest).map_err(|e| {
            TrainError(format!(
                "{e}\n(source `{name}` of recipe {}, key sources.{name})",
                recipe.origin
            ))
        })?;
        let expected =
            fingerprint.get_or_insert_with(|| source.tokenizer_fingerprint().to_string());
        source.check_tokenizer(expected).map_err(|e| {
            TrainError(format!(
                "{e}\n(source `{name}` of recipe {}, key sources.{name}; the run's tokenizer fingerprint comes from {})",
                recipe.origin,
                if recipe.tokenizer_fingerprint().is_some() { "the recipe's [tokens] table" } else { "the first source opened" }
            ))
        })?;
        phase.check_loss_masks(&source, &recipe.origin).map_err(TrainError)?;
        if source.vocab_size() as usize > recipe.model.vocab {
            return Err(TrainError(format!(
                "{}: shards use a vocabulary of {} tokens but the model has {} (source `{name}`)",
                manifest.display(),
                source.vocab_size(),
                recipe.model.vocab
            )));
        }
        described.push(format!(
            "{name} {weight} ({origin}{} docs, {} tokens, {})",
            source.num_documents(),
            human_count(source.num_tokens() as f64),
            manifest.display()
        ));
        if recipe.file.eval.every_steps > 0 {
            let (train, held) = source.split_holdout(recipe.file.eval.holdout_documents)?;
            sources.push(train);
            held_out.push(held);
        } else {
            sources.push(source);
        }
    }
    say(
        out,
        format!("data ({}): {}", phase.name, described.join("; ")),
    );
    if !held_out.is_empty() {
        say(out, format!(
            "eval ({}): the last {} documents of each source are held out; {} rows per source every {} steps",
            phase.name, recipe.file.eval.holdout_documents, recipe.file.eval.rows, recipe.file.eval.every_steps
        ));
    }
    // A different stream per stage and phase, all from the one seed.
    let loader = Loader::new(
        sources,
        packing_options(recipe, phase),
        seed ^ fnv(&format!("{stage}/{}", phase.name)),
    )?;
    Ok(PhaseData { loader, held_out })
}

/// How a phase's documents are packed into rows (the loss weights included).
pub fn packing_options(recipe: &Recipe, phase: &PhaseConfig) -> PackingOptions {
    PackingOptions {
        seq_len: phase.seq_len,
        specials: recipe.special_tokens(),
        positions: phase.positions,
        mask_think: phase.mask_think_token,
    }
}

/// The name a value has in recipe files (`long_context`, `wsd`).
pub(crate) fn serde_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        other => format!("{other:?}"),
    }
}

/// FNV-1a, to derive independent seeds from names.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
