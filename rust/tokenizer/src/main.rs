//! `kormo-tokenizer`: train, use and benchmark kormo's byte-level BPE tokenizer
//! (`kormo-tokenizer --help` and `kormo-tokenizer <command> --help` list every option).
//!
//! A PATH may be a file or a directory (all files below it, sorted; of a Hugging Face dataset
//! folder its data files); formats as kormo_corpus reads them (JSON lines and Parquet, plain,
//! gzip or zstd; HTML; blank-line separated text). Results go to stdout;
//! log lines to stderr (level by `RUST_LOG`, default `info`), and on a terminal progress bars
//! with rate and ETA.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use kormo_corpus::documents::read_documents;
use kormo_corpus::html::html_to_text;
use kormo_corpus::paths::expand_path;
use kormo_tokenizer::train::{count_documents, train, weighted_counts, TrainConfig, WordCounts};
use kormo_tokenizer::{hf, progress, Tokenizer};

/// Trains, applies and benchmarks kormo's byte-level BPE tokenizer (Hugging Face
/// tokenizer.json format).
#[derive(Parser)]
#[command(
    name = "kormo-tokenizer",
    disable_version_flag = true,
    after_help = "\
Examples:
  kormo-tokenizer train --source en=1.0:corpus/en --source ko=1.5:ko.jsonl --out tok --vocab-size 32000
  echo '안녕하세요' | kormo-tokenizer encode --tokenizer tok/tokenizer.json --json
  kormo-tokenizer bench --tokenizer tok/tokenizer.json --threads 8 corpus/en/part-0.jsonl
  kormo-tokenizer extract-html --out corpus/docs.txt site/"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Trains a tokenizer from weighted sources and writes DIR/tokenizer.json
    Train(TrainArgs),
    /// Encodes stdin text and prints the token ids
    Encode(EncodeArgs),
    /// Encode throughput per input file: one thread, then --threads threads
    Bench(BenchArgs),
    /// Extracts the plain text of HTML documents into one corpus file
    ExtractHtml(ExtractHtmlArgs),
}

#[derive(clap::Args)]
#[command(
    after_help = "Example:\n  kormo-tokenizer train --source en=1.0:corpus/en --source ko=1.5:ko.jsonl --out tok --vocab-size 32000"
)]
struct TrainArgs {
    /// A source: NAME=WEIGHT:PATH[,PATH...] (repeat for several; at least one)
    #[arg(long, value_name = "NAME=WEIGHT:PATHS")]
    source: Vec<String>,
    /// Output directory
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Vocabulary size, special tokens included
    #[arg(long, value_name = "N", default_value_t = 125_000)]
    vocab_size: usize,
    /// Pairs seen fewer times are not merged
    #[arg(long, value_name = "N", default_value_t = 2)]
    min_frequency: u64,
    /// Counting threads [default: all cores]
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Distinct pre-tokens kept per source (the rarest are pruned beyond it)
    #[arg(long, value_name = "N", default_value_t = 8_000_000)]
    max_words: usize,
    /// JSON field or Parquet column holding the text
    #[arg(long, value_name = "NAME", default_value = "text")]
    text_field: String,
}

#[derive(clap::Args)]
#[command(
    after_help = "Example:\n  echo '안녕하세요' | kormo-tokenizer encode --tokenizer tok/tokenizer.json --json"
)]
struct EncodeArgs {
    /// tokenizer.json
    #[arg(long, value_name = "FILE")]
    tokenizer: PathBuf,
    /// Print a JSON array instead of space-separated ids
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
#[command(
    after_help = "Example:\n  kormo-tokenizer bench --tokenizer tok/tokenizer.json --threads 8 corpus/en/part-0.jsonl"
)]
struct BenchArgs {
    /// tokenizer.json
    #[arg(long, value_name = "FILE")]
    tokenizer: PathBuf,
    /// Threads of the second measurement [default: all cores]
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Best of N runs
    #[arg(long, value_name = "N", default_value_t = 3)]
    repeats: usize,
    /// Input files (JSON lines or Parquet with a `text` field, HTML or text)
    #[arg(value_name = "FILE")]
    files: Vec<String>,
}

#[derive(clap::Args)]
#[command(after_help = "Example:\n  kormo-tokenizer extract-html --out corpus/docs.txt site/")]
struct ExtractHtmlArgs {
    /// The text file written
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Directories searched for .html/.htm files
    #[arg(value_name = "DIR")]
    dirs: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    progress::init_logging();
    let result = match cli.command {
        Cmd::Train(a) => cmd_train(a),
        Cmd::Encode(a) => cmd_encode(a),
        Cmd::Bench(a) => cmd_bench(a),
        Cmd::ExtractHtml(a) => cmd_extract_html(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kormo-tokenizer: {e}");
            ExitCode::FAILURE
        }
    }
}

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn cmd_train(a: TrainArgs) -> Result<(), String> {
    let out = a.out;
    let threads = a.threads.unwrap_or_else(default_threads);
    let text_field = a.text_field;
    let mut config = TrainConfig::kormo(a.vocab_size);
    config.min_frequency = a.min_frequency;
    config.progress = true;
    let sources = &a.source;
    if sources.is_empty() {
        return Err("train needs at least one --source NAME=WEIGHT:PATH[,PATH...]".into());
    }
    let started = Instant::now();
    let mut weighted = Vec::new();
    for spec in sources {
        let (name, rest) = spec
            .split_once('=')
            .ok_or(format!("--source {spec:?}: expected NAME=WEIGHT:PATHS"))?;
        let (weight, paths) = rest
            .split_once(':')
            .ok_or(format!("--source {spec:?}: expected NAME=WEIGHT:PATHS"))?;
        let weight: f64 = weight
            .parse()
            .map_err(|_| format!("--source {spec:?}: weight {weight:?} is not a number"))?;
        let mut files = Vec::new();
        for p in paths.split(',') {
            files.extend(expand_path(Path::new(p))?);
        }
        let counts = count_source(name, &files, &text_field, &config, threads, a.max_words)?;
        log::info!(
            "source {name}: {} files, {:.1} MB, {} distinct pre-tokens{}",
            files.len(),
            counts.bytes as f64 / 1e6,
            counts.counts.len(),
            if counts.pruned > 0 {
                format!(", {} rare ones pruned (--max-words)", counts.pruned)
            } else {
                String::new()
            }
        );
        if counts.bytes == 0 {
            return Err(format!("--source {name}: its {} files hold no text to train on (empty, or no `{text_field}` field in JSONL)", files.len()));
        }
        weighted.push((weight, counts));
    }
    let combined = weighted_counts(&weighted).map_err(|e| e.to_string())?;
    drop(weighted);
    let count_secs = started.elapsed().as_secs_f64();
    let merge_start = Instant::now();
    let tok = train(&combined, &config).map_err(|e| e.to_string())?;
    let merge_secs = merge_start.elapsed().as_secs_f64();
    hf::save(&tok, &out).map_err(|e| e.to_string())?;
    println!(
        "{{\"vocab_size\": {}, \"padded_vocab_size\": {}, \"merges\": {}, \"count_seconds\": {count_secs:.3}, \"merge_seconds\": {merge_secs:.3}, \"fingerprint\": \"{}\", \"out\": \"{}\"}}",
        tok.vocab_size(),
        tok.padded_vocab_size(128),
        tok.merges().len(),
        tok.fingerprint(),
        out.display()
    );
    Ok(())
}

/// Counts one source's pre-tokens, logging malformed inputs; a file that cannot be read to
/// its end (truncated or corrupt, a Parquet file without the text column) is an error, so no
/// tokenizer is trained on part of a source. On a terminal a bar shows the text bytes read
/// against the files' total size (JSON, markup and compression make it approximate), the rate
/// and the ETA.
fn count_source(
    name: &str,
    files: &[PathBuf],
    field: &str,
    config: &TrainConfig,
    threads: usize,
    max_words: usize,
) -> Result<WordCounts, String> {
    let total: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let bar = progress::bar(&format!("count {name}"), total, progress::Unit::Bytes);
    let mut malformed = 0u64;
    let mut fatal = None;
    let docs = files
        .iter()
        .flat_map(|f| read_documents(f, field))
        .map_while(|d| match d {
            Ok(text) => {
                bar.inc(text.len() as u64);
                Some(Some(text))
            }
            Err(e) if e.fatal => {
                fatal = Some(e);
                None
            }
            Err(e) => {
                malformed += 1;
                if malformed <= 10 {
                    log::warn!("skipped malformed input: {e}");
                }
                Some(None)
            }
        })
        .flatten();
    let counts = count_documents(docs, config.pattern, &config.specials, threads, max_words);
    bar.finish_and_clear();
    if let Some(e) = fatal {
        return Err(format!("--source {name}: {e}"));
    }
    if malformed > 0 {
        log::warn!("source {name}: {malformed} malformed inputs skipped");
    }
    Ok(counts)
}

fn cmd_encode(a: EncodeArgs) -> Result<(), String> {
    let tok = hf::load(&a.tokenizer).map_err(|e| e.to_string())?;
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| format!("stdin: {e}"))?;
    let ids = tok.encode(&text);
    let line = if a.json {
        serde_json::to_string(&ids).expect("ids serialize")
    } else {
        ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
    };
    writeln!(std::io::stdout(), "{line}").map_err(|e| e.to_string())
}

/// Encode throughput per input file: one thread, then `--threads` threads over its documents.
fn cmd_bench(a: BenchArgs) -> Result<(), String> {
    let tok: Tokenizer = hf::load(&a.tokenizer).map_err(|e| e.to_string())?;
    let threads = a.threads.unwrap_or_else(default_threads);
    let repeats = a.repeats;
    for file in &a.files {
        let docs: Vec<String> = read_documents(Path::new(file), "text")
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
        let bytes: usize = refs.iter().map(|d| d.len()).sum();
        let mut result = serde_json::json!({"file": file, "bytes": bytes});
        let mut thread_counts = vec![1, threads];
        thread_counts.dedup();
        for t in thread_counts {
            // Best of `repeats`, each with fresh encoders (cold caches), as a user would see.
            let mut best = f64::INFINITY;
            let mut tokens = 0;
            for _ in 0..repeats {
                let start = Instant::now();
                let out = tok.encode_batch(&refs, t);
                best = best.min(start.elapsed().as_secs_f64());
                tokens = out.iter().map(Vec::len).sum::<usize>();
            }
            let mb_per_s = (bytes as f64 / best / 1e6 * 100.0).round() / 100.0;
            result[format!("threads_{t}_mb_per_s")] = serde_json::json!(mb_per_s);
            result["tokens"] = serde_json::json!(tokens);
            result["bytes_per_token"] =
                serde_json::json!((bytes as f64 / tokens as f64 * 1000.0).round() / 1000.0);
        }
        println!("{result}");
    }
    Ok(())
}

fn cmd_extract_html(a: ExtractHtmlArgs) -> Result<(), String> {
    let out = a.out.display();
    let mut text = String::new();
    for dir in &a.dirs {
        for f in expand_path(dir)? {
            let name = f.to_string_lossy();
            if name.ends_with(".html") || name.ends_with(".htm") {
                let html = std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?;
                text.push_str(&html_to_text(&String::from_utf8_lossy(&html)));
                text.push('\n');
            }
        }
    }
    std::fs::write(&a.out, &text).map_err(|e| format!("{out}: {e}"))?;
    log::info!("{out}: {:.2} MB of text", text.len() as f64 / 1e6);
    Ok(())
}
