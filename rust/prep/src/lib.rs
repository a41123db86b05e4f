//! kormo-prep: turns raw Korean/English text into tokenized training shards, following
//! KORMo's pipeline: heuristic filters -> BFF Bloom-filter paragraph dedup -> fastText-style
//! quality classifier -> tokenization into kormo-shards.
//!
//! - `words`: word splitting shared by all stages.
//! - `filters`: heuristic filters, language identification, broken-encoding detection.
//! - `dedup`: BFF Bloom-filter paragraph dedup ("old-both").
//! - `dedup_run`: `prepare dedup`, the dedup stage alone: kept text and per-document decisions.
//! - `quality`: fastText-style linear quality classifier over hashed word and char n-grams.
//! - `chat`: chat and reasoning datasets (messages, ShareGPT, prompt/response) to shards with
//!   loss-mask spans, rendered with KORMo's chat template.
//! - `text`: one file of a text source through filters, dedup, quality and tokenization.
//! - `batches`: reading ahead on a thread of its own, and ordered maps over worker threads.
//! - `pipeline`: the `prepare` run (config, sources, shards, manifests, report, resume).

pub mod batches;
pub mod chat;
pub mod dedup;
pub mod dedup_run;
pub mod filters;
pub mod pipeline;
pub mod quality;
pub mod text;
pub mod words;
