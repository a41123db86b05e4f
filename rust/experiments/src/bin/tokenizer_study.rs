//! `tokenizer-study`: trains the tokenizer variants of a spec from one corpus and writes the
//! comparison table (bytes per token on held-out splits, vocabulary overlap, train time).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kormo_experiments::study::{markdown, run, Spec};

#[derive(Parser)]
#[command(name = "tokenizer-study", disable_version_flag = true, after_help = "\
Example:
  tokenizer-study configs/study/debian_faq.toml --out runs/study

The spec names [[source]]s (name, paths, optional suffix) and [[variant]]s (name,
vocab_size, mix = { source = weight }); see docs/experiments.md.")]
/// Train tokenizers of several mixes and vocabulary sizes and compare them by bytes per token
struct Args {
    /// Study spec (TOML)
    spec: PathBuf,
    /// Folder for study.md and study.json
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Counting threads [default: all cores]
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

fn main() -> ExitCode {
    kormo_experiments::exit_code("tokenizer-study", study(&Args::parse()))
}

fn study(args: &Args) -> Result<(), String> {
    let spec = Spec::load(&args.spec)?;
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let result = run(&spec, threads, &mut |line| eprintln!("{line}"))?;
    let table = markdown(&result);
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let json = serde_json::to_string_pretty(&result).map_err(|e| e.to_string())?;
    write_atomic(&args.out.join("study.json"), json.as_bytes())?;
    write_atomic(&args.out.join("study.md"), table.as_bytes())?;
    print!("{table}");
    Ok(())
}

/// Writes through a temporary file and a rename, so a reader never sees half a file.
fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, path)).map_err(|e| format!("{}: {e}", path.display()))
}
