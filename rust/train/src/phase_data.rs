//! The data of a stage's phases: each phase's mixture opened (synthetic corpora generated and
//! cached) before any training, so a missing file stops the run at once; shards checked against
//! the run's tokenizer and the model's vocabulary; the held-out documents split off when
//! evaluation is on; rows packed KORMo-style into the model's batches.

use crate::error::TrainError;
use crate::metrics::human_count;
use crate::progress::say;
use crate::recipe::{serde_name, MaskMode, PhaseConfig, Recipe, StageConfig};
use crate::trainer::RunOptions;
use kormo_data::synthetic::{self, SyntheticSpec};
use kormo_data::{Loader, PackedRows, PackingOptions, Source, LANGUAGE_KOREAN};
use kormo_model::{Batch, DOC_LANGUAGE_BIT};
use std::io::Write;
use std::path::Path;

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

/// The model's batch of `rows` under the attention mask `mask`: `causal` makes the row one
/// document for attention (every doc id 0), whatever it packs; `xlda` sets bit 31
/// ([`DOC_LANGUAGE_BIT`]) of the doc id of every token of a Korean document, so the model (told
/// by `Model::set_cross_lingual_attention`) also lets it see the other language's documents;
/// positions and loss weights stay.
pub(crate) fn masked(mut rows: PackedRows, mask: MaskMode) -> Batch {
    let languages = std::mem::take(&mut rows.languages);
    let mut batch = to_batch(rows);
    match mask {
        MaskMode::Document => {}
        MaskMode::Causal => batch.doc_ids.iter_mut().for_each(|d| *d = 0),
        MaskMode::Xlda => {
            for (d, &language) in batch.doc_ids.iter_mut().zip(&languages) {
                if language == LANGUAGE_KOREAN {
                    *d |= DOC_LANGUAGE_BIT;
                }
            }
        }
    }
    batch
}

/// The data of every phase of `stage` (opened, and synthetic corpora generated, up front).
pub(crate) fn open_phase_data(
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
        check_languages(recipe, name, &source)?;
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

/// Under `[attention] mask = "xlda"`, refuses a source with a shard that records no document
/// languages (written before `prepare` recorded them), naming the shard.
fn check_languages(recipe: &Recipe, name: &str, source: &Source) -> Result<(), TrainError> {
    if recipe.mask() != MaskMode::Xlda {
        return Ok(());
    }
    match source.first_shard_without_languages() {
        Some(shard) => Err(TrainError(format!(
            "{}: shard of source `{name}` records no document languages, which [attention] mask = \"xlda\" \
             needs (re-run `prepare` on its input to record them, or use mask = \"document\")\n\
             (source `{name}` of recipe {}, key attention.mask)",
            shard.display(),
            recipe.origin
        ))),
        None => Ok(()),
    }
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

/// FNV-1a, to derive independent seeds from names.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_set_the_doc_ids_the_model_reads() {
        let rows = PackedRows {
            tokens: vec![1; 6],
            targets: vec![1; 6],
            loss_weights: vec![1.0; 6],
            doc_ids: vec![0, 1, 1, 2, 2, 3],
            positions: (0..6).collect(),
            languages: vec![1, 0, 0, 1, 1, 0],
            rows: 1,
            seq_len: 6,
        };
        let k = DOC_LANGUAGE_BIT;
        assert_eq!(masked(rows.clone(), MaskMode::Document).doc_ids, [0, 1, 1, 2, 2, 3]);
        assert_eq!(masked(rows.clone(), MaskMode::Causal).doc_ids, [0; 6]);
        assert_eq!(masked(rows, MaskMode::Xlda).doc_ids, [k, 1, 1, 2 | k, 2 | k, 3]);
    }
}
