//! Step bookkeeping of the step loop (step_loop.rs), the same at every world size: where a run
//! starts, the stage's step/token/time counters and the metrics line and trainer state derived
//! from them, when evaluation and checkpoints happen, event lines, and what a run reports.

use crate::guard::{GuardState, Spike};
use crate::metrics::{EventRecord, MetricsFile, StepMetrics};
use crate::recipe::{PhaseConfig, Recipe, StageConfig};
use crate::error::TrainError;
use crate::run_state::TrainerState;
use kormo_checkpoint::Checkpoint;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

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

/// Where a stage run begins (the default: the start of the stage).
#[derive(Default)]
pub(crate) struct Start {
    pub phase_index: usize,
    pub phase_step: u64,
    pub step: u64,
    pub tokens: u64,
    /// Optimizer and data state to restore into the first phase (resume only).
    pub resumed: Option<Checkpoint>,
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

/// Step, token and time counters of one stage run (each rank keeps its own, all alike).
pub(crate) struct Progress<'a> {
    stage_name: &'a str,
    stage: &'a StageConfig,
    phase_steps: &'a [u64],
    clock: Instant,
    /// Optimizer steps of the stage, including those before a resume.
    pub step: u64,
    /// Tokens of the stage, including those before a resume.
    pub tokens: u64,
    pub steps_this_run: u64,
    tokens_this_run: u64,
}

impl<'a> Progress<'a> {
    pub fn new(
        stage_name: &'a str,
        stage: &'a StageConfig,
        phase_steps: &'a [u64],
        start: &Start,
    ) -> Progress<'a> {
        Progress {
            stage_name,
            stage,
            phase_steps,
            clock: Instant::now(),
            step: start.step,
            tokens: start.tokens,
            steps_this_run: 0,
            tokens_this_run: 0,
        }
    }

    /// Counts one optimizer step of `phase`.
    pub fn advance(&mut self, phase: &PhaseConfig) {
        self.step += 1;
        self.steps_this_run += 1;
        self.tokens += phase.tokens_per_step();
        self.tokens_this_run += phase.tokens_per_step();
    }

    pub fn elapsed_s(&self) -> f64 {
        self.clock.elapsed().as_secs_f64()
    }

    /// Whether step `done` of a phase of `total` steps gets a metrics line.
    pub fn is_log_step(done: u64, total: u64, log_every: u64) -> bool {
        done == 1 || done.is_multiple_of(log_every) || done == total
    }

    /// The metrics line of the current step, step `done` of phase `phase_index`.
    pub fn step_metrics(
        &self,
        phase_index: usize,
        done: u64,
        loss: f64,
        lr: f64,
        grad_norm: f64,
        skipped: bool,
    ) -> StepMetrics {
        let elapsed = self.elapsed_s();
        let tokens_per_s = self.tokens_this_run as f64 / elapsed.max(1e-9);
        StepMetrics {
            stage: self.stage_name.to_string(),
            phase: self.stage.phases[phase_index].name.clone(),
            step: self.step,
            phase_step: done,
            phase_steps: self.phase_steps[phase_index],
            loss,
            mtp_loss: None,
            lr,
            grad_norm,
            tokens: self.tokens,
            tokens_per_s,
            elapsed_s: elapsed,
            eta_s: remaining_tokens(self.stage, self.phase_steps, phase_index, done) as f64
                / tokens_per_s.max(1e-9),
            skipped,
        }
    }

    /// The trainer counters a checkpoint after step `done` of phase `phase_index` stores.
    pub fn trainer_state(
        &self,
        seed: u64,
        phase_index: usize,
        done: u64,
        guard: GuardState,
    ) -> TrainerState {
        TrainerState {
            seed,
            phase_index,
            phase_step: done,
            phase_steps: self.phase_steps[phase_index],
            tokens: self.tokens,
            guard,
        }
    }

    /// The last line of a run stopped by `--stop-after` after writing `checkpoint`.
    pub fn stopped_line(&self, checkpoint: &Path) -> String {
        format!(
            "stopped after {} steps; checkpoint {} (continue with --resume)",
            self.steps_this_run,
            checkpoint.display()
        )
    }
}

/// Whether held-out evaluation runs after stage step `step` (step `done` of `total` of a phase).
pub(crate) fn is_eval_step(recipe: &Recipe, step: u64, done: u64, total: u64) -> bool {
    let every = recipe.file.eval.every_steps;
    every > 0 && (step.is_multiple_of(every) || done == total)
}

/// Where the checkpoint after stage step `step` goes: the stage's final directory at its end,
/// a step directory when periodic or when the run stops early, else none.
pub(crate) fn checkpoint_target(
    recipe: &Recipe,
    step: u64,
    stage_done: bool,
    stopping: bool,
    final_dir: &Path,
    checkpoints_dir: &Path,
) -> Option<PathBuf> {
    let every = recipe.file.checkpoint.every_steps;
    let periodic = every > 0 && step.is_multiple_of(every);
    if stage_done {
        Some(final_dir.to_path_buf())
    } else if periodic || stopping {
        Some(checkpoints_dir.join(kormo_checkpoint::step_dir_name(step)))
    } else {
        None
    }
}

/// The event of a preemption signal handled by writing `checkpoint` at step `step`.
pub(crate) fn preempted_record(
    stage: &str,
    phase: &str,
    step: u64,
    signal: &str,
    checkpoint: &Path,
) -> EventRecord {
    EventRecord::new(stage, phase, step, "preempted", format!(
        "{signal} received; checkpoint {} written at the end of step {step} (continue with --resume)",
        checkpoint.display()
    ))
}

/// Logs the outlier guard's skip of step `step`'s update (the same words at any world size).
pub(crate) fn log_outlier_skip(
    out: &mut dyn Write,
    metrics: &mut MetricsFile,
    (stage, phase, step): (&str, &str, u64),
    spike: &Spike,
    threshold: f64,
) -> Result<(), TrainError> {
    let record = EventRecord::new(
        stage,
        phase,
        step,
        "outlier_skip",
        format!(
            "{} {:.4} is {:.1} standard deviations above the mean {:.4} of the last {} steps \
         (stability.outlier_threshold = {threshold}); update skipped",
            spike.metric, spike.value, spike.z, spike.mean, spike.history,
        ),
    );
    say(
        out,
        format!("event outlier_skip: step {step}: {}", record.message),
    );
    Ok(metrics.append(&record)?)
}

/// Prints an event and appends it to the metrics file.
pub(crate) fn log_event(
    out: &mut dyn Write,
    metrics: &mut MetricsFile,
    record: &EventRecord,
) -> Result<(), TrainError> {
    say(out, format!("event {}: {}", record.event, record.message));
    Ok(metrics.append(record)?)
}

/// Tokens left in the stage after step `phase_step` of phase `phase_index`.
fn remaining_tokens(
    stage: &StageConfig,
    phase_steps: &[u64],
    phase_index: usize,
    phase_step: u64,
) -> u64 {
    stage
        .phases
        .iter()
        .zip(phase_steps)
        .enumerate()
        .skip(phase_index)
        .map(|(i, (p, &n))| {
            (n - if i == phase_index { phase_step } else { 0 }) * p.tokens_per_step()
        })
        .sum()
}

/// The lines a completed stage run ends with, the same words at every world size: what this
/// invocation did (or that the stage was already complete: nothing was left to train), and the
/// command for the next stage.
pub(crate) fn stage_end_lines(
    recipe: &Recipe,
    stage: &str,
    progress: &Progress,
    world_size: usize,
    report: &StageReport,
) -> Vec<String> {
    let checkpoint = report.checkpoint.display();
    let mut lines = vec![if progress.steps_this_run == 0 {
        format!("stage {stage} was already complete: {checkpoint}")
    } else {
        let ranks = if world_size > 1 {
            format!(" on {world_size} ranks")
        } else {
            String::new()
        };
        let losses = match (report.logged.first(), report.logged.last()) {
            (Some(first), Some(last)) => format!(", loss {:.4} -> {:.4}", first.loss, last.loss),
            _ => String::new(),
        };
        format!(
            "done: {} steps{ranks} in {:.1}s{losses}; final checkpoint {checkpoint}",
            progress.steps_this_run,
            progress.elapsed_s(),
        )
    }];
    if let Some(next) = crate::recipe::STAGES
        .iter()
        .skip_while(|s| **s != stage)
        .nth(1)
    {
        lines.push(format!(
            "next: tools/bazel run //rust:train -- --stage={next}{}",
            crate::recipe::config_flag(recipe)
        ));
    }
    lines
}
