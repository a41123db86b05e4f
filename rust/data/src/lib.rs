//! kormo-data: from token shards to the packed rows a training step consumes.
//!
//! * [`vocab`] — special token ids, the built-in byte-level vocabulary (256 bytes + KORMo's
//!   specials, padded to 384) and [`Vocabulary`]: bytes or a trained BPE tokenizer.
//! * [`packing`] — KORMo packing: BOS + text + EOS per document, rows of `seq_len`, document ids,
//!   positions, loss weights (assistant-only spans, `<think>` excluded in the reasoning phase).
//! * [`loader`] — weighted mixture of sources, deterministic from a seed, with a serialisable
//!   [`DataCursor`] for exact resume.
//! * [`synthetic`] — the deterministic synthetic corpus the tiny recipe trains on, encoded with
//!   the run's vocabulary.

pub mod loader;
pub mod packing;
pub mod synthetic;
pub mod vocab;

pub use loader::{DataCursor, Loader, PendingDocument, Source};
pub use packing::{DocumentStream, PackedRows, PackingOptions, PositionMode};
pub use synthetic::{SyntheticKind, SyntheticSpec};
pub use vocab::{ByteVocab, SpecialIds, SpecialTokens, TextEncoder, Vocabulary};
/// The language codes of [`PackedRows::languages`] (as the shards record them).
pub use kormo_shards::format::{LANGUAGE_KOREAN, LANGUAGE_OTHER};

/// A data-layer error; the message names the file or source it is about.
#[derive(Debug, Clone, PartialEq)]
pub struct DataError(pub String);

impl std::fmt::Display for DataError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DataError {}

impl From<kormo_shards::ShardError> for DataError {
    fn from(e: kormo_shards::ShardError) -> Self {
        DataError(e.to_string())
    }
}
