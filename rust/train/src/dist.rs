//! The FSDP step loop (kormo_dist), with the strategy of the recipe's `[dist]` table, for two
//! ways of running ranks:
//! * `train --world-size N` on CPU: N ranks, one thread each in this process (`LocalComm`),
//!   [`run_threads`];
//! * one rank per process (`--launcher`, see launch.rs), [`run_process`]: `FsdpRank<CpuOps>`
//!   over the TCP group on the CPU, `DeviceFsdpRank` over NCCL on the GPU of the local rank,
//!   every strategy (`hybrid`: a shard-group and a replica-group communicator); the TCP group
//!   then carries the host-side agreement (the stop decision, the NCCL ids) and names a lost
//!   rank when the watchdog ends a rank stuck in NCCL.
//!
//! There is one loop ([`run_rank`]), generic over the engine ([`FsdpEngine`]: forward_backward,
//! apply, evaluate, full parameters, and kormo_dist's `ShardedState` for checkpoints) that a
//! backend builds for each phase ([`DistBackend`]).
//!
//! Everything before the first step — recipe, data, init or resume, metrics file — is the
//! single-process trainer's (trainer.rs); this module only replaces the step loop, and shares its
//! step bookkeeping with it (progress.rs). Every rank builds the same data stream and takes the
//! same global batch (micro_batch x grad_accum rows), keeps its rows `r, r+N, ...`
//! (kormo_dist::sampling) and cuts them into micro-batches; the loss is normalised over the whole
//! global batch, so the run matches world size 1 up to float reassociation (docs/distributed.md:
//! losses within 1e-6 relative).
//!
//! Checkpoints are written in the single-process format (sharded save, then consolidation by
//! rank 0), so any world size can resume them and the next stage can start from them. Rank 0
//! logs; the stop decision (a preemption signal) is agreed on by all ranks each step, over the
//! host group. A rank that dies or stops answering makes the others fail at their next
//! collective with an error naming it (kormo_dist's TCP layer; the collective timeout bounds a
//! hang), which `train` prints before exiting with code 2.
//!
//! Held-out evaluation runs here too (each rank evaluates its rows). Each step is split like
//! the single-process one: the engine's `forward_backward` gives the global loss and gradient
//! norm, the same on every rank, and every rank runs the same outlier guard (guard.rs) on them,
//! so all skip or `apply` the same updates, as world size 1 does; the guard's history is
//! checkpointed the same way. The loss-override fault seam is applied on every rank. A
//! non-finite loss or norm restores the last good checkpoint of the phase on every rank, as at
//! world size 1 (rank 0 picks it and tells the others its step; at most
//! `stability.nonfinite_retries` times). A failed checkpoint save is logged by rank 0 with the
//! last good checkpoint, as at world size 1, and every rank stops with it (rank 0's outcome is
//! shared); the disk-budget fault seam draws on rank 0's consolidations, which are the writes
//! that land in the checkpoint directory.

use crate::guard::OutlierGuard;
use crate::metrics::{EventRecord, MetricsFile};
use crate::progress::{
    checkpoint_target, is_eval_step, log_event, log_outlier_skip, preempted_record, Progress,
};
use crate::recipe::{Recipe, StageConfig};
use crate::trainer::{
    adamw_config, eval_record, held_out_rows, lr_schedule, run_state, say, to_batch, trainer_state,
    Backend, PhaseData, RunOptions, StageReport, Start, TrainError, OPTIMIZER_FILE,
};
use kormo_checkpoint::{Checkpoint, DiskBudget};
use kormo_cuda::CudaOps;
use kormo_dist::{
    sampling, sharded_checkpoint, Collectives, DeviceFsdpRank, FsdpConfig, FsdpEngine, FsdpRank,
    HostTransport, Strategy,
};
use kormo_model::{Model, Ops};
use kormo_optim::AdamWConfig;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long a thread rank waits for the others at a collective before naming the missing rank.
const COLLECTIVE_TIMEOUT: Duration = Duration::from_secs(600);

/// Bounds a hang inside collectives that have no timeout (NCCL, when a peer died in one): the
/// step loop reports progress ([`Watchdog::alive`]) at every step, and a thread ends the
/// process with exit code 2 and a message when none came for the timeout. Every second it also
/// polls the current NCCL communicators' asynchronous errors ([`Watchdog::watch`]; NCCL sets
/// one when it sees a peer's connection fail inside a collective) and ends the process at once
/// on one, naming the communicator, the rank and the last collective enqueued. Before exiting
/// it asks the host (TCP) group which peers' connections closed, to name the lost rank ("rank
/// 3 was lost (its TCP connection to rank 0 closed)"; rank 0 sees every peer, the others only
/// rank 0), and aborts the NCCL communicators (`ncclCommAbort`), so that the exit does not
/// hang behind a collective still spinning on the GPU. Under SLURM `--kill-on-bad-exit` ends
/// the job step as soon as the first rank exits, which may be sooner.
struct Watchdog;

/// Milliseconds since [`WATCHDOG_EPOCH`] of the last progress.
static LAST_PROGRESS_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static WATCHDOG_EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
/// The NCCL communicators of the current phase's engine.
static WATCHED: std::sync::Mutex<Vec<kormo_dist::nccl::NcclWatch>> =
    std::sync::Mutex::new(Vec::new());

impl Watchdog {
    fn now_ms() -> u64 {
        WATCHDOG_EPOCH
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis() as u64
    }

    fn alive() {
        LAST_PROGRESS_MS.store(Self::now_ms(), std::sync::atomic::Ordering::Relaxed);
    }

    /// The communicators to poll and abort from now on (a new phase's engine).
    fn watch(comms: Vec<kormo_dist::nccl::NcclWatch>) {
        *WATCHED.lock().unwrap_or_else(|e| e.into_inner()) = comms;
    }

    fn start(world: Arc<dyn HostTransport>, timeout: Duration) {
        let (rank, world_size) = (
            HostTransport::rank(world.as_ref()),
            HostTransport::world_size(world.as_ref()),
        );
        Self::alive();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            let watched = WATCHED.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let nccl_error = watched.iter().find_map(|w| w.async_error());
            let last = LAST_PROGRESS_MS.load(std::sync::atomic::Ordering::Relaxed);
            let idle = Duration::from_millis(Self::now_ms().saturating_sub(last));
            let what = match nccl_error {
                Some(error) => error,
                None if idle > timeout => format!(
                    "no training step finished for {}s (--dist-timeout); another rank probably \
                     failed inside an NCCL collective",
                    idle.as_secs()
                ),
                None => continue,
            };
            let peers = kormo_dist::lost_peers_message(rank, &world.peer_health())
                .unwrap_or_else(|| "the host group cannot tell which rank was lost".into());
            eprintln!("error: rank {rank} of {world_size}: {what}; {peers}");
            for watch in &watched {
                if !watch.abort(Duration::from_secs(5)) {
                    eprintln!(
                        "note: did not abort the {} (busy or already released)",
                        watch.describe()
                    );
                }
            }
            std::process::exit(2);
        });
    }
}

/// A backend FSDP ranks run on: builds a phase's engine over a model on it.
pub(crate) trait DistBackend: Ops + Clone + Sized {
    type Engine: FsdpEngine;
    /// True when the engine's collectives can block without a timeout (NCCL), so a launched
    /// rank runs a watchdog ([`Watchdog`]).
    const NEEDS_WATCHDOG: bool;
    /// `model`: built with the same seed on every rank, holding the phase's starting weights.
    /// `world`: the host group of the ranks.
    fn engine(
        model: Model<Self>,
        world: &Arc<dyn HostTransport>,
        adamw: AdamWConfig,
        fsdp: FsdpConfig,
    ) -> Result<Self::Engine, TrainError>;
}

impl DistBackend for Backend {
    type Engine = FsdpRank<Backend>;
    // Every host collective has the group's timeout.
    const NEEDS_WATCHDOG: bool = false;
    fn engine(
        model: Model<Self>,
        world: &Arc<dyn HostTransport>,
        adamw: AdamWConfig,
        fsdp: FsdpConfig,
    ) -> Result<Self::Engine, TrainError> {
        FsdpRank::new(world.clone(), model, adamw, fsdp).map_err(dist_error)
    }
}

impl DistBackend for CudaOps {
    type Engine = DeviceFsdpRank;
    // NCCL waits forever for a peer that died inside a collective.
    const NEEDS_WATCHDOG: bool = true;
    /// Fresh NCCL communicators per phase (a DeviceFsdpRank owns them): one over the world,
    /// or for `hybrid` one per shard group (`hybrid_group_size` consecutive ranks, a node) and
    /// one per replica group (the ranks at the same place in their nodes), the groups the CPU
    /// path's `SubGroup`s form. Each group's first rank makes its NCCL unique id and the host
    /// group hands them out in one exchange (kormo_dist::nccl::connect_groups); each
    /// communicator runs on its own stream of the model's device.
    fn engine(
        model: Model<Self>,
        world: &Arc<dyn HostTransport>,
        adamw: AdamWConfig,
        fsdp: FsdpConfig,
    ) -> Result<Self::Engine, TrainError> {
        let world = world.as_ref();
        let rank = HostTransport::rank(world);
        let context = model.ops().kernels().context().clone();
        let groups = match fsdp.strategy {
            Strategy::Hybrid => Some(fsdp.hybrid_group_size.ok_or_else(|| {
                TrainError("strategy hybrid needs dist.hybrid_group_size (ranks per node)".into())
            })?),
            Strategy::FullShard | Strategy::ShardGradOp => None,
        };
        let new_stream = || {
            context.new_stream().map_err(|e| {
                kormo_dist::CommError::Device(format!("rank {rank}: a CUDA stream for NCCL: {e:?}"))
            })
        };
        let comms = kormo_dist::nccl::connect_groups(world, groups, new_stream)
            .map_err(|e| TrainError(e.to_string()))?;
        Watchdog::watch(
            comms
                .iter()
                .map(|(place, comm)| comm.watch(place.name))
                .collect(),
        );
        let mut comms = comms.into_iter().map(|(_, comm)| comm);
        let first = comms.next().expect("at least one communicator");
        let engine = match comms.next() {
            Some(replica_group) => {
                DeviceFsdpRank::new_hybrid(first, replica_group, model, adamw, fsdp)
            }
            None => DeviceFsdpRank::new(first, model, adamw, fsdp),
        };
        engine.map_err(dist_error)
    }
}

/// What the single-process prelude hands over.
pub(crate) struct Prepared<'a> {
    pub shared: Shared<'a>,
    /// Per rank, per phase: the data (rank 0's is the one whose opening was reported).
    pub data: Vec<Vec<Option<PhaseData>>>,
    /// Rank 0's (the only one that logs); None on the other ranks of a multi-process run.
    pub metrics: Option<MetricsFile>,
}

/// The read-only state every rank shares.
pub(crate) struct Shared<'a> {
    pub recipe: &'a Recipe,
    pub opts: &'a RunOptions,
    pub stage: &'a StageConfig,
    pub seed: u64,
    pub phase_steps: Vec<u64>,
    pub checkpoints_dir: PathBuf,
    pub final_dir: PathBuf,
    /// Full parameters to start from (init or resume), in parameter order.
    pub params: Vec<Vec<f32>>,
    pub start: Start,
    /// CPU threads of each thread rank (`--world-size N`).
    pub threads_per_rank: usize,
}

/// The FSDP settings of the recipe's `[dist]` table.
fn fsdp_config(recipe: &Recipe) -> FsdpConfig {
    let dist = recipe.file.dist.unwrap_or_default();
    FsdpConfig {
        strategy: dist.strategy,
        hybrid_group_size: dist.hybrid_group_size,
        reduce_dtype: dist.reduce_dtype,
        grad_clip: recipe.file.optimizer.grad_clip,
    }
}

fn dist_error(e: kormo_dist::DistError) -> TrainError {
    TrainError(e.to_string())
}

/// Refuses batches and evaluation rows that do not divide over `world_size` ranks.
fn check_divisible(shared: &Shared<'_>, world_size: usize, flag: &str) -> Result<(), TrainError> {
    let Shared {
        recipe,
        opts,
        stage,
        ..
    } = shared;
    for (i, phase) in stage.phases.iter().enumerate() {
        let rows = phase.micro_batch * phase.grad_accum;
        if rows % world_size != 0 {
            return Err(TrainError(format!(
                "{}: key `stages.{}.phases[{i}]`: micro_batch x grad_accum = {rows} rows per step do not divide over {flag} {world_size}",
                recipe.origin, opts.stage
            )));
        }
    }
    let dist = recipe.file.dist.unwrap_or_default();
    if let (Strategy::Hybrid, Some(group)) = (dist.strategy, dist.hybrid_group_size) {
        if group == 0 || !world_size.is_multiple_of(group) {
            return Err(TrainError(format!(
                "{}: key `dist.hybrid_group_size`: {group} ranks per shard group do not divide {flag} {world_size} \
                 (use the GPUs per node, e.g. 8, with a world size of nodes x 8)",
                recipe.origin
            )));
        }
    }
    if recipe.file.eval.every_steps > 0 && recipe.file.eval.rows % world_size != 0 {
        return Err(TrainError(format!(
            "{}: key `eval.rows`: {} rows do not divide over {flag} {world_size}",
            recipe.origin, recipe.file.eval.rows
        )));
    }
    Ok(())
}

/// This process is one rank of `world` (launched with `--launcher`): trains the phases on
/// `ops` (the CPU, or the GPU of the local rank), rank 0 reporting.
/// `timeout`: how long a rank may go without finishing a step (or a phase's setup) before its
/// watchdog ends the process, when the engine's collectives have no timeout of their own.
pub(crate) fn run_process<O: DistBackend>(
    prepared: Prepared<'_>,
    world: Arc<dyn HostTransport>,
    ops: O,
    timeout: Duration,
    out: &mut dyn Write,
) -> Result<StageReport, TrainError> {
    let Prepared {
        shared,
        mut data,
        mut metrics,
    } = prepared;
    let (rank, world_size) = (
        HostTransport::rank(world.as_ref()),
        HostTransport::world_size(world.as_ref()),
    );
    say(out, format!(
        "distributed: world size {world_size}, one rank per process (this is rank {rank}), strategy {}",
        crate::trainer::serde_name(&fsdp_config(shared.recipe).strategy)
    ));
    check_divisible(&shared, world_size, "WORLD_SIZE")?;
    let phases = data.pop().expect("this rank's data");
    if O::NEEDS_WATCHDOG && world_size > 1 {
        Watchdog::start(world.clone(), timeout);
    }
    run_rank(&shared, world, ops, phases, metrics.as_mut(), out)
        .map_err(|e| TrainError(format!("rank {rank} of {world_size}: {e}")))
}

/// Trains the phases with `opts.world_size` thread ranks on the CPU; rank 0 runs on this
/// thread and reports.
pub(crate) fn run_threads(
    prepared: Prepared<'_>,
    out: &mut dyn Write,
) -> Result<StageReport, TrainError> {
    let Prepared {
        shared,
        data,
        metrics,
    } = prepared;
    let mut metrics = metrics.expect("the thread ranks' process logs");
    let world_size = shared.opts.world_size;
    let threads_per_rank = shared.threads_per_rank;
    say(out, format!(
        "distributed: {world_size} ranks (threads of this process, {threads_per_rank} compute threads each), strategy {}",
        crate::trainer::serde_name(&fsdp_config(shared.recipe).strategy)
    ));
    check_divisible(&shared, world_size, "--world-size")?;
    let mut comms = kormo_dist::LocalComm::group(world_size, COLLECTIVE_TIMEOUT).into_iter();
    let mut data = data.into_iter();
    let rank0_comm = comms.next().expect("world size >= 1");
    let rank0_data = data.next().expect("data for every rank");
    let ops = || Backend::with_threads(threads_per_rank);
    std::thread::scope(|scope| {
        let others: Vec<_> = comms
            .zip(data)
            .map(|(comm, phases)| {
                let shared = &shared;
                scope.spawn(move || {
                    run_rank(
                        shared,
                        Arc::new(comm),
                        ops(),
                        phases,
                        None,
                        &mut std::io::sink(),
                    )
                })
            })
            .collect();
        let report = run_rank(
            &shared,
            Arc::new(rank0_comm),
            ops(),
            rank0_data,
            Some(&mut metrics),
            out,
        );
        // Rank 0's own error first; else the first other rank's (its peers then only saw
        // that it stopped arriving).
        let mut errors = Vec::new();
        for (r, handle) in others.into_iter().enumerate() {
            let result = handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            if let Err(e) = result {
                errors.push(TrainError(format!("rank {}: {e}", r + 1)));
            }
        }
        match (report, errors.into_iter().next()) {
            (Err(e), _) => Err(TrainError(format!("rank 0: {e}"))),
            (Ok(_), Some(e)) => Err(e),
            (Ok(report), None) => Ok(report),
        }
    })
}

/// One rank's training on `ops`; rank 0 (`metrics` given) logs and writes the consolidated
/// checkpoints. `world`: the host group (the stop decision, and the CPU engine's collectives).
fn run_rank<O: DistBackend>(
    shared: &Shared<'_>,
    world: Arc<dyn HostTransport>,
    ops: O,
    mut phases: Vec<Option<PhaseData>>,
    mut metrics: Option<&mut MetricsFile>,
    out: &mut dyn Write,
) -> Result<StageReport, TrainError> {
    let Shared {
        recipe,
        opts,
        stage,
        seed,
        ref phase_steps,
        ref checkpoints_dir,
        ref final_dir,
        ref params,
        ref start,
        ..
    } = *shared;
    let fsdp = fsdp_config(recipe);
    let rank = HostTransport::rank(world.as_ref());
    let world_size = HostTransport::world_size(world.as_ref());
    let mut report = StageReport {
        logged: Vec::new(),
        completed: false,
        checkpoint: final_dir.to_path_buf(),
    };
    let mut full: Vec<Vec<f32>> = params.to_vec();
    let mut progress = Progress::new(&opts.stage, stage, phase_steps, start);
    // NaN restores in this run (bounded by stability.nonfinite_retries, as at world size 1).
    let mut restores = 0u32;
    // The newest checkpoint this invocation wrote (named when a later save fails).
    let mut last_saved: Option<PathBuf> = None;
    // The disk-full fault seam (tests), drawn on by rank 0's consolidations: the single-process
    // checkpoints of the run, as at world size 1 (the hidden shards are temporary).
    let disk = opts
        .faults
        .checkpoint_disk_budget
        .map_or_else(DiskBudget::unlimited, DiskBudget::fail_after);
    let metrics_path = checkpoints_dir
        .parent()
        .unwrap_or(Path::new("."))
        .join("metrics.jsonl");
    let stability = &recipe.file.stability;
    // Every rank applies the same faults, so all see the same (overridden) loss.
    let mut loss_overrides = opts.faults.loss_override.clone();

    for (phase_index, phase) in stage.phases.iter().enumerate().skip(start.phase_index) {
        let total = phase_steps[phase_index];
        let first_step = start.first_step(phase_index);
        if first_step >= total {
            continue;
        }
        let PhaseData {
            mut loader,
            held_out,
        } = phases[phase_index].take().expect("each phase runs once");
        // A fresh optimizer per phase (as at world size 1): a new engine over the current
        // full weights, every rank building the same model.
        let mut model = Model::new(recipe.model.clone(), ops.clone(), seed)?;
        for (spec, values) in model.param_specs().to_vec().iter().zip(&full) {
            model.write_param(&spec.name, values)?;
        }
        model.set_z_loss(recipe.file.stability.z_loss as f32);
        model.set_activation_checkpointing(stage.activation_checkpointing);
        let mut fsdp_rank = O::engine(model, &world, adamw_config(recipe), fsdp.clone())?;
        let mut guard = OutlierGuard::new(stability);
        let resumed = start
            .resumed
            .as_ref()
            .filter(|_| phase_index == start.phase_index);
        // The f32 weights of record into the shards (a bf16 model rounded them), and the
        // optimizer and data state when resuming inside this phase.
        load_state(resumed, &full, &mut fsdp_rank, Some(&mut loader))?;
        if let Some(checkpoint) = resumed {
            guard.restore(&trainer_state(checkpoint)?.guard);
        }
        let (peak_lr, schedule) = recipe.phase_schedule(phase);
        let lr_schedule = lr_schedule(peak_lr, &schedule, total)?;
        let global_rows = phase.micro_batch * phase.grad_accum;
        let rows_per_rank = global_rows / world_size;
        let micro_rows = largest_divisor_at_most(rows_per_rank, phase.micro_batch);
        if rank == 0 {
            say(out, format!(
                "phase {}: {total} steps x {} tokens; each of {world_size} ranks takes {rows_per_rank} of the {global_rows} rows per step in micro-batches of {micro_rows}, peak lr {peak_lr:.1e}",
                phase.name, phase.tokens_per_step()
            ));
        }

        let mut phase_step = first_step;
        while phase_step < total {
            Watchdog::alive();
            let lr = lr_schedule.lr(phase_step);
            let global = to_batch(loader.next_rows(global_rows)?);
            let mine = sampling::rank_rows(&global, rank, world_size).map_err(dist_error)?;
            let micro = sampling::micro_batches(&mine, micro_rows).map_err(dist_error)?;
            let measured = fsdp_rank.forward_backward(&micro).map_err(dist_error)?;
            progress.advance(phase);
            let step = progress.step;
            let (mut loss, grad_norm) = (measured.loss, measured.grad_norm);
            if let Some(value) = loss_overrides.remove(&step) {
                // Fault injection (tests): this step measured `value` as its mean loss.
                loss.weighted_loss = value * loss.weight;
            }
            // The same loss and norm on every rank, so the same decisions everywhere.
            let finite = loss.mean().is_finite() && grad_norm.is_finite();
            if !finite {
                // As at world size 1: restore the last good checkpoint of this phase on every
                // rank; the data stream moves on, so the batches that led here are not replayed.
                let what = format!(
                    "loss {} / grad norm {grad_norm} is not finite at step {step}",
                    loss.mean()
                );
                let restored = restore_last_good(
                    shared,
                    world.as_ref(),
                    &mut fsdp_rank,
                    &mut guard,
                    (phase_index, phase),
                    restores,
                    &what,
                )?;
                restores += 1;
                progress.step = restored.step;
                progress.tokens = restored.tokens;
                phase_step = restored.phase_step;
                if let Some(metrics) = metrics.as_deref_mut() {
                    // The steps after the checkpoint are undone: so are their metrics lines.
                    crate::metrics::truncate_after(&metrics_path, restored.step)?;
                    report.logged.retain(|m| m.step <= restored.step);
                    let record = EventRecord::new(&opts.stage, &phase.name, restored.step, "nonfinite_restore", format!(
                        "{what}; restored {} on every rank (step {}, restore {restores} of at most {}) and continue on fresh data",
                        restored.dir.display(), restored.step, stability.nonfinite_retries
                    ));
                    log_event(out, metrics, &record)?;
                }
                continue;
            }
            let spike = guard.observe(loss.mean(), grad_norm);
            let updated = spike.is_none();
            if updated {
                fsdp_rank.apply(lr).map_err(dist_error)?;
            }
            phase_step += 1;
            let done = phase_step;
            let stage_done = phase_index + 1 == stage.phases.len() && done == total;
            // All ranks stop at the same step: rank 0's view of the signal decides.
            let signal = crate::signals::stop_requested().filter(|_| rank == 0);
            let mut stop = [if signal.is_some() { 1.0 } else { 0.0 }];
            Collectives::all_reduce_scalars(world.as_ref(), &mut stop)
                .map_err(|e| TrainError(e.to_string()))?;
            let preempted = stop[0] > 0.0 && !stage_done;
            let stopping =
                (opts.stop_after == Some(progress.steps_this_run) || preempted) && !stage_done;

            if let Some(metrics) = metrics.as_deref_mut() {
                if let Some(spike) = &spike {
                    log_outlier_skip(
                        out,
                        metrics,
                        (&opts.stage, &phase.name, step),
                        spike,
                        stability.outlier_threshold,
                    )?;
                }
                if Progress::is_log_step(done, total, opts.log_every) || spike.is_some() {
                    let entry = progress.step_metrics(
                        phase_index,
                        done,
                        loss.mean(),
                        lr,
                        grad_norm,
                        !updated,
                    );
                    say(out, entry.progress_line());
                    metrics.append(&entry)?;
                    report.logged.push(entry);
                }
            }

            if is_eval_step(recipe, step, done, total) {
                for source in &held_out {
                    let record =
                        evaluate(&mut fsdp_rank, source, phase, recipe, &opts.stage, step)?;
                    if let Some(metrics) = metrics.as_deref_mut() {
                        say(out, record.line());
                        metrics.append(&record)?;
                    }
                }
            }

            let target = checkpoint_target(
                recipe,
                step,
                stage_done,
                stopping,
                final_dir,
                checkpoints_dir,
            );
            if let Some(target) = target {
                let state = progress.trainer_state(seed, phase_index, done, guard.state());
                let run = run_state(
                    recipe,
                    &opts.stage,
                    &phase.name,
                    step,
                    &state,
                    &loader.cursor(),
                );
                if let Err(e) = save_consolidated(&fsdp_rank, world.as_ref(), &target, &run, &disk)
                {
                    // As at world size 1: say which checkpoint is still good (rank 0 logs).
                    let fallback = match &last_saved {
                        Some(previous) => format!("the last good checkpoint, {}, is intact; continue from it with --resume", previous.display()),
                        None if opts.resume => "the checkpoint this run resumed from is intact; continue from it with --resume".into(),
                        None => "no checkpoint of this run was written yet".into(),
                    };
                    let record = EventRecord::new(
                        &opts.stage,
                        &phase.name,
                        step,
                        "checkpoint_failed",
                        format!("{e}\n{fallback}"),
                    );
                    if let Some(metrics) = metrics.as_deref_mut() {
                        say(out, format!("event checkpoint_failed: {}", record.message));
                        // Best effort: the disk may be what failed.
                        let _ = metrics.append(&record);
                    }
                    return Err(TrainError(record.message));
                }
                last_saved = Some(target.clone());
                if rank == 0 && !stage_done {
                    kormo_checkpoint::keep_last(checkpoints_dir, recipe.file.checkpoint.keep_last)?;
                }
                report.checkpoint = target;
            }
            if stopping {
                // Rank 0 logs (the same words as at world size 1).
                match (metrics.as_deref_mut(), signal.filter(|_| preempted)) {
                    (Some(metrics), Some(signal)) => {
                        let record = preempted_record(
                            &opts.stage,
                            &phase.name,
                            step,
                            signal,
                            &report.checkpoint,
                        );
                        log_event(out, metrics, &record)?;
                    }
                    (Some(_), None) => say(out, progress.stopped_line(&report.checkpoint)),
                    (None, _) => {}
                }
                return Ok(report);
            }
        }
        full = fsdp_rank.full_params().map_err(dist_error)?;
    }
    report.completed = true;
    if rank == 0 {
        for line in
            crate::progress::stage_end_lines(recipe, &opts.stage, &progress, world_size, &report)
        {
            say(out, line);
        }
    }
    Ok(report)
}

/// Held-out loss of one source at world size N (collective): the same `eval.rows` rows as at
/// world size 1, each rank evaluating its rows `r, r+N, ...` in micro-batches; the loss sums
/// come back summed over ranks.
fn evaluate<E: FsdpEngine>(
    rank: &mut E,
    source: &kormo_data::Source,
    phase: &crate::recipe::PhaseConfig,
    recipe: &Recipe,
    stage: &str,
    step: u64,
) -> Result<crate::metrics::EvalRecord, TrainError> {
    let world_size = rank.world_size();
    let rows = recipe.file.eval.rows;
    let global = to_batch(held_out_rows(source, phase, recipe)?.next_rows(rows)?);
    let mine = sampling::rank_rows(&global, rank.world_rank(), world_size).map_err(dist_error)?;
    let micro_rows = largest_divisor_at_most(rows / world_size, phase.micro_batch);
    let mut sum = kormo_model::LossSum::default();
    for batch in sampling::micro_batches(&mine, micro_rows).map_err(dist_error)? {
        sum = sum.add(rank.evaluate(&batch).map_err(dist_error)?);
    }
    Ok(eval_record(source, phase, stage, step, sum))
}

/// The largest number of rows, at most `limit`, that divides `rows` (micro-batch size).
fn largest_divisor_at_most(rows: usize, limit: usize) -> usize {
    (1..=limit.min(rows))
        .rev()
        .find(|m| rows.is_multiple_of(*m))
        .unwrap_or(1)
}

/// Sharded save by every rank into a hidden directory next to `target`, then rank 0 writes
/// the single-process checkpoint at `target` from it (atomically, through `disk`) and removes
/// the shards, whether or not that worked. Every rank learns rank 0's outcome, so all of them
/// continue or all stop with the error (rank 0 with the reason, the others naming rank 0).
fn save_consolidated<E: FsdpEngine>(
    rank: &E,
    world: &dyn HostTransport,
    target: &Path,
    run: &kormo_checkpoint::RunState,
    disk: &DiskBudget,
) -> Result<(), TrainError> {
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("checkpoint");
    let shards = target.with_file_name(format!(".sharded-{name}"));
    sharded_checkpoint::save(rank, &shards, run).map_err(dist_error)?;
    let mut outcome = Ok(());
    if rank.world_rank() == 0 {
        outcome = sharded_checkpoint::ShardedCheckpoint::open(&shards)
            .and_then(|c| c.consolidate_with_budget(target, disk))
            .map(|_| ())
            .map_err(dist_error);
        std::fs::remove_dir_all(&shards)
            .map_err(|e| TrainError(format!("{}: cannot remove: {e}", shards.display())))?;
    }
    let mut failed = [if outcome.is_err() { 1.0 } else { 0.0 }];
    Collectives::all_reduce_scalars(world, &mut failed).map_err(|e| TrainError(e.to_string()))?;
    match outcome {
        Err(e) => Err(e),
        Ok(()) if failed[0] > 0.0 => Err(TrainError(format!(
            "rank 0 could not write the checkpoint {}",
            target.display()
        ))),
        Ok(()) => Ok(()),
    }
}

/// Loads this rank's shards of `full` (the f32 weights of record) into the engine, with a
/// single-process checkpoint's AdamW moments and step when `checkpoint` is given (its weights
/// are `full`) and its data cursor into `loader` when given; zero moments at step 0 otherwise.
fn load_state<E: FsdpEngine>(
    checkpoint: Option<&Checkpoint>,
    full: &[Vec<f32>],
    rank: &mut E,
    loader: Option<&mut kormo_data::Loader>,
) -> Result<(), TrainError> {
    let specs = rank.param_specs().to_vec();
    let units = rank.units().to_vec();
    let ranges = rank.ranges().to_vec();
    let shard = |tensor: &dyn Fn(usize) -> Result<Vec<f32>, TrainError>| -> Result<Vec<Vec<f32>>, TrainError> {
        units
            .iter()
            .zip(&ranges)
            .map(|(unit, range)| {
                let mut flat = Vec::with_capacity(unit.numel);
                for &t in &unit.tensors {
                    flat.extend(tensor(t)?);
                }
                Ok(flat[range.start..range.end].to_vec())
            })
            .collect()
    };
    let params = shard(&|t| Ok(full[t].clone()))?;
    let Some(checkpoint) = checkpoint else {
        let zeros: Vec<Vec<f32>> = params.iter().map(|p| vec![0.0; p.len()]).collect();
        return rank
            .load_shards(params, &zeros, &zeros, 0)
            .map_err(dist_error);
    };
    let file = checkpoint.file(OPTIMIZER_FILE)?;
    let moment = |suffix: &str| {
        shard(&|t| {
            let name = format!("{}{suffix}", specs[t].name);
            Ok(file.f32(&name, Some(&[specs[t].numel()]))?)
        })
    };
    let exp_avg = moment(".exp_avg")?;
    let exp_avg_sq = moment(".exp_avg_sq")?;
    let step = file.u64("step", Some(&[1]))?[0];
    rank.load_shards(params, &exp_avg, &exp_avg_sq, step)
        .map_err(dist_error)?;
    match loader {
        Some(loader) => crate::trainer::restore_data(checkpoint, loader),
        None => Ok(()),
    }
}

/// Where a NaN restore put the run.
struct Restored {
    dir: PathBuf,
    step: u64,
    phase_step: u64,
    tokens: u64,
}

/// Restores the last good checkpoint of phase `phase_index` into `rank` (weights, AdamW state)
/// and `guard`, the same one on every rank: rank 0, which wrote the checkpoints, picks it and
/// the host group tells the others its step. `restores` so far are bounded by
/// `stability.nonfinite_retries`; errors say why no restore is possible.
fn restore_last_good<E: FsdpEngine>(
    shared: &Shared<'_>,
    world: &dyn HostTransport,
    rank: &mut E,
    guard: &mut OutlierGuard,
    (phase_index, phase): (usize, &crate::recipe::PhaseConfig),
    restores: u32,
    what: &str,
) -> Result<Restored, TrainError> {
    let Shared {
        recipe,
        opts,
        ref checkpoints_dir,
        ..
    } = *shared;
    let retries = recipe.file.stability.nonfinite_retries;
    if restores >= retries {
        return Err(TrainError(format!(
            "phase {}: {what}, after {restores} restores of the last good checkpoint \
             (stability.nonfinite_retries = {retries}); lower the learning rate or check the data",
            phase.name
        )));
    }
    let mut pick = [0.0];
    if HostTransport::rank(world) == 0 {
        if let Some((_, checkpoint, _)) =
            crate::trainer::last_good_checkpoint(checkpoints_dir, &opts.stage, phase_index)
        {
            pick[0] = checkpoint.manifest.run.step as f64 + 1.0;
        }
    }
    Collectives::all_reduce_scalars(world, &mut pick).map_err(|e| TrainError(e.to_string()))?;
    if pick[0] == 0.0 {
        return Err(TrainError(format!(
            "phase {}: {what}, and no checkpoint of this phase exists in {} to restore \
             (checkpoint.every_steps = {}); lower the learning rate or checkpoint more often",
            phase.name,
            checkpoints_dir.display(),
            recipe.file.checkpoint.every_steps
        )));
    }
    let step = pick[0] as u64 - 1;
    let dir = checkpoints_dir.join(kormo_checkpoint::step_dir_name(step));
    let checkpoint = Checkpoint::load(&dir)?;
    let state = trainer_state(&checkpoint)?;
    let file = checkpoint.file(crate::trainer::MODEL_FILE)?;
    let weights = rank
        .param_specs()
        .iter()
        .map(|spec| file.f32(&spec.name, Some(&spec.shape)))
        .collect::<Result<Vec<_>, _>>()?;
    load_state(Some(&checkpoint), &weights, rank, None)?;
    guard.restore(&state.guard);
    Ok(Restored {
        dir,
        step,
        phase_step: state.phase_step,
        tokens: state.tokens,
    })
}
