//! The run state of a checkpoint checked against the recipe and the data before a resumed run
//! trains a step: every counter in range and consistent with the others, the phase known, the
//! data cursor of the phase's mixture, the outlier guard's history of the right length. A
//! manifest edited by hand or written by another recipe would otherwise resume silently wrong
//! (a phase step past the phase's end reads as "stage already complete"). Each error names the
//! manifest, the field, its value and the valid range.

use crate::recipe::{Recipe, StageConfig};
use crate::error::TrainError;
use crate::guard::GuardState;
use crate::phase_data::PhaseData;
use kormo_checkpoint::{Checkpoint, RunState};
use kormo_data::{DataCursor, Loader};
use serde::{Deserialize, Serialize};
use std::fmt::Display;

/// Trainer counters stored in every checkpoint (besides model, optimizer and data state; the
/// manifest's `run.trainer` also records the model config, see [`MODEL_KEY`]).
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

/// Key of `run.trainer` that records the model's config (read by kormo_hf's
/// `Weights::from_checkpoint`, so `hf export`, `generate` and `eval` build the architecture the
/// run trained, whatever preset they are given); not a trainer counter.
const MODEL_KEY: &str = "model";

pub(crate) fn trainer_state(checkpoint: &Checkpoint) -> Result<TrainerState, TrainError> {
    let mut trainer = checkpoint.manifest.run.trainer.clone();
    if let Some(map) = trainer.as_object_mut() {
        map.remove(MODEL_KEY);
    }
    serde_json::from_value(trainer).map_err(|e| {
        TrainError(format!(
            "{}: bad trainer state: {e}",
            checkpoint
                .dir
                .join(kormo_checkpoint::MANIFEST_FILE)
                .display()
        ))
    })
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

/// The manifest's run state of a checkpoint at `step` (what [`validate`] checks on resume).
pub(crate) fn record(
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
        trainer: trainer_record(recipe, state),
    }
}

/// `run.trainer`: the counters of `state` and the model config under [`MODEL_KEY`].
fn trainer_record(recipe: &Recipe, state: &TrainerState) -> serde_json::Value {
    let mut value = serde_json::to_value(state).expect("state serialises");
    if let Some(map) = value.as_object_mut() {
        map.insert(MODEL_KEY.into(), serde_json::to_value(&recipe.model).expect("config serialises"));
    }
    value
}

/// What a checkpoint's run state must agree with: the stage being resumed, the lengths of its
/// phases in this run (after `--max-steps`) and each phase's data, opened.
pub(crate) struct Expected<'a> {
    pub recipe: &'a Recipe,
    pub stage: &'a StageConfig,
    pub phase_steps: &'a [u64],
    pub data: &'a [Option<PhaseData>],
}

/// Checks `state` (the manifest's `run.trainer`) and the rest of the manifest's run state.
pub(crate) fn validate(
    checkpoint: &Checkpoint,
    state: &TrainerState,
    expected: &Expected<'_>,
) -> Result<(), TrainError> {
    let run = &checkpoint.manifest.run;
    let bad = |field: &str, value: &dyn Display, valid: String| {
        TrainError(format!(
            "{}: run state field `{field}` is {value}, valid: {valid}; this checkpoint cannot \
             continue this run",
            checkpoint
                .dir
                .join(kormo_checkpoint::MANIFEST_FILE)
                .display()
        ))
    };
    let phases = &expected.stage.phases;
    let index = state.phase_index;
    let Some(phase) = phases.get(index) else {
        return Err(bad(
            "trainer.phase_index",
            &index,
            format!("0..{} (the stage's {} phases)", phases.len(), phases.len()),
        ));
    };
    if run.phase != phase.name {
        let names: Vec<&str> = phases.iter().map(|p| p.name.as_str()).collect();
        return Err(bad(
            "run.phase",
            &format!("{:?}", run.phase),
            format!("{:?} (phase {index} of {names:?})", phase.name),
        ));
    }
    let total = expected.phase_steps[index];
    if state.phase_steps != total {
        return Err(bad(
            "trainer.phase_steps",
            &state.phase_steps,
            format!(
                "{total} (the phase length of `{}` in this run; was --max-steps changed?)",
                phase.name
            ),
        ));
    }
    if state.phase_step > total {
        return Err(bad(
            "trainer.phase_step",
            &state.phase_step,
            format!("0..={total} (the steps of phase `{}`)", phase.name),
        ));
    }
    let before: u64 = expected.phase_steps[..index].iter().sum();
    let step = before + state.phase_step;
    if run.step != step {
        return Err(bad(
            "run.step",
            &run.step,
            format!(
                "{step} ({before} steps of the earlier phases + trainer.phase_step {})",
                state.phase_step
            ),
        ));
    }
    let tokens: u64 = phases[..index]
        .iter()
        .zip(expected.phase_steps)
        .map(|(p, &steps)| p.tokens_per_step() * steps)
        .sum::<u64>()
        + phase.tokens_per_step() * state.phase_step;
    if state.tokens != tokens {
        return Err(bad(
            "trainer.tokens",
            &state.tokens,
            format!("{tokens} (the tokens of run.step {step} steps)"),
        ));
    }
    validate_guard(checkpoint, state, expected.recipe, &bad)?;
    validate_rng_state(checkpoint, state, &bad)?;
    match &expected.data[index] {
        Some(data) => validate_cursor(checkpoint, phase, total, data, expected.recipe, &bad),
        None => Ok(()),
    }
}

/// The data cursor of a checkpoint in phase `phase` (of `total` steps this run), against the
/// phase's `data` as opened.
fn validate_cursor(
    checkpoint: &Checkpoint,
    phase: &crate::recipe::PhaseConfig,
    total: u64,
    data: &PhaseData,
    recipe: &Recipe,
    bad: &dyn Fn(&str, &dyn Display, String) -> TrainError,
) -> Result<(), TrainError> {
    let run = &checkpoint.manifest.run;
    let cursor: DataCursor = serde_json::from_value(run.data_cursor.clone()).map_err(|e| {
        bad(
            "data_cursor",
            &run.data_cursor,
            format!("a data cursor ({e})"),
        )
    })?;
    let fresh = data.loader.cursor();
    let sources = &fresh.sources;
    if cursor.sources != *sources {
        return Err(bad(
            "data_cursor.sources",
            &format!("{:?}", cursor.sources),
            format!("{sources:?} (the mixture of phase `{}`)", phase.name),
        ));
    }
    if cursor.taken.len() != sources.len() {
        return Err(bad(
            "data_cursor.taken",
            &format!("{:?} ({} counts)", cursor.taken, cursor.taken.len()),
            format!("{} counts, one per source of {sources:?}", sources.len()),
        ));
    }
    if cursor.seed != fresh.seed {
        return Err(bad(
            "data_cursor.seed",
            &cursor.seed,
            format!("{} (the data seed of phase `{}`)", fresh.seed, phase.name),
        ));
    }
    // Every handed-out document puts at least one token into a row, and a phase draws
    // tokens_per_step tokens a step; non-finite restores move the data on without counting the
    // undone steps, up to stability.nonfinite_retries times a run, hence the factor.
    let retries = u64::from(recipe.file.stability.nonfinite_retries);
    let drawn = phase.tokens_per_step() * total * (1 + retries) + 1;
    let taken = cursor
        .taken
        .iter()
        .try_fold(0u64, |sum, &t| sum.checked_add(t));
    if taken.is_none_or(|t| t > drawn) {
        return Err(bad(
            "data_cursor.taken",
            &format!("{:?}", cursor.taken),
            format!(
                "at most {drawn} documents in all (phase `{}`: {total} steps of {} tokens, {} \
                 tries)",
                phase.name,
                phase.tokens_per_step(),
                1 + retries
            ),
        ));
    }
    // The loader's RNG draws one f64 (two ChaCha8 words) per document handed out.
    let words = taken.map(|t| u128::from(t) * 2);
    if cursor.rng_word_pos.parse::<u128>().ok() != words {
        return Err(bad(
            "data_cursor.rng_word_pos",
            &format!("{:?}", cursor.rng_word_pos),
            format!(
                "\"{}\" (two words per document taken, {:?})",
                words.unwrap_or(0),
                cursor.taken
            ),
        ));
    }
    if let Some(pending) = &cursor.pending {
        // The document being packed is the newest one handed out from its source.
        let expected_taken = cursor.taken.get(pending.source).map(|t| t.wrapping_sub(1));
        if expected_taken != Some(pending.taken) {
            return Err(bad(
                "data_cursor.pending",
                &format!("source {} document {}", pending.source, pending.taken),
                match expected_taken {
                    Some(t) => format!("document {t} of source {} (its newest)", pending.source),
                    None => format!("a source below {}", sources.len()),
                },
            ));
        }
    }
    Ok(())
}

/// The guard's two histories hold one value per step of the phase, up to the window. A
/// checkpoint without a `guard` key predates the guard and resumes with an empty history.
fn validate_guard(
    checkpoint: &Checkpoint,
    state: &TrainerState,
    recipe: &Recipe,
    bad: &dyn Fn(&str, &dyn Display, String) -> TrainError,
) -> Result<(), TrainError> {
    if checkpoint.manifest.run.trainer.get("guard").is_none() {
        return Ok(());
    }
    let window = recipe.file.stability.outlier_window as u64;
    let length = state.phase_step.min(window);
    for (field, history) in [
        ("trainer.guard.losses", &state.guard.losses),
        ("trainer.guard.grad_norms", &state.guard.grad_norms),
    ] {
        if history.len() as u64 != length {
            return Err(bad(
                &format!("{field} length"),
                &history.len(),
                format!(
                    "{length} (one value per step of the phase so far, {} steps, up to \
                     stability.outlier_window = {window})",
                    state.phase_step
                ),
            ));
        }
    }
    Ok(())
}

/// `run.rng_state` repeats the seed and the data RNG position (for people reading the file);
/// where present they must agree with the trainer state and the data cursor.
fn validate_rng_state(
    checkpoint: &Checkpoint,
    state: &TrainerState,
    bad: &dyn Fn(&str, &dyn Display, String) -> TrainError,
) -> Result<(), TrainError> {
    let run = &checkpoint.manifest.run;
    if let Some(seed) = run.rng_state.get("seed") {
        if seed.as_u64() != Some(state.seed) {
            return Err(bad(
                "rng_state.seed",
                seed,
                format!("{} (trainer.seed)", state.seed),
            ));
        }
    }
    if let Some(position) = run.rng_state.get("data_rng_word_pos") {
        let cursor = run.data_cursor.get("rng_word_pos");
        if Some(position) != cursor {
            return Err(bad(
                "rng_state.data_rng_word_pos",
                position,
                format!(
                    "{} (data_cursor.rng_word_pos)",
                    cursor.unwrap_or(&serde_json::Value::Null)
                ),
            ));
        }
    }
    Ok(())
}
