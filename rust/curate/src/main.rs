//! `curate`: difficulty curation of a reasoning dataset by judge models (`curate --help`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kormo_curate::config::CurateConfig;
use kormo_curate::run::{curate, Outcome, RunOptions, CURATED, PROGRESS, REPORT};
use kormo_hf::cli::user_path;

/// Keeps the samples of a reasoning dataset that every solver judge answers incorrectly and
/// that a consensus of label judges calls hard (the KORMo paper's Algorithm 1). Judges are
/// kormo checkpoints / Hugging Face folders run in process, or OpenAI-compatible endpoints.
/// Resumable: verdicts go to OUT/progress.jsonl as they come, and a rerun skips judged samples.
#[derive(Parser)]
#[command(name = "curate", disable_version_flag = true, after_help = "\
Writes OUT/curated.jsonl (the kept records, as `prepare` reads them), OUT/report.json (kept
fractions per domain after each stage, per-judge counts) and prints the table.

Example:
  curate --config configs/curate/reasoning.toml --input data/reasoning.jsonl --out curated/ --jobs 8
(config format: docs/curate.md)")]
struct Cli {
    /// The curation config (TOML: input fields, [[judge]]s, [solve], [label], [output])
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Input records: JSON lines (.jsonl[.gz|.zst]) or Parquet, a file or a folder; repeatable
    #[arg(long, value_name = "PATH", required = true)]
    input: Vec<PathBuf>,
    /// Folder for progress.jsonl, curated.jsonl and report.json
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Judge at most N new samples, then stop (rerun to continue) [default: all]
    #[arg(long, value_name = "N")]
    max_samples: Option<usize>,
    /// Samples judged at once: requests in flight to each endpoint (kormo judges take turns)
    #[arg(long, value_name = "N", default_value_t = 1)]
    jobs: usize,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("curate: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let config = CurateConfig::load(&user_path(&cli.config))?;
    let mut inputs = Vec::new();
    for path in &cli.input {
        inputs.extend(kormo_corpus::paths::expand_path(&user_path(path))?);
    }
    let out = user_path(&cli.out);
    if cli.jobs == 0 {
        return Err("--jobs must be at least 1".into());
    }
    let options = RunOptions { max_samples: cli.max_samples, jobs: cli.jobs };
    match curate(&config, &inputs, &out, options, |line| eprintln!("curate: {line}"))? {
        Outcome::Stopped { judged } => {
            eprintln!("curate: stopped after {judged} new samples (--max-samples); rerun to continue from {}", out.join(PROGRESS).display());
        }
        Outcome::Finished(report) => {
            print!("{}", report.table());
            if report.skipped_count > 0 {
                eprintln!("curate: {} records skipped (see skipped in report.json)", report.skipped_count);
            }
            eprintln!("curate: wrote {} and {}", out.join(CURATED).display(), out.join(REPORT).display());
        }
    }
    Ok(())
}
