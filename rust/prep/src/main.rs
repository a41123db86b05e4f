//! `prepare`: kormo's data preparation CLI (pipeline in kormo_prep::pipeline); `prepare --help`
//! and `prepare <command> --help` describe every option.
//!
//! A PATH is a file or a directory (every file below it); formats as in
//! kormo_tokenizer::documents (JSONL with a text field, HTML, blank-line separated text).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kormo_prep::dedup_run::{run_dedup, DedupRun};
use kormo_prep::pipeline::{run, PrepConfig, RunLimits, Source};
use kormo_prep::quality::{QualityModel, TrainSettings};
use kormo_corpus::documents::read_documents;
use kormo_corpus::paths::expand_path;
use kormo_tokenizer::progress;

/// Prepares training data: cleans, filters and deduplicates documents, tokenizes them into
/// shards, and trains/applies the document quality classifier; or runs dedup alone.
#[derive(Parser)]
#[command(name = "prepare", disable_version_flag = true, after_help = "\
Examples:
  prepare run --source web=raw/web --source code=a.jsonl,b.jsonl --out prepared --threads 8
  prepare dedup --source web=raw/web --out deduped --expected-ngrams 50000000 --gzip
  prepare quality-train --positive good/ --negative spam/ --out quality.kqc
  prepare quality-predict --model quality.kqc docs.jsonl")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs the pipeline over named sources and writes shards and report.json to --out
    Run(RunArgs),
    /// Runs BFF dedup alone (old-both): kept text and per-document decisions per source
    Dedup(DedupArgs),
    /// Trains the quality classifier on positive and negative documents
    QualityTrain(QualityTrainArgs),
    /// Prints one JSON line {"file", "document", "score"} per document
    QualityPredict(QualityPredictArgs),
}

#[derive(clap::Args)]
#[command(after_help = "Example:\n  prepare run --source web=raw/web --source code=a.jsonl,b.jsonl --out prepared --threads 8")]
struct RunArgs {
    /// A source: NAME=PATH[,PATH...] (repeat for several; at least one)
    #[arg(long, value_name = "NAME=PATHS")]
    source: Vec<String>,
    /// Output directory
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Pipeline config (TOML) [default: built-in defaults]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Tokenizer file (overrides the config's)
    #[arg(long, value_name = "FILE")]
    tokenizer: Option<String>,
    /// Worker threads [default: the config's `threads`; 0 or unset: all cores]
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Stop after N input files (an interrupted run; rerunning the command continues it)
    #[arg(long, value_name = "N")]
    max_files: Option<usize>,
}

#[derive(clap::Args)]
#[command(after_help = "\
Writes to --out, per source NAME: NAME.jsonl (or NAME.jsonl.gz with --gzip), one {\"text\": ...}
line per document with text left; NAME.decisions.jsonl, one line per document read (doc, file,
file_doc, paragraphs, removed, removed_spans, ngrams, contained, emptied, kept); and report.json.
Settings: the config's [dedup] table (and text_field, threads, batch_documents), then the
options below. With --threshold 1 nothing is removed (a conversion of any input to JSONL).

Example:
  prepare dedup --source web=raw/web --out deduped --expected-ngrams 50000000 \\
      --false-positive-rate 1e-6 --threads 4 --gzip")]
struct DedupArgs {
    /// A source: NAME=PATH[,PATH...] (repeat for several; at least one)
    #[arg(long, value_name = "NAME=PATHS")]
    source: Vec<String>,
    /// Output directory
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Pipeline config (TOML; its [dedup] table is used) [default: built-in defaults]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Worker threads for hashing [default: the config's `threads`; 0 or unset: all cores]
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// N-gram size in tokens [default: dedup.ngram_size, 13]
    #[arg(long, value_name = "N")]
    ngram_size: Option<usize>,
    /// Fewest tokens of a paragraph that is one short n-gram [default: dedup.min_ngram_size, 13]
    #[arg(long, value_name = "N")]
    min_ngram_size: Option<usize>,
    /// Share of known n-grams above which a paragraph / document is removed [default: 0.8]
    #[arg(long, value_name = "X")]
    threshold: Option<f64>,
    /// Expected distinct n-grams (sizes the filter) [default: dedup.expected_ngrams]
    #[arg(long, value_name = "N")]
    expected_ngrams: Option<u64>,
    /// Per-n-gram false-positive rate [default: dedup.false_positive_rate, 0.01]
    #[arg(long, value_name = "P")]
    false_positive_rate: Option<f64>,
    /// Filter size in bytes (overrides the expected n-grams and rate)
    #[arg(long, value_name = "BYTES")]
    filter_bytes: Option<u64>,
    /// JSONL field (Parquet column) with the text [default: the config's text_field]
    #[arg(long, value_name = "NAME")]
    text_field: Option<String>,
    /// Write the kept text as NAME.jsonl.gz
    #[arg(long)]
    gzip: bool,
}

#[derive(clap::Args)]
#[command(after_help = "Example:\n  prepare quality-train --positive good/ --negative spam/ --out quality.kqc")]
struct QualityTrainArgs {
    /// Good documents: PATH[,PATH...]
    #[arg(long, value_name = "PATHS")]
    positive: String,
    /// Bad documents: PATH[,PATH...]
    #[arg(long, value_name = "PATHS")]
    negative: String,
    /// Where the model is written
    #[arg(long, value_name = "MODEL")]
    out: PathBuf,
    #[arg(long, value_name = "N", default_value_t = TrainSettings::default().epochs)]
    epochs: usize,
    /// Embedding dimension
    #[arg(long, value_name = "N", default_value_t = TrainSettings::default().dim)]
    dim: usize,
    /// Hashed n-gram buckets
    #[arg(long, value_name = "N", default_value_t = TrainSettings::default().buckets)]
    buckets: usize,
    #[arg(long, value_name = "RATE", default_value_t = TrainSettings::default().learning_rate)]
    learning_rate: f32,
    #[arg(long, value_name = "N", default_value_t = TrainSettings::default().seed)]
    seed: u64,
    /// JSONL field that holds the text
    #[arg(long, value_name = "NAME", default_value = "text")]
    text_field: String,
}

#[derive(clap::Args)]
#[command(after_help = "Example:\n  prepare quality-predict --model quality.kqc docs.jsonl")]
struct QualityPredictArgs {
    /// A model written by quality-train
    #[arg(long, value_name = "MODEL")]
    model: PathBuf,
    /// JSONL field that holds the text
    #[arg(long, value_name = "NAME", default_value = "text")]
    text_field: String,
    /// Files or directories to score
    #[arg(value_name = "PATH")]
    paths: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    progress::init_logging();
    let result = match cli.command {
        Cmd::Run(a) => cmd_run(a),
        Cmd::Dedup(a) => cmd_dedup(a),
        Cmd::QualityTrain(a) => cmd_quality_train(a),
        Cmd::QualityPredict(a) => cmd_quality_predict(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("prepare: {e}");
            ExitCode::FAILURE
        }
    }
}

fn files_of(list: &str) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for p in list.split(',') {
        files.extend(expand_path(Path::new(p))?);
    }
    Ok(files)
}

fn sources_of(specs: &[String]) -> Result<Vec<Source>, String> {
    let mut sources = Vec::new();
    for spec in specs {
        let (name, paths) = spec
            .split_once('=')
            .ok_or(format!("--source {spec:?}: expected NAME=PATH[,PATH...]"))?;
        sources.push(Source {
            name: name.to_owned(),
            files: files_of(paths)?,
        });
    }
    if sources.is_empty() {
        return Err("needs at least one --source NAME=PATH[,PATH...]".into());
    }
    Ok(sources)
}

fn cmd_dedup(a: DedupArgs) -> Result<(), String> {
    let config = match &a.config {
        Some(path) => PrepConfig::load(path)?,
        None => PrepConfig::default(),
    };
    let mut dedup = config.dedup.clone();
    dedup.ngram_size = a.ngram_size.unwrap_or(dedup.ngram_size);
    dedup.min_ngram_size = a.min_ngram_size.unwrap_or(dedup.min_ngram_size);
    dedup.threshold = a.threshold.unwrap_or(dedup.threshold);
    dedup.expected_ngrams = a.expected_ngrams.unwrap_or(dedup.expected_ngrams);
    dedup.false_positive_rate = a.false_positive_rate.unwrap_or(dedup.false_positive_rate);
    dedup.filter_bytes = a.filter_bytes.unwrap_or(dedup.filter_bytes);
    let threads = match a.threads.unwrap_or(config.threads) {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        n => n,
    };
    let run = DedupRun {
        dedup,
        text_field: a.text_field.unwrap_or(config.text_field),
        threads,
        batch_documents: config.batch_documents,
        gzip: a.gzip,
    };
    let counts = run_dedup(&run, &sources_of(&a.source)?, &a.out)?;
    println!("{}", serde_json::to_string_pretty(&counts).expect("counts serialize"));
    Ok(())
}

fn cmd_run(a: RunArgs) -> Result<(), String> {
    let mut config = match &a.config {
        Some(path) => PrepConfig::load(path)?,
        None => PrepConfig::default(),
    };
    if let Some(t) = a.tokenizer {
        config.tokenizer = t;
    }
    config.threads = a.threads.unwrap_or(config.threads);
    let out = a.out;
    let sources = sources_of(&a.source).map_err(|e| format!("run {e}"))?;
    let limits = RunLimits {
        max_files: a.max_files,
    };
    let counts = run(&config, &sources, &out, limits)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&counts).expect("counts serialize")
    );
    Ok(())
}

fn read_all(files: &[PathBuf], field: &str) -> Vec<String> {
    let mut docs = Vec::new();
    for f in files {
        for d in read_documents(f, field) {
            match d {
                Ok(t) => docs.push(t),
                Err(e) => log::warn!("skipped malformed input: {e}"),
            }
        }
    }
    docs
}

fn cmd_quality_train(a: QualityTrainArgs) -> Result<(), String> {
    let positive = read_all(&files_of(&a.positive)?, &a.text_field);
    let negative = read_all(&files_of(&a.negative)?, &a.text_field);
    let settings = TrainSettings {
        buckets: a.buckets,
        dim: a.dim,
        epochs: a.epochs,
        learning_rate: a.learning_rate,
        seed: a.seed,
    };
    let examples: Vec<(&str, bool)> = positive
        .iter()
        .map(|t| (t.as_str(), true))
        .chain(negative.iter().map(|t| (t.as_str(), false)))
        .collect();
    let model = QualityModel::train(&examples, settings)?;
    let correct = examples
        .iter()
        .filter(|(t, l)| (model.predict(t) >= 0.5) == *l)
        .count();
    log::info!(
        "trained on {} positive / {} negative documents; training accuracy {:.3}",
        positive.len(),
        negative.len(),
        correct as f64 / examples.len() as f64
    );
    model.save(&a.out)
}

fn cmd_quality_predict(a: QualityPredictArgs) -> Result<(), String> {
    let model = QualityModel::load(&a.model)?;
    let field = a.text_field.as_str();
    for p in &a.paths {
        for f in expand_path(p)? {
            for (i, d) in read_documents(&f, field).enumerate() {
                match d {
                    Ok(t) => println!(
                        "{{\"file\": {:?}, \"document\": {i}, \"score\": {:.4}}}",
                        f.display().to_string(),
                        model.predict(&t)
                    ),
                    Err(e) => log::warn!("skipped malformed input: {e}"),
                }
            }
        }
    }
    Ok(())
}
