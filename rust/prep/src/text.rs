//! A run of input files of a text source (a chunk, see crate::pipeline) through the stages: filters and n-gram hashing (all
//! threads) -> Bloom filter decisions (in document order, one thread) -> quality model and
//! tokenization (all threads) -> the shard. Reading runs ahead on its own thread, and the
//! decisions for a batch run while the worker threads tokenize the batch before it, so the
//! sequential stages cost no wall time of their own while there is parallel work beside them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::ProgressBar;
use kormo_corpus::documents::read_documents;
use kormo_shards::{ShardMeta, ShardSummary, ShardWriter};
use kormo_tokenizer::Encoder;

use crate::batches::{par_map, read_ahead};
use crate::dedup::{dedup_document, hash_document, BloomFilter, DocumentNgrams};
use crate::filters::check;
use crate::pipeline::{PrepConfig, StageCounts};
use crate::quality::QualityModel;

/// What the stages of every file share.
pub(crate) struct TextStages<'a> {
    pub config: &'a PrepConfig,
    pub meta: &'a ShardMeta,
    pub quality: Option<&'a QualityModel>,
    pub bar: &'a ProgressBar,
}

/// A document after the filters: its language and n-grams, or the filter that removed it.
type Checked = Result<(&'static str, Option<DocumentNgrams>), &'static str>;

/// The documents of `files`, read one file after another as one stream (batches span files, so
/// a chunk of small files keeps every thread busy) -> one shard at `shard_path` (none if
/// nothing survives). `encoders` (one per worker thread) keep their caches from chunk to chunk.
/// A file that cannot be read to its end is an error and leaves no shard.
pub(crate) fn process_files(
    files: &[PathBuf],
    shard_path: &Path,
    stages: &TextStages,
    mut filter: Option<&mut BloomFilter>,
    encoders: &mut [Encoder],
    counts: &mut StageCounts,
) -> Result<Option<ShardSummary>, String> {
    let config = stages.config;
    let mut units = vec![(); encoders.len()];
    let mut writer: Option<ShardWriter> = None;
    std::thread::scope(|scope| {
        let bar = stages.bar.clone();
        let docs = files.iter().flat_map(|file| read_documents(file, &config.text_field));
        let batches =
            read_ahead(scope, docs, config.batch_documents, counts.malformed, move |text: &String| {
                bar.inc(text.len() as u64)
            });
        // Texts kept by dedup, awaiting tokenization while the next batch is decided.
        let mut pending: Vec<String> = Vec::new();
        for batch in batches {
            let batch = batch?;
            counts.malformed += batch.malformed;
            counts.documents_read += batch.items.len() as u64;
            counts.text_bytes_read += batch.items.iter().map(|t| t.len() as u64).sum::<u64>();
            let t = Instant::now();
            let dedup_on = filter.is_some();
            let checked: Vec<Checked> = par_map(&batch.items, &mut units, |_, text| {
                check(text, &config.filters).map(|passed| {
                    let ngrams = dedup_on.then(|| hash_document(text, &passed.tokens, &config.dedup));
                    (passed.language, ngrams)
                })
            });
            counts.seconds_filter_and_hash += t.elapsed().as_secs_f64();
            let (encoded, kept) = if pending.is_empty() {
                // Nothing to tokenize beside the decisions (a chunk's first batch).
                let kept = decide(batch.items, checked, filter.as_deref_mut(), config, counts);
                ((Vec::new(), 0.0), kept)
            } else {
                std::thread::scope(|inner| {
                    let tokenizing = inner.spawn(|| tokenize(&pending, stages, encoders));
                    let kept = decide(batch.items, checked, filter.as_deref_mut(), config, counts);
                    (tokenizing.join().expect("tokenizer thread panicked"), kept)
                })
            };
            counts.seconds_quality_and_tokenize += encoded.1;
            write(&mut writer, shard_path, stages.meta, &pending, encoded.0, counts)?;
            pending = kept;
        }
        let encoded = tokenize(&pending, stages, encoders);
        counts.seconds_quality_and_tokenize += encoded.1;
        write(&mut writer, shard_path, stages.meta, &pending, encoded.0, counts)
    })?;
    match writer {
        Some(w) => Ok(Some(w.finish().map_err(|e| e.to_string())?)),
        None => Ok(None),
    }
}

/// The filter verdicts and the Bloom filter decisions of a batch, in document order: the
/// texts to tokenize.
fn decide(
    batch: Vec<String>,
    checked: Vec<Checked>,
    mut filter: Option<&mut BloomFilter>,
    config: &PrepConfig,
    counts: &mut StageCounts,
) -> Vec<String> {
    let t = Instant::now();
    let mut kept = Vec::with_capacity(batch.len());
    for (text, result) in batch.into_iter().zip(checked) {
        match result {
            Err(reason) => *counts.filter_removed.entry(reason.to_owned()).or_insert(0) += 1,
            Ok((lang, ngrams)) => {
                *counts.languages.entry(lang.to_owned()).or_insert(0) += 1;
                match (ngrams, filter.as_deref_mut()) {
                    (Some(ngrams), Some(f)) => {
                        let outcome = dedup_document(&text, &ngrams, f, config.dedup.threshold);
                        counts.dedup_paragraphs += outcome.paragraphs as u64;
                        counts.dedup_paragraphs_removed += outcome.removed.len() as u64;
                        if outcome.emptied {
                            counts.dedup_documents_emptied += 1;
                        } else if !outcome.text.trim().is_empty() {
                            kept.push(outcome.text);
                        }
                    }
                    _ => kept.push(text),
                }
            }
        }
    }
    counts.seconds_dedup += t.elapsed().as_secs_f64();
    kept
}

/// Quality scores and token ids of `texts` (None: below the quality threshold), and the
/// seconds it took.
fn tokenize(texts: &[String], stages: &TextStages, encoders: &mut [Encoder]) -> (Vec<Option<Vec<u32>>>, f64) {
    let t = Instant::now();
    let threshold = stages.config.quality.threshold;
    let encoded = par_map(texts, encoders, |encoder, text| {
        if stages.quality.is_some_and(|m| m.predict(text) < threshold) {
            return None;
        }
        let mut ids = Vec::new();
        encoder.encode_ordinary(text, &mut ids);
        Some(ids)
    });
    (encoded, t.elapsed().as_secs_f64())
}

/// Appends the tokenized `texts` to the shard (created with the first document).
fn write(
    writer: &mut Option<ShardWriter>,
    shard_path: &Path,
    meta: &ShardMeta,
    texts: &[String],
    encoded: Vec<Option<Vec<u32>>>,
    counts: &mut StageCounts,
) -> Result<(), String> {
    let t = Instant::now();
    for (text, ids) in texts.iter().zip(encoded) {
        let Some(ids) = ids else {
            counts.quality_removed += 1;
            continue;
        };
        let w = match writer {
            Some(w) => w,
            None => writer.insert(ShardWriter::create(shard_path, meta.clone()).map_err(|e| e.to_string())?),
        };
        // The document's language (Korean when Hangul is >= 30% of its letters), for XLDA.
        let language = kormo_shards::language::classify(text);
        w.append_document_with_language(&ids, None, language).map_err(|e| e.to_string())?;
        counts.documents_written += 1;
        counts.text_bytes_written += text.len() as u64;
        counts.tokens_written += ids.len() as u64;
    }
    counts.seconds_write += t.elapsed().as_secs_f64();
    Ok(())
}
