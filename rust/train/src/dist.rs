//! `train --world-size N` on CPU: the stage's phases trained by N FSDP ranks (kormo_dist), one
//! thread each in this process (`LocalComm`), with the strategy of the recipe's `[dist]` table.
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
//! logs; the stop decision (a preemption signal) is agreed on by all ranks each step.
//!
//! Held-out evaluation runs here too (FsdpRank::evaluate over each rank's rows). Each step is
//! split like the single-process one: `FsdpRank::forward_backward` gives the global loss and
//! gradient norm, the same on every rank, and every rank runs the same outlier guard (guard.rs)
//! on them, so all skip or `apply` the same updates, as world size 1 does; the guard's history
//! is checkpointed the same way. The loss-override fault seam is applied on every rank. Not in
//! this path (a line at the start says so): NaN restores. A non-finite loss or norm skips the
//! update on every rank instead, which is logged, and more than `stability.nonfinite_retries` of
//! them stop the run. The disk-budget fault seam is not wired here.

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
use kormo_checkpoint::Checkpoint;
use kormo_dist::{sampling, sharded_checkpoint, Collectives, FsdpConfig, FsdpRank, HostTransport};
use kormo_model::Model;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long a rank waits for the others at a collective before naming the missing rank.
const COLLECTIVE_TIMEOUT: Duration = Duration::from_secs(600);

/// What the single-process prelude hands over.
pub(crate) struct Prepared<'a> {
    pub shared: Shared<'a>,
    /// Per rank, per phase: the data (rank 0's is the one whose opening was reported).
    pub data: Vec<Vec<Option<PhaseData>>>,
    pub metrics: MetricsFile,
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

/// Trains the phases with `opts.world_size` ranks; rank 0 runs on this thread and reports.
pub(crate) fn run_phases(
    prepared: Prepared<'_>,
    out: &mut dyn Write,
) -> Result<StageReport, TrainError> {
    let Prepared {
        shared,
        data,
        mut metrics,
    } = prepared;
    let Shared {
        recipe,
        opts,
        stage,
        threads_per_rank,
        ..
    } = shared;
    let world_size = opts.world_size;
    say(out, format!(
        "distributed: {world_size} ranks (threads of this process, {threads_per_rank} compute threads each), strategy {}",
        crate::trainer::serde_name(&fsdp_config(recipe).strategy)
    ));
    for (i, phase) in stage.phases.iter().enumerate() {
        let rows = phase.micro_batch * phase.grad_accum;
        if rows % world_size != 0 {
            return Err(TrainError(format!(
                "{}: key `stages.{}.phases[{i}]`: micro_batch x grad_accum = {rows} rows per step do not divide over --world-size {world_size}",
                recipe.origin, opts.stage
            )));
        }
    }
    if recipe.file.eval.every_steps > 0 && recipe.file.eval.rows % world_size != 0 {
        return Err(TrainError(format!(
            "{}: key `eval.rows`: {} rows do not divide over --world-size {world_size}",
            recipe.origin, recipe.file.eval.rows
        )));
    }
    say(out, "distributed: NaN restores run only at --world-size 1; a non-finite loss or gradient norm skips the update on every rank");
    let mut comms = kormo_dist::LocalComm::group(world_size, COLLECTIVE_TIMEOUT).into_iter();
    let mut data = data.into_iter();
    let rank0_comm = comms.next().expect("world size >= 1");
    let rank0_data = data.next().expect("data for every rank");
    std::thread::scope(|scope| {
        let others: Vec<_> = comms
            .zip(data)
            .map(|(comm, phases)| {
                let shared = &shared;
                scope.spawn(move || {
                    run_rank(shared, Arc::new(comm), phases, None, &mut std::io::sink())
                })
            })
            .collect();
        let report = run_rank(
            &shared,
            Arc::new(rank0_comm),
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

/// One rank's training; rank 0 (`metrics` given) logs and writes the consolidated checkpoints.
fn run_rank(
    shared: &Shared<'_>,
    world: Arc<dyn HostTransport>,
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
        threads_per_rank,
    } = *shared;
    let fsdp = fsdp_config(recipe);
    let rank = world.rank();
    let world_size = world.world_size();
    let mut report = StageReport {
        logged: Vec::new(),
        completed: false,
        checkpoint: final_dir.to_path_buf(),
    };
    let mut full: Vec<Vec<f32>> = params.to_vec();
    let mut progress = Progress::new(&opts.stage, stage, phase_steps, start);
    let mut nonfinite_skips = 0u32;
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
        // A fresh optimizer per phase (as at world size 1): a new FsdpRank over the current
        // full weights, every rank building the same model.
        let mut model = Model::new(
            recipe.model.clone(),
            Backend::with_threads(threads_per_rank),
            seed,
        )?;
        for (spec, values) in model.param_specs().to_vec().iter().zip(&full) {
            model.write_param(&spec.name, values)?;
        }
        model.set_z_loss(recipe.file.stability.z_loss as f32);
        model.set_activation_checkpointing(stage.activation_checkpointing);
        let mut fsdp_rank = FsdpRank::new(world.clone(), model, adamw_config(recipe), fsdp.clone())
            .map_err(dist_error)?;
        let mut guard = OutlierGuard::new(stability);
        if phase_index == start.phase_index {
            if let Some(checkpoint) = &start.resumed {
                restore_sharded(checkpoint, &mut fsdp_rank, &mut loader)?;
                guard.restore(&trainer_state(checkpoint)?.guard);
            }
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

        for phase_step in first_step..total {
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
            let finite = loss.mean().is_finite() && grad_norm.is_finite();
            // The same loss and norm on every rank, so the same decision everywhere.
            let spike = finite
                .then(|| guard.observe(loss.mean(), grad_norm))
                .flatten();
            let updated = finite && spike.is_none();
            if updated {
                fsdp_rank.apply(lr).map_err(dist_error)?;
            }
            let done = phase_step + 1;
            let stage_done = phase_index + 1 == stage.phases.len() && done == total;
            // All ranks stop at the same step: rank 0's view of the signal decides.
            let signal = crate::signals::stop_requested().filter(|_| rank == 0);
            let mut stop = [if signal.is_some() { 1.0 } else { 0.0 }];
            Collectives::all_reduce_scalars(world.as_ref(), &mut stop)
                .map_err(|e| TrainError(e.to_string()))?;
            let preempted = stop[0] > 0.0 && !stage_done;
            let stopping =
                (opts.stop_after == Some(progress.steps_this_run) || preempted) && !stage_done;

            if !finite {
                // The weights are still those of the last good step; a run that keeps failing
                // stops, bounded like the restores at world size 1.
                nonfinite_skips += 1;
                let retries = stability.nonfinite_retries;
                if nonfinite_skips > retries {
                    return Err(TrainError(format!(
                        "phase {}: loss {} / grad norm {} is not finite at step {step}, the {} time in this run \
                         (stability.nonfinite_retries = {retries}); lower the learning rate or check the data",
                        phase.name, loss.mean(), grad_norm, ordinal(nonfinite_skips)
                    )));
                }
            }
            if let Some(metrics) = metrics.as_deref_mut() {
                if !finite {
                    let record = EventRecord::new(&opts.stage, &phase.name, step, "nonfinite_skip", format!(
                        "loss {} / grad norm {grad_norm} is not finite at step {step}; the update was skipped on every rank ({nonfinite_skips} of at most {})",
                        loss.mean(), stability.nonfinite_retries
                    ));
                    log_event(out, metrics, &record)?;
                }
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
                save_consolidated(&fsdp_rank, &target, &run)?;
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
        say(
            out,
            format!(
                "done: {} steps on {world_size} ranks in {:.1}s; final checkpoint {}",
                progress.steps_this_run,
                progress.elapsed_s(),
                report.checkpoint.display()
            ),
        );
    }
    Ok(report)
}

/// Held-out loss of one source at world size N (collective): the same `eval.rows` rows as at
/// world size 1, each rank evaluating its rows `r, r+N, ...` in micro-batches; the loss sums
/// come back summed over ranks.
fn evaluate<O: kormo_model::Ops>(
    rank: &mut FsdpRank<O>,
    source: &kormo_data::Source,
    phase: &crate::recipe::PhaseConfig,
    recipe: &Recipe,
    stage: &str,
    step: u64,
) -> Result<crate::metrics::EvalRecord, TrainError> {
    let world_size = rank.world().world_size();
    let rows = recipe.file.eval.rows;
    let global = to_batch(held_out_rows(source, phase, recipe)?.next_rows(rows)?);
    let mine = sampling::rank_rows(&global, rank.world().rank(), world_size).map_err(dist_error)?;
    let micro_rows = largest_divisor_at_most(rows / world_size, phase.micro_batch);
    let mut sum = kormo_model::LossSum::default();
    for batch in sampling::micro_batches(&mine, micro_rows).map_err(dist_error)? {
        sum = sum.add(rank.evaluate(&batch).map_err(dist_error)?);
    }
    Ok(eval_record(source, phase, stage, step, sum))
}

/// 1 -> "1st", 2 -> "2nd", 4 -> "4th" (small counts in messages).
fn ordinal(n: u32) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// The largest number of rows, at most `limit`, that divides `rows` (micro-batch size).
fn largest_divisor_at_most(rows: usize, limit: usize) -> usize {
    (1..=limit.min(rows))
        .rev()
        .find(|m| rows.is_multiple_of(*m))
        .unwrap_or(1)
}

/// Sharded save by every rank into a hidden directory next to `target`, then rank 0 writes
/// the single-process checkpoint at `target` from it (atomically) and removes the shards.
fn save_consolidated<O: kormo_model::Ops>(
    rank: &FsdpRank<O>,
    target: &Path,
    run: &kormo_checkpoint::RunState,
) -> Result<(), TrainError> {
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("checkpoint");
    let shards = target.with_file_name(format!(".sharded-{name}"));
    sharded_checkpoint::save(rank, &shards, run).map_err(dist_error)?;
    if rank.world().rank() == 0 {
        sharded_checkpoint::ShardedCheckpoint::open(&shards)
            .and_then(|c| c.consolidate(target))
            .map_err(dist_error)?;
        std::fs::remove_dir_all(&shards)
            .map_err(|e| TrainError(format!("{}: cannot remove: {e}", shards.display())))?;
    }
    Ok(())
}

/// Loads a single-process checkpoint's AdamW moments and step into this rank's shards (the
/// weights went into the model before sharding) and its data cursor into `loader`.
fn restore_sharded<O: kormo_model::Ops>(
    checkpoint: &Checkpoint,
    rank: &mut FsdpRank<O>,
    loader: &mut kormo_data::Loader,
) -> Result<(), TrainError> {
    let file = checkpoint.file(OPTIMIZER_FILE)?;
    let specs = rank.param_specs().to_vec();
    let shard = |suffix: &str| -> Result<Vec<Vec<f32>>, TrainError> {
        rank.units()
            .iter()
            .zip(rank.ranges())
            .map(|(unit, range)| {
                let mut flat = Vec::with_capacity(unit.numel);
                for &t in &unit.tensors {
                    let name = format!("{}{suffix}", specs[t].name);
                    flat.extend(file.f32(&name, Some(&[specs[t].numel()]))?);
                }
                Ok(flat[range.start..range.end].to_vec())
            })
            .collect()
    };
    let exp_avg = shard(".exp_avg")?;
    let exp_avg_sq = shard(".exp_avg_sq")?;
    let params = rank.shards().to_vec();
    let step = file.u64("step", Some(&[1]))?[0];
    rank.load_shards(params, &exp_avg, &exp_avg_sq, step)
        .map_err(dist_error)?;
    crate::trainer::restore_data(checkpoint, loader)
}
