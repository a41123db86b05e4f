//! kormo-tokenizer: byte-level BPE with the Qwen2 pre-tokenizer, as KORMo uses.
//!
//! - `pretokenize`: hand-written matcher of the Qwen2 split pattern (exact Unicode L/N
//!   classes from generated tables, `chars` + `unicode_tables`).
//! - `bpe`: the tokenizer (vocabulary, merges, special tokens, encode/decode with a cache).
//! - `nfc`: Unicode NFC normalization, for tokenizer.json files that declare it.
//! - `train`: BPE training from weighted sources with incremental pair counts.
//! - `chat`: KORMo's chat template: conversations to ids with per-token parts (loss masks), the
//!   Jinja form written into `tokenizer_config.json`.
//! - `hf`: reading and writing Hugging Face `tokenizer.json` / `tokenizer_config.json`.
//! - `progress`: progress bars on stderr (terminals only) and the logger that prints above them.

pub mod bpe;
pub mod bytelevel;
pub mod chars;
pub mod chat;
pub mod fxhash;
pub mod hf;
pub mod nfc;
pub mod pretokenize;
pub mod progress;
pub mod train;
#[rustfmt::skip] // generated; the sync test compares it byte for byte
pub mod unicode_tables;

pub use bpe::{Encoder, Normalizer, SpecialToken, Tokenizer, TokenizerError};
pub use pretokenize::{pre_tokens, Pattern};
