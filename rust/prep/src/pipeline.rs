//! The `prepare` pipeline: documents -> heuristic filters -> BFF dedup -> quality filter ->
//! tokenization (the text only: the trainer's packer adds `<|BOS|>` and `<|EOT|>` around every
//! document, with the ids of the run's tokenizer) -> one kormo shard per input file, under
//! `OUT/<source>/`, with a manifest per source, `OUT/report.json` (per-source, per-stage
//! counts and timings). Progress: on a terminal a bar (input bytes, files, rate, ETA); otherwise
//! one `log` info line per finished input file, with the same figures.
//!
//! Order and determinism: sources in the given order, files sorted, documents in file
//! order, processed in batches; the pure per-document work (filters + n-gram hashing, then
//! quality scoring + tokenization) runs on all threads, the Bloom filter decisions run
//! sequentially in document order. The output is the same for any thread count.
//!
//! Resuming: each input file's shard is written when the file is done; the source manifest, the
//! Bloom filter and `OUT/state.json` (completed files and counts) are written together, state
//! last and atomically, every 64 MB of input (or the filter's size) or 30 s, at the end of each
//! source and at a `--max-files` stop (see `Saves`). A rerun with the same settings skips the
//! completed files and continues with the saved filter, so an interrupted run produces what an
//! uninterrupted one would. A rerun with
//! different settings (config, tokenizer, sources) into the same directory is refused.

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

/// When the resumable state is written: the source's manifest, the Bloom filter and
/// `state.json`, together, after the file that brings the input since the last write to
/// [`SAVE_EVERY_BYTES`] or the filter's size, whichever is larger (so the filter is not
/// rewritten for every small file: thousands of 10 KB HTML pages would spend their time writing
/// a 120 MB filter), or once [`SAVE_EVERY`] has passed; and at the end of each source and at a
/// `--max-files` stop. The saved state lists exactly the files whose shards, manifest entries and
/// n-grams the saved files hold, so an interruption between two writes loses only the files
/// since the last one, which a rerun redoes.
struct Saves {
    every_bytes: u64,
    bytes_since: u64,
    last: Instant,
}

/// See [`Saves`].
const SAVE_EVERY_BYTES: u64 = 64 << 20;
const SAVE_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

impl Saves {
    fn new(filter_bytes: u64) -> Saves {
        Saves { every_bytes: filter_bytes.max(SAVE_EVERY_BYTES), bytes_since: 0, last: Instant::now() }
    }

    /// An input file of `bytes` was processed.
    fn note(&mut self, bytes: u64) {
        self.bytes_since += bytes;
    }

    fn due(&self) -> bool {
        self.bytes_since >= self.every_bytes || self.last.elapsed() >= SAVE_EVERY
    }

    /// Writes the manifest, the filter and (last, atomically) the state.
    fn save(
        &mut self,
        manifest: &Manifest,
        manifest_path: &Path,
        filter: Option<&BloomFilter>,
        bloom_path: &Path,
        state: &State,
        state_path: &Path,
    ) -> Result<(), String> {
        manifest.save(manifest_path).map_err(|e| e.to_string())?;
        if let Some(f) = filter {
            let tmp = bloom_path.with_extension("bloom.tmp");
            f.save(&tmp)?;
            std::fs::rename(&tmp, bloom_path).map_err(|e| format!("{}: {e}", bloom_path.display()))?;
        }
        let text = serde_json::to_string_pretty(state).expect("state serializes");
        atomic_write(state_path, text.as_bytes())?;
        self.bytes_since = 0;
        self.last = Instant::now();
        Ok(())
    }
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
    let total_files: usize = sources.iter().map(|s| s.files.len()).sum();
    let total_bytes: u64 = sources
        .iter()
        .flat_map(|s| &s.files)
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let started = Instant::now();
    let mut bytes_this_run = 0u64;
    let mut bytes_done: u64 = 0;
    let mut files_this_run = 0usize;
    let bar = progress::bar("prep", total_bytes, progress::Unit::Bytes);
    let stages = TextStages { config, meta: &meta, quality: quality.as_ref(), bar: &bar };
    // One encoder per worker thread, kept for the whole run (their caches stay warm).
    let mut encoders: Vec<_> = (0..threads).map(|_| tokenizer.encoder()).collect();
    let mut saves = Saves::new(if config.dedup.enabled { bits / 8 } else { 0 });
    for (si, source) in sources.iter().enumerate() {
        let dir = out.join(&source.name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let manifest_path = dir.join("manifest.json");
        let mut manifest =
            if manifest_path.exists() && state.completed.iter().any(|&(s, _)| s == si) {
                Manifest::load(&manifest_path).map_err(|e| e.to_string())?
            } else {
                Manifest::new(meta.clone())
            };
        for (fi, file) in source.files.iter().enumerate() {
            let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
            if state.completed.contains(&(si, fi)) {
                bytes_done += size;
                bar.set_position(bytes_done);
                bar.reset_eta();
                continue;
            }
            if limits.max_files.is_some_and(|m| files_this_run >= m) {
                saves.save(&manifest, &manifest_path, filter.as_ref(), &bloom_path, &state, &state_path)?;
                bar.finish_and_clear();
                log::info!("stopping after {files_this_run} files (--max-files)");
                return Ok(state.counts);
            }
            let counts = state.counts.entry(source.name.clone()).or_default();
            let shard_name = format!("{}-{fi:05}.kts", source.name);
            let shard_path = dir.join(&shard_name);
            let written = match config.chat.get(&source.name) {
                Some(&chat) => crate::chat::process_file(
                    file,
                    &shard_path,
                    chat,
                    config.batch_documents,
                    &meta,
                    &tokenizer,
                    threads,
                    counts,
                )?,
                None => crate::text::process_file(
                    file,
                    &shard_path,
                    &stages,
                    filter.as_mut(),
                    &mut encoders,
                    counts,
                )?,
            };
            counts.files += 1;
            counts.bytes_read += size;
            if let Some(summary) = written {
                manifest
                    .push(shard_name, &summary)
                    .map_err(|e| e.to_string())?;
            }
            state.completed.push((si, fi));
            saves.note(size);
            if saves.due() {
                saves.save(&manifest, &manifest_path, filter.as_ref(), &bloom_path, &state, &state_path)?;
            }
            files_this_run += 1;
            bytes_this_run += size;
            bytes_done += size;
            bar.set_position(bytes_done);
            bar.set_message(format!("{}/{total_files} files", state.completed.len()));
            if !progress::drawn() {
                let rate = bytes_this_run as f64 / started.elapsed().as_secs_f64().max(1e-9);
                log::info!(
                    "prep: {}/{total_files} files, {:.1}/{:.1} MB, {:.2} MB/s, ETA {:.0}s",
                    state.completed.len(),
                    bytes_done as f64 / 1e6,
                    total_bytes as f64 / 1e6,
                    rate / 1e6,
                    total_bytes.saturating_sub(bytes_done) as f64 / rate.max(1.0)
                );
            }
        }
        saves.save(&manifest, &manifest_path, filter.as_ref(), &bloom_path, &state, &state_path)?;
    }
    bar.finish_and_clear();
    let report = serde_json::json!({"sources": state.counts, "seconds": started.elapsed().as_secs_f64(),
                                    "megabytes_per_second": bytes_this_run as f64 / 1e6 / started.elapsed().as_secs_f64().max(1e-9)});
    atomic_write(
        &out.join("report.json"),
        serde_json::to_string_pretty(&report)
            .expect("report serializes")
            .as_bytes(),
    )?;
    Ok(state.counts)
}

fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}
