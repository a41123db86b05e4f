//! The ranks of an FSDP run (kormo_dist, with the strategy of the recipe's `[dist]` table),
//! two ways:
//! * `train --world-size N` on CPU: N ranks, one thread each in this process (`LocalComm`),
//!   [`run_threads`];
//! * one rank per process (`--launcher`, see launcher.rs), [`run_process`]: `FsdpRank<CpuOps>`
//!   over the TCP group on the CPU, `DeviceFsdpRank` over NCCL on the GPU of the local rank,
//!   every strategy (`hybrid`: a shard-group and a replica-group communicator); the TCP group
//!   then carries the host-side agreement (the stop decision, the NCCL ids) and names a lost
//!   rank when the watchdog (kormo_dist::watchdog) ends a rank stuck in NCCL.
//!
//! Everything before the first step — recipe, data, init or resume, metrics file — is the
//! stage prelude's (trainer.rs), and every rank then runs the one step loop (step_loop.rs) on
//! its engine. The loss is normalised over the whole global batch, so the run matches world
//! size 1 up to float reassociation (docs/distributed.md: losses within 1e-6 relative).
//! Checkpoints are written in the single-process format (sharded save, then consolidation by
//! rank 0), so any world size can resume them and the next stage can start from them. A rank
//! that dies or stops answering makes the others fail at their next collective with an error
//! naming it (kormo_dist's TCP layer; the collective timeout bounds a hang), which `train`
//! prints before exiting with code 2.

use crate::backend::{Cpu, TrainBackend};
use crate::error::TrainError;
use crate::metrics::MetricsFile;
use crate::phase_data::PhaseData;
use crate::progress::{say, StageReport};
use crate::recipe::{serde_name, Recipe};
use crate::step_loop::StageRun;
use crate::trainer::adamw_config;
use kormo_dist::{FsdpConfig, FsdpEngine, HostTransport, Strategy, Watchdog};
use kormo_model::Model;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

/// How long a thread rank waits for the others at a collective before naming the missing rank.
const COLLECTIVE_TIMEOUT: Duration = Duration::from_secs(600);

/// What the stage prelude hands over to the ranks.
pub(crate) struct Prepared<'a> {
    pub run: StageRun<'a>,
    /// Full f32 parameters to start from (init or resume), in parameter order.
    pub params: Vec<Vec<f32>>,
    /// Per rank, per phase: the data (rank 0's is the one whose opening was reported).
    pub data: Vec<Vec<Option<PhaseData>>>,
    /// Rank 0's (the only one that logs); None on the other ranks of a multi-process run.
    pub metrics: Option<MetricsFile>,
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

/// Refuses batches and evaluation rows that do not divide over `world_size` ranks.
fn check_divisible(run: &StageRun<'_>, world_size: usize, flag: &str) -> Result<(), TrainError> {
    let StageRun {
        recipe,
        opts,
        stage,
        ..
    } = run;
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
/// `timeout`: how long a rank may go without finishing a step before its watchdog ends the
/// process, when the engine's collectives have no timeout of their own.
pub(crate) fn run_process<O: TrainBackend>(
    prepared: Prepared<'_>,
    world: Arc<dyn HostTransport>,
    ops: O,
    timeout: Duration,
    out: &mut dyn Write,
) -> Result<StageReport, TrainError> {
    let Prepared {
        run,
        params,
        mut data,
        mut metrics,
        ..
    } = prepared;
    let (rank, world_size) = (world.rank(), world.world_size());
    say(out, format!(
        "distributed: world size {world_size}, one rank per process (this is rank {rank}), strategy {}",
        serde_name(&fsdp_config(run.recipe).strategy)
    ));
    check_divisible(&run, world_size, "WORLD_SIZE")?;
    let phases = data.pop().expect("this rank's data");
    let watchdog =
        (O::NEEDS_WATCHDOG && world_size > 1).then(|| Watchdog::start(world.clone(), timeout));
    let rank_run = RankRun {
        run: &run,
        params: &params,
        world,
        watchdog: watchdog.as_ref(),
    };
    rank_train(rank_run, ops, phases, metrics.as_mut(), out)
        .map_err(|e| TrainError(format!("rank {rank} of {world_size}: {e}")))
}

/// Trains the phases with `opts.world_size` thread ranks on the CPU; rank 0 runs on this
/// thread and reports.
pub(crate) fn run_threads(
    prepared: Prepared<'_>,
    out: &mut dyn Write,
) -> Result<StageReport, TrainError> {
    let Prepared {
        run,
        params,
        data,
        metrics,
        threads_per_rank,
    } = prepared;
    let mut metrics = metrics.expect("the thread ranks' process logs");
    let world_size = run.opts.world_size;
    say(out, format!(
        "distributed: {world_size} ranks (threads of this process, {threads_per_rank} compute threads each), strategy {}",
        serde_name(&fsdp_config(run.recipe).strategy)
    ));
    check_divisible(&run, world_size, "--world-size")?;
    let mut comms = kormo_dist::LocalComm::group(world_size, COLLECTIVE_TIMEOUT).into_iter();
    let mut data = data.into_iter();
    let rank0_comm = comms.next().expect("world size >= 1");
    let rank0_data = data.next().expect("data for every rank");
    let rank_run = |comm: kormo_dist::LocalComm| RankRun {
        run: &run,
        params: &params,
        world: Arc::new(comm),
        watchdog: None,
    };
    let ops = || Cpu::with_threads(threads_per_rank);
    std::thread::scope(|scope| {
        let others: Vec<_> = comms
            .zip(data)
            .map(|(comm, phases)| {
                let rank_run = rank_run(comm);
                scope.spawn(move || {
                    rank_train(rank_run, ops(), phases, None, &mut std::io::sink())
                })
            })
            .collect();
        let report = rank_train(rank_run(rank0_comm), ops(), rank0_data, Some(&mut metrics), out);
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

/// One rank's place in a run.
struct RankRun<'r, 'a> {
    run: &'r StageRun<'a>,
    /// The f32 weights of record to start from.
    params: &'r [Vec<f32>],
    /// The host group (the stop decision, and the CPU engine's collectives).
    world: Arc<dyn HostTransport>,
    watchdog: Option<&'r Watchdog>,
}

/// One rank's training on `ops`: its engine over the starting weights, then the step loop;
/// rank 0 (`metrics` given) logs.
fn rank_train<O: TrainBackend>(
    rank: RankRun<'_, '_>,
    ops: O,
    phases: Vec<Option<PhaseData>>,
    metrics: Option<&mut MetricsFile>,
    out: &mut dyn Write,
) -> Result<StageReport, TrainError> {
    let recipe = rank.run.recipe;
    // Every rank builds the same model; its weights are replaced by the shards below.
    let mut model = Model::new(recipe.model.clone(), ops, rank.run.seed)?;
    model.set_z_loss(recipe.file.stability.z_loss as f32);
    model.set_activation_checkpointing(rank.run.stage.activation_checkpointing);
    model.set_cross_lingual_attention(recipe.mask() == crate::recipe::MaskMode::Xlda);
    let (adamw, fsdp) = (adamw_config(recipe), fsdp_config(recipe));
    let mut engine = O::sharded(model, &rank.world, adamw, fsdp, rank.watchdog)?;
    // The f32 weights of record into the shards (a bf16 model would have rounded them).
    engine.load_state(rank.params, None)?;
    crate::step_loop::train(rank.run, &mut engine, phases, metrics, rank.watchdog, out)
}
