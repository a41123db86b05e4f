//! kormo-shards: memory-mapped token shards for training.
//!
//! A shard is one file of u32 token ids grouped into documents, with optional per-document
//! loss-mask spans, a versioned header, and CRC32 checksums per section and per 4 MiB token
//! block (format: docs/shard-format.md and [`mod@format`]). A JSON [`Manifest`] lists the shards of a
//! dataset with their counts and checksums.
//!
//! Public API (the contract the data loader and the prep tool code against):
//!
//! ```no_run
//! use kormo_shards::{Manifest, Shard, ShardMeta, ShardWriter};
//! # fn main() -> Result<(), kormo_shards::ShardError> {
//! let meta = ShardMeta { vocab_size: 125_184, tokenizer_fingerprint: "sha256:...".into() };
//! let mut writer = ShardWriter::create("data/shard-00000.kts", meta.clone())?;
//! writer.append_document(&[1, 2, 3, 4], None)?; // train on every token
//! writer.append_document(&[5, 6, 7], Some(&[(1, 3)]))?; // train on tokens 1 and 2 only
//! // (or `append_document_with_language(tokens, spans, language)` for every document of a
//! // shard, which then records each document's language: see [`language`])
//! let summary = writer.finish()?; // atomic: temp file + fsync + rename
//!
//! let mut manifest = Manifest::new(meta);
//! manifest.push("shard-00000.kts", &summary)?;
//! manifest.save("data/manifest.json")?;
//!
//! let manifest = Manifest::load("data/manifest.json")?;
//! let shards: Vec<Shard> = manifest.open_shards("data")?; // validated, checksums verified
//! let shard = &shards[0];
//! let doc = shard.document(1)?; // Document { tokens, loss_mask_spans, language: None }
//! assert_eq!(doc.tokens, &[5, 6, 7]);
//! let window: &[u32] = shard.tokens(2, 4)?; // global token offset 2, 4 tokens (crosses documents)
//! let which_doc = shard.document_at(4)?; // == 1
//! for doc in shard.documents() { let _ = doc.is_trained(0); }
//! # Ok(()) }
//! ```
//!
//! Zero-copy: [`Shard`] maps the file and hands out slices into the mapping. Nothing here panics
//! on bad files; every problem is a [`ShardError`] naming the file.

mod atomic;
pub mod error;
pub mod format;
pub mod language;
mod manifest;
mod reader;
mod writer;

pub use error::{ShardError, ShardErrorKind};
pub use format::MaskSpan;
pub use manifest::{Manifest, ManifestEntry, MANIFEST_FORMAT, MANIFEST_VERSION};
pub use reader::{Shard, Verification};
pub use writer::ShardWriter;

use std::path::PathBuf;

/// What a shard's tokens mean: the vocabulary they index and the tokenizer that produced them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShardMeta {
    /// Every token id is `< vocab_size` (checked on write and on open).
    pub vocab_size: u32,
    /// Identifies the tokenizer (e.g. a hash of its files); non-empty, at most 4096 bytes.
    pub tokenizer_fingerprint: String,
}

/// What [`ShardWriter::finish`] wrote; [`Manifest::push`] records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardSummary {
    /// Final path of the shard file.
    pub path: PathBuf,
    pub meta: ShardMeta,
    pub num_documents: u64,
    pub num_tokens: u64,
    pub num_mask_spans: u64,
    pub file_bytes: u64,
    /// CRC32 of the header, which holds the CRCs of all other sections: it fingerprints the file.
    pub header_crc32: u32,
}

/// One document, borrowed from the mapped shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Document<'a> {
    pub tokens: &'a [u32],
    /// Sorted, non-overlapping, non-empty half-open ranges of positions that ARE trained on.
    /// Empty means every token is trained on.
    pub loss_mask_spans: &'a [MaskSpan],
    /// The document's language ([`format::LANGUAGE_KOREAN`] or [`format::LANGUAGE_OTHER`]);
    /// `None` when the shard has no languages section.
    pub language: Option<u8>,
}

impl Document<'_> {
    /// Whether the token at `position` counts towards the loss (false past the end).
    pub fn is_trained(&self, position: usize) -> bool {
        let in_span = || {
            self.loss_mask_spans
                .iter()
                .any(|s| s.range().contains(&position))
        };
        position < self.tokens.len() && (self.loss_mask_spans.is_empty() || in_span())
    }
}
