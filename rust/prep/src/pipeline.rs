//! The `prepare` pipeline: documents -> heuristic filters -> BFF dedup -> quality filter ->
//! tokenization (the text only: the trainer's packer adds `<|BOS|>` and `<|EOT|>` around every
//! document, with the ids of the run's tokenizer) -> kormo shards under `OUT/<source>/`, one
//! per chunk of input files (consecutive files of at least 64 MB together, see [`CHUNK_BYTES`]),
//! with a manifest per source, `OUT/report.json` (per-source, per-stage counts and timings).
//! Progress: on a terminal a bar (input bytes, files, rate, ETA); otherwise one `log` info line
//! per finished chunk, with the same figures.
//!
//! Order and determinism: sources in the given order, files sorted, documents in file
//! order, processed in batches that span the files of a chunk; the pure per-document work (filters + n-gram hashing, then
//! quality scoring + tokenization) runs on all threads, the Bloom filter decisions run
//! sequentially in document order. The output is the same for any thread count.
//!
//! Resuming: when a chunk is done, its shard, the source manifest, the Bloom filter and
//! `OUT/state.json` (completed files and counts) are written, state last and atomically
//! ([`save_state`]); a `--max-files` stop ends a chunk early. A rerun with the same settings
//! skips the completed files and continues with the saved filter, so an interrupted run
//! produces the documents an uninterrupted one would, in the same order (its shards may split
//! them at other files). A rerun with different settings (config, tokenizer, sources) into the
//! same directory is refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use kormo_shards::{Manifest, ShardMeta};
use kormo_tokenizer::{hf, progress, Tokenizer};
use serde::{Deserialize, Serialize};

use crate::chat::ChatSourceConfig;
use crate::dedup::{BloomFilter, DedupConfig};
use crate::filters::FilterConfig;
use crate::quality::{QualityConfig, QualityModel};
use crate::text::TextStages;

/// The prep config file (TOML); every key has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrepConfig {
    /// tokenizer.json to tokenize with (required, here or via --tokenizer).
    pub tokenizer: String,
    /// JSONL field holding the text.
    pub text_field: String,
    /// Worker threads; 0 = all cores.
    pub threads: usize,
    /// Documents per batch (parallel work unit).
    pub batch_documents: usize,
    pub filters: FilterConfig,
    pub dedup: DedupConfig,
    pub quality: QualityConfig,
    /// Sources read as conversations (`[chat.<source>]`, crate::chat) instead of plain text.
    pub chat: BTreeMap<String, ChatSourceConfig>,
}

impl Default for PrepConfig {
    fn default() -> Self {
        PrepConfig {
            tokenizer: String::new(),
            text_field: "text".into(),
            threads: 0,
            batch_documents: 512,
            filters: FilterConfig::default(),
            dedup: DedupConfig::default(),
            quality: QualityConfig::default(),
            chat: BTreeMap::new(),
        }
    }
}

impl PrepConfig {
    /// Reads a TOML config; errors name the file and key.
    pub fn load(path: &Path) -> Result<PrepConfig, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let config: PrepConfig =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        config
            .validate()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), String> {
        self.filters.validate()?;
        self.dedup.validate()?;
        if !(0.0..=1.0).contains(&self.quality.threshold) {
            return Err(format!(
                "quality.threshold = {} is not in [0, 1]",
                self.quality.threshold
            ));
        }
        if self.batch_documents == 0 {
            return Err("batch_documents must be positive".into());
        }
        Ok(())
    }

    fn threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }
}

/// One named input source (e.g. "ko-web") and its files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub name: String,
    pub files: Vec<PathBuf>,
}

/// Per-source counts of every stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageCounts {
    pub files: u64,
    pub bytes_read: u64,
    pub documents_read: u64,
    /// Bytes of document text read (after decompression, Parquet decoding and HTML
    /// extraction): the raw text the stages see.
    #[serde(default)]
    pub text_bytes_read: u64,
    pub malformed: u64,
    /// Removals by filter reason.
    pub filter_removed: BTreeMap<String, u64>,
    /// Documents passing the filters, by detected language.
    pub languages: BTreeMap<String, u64>,
    pub dedup_paragraphs: u64,
    pub dedup_paragraphs_removed: u64,
    pub dedup_documents_emptied: u64,
    pub quality_removed: u64,
    pub documents_written: u64,
    pub text_bytes_written: u64,
    pub tokens_written: u64,
    /// Wall time per stage, seconds.
    pub seconds_filter_and_hash: f64,
    pub seconds_dedup: f64,
    pub seconds_quality_and_tokenize: f64,
    pub seconds_write: f64,
    /// Conversations, turns, trained and masked tokens of a chat source (crate::chat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat: Option<crate::chat::ChatCounts>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct State {
    settings_fingerprint: String,
    /// Completed (source index, file index), in processing order.
    completed: Vec<(usize, usize)>,
    counts: BTreeMap<String, StageCounts>,
}

/// Test hook and CLI option: stop after this many input files (simulates an interruption).
#[derive(Debug, Clone, Copy, Default)]
pub struct RunLimits {
    pub max_files: Option<usize>,
}

/// Input bytes per chunk: consecutive files of a source are processed as one stream into one
/// shard until their input reaches this or the Bloom filter's size, whichever is larger (a
/// file larger than that is a chunk of its own). Batches then span small files, so a corpus of
/// 10 KB HTML pages keeps every thread busy and writes one shard, not thousands; and the
/// resumable state is written once per chunk, so the 120 MB filter is rewritten after 64 MB of
/// input or more, not after every file.
const CHUNK_BYTES: u64 = 64 << 20;

/// The files of the next chunk: from the front of `files` (index, size), until their sizes
/// reach `bytes` or `max_files` files are taken (at least one file).
fn next_chunk(files: &[(usize, u64)], bytes: u64, max_files: usize) -> &[(usize, u64)] {
    let mut total = 0;
    let mut n = 0;
    while n < files.len() && n < max_files.max(1) && (n == 0 || total < bytes) {
        total += files[n].1;
        n += 1;
    }
    &files[..n]
}

/// Writes the resumable state: the source's manifest, the filter and (last, atomically)
/// `state.json`, which lists exactly the files whose shards, manifest entries and n-grams the
/// saved files hold. An interruption loses only the chunk in progress, which a rerun redoes.
fn save_state(
    manifest: (&Manifest, &Path),
    filter: Option<&BloomFilter>,
    bloom_path: &Path,
    state: &State,
    state_path: &Path,
) -> Result<(), String> {
    manifest.0.save(manifest.1).map_err(|e| e.to_string())?;
    if let Some(f) = filter {
        let tmp = bloom_path.with_extension("bloom.tmp");
        f.save(&tmp)?;
        std::fs::rename(&tmp, bloom_path).map_err(|e| format!("{}: {e}", bloom_path.display()))?;
    }
    let text = serde_json::to_string_pretty(state).expect("state serializes");
    atomic_write(state_path, text.as_bytes())
}

fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let err = |e: std::io::Error, p: &Path| format!("{}: {e}", p.display());
    {
        let mut f = std::fs::File::create(&tmp).map_err(|e| err(e, &tmp))?;
        std::io::Write::write_all(&mut f, bytes).map_err(|e| err(e, &tmp))?;
        f.sync_all().map_err(|e| err(e, &tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| err(e, path))
}

/// Runs the pipeline; returns the per-source counts (also in OUT/report.json).
pub fn run(
    config: &PrepConfig,
    sources: &[Source],
    out: &Path,
    limits: RunLimits,
) -> Result<BTreeMap<String, StageCounts>, String> {
    config.validate()?;
    if config.tokenizer.is_empty() {
        return Err("no tokenizer: set `tokenizer` in the config or pass --tokenizer".into());
    }
    let mut names = std::collections::HashSet::new();
    for s in sources {
        if s.name.is_empty()
            || !s
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "source name {:?}: use letters, digits, '-' and '_'",
                s.name
            ));
        }
        if !names.insert(&s.name) {
            return Err(format!("source {:?} is given twice", s.name));
        }
    }
    if let Some(name) = config.chat.keys().find(|name| !names.contains(name)) {
        return Err(format!("chat.{name}: no source {name:?} is given (--source {name}=PATH)"));
    }
    let tokenizer: Tokenizer = hf::load(Path::new(&config.tokenizer)).map_err(|e| e.to_string())?;
    if !config.chat.is_empty() {
        kormo_tokenizer::chat::ChatTokens::find(&tokenizer)
            .map_err(|e| format!("{}: {e}, which chat sources need", config.tokenizer))?;
    }
    let quality = if config.quality.model.is_empty() {
        None
    } else {
        Some(QualityModel::load(Path::new(&config.quality.model))?)
    };
    let meta = ShardMeta {
        vocab_size: tokenizer.padded_vocab_size(128) as u32,
        tokenizer_fingerprint: tokenizer.fingerprint(),
    };

    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    // Everything that determines the output: config, inputs, tokenizer and quality model.
    let quality_digest = match &quality {
        None => String::new(),
        Some(_) => {
            let bytes = std::fs::read(&config.quality.model)
                .map_err(|e| format!("{}: {e}", config.quality.model))?;
            format!("{:016x}", fnv64(&bytes))
        }
    };
    let settings = serde_json::json!({
        "config": config,
        "sources": sources,
        "tokenizer": meta.tokenizer_fingerprint,
        "quality_model": quality_digest,
    });
    let settings_fingerprint = format!("{:016x}", fnv64(settings.to_string().as_bytes()));
    let state_path = out.join("state.json");
    let bloom_path = out.join("dedup.bloom");
    let (bits, hashes) = config.dedup.filter_shape();
    let mut state = State {
        settings_fingerprint: settings_fingerprint.clone(),
        ..State::default()
    };
    let mut filter = None;
    if state_path.exists() {
        let text = std::fs::read_to_string(&state_path)
            .map_err(|e| format!("{}: {e}", state_path.display()))?;
        state =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", state_path.display()))?;
        if state.settings_fingerprint != settings_fingerprint {
            return Err(format!(
                "{} holds a run with other settings (config, tokenizer or sources); use another --out",
                out.display()
            ));
        }
        log::info!(
            "resuming: {} input files already done",
            state.completed.len()
        );
        if config.dedup.enabled && !state.completed.is_empty() {
            filter = Some(BloomFilter::load(&bloom_path)?);
        }
    }
    if config.dedup.enabled {
        log::info!(
            "dedup Bloom filter: {:.1} MB, {hashes} hashes (expected {} n-grams, false-positive rate {})",
            bits as f64 / 8e6,
            config.dedup.expected_ngrams,
            config.dedup.false_positive_rate
        );
        filter.get_or_insert_with(|| BloomFilter::new(bits, hashes));
    }

    let threads = config.threads();
    let mut progress = Progress::new(sources);
    let bar = progress.bar.clone();
    let stages = TextStages { config, meta: &meta, quality: quality.as_ref(), bar: &bar };
    let mut workers = Workers {
        stages,
        tokenizer: &tokenizer,
        threads,
        // One encoder per worker thread, kept for the whole run (their caches stay warm).
        encoders: (0..threads).map(|_| tokenizer.encoder()).collect(),
        filter,
    };
    let chunk_bytes = CHUNK_BYTES.max(if config.dedup.enabled { bits / 8 } else { 0 });
    let paths = Paths { out, state: &state_path, bloom: &bloom_path };
    for (si, source) in sources.iter().enumerate() {
        let finished = run_source(si, source, &mut workers, &mut state, &mut progress, &paths, chunk_bytes, limits)?;
        if !finished {
            progress.bar.finish_and_clear();
            log::info!("stopping after {} files (--max-files)", progress.files_this_run);
            return Ok(state.counts);
        }
    }
    progress.bar.finish_and_clear();
    let seconds = progress.started.elapsed().as_secs_f64();
    // Rates of this run: of the input files as stored, and of the document text they hold.
    let report = serde_json::json!({"sources": state.counts, "seconds": seconds,
                                    "megabytes_per_second": progress.bytes_this_run as f64 / 1e6 / seconds.max(1e-9),
                                    "text_megabytes_per_second": progress.text_bytes_this_run as f64 / 1e6 / seconds.max(1e-9)});
    atomic_write(
        &out.join("report.json"),
        serde_json::to_string_pretty(&report)
            .expect("report serializes")
            .as_bytes(),
    )?;
    Ok(state.counts)
}

/// What every chunk's stages share: the text stages, the tokenizer and threads of chat
/// sources, the per-thread encoders and the dedup filter.
struct Workers<'a> {
    stages: TextStages<'a>,
    tokenizer: &'a Tokenizer,
    threads: usize,
    encoders: Vec<kormo_tokenizer::Encoder<'a>>,
    filter: Option<BloomFilter>,
}

/// Where a run's files go.
struct Paths<'a> {
    out: &'a Path,
    state: &'a Path,
    bloom: &'a Path,
}

/// The files of one source not yet done, chunk by chunk, each chunk's shard, manifest entry
/// and resumable state written when it is done. `false`: stopped at the `--max-files` limit.
#[allow(clippy::too_many_arguments)]
fn run_source(
    si: usize,
    source: &Source,
    workers: &mut Workers,
    state: &mut State,
    progress: &mut Progress,
    paths: &Paths,
    chunk_bytes: u64,
    limits: RunLimits,
) -> Result<bool, String> {
    let config = workers.stages.config;
    let dir = paths.out.join(&source.name);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let manifest_path = dir.join("manifest.json");
    let done: std::collections::HashSet<usize> =
        state.completed.iter().filter(|&&(s, _)| s == si).map(|&(_, f)| f).collect();
    let mut manifest = if manifest_path.exists() && !done.is_empty() {
        Manifest::load(&manifest_path).map_err(|e| e.to_string())?
    } else {
        Manifest::new(workers.stages.meta.clone())
    };
    let mut todo = Vec::new();
    for (fi, file) in source.files.iter().enumerate() {
        let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        match done.contains(&fi) {
            true => progress.skipped(size),
            false => todo.push((fi, size)),
        }
    }
    let mut rest = &todo[..];
    while !rest.is_empty() {
        let allowed = limits.max_files.map_or(usize::MAX, |m| m.saturating_sub(progress.files_this_run));
        if allowed == 0 {
            return Ok(false);
        }
        let chunk = next_chunk(rest, chunk_bytes, allowed);
        rest = &rest[chunk.len()..];
        let files: Vec<PathBuf> = chunk.iter().map(|&(fi, _)| source.files[fi].clone()).collect();
        let shard_name = format!("{}-{:05}.kts", source.name, chunk[0].0);
        let shard_path = dir.join(&shard_name);
        let counts = state.counts.entry(source.name.clone()).or_default();
        let text_before = counts.text_bytes_read;
        let written = match config.chat.get(&source.name) {
            Some(&chat) => crate::chat::process_files(
                &files,
                &shard_path,
                chat,
                config.batch_documents,
                workers.stages.meta,
                workers.tokenizer,
                workers.threads,
                counts,
            )?,
            None => crate::text::process_files(
                &files,
                &shard_path,
                &workers.stages,
                workers.filter.as_mut(),
                &mut workers.encoders,
                counts,
            )?,
        };
        let bytes: u64 = chunk.iter().map(|&(_, size)| size).sum();
        counts.files += chunk.len() as u64;
        counts.bytes_read += bytes;
        let text_bytes = counts.text_bytes_read - text_before;
        if let Some(summary) = written {
            manifest.push(shard_name, &summary).map_err(|e| e.to_string())?;
        }
        state.completed.extend(chunk.iter().map(|&(fi, _)| (si, fi)));
        save_state((&manifest, &manifest_path), workers.filter.as_ref(), paths.bloom, state, paths.state)?;
        let documents = state.counts.values().map(|c| c.documents_read).sum();
        progress.done(chunk.len(), bytes, state.completed.len(), documents, text_bytes);
    }
    // A source with nothing left to do still gets its (possibly empty) manifest.
    if todo.is_empty() {
        manifest.save(&manifest_path).map_err(|e| e.to_string())?;
    }
    Ok(true)
}

/// A run's progress: the bar (drawn on a terminal) and, when none is drawn, one log line per
/// chunk with files, documents, MB, rate and ETA.
struct Progress {
    bar: indicatif::ProgressBar,
    started: Instant,
    total_files: usize,
    total_bytes: u64,
    bytes_done: u64,
    bytes_this_run: u64,
    text_bytes_this_run: u64,
    files_this_run: usize,
}

impl Progress {
    fn new(sources: &[Source]) -> Progress {
        let total_bytes: u64 = sources
            .iter()
            .flat_map(|s| &s.files)
            .filter_map(|f| std::fs::metadata(f).ok())
            .map(|m| m.len())
            .sum();
        Progress {
            bar: progress::bar("prep", total_bytes, progress::Unit::Bytes),
            started: Instant::now(),
            total_files: sources.iter().map(|s| s.files.len()).sum(),
            total_bytes,
            bytes_done: 0,
            bytes_this_run: 0,
            text_bytes_this_run: 0,
            files_this_run: 0,
        }
    }

    /// A file done by an earlier run.
    fn skipped(&mut self, bytes: u64) {
        self.bytes_done += bytes;
        self.bar.set_position(self.bytes_done);
        self.bar.reset_eta();
    }

    /// A chunk of `files` files, `bytes` input bytes and `text_bytes` bytes of document text
    /// done; `completed` files and `documents` documents are done in all.
    fn done(&mut self, files: usize, bytes: u64, completed: usize, documents: u64, text_bytes: u64) {
        self.text_bytes_this_run += text_bytes;
        self.files_this_run += files;
        self.bytes_this_run += bytes;
        self.bytes_done += bytes;
        self.bar.set_position(self.bytes_done);
        self.bar.set_message(format!("{completed}/{} files, {documents} documents", self.total_files));
        if !progress::drawn() {
            let seconds = self.started.elapsed().as_secs_f64().max(1e-9);
            let rate = self.bytes_this_run as f64 / seconds;
            log::info!(
                "prep: {completed}/{} files, {documents} documents, {:.1}/{:.1} MB, {:.2} MB/s (text {:.2} MB/s), ETA {:.0}s",
                self.total_files,
                self.bytes_done as f64 / 1e6,
                self.total_bytes as f64 / 1e6,
                rate / 1e6,
                self.text_bytes_this_run as f64 / seconds / 1e6,
                self.total_bytes.saturating_sub(self.bytes_done) as f64 / rate.max(1.0)
            );
        }
    }
}

fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}
