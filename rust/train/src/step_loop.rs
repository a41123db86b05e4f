//! The step loop, the one every world size runs: world size 1 on `kormo_dist::SingleRank`,
//! `--world-size N` on thread ranks and one process per rank on `FsdpRank` /
//! `DeviceFsdpRank`, all through [`FsdpEngine`]. Each stability feature (the non-finite restore,
//! the outlier guard), the metrics, held-out evaluation, checkpoints and their failure messages,
//! and preemption exist here once, in the same words at every world size.
//!
//! A step: every rank builds the same data stream and takes the same global batch
//! (micro_batch x grad_accum rows), keeps its rows `r, r+N, ...` (kormo_dist::sampling) and cuts
//! them into micro-batches; the engine's `forward_backward` gives the loss over the whole
//! global batch and the gradient norm, the same on every rank, so every rank makes the same
//! decisions: a non-finite loss or norm restores the last good checkpoint of the phase (rank 0
//! picks it and tells the others its step; at most `stability.nonfinite_retries` times), the
//! outlier guard (guard.rs) skips the update, else the engine applies it. The stop decision (a
//! preemption signal) is rank 0's, agreed on by all ranks every step. Rank 0 alone logs (it has
//! the metrics file; the other ranks report to a sink) and prunes checkpoints; every rank takes
//! part in a save, whose outcome they share, so all continue or all stop.
//!
//! The optimizer is fresh at every phase boundary ([`FsdpEngine::reset_optimizer`]) and
//! restored when resuming inside a phase, with the data cursor and the guard's history.

use crate::error::TrainError;
use crate::guard::{OutlierGuard, Spike};
use crate::metrics::{EvalRecord, EventRecord, MetricsFile};
use crate::phase_data::{masked, packing_options, PhaseData};
use crate::progress::{
    checkpoint_target, is_eval_step, log_event, log_outlier_skip, preempted_record, say,
    stage_end_lines, Progress, StageReport, Start,
};
use crate::recipe::{serde_name, PhaseConfig, Recipe, ScheduleConfig, ScheduleKind, StageConfig};
use crate::run_state::{restore_data, trainer_state, TrainerState};
use crate::trainer::RunOptions;
use kormo_checkpoint::{Checkpoint, DiskBudget};
use kormo_data::{DataCursor, Loader, Source};
use kormo_dist::{sampling, FsdpEngine, Watchdog};
use kormo_model::LossSum;
use kormo_optim::LrSchedule;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What every rank's loop reads: the stage, the lengths of its phases in this run (after
/// `--max-steps`), where checkpoints go and where the run starts.
pub(crate) struct StageRun<'a> {
    pub recipe: &'a Recipe,
    pub opts: &'a RunOptions,
    pub stage: &'a StageConfig,
    pub seed: u64,
    pub phase_steps: Vec<u64>,
    pub checkpoints_dir: PathBuf,
    pub final_dir: PathBuf,
    pub start: Start,
    /// Downstream benchmark scores during training (the recipe's `[downstream]`).
    pub downstream: Option<crate::downstream::Downstream>,
}

/// Trains the stage's remaining phases on `engine`. `phases`: this rank's data of every phase;
/// `metrics`: rank 0's metrics file (None on the other ranks); `watchdog`: told of every step
/// where a launched rank runs one.
pub(crate) fn train<E: FsdpEngine>(
    run: &StageRun<'_>,
    engine: &mut E,
    mut phases: Vec<Option<PhaseData>>,
    metrics: Option<&mut MetricsFile>,
    watchdog: Option<&Watchdog>,
    out: &mut dyn Write,
) -> Result<StageReport, TrainError> {
    let mut lp = Loop {
        run,
        engine,
        metrics,
        watchdog,
        out,
        progress: Progress::new(&run.opts.stage, run.stage, &run.phase_steps, &run.start),
        report: StageReport {
            logged: Vec::new(),
            completed: false,
            checkpoint: run.final_dir.clone(),
        },
        restores: 0,
        last_saved: None,
        disk: run
            .opts
            .faults
            .checkpoint_disk_budget
            .map_or_else(DiskBudget::unlimited, DiskBudget::fail_after),
        loss_overrides: run.opts.faults.loss_override.clone(),
    };
    let phase_list = run.stage.phases.iter().enumerate();
    for (phase_index, phase) in phase_list.skip(run.start.phase_index) {
        let data = phases[phase_index].take().expect("each phase runs once");
        if let Flow::Stopped = lp.phase(phase_index, phase, data)? {
            return Ok(lp.report);
        }
    }
    Ok(lp.finish())
}

/// Whether the run goes on after a phase.
enum Flow {
    Next,
    Stopped,
}

/// One rank's loop state across the phases of a run.
struct Loop<'r, 'a, E> {
    run: &'r StageRun<'a>,
    engine: &'r mut E,
    metrics: Option<&'r mut MetricsFile>,
    watchdog: Option<&'r Watchdog>,
    out: &'r mut dyn Write,
    progress: Progress<'r>,
    report: StageReport,
    /// Non-finite restores in this run (bounded by `stability.nonfinite_retries`).
    restores: u32,
    /// The newest checkpoint this invocation wrote (named when a later save fails).
    last_saved: Option<PathBuf>,
    /// The disk-full fault seam (tests), drawn on by the writes that land in the checkpoint
    /// directory.
    disk: DiskBudget,
    /// Fault injection (tests): stage step -> the mean loss that step reports, on every rank.
    loss_overrides: BTreeMap<u64, f64>,
}

/// What a step measured, as it is logged.
struct Measured<'s> {
    loss: f64,
    /// The MTP heads' mean loss, with `[model] mtp_depth > 0`.
    mtp_loss: Option<f64>,
    lr: f64,
    grad_norm: f64,
    spike: Option<&'s Spike>,
}

impl<E: FsdpEngine> Loop<'_, '_, E> {
    /// Trains phase `phase_index` from where this run starts it to its end, or until the run
    /// stops early.
    fn phase(
        &mut self,
        phase_index: usize,
        phase: &PhaseConfig,
        data: PhaseData,
    ) -> Result<Flow, TrainError> {
        let (run, recipe) = (self.run, self.run.recipe);
        let total = run.phase_steps[phase_index];
        let mut phase_step = run.start.first_step(phase_index);
        if phase_step >= total {
            return Ok(Flow::Next);
        }
        let PhaseData {
            mut loader,
            held_out,
        } = data;
        let mut guard = OutlierGuard::new(&recipe.file.stability);
        let resumed = (phase_index == run.start.phase_index)
            .then_some(run.start.resumed.as_ref())
            .flatten();
        match resumed {
            Some(checkpoint) => {
                self.engine.load_optimizer(checkpoint)?;
                restore_data(checkpoint, &mut loader)?;
                guard.restore(&trainer_state(checkpoint)?.guard);
            }
            None if phase_index != run.start.phase_index => self.engine.reset_optimizer()?,
            None => {}
        }
        let (peak_lr, schedule) = recipe.phase_schedule(phase);
        let lr_schedule = lr_schedule(peak_lr, &schedule, total)?;
        let (rank, world_size) = (self.engine.world_rank(), self.engine.world_size());
        let global_rows = phase.micro_batch * phase.grad_accum;
        let micro_rows = largest_divisor_at_most(global_rows / world_size, phase.micro_batch);
        say(self.out, phase_line(phase, total, peak_lr, &schedule, world_size, micro_rows));

        while phase_step < total {
            if let Some(watchdog) = self.watchdog {
                watchdog.alive();
            }
            let lr = lr_schedule.lr(phase_step);
            let global = masked(loader.next_rows(global_rows)?, recipe.mask());
            let mine = sampling::rank_rows(&global, rank, world_size)?;
            let measured = self
                .engine
                .forward_backward(&sampling::micro_batches(&mine, micro_rows)?)?;
            self.progress.advance(phase);
            let step = self.progress.step;
            let (mut loss, grad_norm) = (measured.loss, measured.grad_norm);
            if let Some(value) = self.loss_overrides.remove(&step) {
                loss.weighted_loss = value * loss.weight;
            }
            if !(loss.mean().is_finite() && grad_norm.is_finite()) {
                let what = format!(
                    "loss {} / grad norm {grad_norm} is not finite at step {step}",
                    loss.mean()
                );
                phase_step = self.restore_last_good(&mut guard, phase_index, phase, &what)?;
                continue;
            }
            let spike = guard.observe(loss.mean(), grad_norm);
            if spike.is_none() {
                self.engine.apply(lr)?;
            }
            phase_step += 1;
            let done = phase_step;
            let stage_done = phase_index + 1 == run.stage.phases.len() && done == total;
            let (stopping, signal) = self.stop_decision(stage_done)?;
            let measured = Measured {
                loss: loss.mean(),
                mtp_loss: (recipe.model.mtp_depth > 0).then(|| loss.mtp_mean()),
                lr,
                grad_norm,
                spike: spike.as_ref(),
            };
            self.log_step(phase_index, phase, done, &measured)?;
            if is_eval_step(recipe, step, done, total) {
                for source in &held_out {
                    self.evaluate(source, phase, step)?;
                }
            }
            if run.downstream.as_ref().is_some_and(|d| d.is_due(step, done == total)) {
                self.downstream(step)?;
            }
            let target = checkpoint_target(
                recipe,
                step,
                stage_done,
                stopping,
                &run.final_dir,
                &run.checkpoints_dir,
            );
            if let Some(target) = target {
                let state = self.progress.trainer_state(run.seed, phase_index, done, guard.state());
                self.checkpoint(target, phase, &state, &loader.cursor(), stage_done)?;
            }
            if stopping {
                self.stopped(phase, step, signal)?;
                return Ok(Flow::Stopped);
            }
        }
        Ok(Flow::Next)
    }

    /// Whether the run stops after this step, and the preemption signal that stops it. All
    /// ranks stop at the same step: rank 0's view of the signal decides.
    fn stop_decision(&mut self, stage_done: bool) -> Result<(bool, Option<&'static str>), TrainError> {
        let signal = crate::signals::stop_requested().filter(|_| self.engine.world_rank() == 0);
        let mut stop = [if signal.is_some() { 1.0 } else { 0.0 }];
        self.engine.all_reduce_world(&mut stop)?;
        let preempted = stop[0] > 0.0 && !stage_done;
        let stop_after = self.run.opts.stop_after == Some(self.progress.steps_this_run);
        Ok(((stop_after || preempted) && !stage_done, signal.filter(|_| preempted)))
    }

    /// Rank 0: the outlier guard's skip and the metrics line of step `done` of the phase.
    fn log_step(
        &mut self,
        phase_index: usize,
        phase: &PhaseConfig,
        done: u64,
        measured: &Measured<'_>,
    ) -> Result<(), TrainError> {
        let Some(metrics) = self.metrics.as_deref_mut() else {
            return Ok(());
        };
        let (opts, step) = (self.run.opts, self.progress.step);
        if let Some(spike) = measured.spike {
            let threshold = self.run.recipe.file.stability.outlier_threshold;
            log_outlier_skip(self.out, metrics, (&opts.stage, &phase.name, step), spike, threshold)?;
        }
        let total = self.run.phase_steps[phase_index];
        if Progress::is_log_step(done, total, opts.log_every) || measured.spike.is_some() {
            let mut entry = self.progress.step_metrics(
                phase_index,
                done,
                measured.loss,
                measured.lr,
                measured.grad_norm,
                measured.spike.is_some(),
            );
            entry.mtp_loss = measured.mtp_loss;
            say(self.out, entry.progress_line());
            metrics.append(&entry)?;
            self.report.logged.push(entry);
        }
        Ok(())
    }

    /// Held-out loss of one source (collective): the same `eval.rows` rows at every world
    /// size, each rank evaluating its rows `r, r+N, ...` in micro-batches, the loss sums added
    /// over ranks; rank 0 logs it.
    fn evaluate(&mut self, source: &Source, phase: &PhaseConfig, step: u64) -> Result<(), TrainError> {
        let recipe = self.run.recipe;
        let world_size = self.engine.world_size();
        let rows = recipe.file.eval.rows;
        let global = masked(held_out_rows(source, phase, recipe)?.next_rows(rows)?, recipe.mask());
        let mine = sampling::rank_rows(&global, self.engine.world_rank(), world_size)?;
        let micro_rows = largest_divisor_at_most(rows / world_size, phase.micro_batch);
        let mut sum = LossSum::default();
        for batch in sampling::micro_batches(&mine, micro_rows)? {
            sum = sum.add(self.engine.evaluate(&batch)?);
        }
        if let Some(metrics) = self.metrics.as_deref_mut() {
            let record = eval_record(source, phase, &self.run.opts.stage, step, sum);
            say(self.out, record.line());
            metrics.append(&record)?;
        }
        Ok(())
    }

    /// Downstream benchmark scores of the current weights (collective: every rank gathers
    /// them; rank 0 scores and logs).
    fn downstream(&mut self, step: u64) -> Result<(), TrainError> {
        let params = self.engine.full_params()?;
        let (Some(metrics), Some(downstream)) = (self.metrics.as_deref_mut(), &self.run.downstream) else {
            return Ok(());
        };
        let specs = self.engine.param_specs();
        for record in downstream.records(self.run.recipe, specs, params, step)? {
            say(self.out, crate::downstream::line(&record));
            metrics.append(&record)?;
        }
        Ok(())
    }

    /// Writes the checkpoint of the current step at `target` (collective); rank 0 prunes the
    /// periodic ones to `checkpoint.keep_last`.
    fn checkpoint(
        &mut self,
        target: PathBuf,
        phase: &PhaseConfig,
        state: &TrainerState,
        cursor: &DataCursor,
        stage_done: bool,
    ) -> Result<(), TrainError> {
        let (recipe, opts, step) = (self.run.recipe, self.run.opts, self.progress.step);
        let run = crate::run_state::record(recipe, &opts.stage, &phase.name, step, state, cursor);
        if let Err(e) = self.engine.save_checkpoint(&target, &run, &self.disk) {
            return Err(self.checkpoint_failed(phase, step, e.to_string()));
        }
        self.last_saved = Some(target.clone());
        if self.engine.world_rank() == 0 && !stage_done {
            kormo_checkpoint::keep_last(&self.run.checkpoints_dir, recipe.file.checkpoint.keep_last)?;
        }
        self.report.checkpoint = target;
        Ok(())
    }

    /// The error of a failed save, naming the checkpoint that is still good; rank 0 logs it.
    fn checkpoint_failed(&mut self, phase: &PhaseConfig, step: u64, error: String) -> TrainError {
        let fallback = match &self.last_saved {
            Some(previous) => format!(
                "the last good checkpoint, {}, is intact; continue from it with --resume",
                previous.display()
            ),
            None if self.run.opts.resume => {
                "the checkpoint this run resumed from is intact; continue from it with --resume"
                    .into()
            }
            None => "no checkpoint of this run was written yet".into(),
        };
        let record = EventRecord::new(
            &self.run.opts.stage,
            &phase.name,
            step,
            "checkpoint_failed",
            format!("{error}\n{fallback}"),
        );
        if let Some(metrics) = self.metrics.as_deref_mut() {
            say(self.out, format!("event checkpoint_failed: {}", record.message));
            // Best effort: the disk may be what failed.
            let _ = metrics.append(&record);
        }
        TrainError(record.message)
    }

    /// Rank 0: the last line of a run that stops early (preempted by `signal`, or by
    /// `--stop-after`).
    fn stopped(&mut self, phase: &PhaseConfig, step: u64, signal: Option<&str>) -> Result<(), TrainError> {
        let Some(metrics) = self.metrics.as_deref_mut() else {
            return Ok(());
        };
        let checkpoint = &self.report.checkpoint;
        match signal {
            Some(signal) => {
                let record = preempted_record(&self.run.opts.stage, &phase.name, step, signal, checkpoint);
                log_event(self.out, metrics, &record)
            }
            None => {
                say(self.out, self.progress.stopped_line(checkpoint));
                Ok(())
            }
        }
    }

    /// Restores the last good checkpoint of phase `phase_index` (weights, AdamW state, the
    /// guard's history, the counters), the same one on every rank: rank 0, which wrote the
    /// checkpoints, picks it and the others learn its step. The data stream moves on, so the
    /// batches that led to `what` are not replayed. Returns the phase step to continue from.
    fn restore_last_good(
        &mut self,
        guard: &mut OutlierGuard,
        phase_index: usize,
        phase: &PhaseConfig,
        what: &str,
    ) -> Result<u64, TrainError> {
        let (recipe, opts) = (self.run.recipe, self.run.opts);
        let checkpoints_dir = &self.run.checkpoints_dir;
        let retries = recipe.file.stability.nonfinite_retries;
        if self.restores >= retries {
            return Err(TrainError(format!(
                "phase {}: {what}, after {} restores of the last good checkpoint \
                 (stability.nonfinite_retries = {retries}); lower the learning rate or check the data",
                phase.name, self.restores
            )));
        }
        let picked = (self.engine.world_rank() == 0)
            .then(|| last_good_checkpoint(checkpoints_dir, &opts.stage, phase_index))
            .flatten();
        let mut pick = [picked.as_ref().map_or(0.0, |(_, c, _)| c.manifest.run.step as f64 + 1.0)];
        self.engine.all_reduce_world(&mut pick)?;
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
        let (dir, checkpoint, state) = match picked {
            Some(found) => found,
            None => {
                let dir = checkpoints_dir.join(kormo_checkpoint::step_dir_name(step));
                let checkpoint = Checkpoint::load(&dir)?;
                let state = trainer_state(&checkpoint)?;
                (dir, checkpoint, state)
            }
        };
        let file = checkpoint.file(crate::trainer::MODEL_FILE)?;
        let weights = self
            .engine
            .param_specs()
            .iter()
            .map(|spec| file.f32(&spec.name, Some(&spec.shape)))
            .collect::<Result<Vec<_>, _>>()?;
        self.engine.load_state(&weights, Some(&checkpoint))?;
        guard.restore(&state.guard);
        self.restores += 1;
        self.progress.step = step;
        self.progress.tokens = state.tokens;
        if let Some(metrics) = self.metrics.as_deref_mut() {
            // The steps after the checkpoint are undone: so are their metrics lines.
            metrics.truncate_after(step)?;
            self.report.logged.retain(|m| m.step <= step);
            let record = EventRecord::new(&opts.stage, &phase.name, step, "nonfinite_restore", format!(
                "{what}; restored {} (step {step}, restore {} of at most {retries}) and continue on fresh data",
                dir.display(), self.restores
            ));
            log_event(self.out, metrics, &record)?;
        }
        Ok(state.phase_step)
    }

    /// The end of a stage run that trained (or found) every phase to its end.
    fn finish(mut self) -> StageReport {
        self.report.completed = true;
        if self.engine.world_rank() == 0 {
            let world_size = self.engine.world_size();
            let (recipe, stage) = (self.run.recipe, &self.run.opts.stage);
            for line in stage_end_lines(recipe, stage, &self.progress, world_size, &self.report) {
                say(self.out, line);
            }
        }
        self.report
    }
}

/// `phase NAME: N steps x T tokens (...)`, the line a phase starts with.
fn phase_line(
    phase: &PhaseConfig,
    total: u64,
    peak_lr: f64,
    schedule: &ScheduleConfig,
    world_size: usize,
    micro_rows: usize,
) -> String {
    let think = if phase.mask_think_token { ", <think> excluded from the loss" } else { "" };
    let mut line = format!(
        "phase {}: {total} steps x {} tokens (seq {}, micro batch {}, grad accum {}), peak lr {peak_lr:.1e} {}{think}",
        phase.name, phase.tokens_per_step(), phase.seq_len, phase.micro_batch, phase.grad_accum,
        serde_name(&schedule.kind)
    );
    if world_size > 1 {
        let global_rows = phase.micro_batch * phase.grad_accum;
        line += &format!(
            "; each of {world_size} ranks takes {} of the {global_rows} rows per step in micro-batches of {micro_rows}",
            global_rows / world_size
        );
    }
    line
}

/// The largest number of rows, at most `limit`, that divides `rows` (micro-batch size).
fn largest_divisor_at_most(rows: usize, limit: usize) -> usize {
    (1..=limit.min(rows))
        .rev()
        .find(|m| rows.is_multiple_of(*m))
        .unwrap_or(1)
}

/// The newest periodic checkpoint of `stage` inside phase `phase_index` that loads cleanly.
fn last_good_checkpoint(
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

/// The stream of a source's held-out rows, packed as the phase packs, always from the start.
fn held_out_rows(
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

fn eval_record(
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

fn lr_schedule(
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
