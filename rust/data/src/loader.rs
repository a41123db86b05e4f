//! Mixture sampling and the resumable packed-row loader.
//!
//! A [`Source`] is one dataset (the shards of one manifest); a mixture draws each next document
//! from source `i` with probability `weight_i / sum(weights)`, using a ChaCha8 stream seeded from
//! the run seed, and takes that source's documents in order (wrapping around into a new epoch;
//! shards are shuffled when they are made, so in-order reading is already mixed). Documents are
//! packed into rows by [`crate::packing`].
//!
//! Exact resume: the whole loader state is [`DataCursor`]: the RNG's word position, how many
//! documents each source has handed out, and the partially packed document (source, index,
//! offset) whose tail starts the next row. Restoring a cursor and continuing yields the same rows,
//! bit for bit, as never stopping.

use crate::packing::{DocumentStream, PackedRows, PackingOptions};
use crate::DataError;
use kormo_shards::{Manifest, Shard};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

/// One dataset of the mixture (cheap to clone: the mapped shards are shared): a window of documents over the concatenation of its shards
/// (all of them, or the training / held-out part after [`Source::split_holdout`]).
#[derive(Clone)]
pub struct Source {
    pub name: String,
    pub weight: f64,
    shards: Arc<[Shard]>,
    /// Index of each shard's first document in the concatenation of all shards.
    first_document: Arc<[u64]>,
    /// The documents this source hands out (global indices).
    window: Range<u64>,
    num_tokens: u64,
}

impl Source {
    /// Opens every shard listed by the manifest at `manifest_path` (paths relative to its folder).
    pub fn open(name: &str, weight: f64, manifest_path: &Path) -> Result<Source, DataError> {
        let manifest = Manifest::load(manifest_path)?;
        let base = manifest_path.parent().unwrap_or(Path::new("."));
        Source::from_shards(name, weight, manifest.open_shards(base)?)
    }

    pub fn from_shards(name: &str, weight: f64, shards: Vec<Shard>) -> Result<Source, DataError> {
        if !(weight.is_finite() && weight > 0.0) {
            return Err(DataError(format!(
                "source `{name}`: weight {weight} must be a positive number"
            )));
        }
        let mut first_document = Vec::with_capacity(shards.len());
        let mut num_documents = 0u64;
        for shard in &shards {
            first_document.push(num_documents);
            num_documents += shard.num_documents() as u64;
        }
        if num_documents == 0 {
            return Err(DataError(format!("source `{name}` has no documents")));
        }
        let num_tokens = shards.iter().map(|s| s.num_tokens()).sum();
        Ok(Source {
            name: name.to_string(),
            weight,
            shards: shards.into(),
            first_document: first_document.into(),
            window: 0..num_documents,
            num_tokens,
        })
    }

    /// Splits off the last `documents` documents as a held-out part that the returned training
    /// part never hands out (shards are shuffled when made, so the tail is a random sample).
    /// Returns (training, held-out).
    pub fn split_holdout(self, documents: u64) -> Result<(Source, Source), DataError> {
        let total = self.num_documents();
        if documents == 0 || documents >= total {
            return Err(DataError(format!(
                "source `{}`: cannot hold out {documents} of its {total} documents for evaluation \
                 (need at least 1, and at least 1 left for training)",
                self.name
            )));
        }
        let cut = self.window.end - documents;
        let tokens = |window: &Range<u64>| -> Result<u64, DataError> {
            window.clone().try_fold(0u64, |sum, global| {
                let (shard, local) = self.locate(global);
                Ok(sum + self.shards[shard].document(local)?.tokens.len() as u64)
            })
        };
        let held_window = cut..self.window.end;
        let held_tokens = tokens(&held_window)?;
        let held = Source {
            name: self.name.clone(),
            weight: self.weight,
            shards: self.shards.clone(),
            first_document: self.first_document.clone(),
            window: held_window,
            num_tokens: held_tokens,
        };
        let train = Source {
            window: self.window.start..cut,
            num_tokens: self.num_tokens - held_tokens,
            ..self
        };
        Ok((train, held))
    }

    pub fn num_documents(&self) -> u64 {
        self.window.end - self.window.start
    }

    pub fn num_tokens(&self) -> u64 {
        self.num_tokens
    }

    pub fn vocab_size(&self) -> u32 {
        self.shards[0].meta().vocab_size
    }

    /// The tokenizer fingerprint of the source's first shard.
    pub fn tokenizer_fingerprint(&self) -> &str {
        &self.shards[0].meta().tokenizer_fingerprint
    }

    /// Checks that every shard was tokenized by the tokenizer with fingerprint `expected`;
    /// the error names the first shard that was not (tokens of another vocabulary would train
    /// silently on garbage).
    pub fn check_tokenizer(&self, expected: &str) -> Result<(), DataError> {
        match self
            .shards
            .iter()
            .find(|s| s.meta().tokenizer_fingerprint != expected)
        {
            Some(shard) => Err(DataError(format!(
                "{}: shard of source `{}` was made with tokenizer fingerprint {:?}, but this run \
                 uses {expected:?} (re-run `prepare` with the run's tokenizer, or fix the recipe's \
                 [tokens] table)",
                shard.path().display(),
                self.name,
                shard.meta().tokenizer_fingerprint
            ))),
            None => Ok(()),
        }
    }

    /// The first document this source hands out that has no loss-mask spans (and so trains on
    /// every token), as (shard file, document index inside it).
    pub fn first_document_without_spans(&self) -> Result<Option<(&Path, usize)>, DataError> {
        for global in self.window.clone() {
            let (shard, local) = self.locate(global);
            if self.shards[shard].document(local)?.loss_mask_spans.is_empty() {
                return Ok(Some((self.shards[shard].path(), local)));
            }
        }
        Ok(None)
    }

    /// The first shard with documents that records no per-document languages (written by a
    /// `prepare` older than the languages section), which cross-lingual document attention
    /// cannot use.
    pub fn first_shard_without_languages(&self) -> Option<&Path> {
        self.shards
            .iter()
            .find(|s| s.num_documents() > 0 && !s.has_languages())
            .map(|s| s.path())
    }

    /// (shard, document inside it) of global document index `global`.
    fn locate(&self, global: u64) -> (usize, usize) {
        let shard = self
            .first_document
            .partition_point(|&first| first <= global)
            - 1;
        (shard, (global - self.first_document[shard]) as usize)
    }

    /// The `taken`-th document handed out by this source (wrapping around at the end).
    fn stream(&self, taken: u64, opts: &PackingOptions) -> Result<DocumentStream, DataError> {
        let global = self.window.start + taken % self.num_documents();
        let (shard, local) = self.locate(global);
        Ok(DocumentStream::new(
            &self.shards[shard].document(local)?,
            opts,
        ))
    }
}

/// A document partly packed into rows: the next row continues it at `offset`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingDocument {
    pub source: usize,
    /// Which of the source's handed-out documents (counting from 0 at the start of training).
    pub taken: u64,
    /// Position inside the document's BOS+text+EOS stream.
    pub offset: usize,
}

/// Everything needed to continue the data stream exactly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataCursor {
    pub seed: u64,
    /// ChaCha8 word position (a u128, as a decimal string for JSON).
    pub rng_word_pos: String,
    /// Source names, to refuse a cursor from another mixture.
    pub sources: Vec<String>,
    /// Documents handed out so far, per source.
    pub taken: Vec<u64>,
    pub pending: Option<PendingDocument>,
}

/// Draws documents from a weighted mixture and packs them into rows.
pub struct Loader {
    sources: Vec<Source>,
    opts: PackingOptions,
    seed: u64,
    rng: ChaCha8Rng,
    taken: Vec<u64>,
    current: Option<(PendingDocument, DocumentStream)>,
}

impl Loader {
    pub fn new(sources: Vec<Source>, opts: PackingOptions, seed: u64) -> Result<Loader, DataError> {
        if sources.is_empty() {
            return Err(DataError("a mixture needs at least one source".into()));
        }
        if opts.seq_len < 2 {
            return Err(DataError(format!(
                "seq_len {} must be at least 2",
                opts.seq_len
            )));
        }
        let taken = vec![0; sources.len()];
        Ok(Loader {
            sources,
            opts,
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
            taken,
            current: None,
        })
    }

    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    pub fn options(&self) -> &PackingOptions {
        &self.opts
    }

    /// Documents handed out so far, per source.
    pub fn documents_taken(&self) -> &[u64] {
        &self.taken
    }

    fn draw_source(&mut self) -> usize {
        let total: f64 = self.sources.iter().map(|s| s.weight).sum();
        let mut u = self.rng.random::<f64>() * total;
        for (i, source) in self.sources.iter().enumerate() {
            if u < source.weight {
                return i;
            }
            u -= source.weight;
        }
        self.sources.len() - 1
    }

    /// The next `rows` packed rows.
    pub fn next_rows(&mut self, rows: usize) -> Result<PackedRows, DataError> {
        let seq_len = self.opts.seq_len;
        let mut out = PackedRows::new(seq_len);
        let mut tokens = Vec::with_capacity(seq_len);
        let mut trained = Vec::with_capacity(seq_len);
        let mut languages = Vec::with_capacity(seq_len);
        for _ in 0..rows {
            tokens.clear();
            trained.clear();
            languages.clear();
            while tokens.len() < seq_len {
                let (pending, stream) = match self.current.take() {
                    Some(current) => current,
                    None => {
                        let source = self.draw_source();
                        let taken = self.taken[source];
                        self.taken[source] += 1;
                        let stream = self.sources[source].stream(taken, &self.opts)?;
                        (
                            PendingDocument {
                                source,
                                taken,
                                offset: 0,
                            },
                            stream,
                        )
                    }
                };
                let take = (seq_len - tokens.len()).min(stream.len() - pending.offset);
                let range = pending.offset..pending.offset + take;
                tokens.extend_from_slice(&stream.tokens[range.clone()]);
                trained.extend_from_slice(&stream.trained[range]);
                let language = stream.language.unwrap_or(kormo_shards::format::LANGUAGE_OTHER);
                languages.resize(tokens.len(), language);
                let offset = pending.offset + take;
                if offset < stream.len() {
                    self.current = Some((PendingDocument { offset, ..pending }, stream));
                }
            }
            out.push_row(&tokens, &trained, &languages, &self.opts);
        }
        Ok(out)
    }

    pub fn cursor(&self) -> DataCursor {
        DataCursor {
            seed: self.seed,
            rng_word_pos: self.rng.get_word_pos().to_string(),
            sources: self.sources.iter().map(|s| s.name.clone()).collect(),
            taken: self.taken.clone(),
            pending: self.current.as_ref().map(|(p, _)| p.clone()),
        }
    }

    /// Continues from `cursor` (taken from a loader over the same sources).
    pub fn restore(&mut self, cursor: &DataCursor) -> Result<(), DataError> {
        let names: Vec<String> = self.sources.iter().map(|s| s.name.clone()).collect();
        if cursor.sources != names {
            return Err(DataError(format!(
                "data cursor is for sources {:?}, this mixture has {names:?}",
                cursor.sources
            )));
        }
        if cursor.taken.len() != names.len() {
            return Err(DataError(format!(
                "data cursor has {} `taken` counts {:?}, but {} sources {names:?}: the lengths differ",
                cursor.taken.len(),
                cursor.taken,
                names.len()
            )));
        }
        let word_pos: u128 = cursor.rng_word_pos.parse().map_err(|_| {
            DataError(format!(
                "data cursor rng_word_pos `{}` is not a number",
                cursor.rng_word_pos
            ))
        })?;
        let current = match &cursor.pending {
            Some(p) => {
                let source = self
                    .sources
                    .get(p.source)
                    .ok_or_else(|| DataError(format!("data cursor names source {}", p.source)))?;
                let stream = source.stream(p.taken, &self.opts)?;
                if p.offset >= stream.len() {
                    return Err(DataError(format!(
                        "data cursor offset {} is past its document ({} tokens)",
                        p.offset,
                        stream.len()
                    )));
                }
                Some((p.clone(), stream))
            }
            None => None,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(cursor.seed);
        rng.set_word_pos(word_pos);
        self.seed = cursor.seed;
        self.rng = rng;
        self.taken = cursor.taken.clone();
        self.current = current;
        Ok(())
    }
}
