//! `eval`: downstream benchmarks on a kormo checkpoint or a Hugging Face folder
//! (`eval --help` lists every option; task format in docs/eval.md).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kormo_eval::task::Task;
use kormo_eval::{to_json, to_markdown, Scorer};
use kormo_generate::{open_model, Decoder};

/// Scores a model on local benchmark task files (lm-evaluation-harness fields, JSONL data) and
/// writes results.json and results.md (task, shots, metric, score, stderr).
#[derive(Parser)]
#[command(name = "eval", disable_version_flag = true, after_help = "\
Example:
  eval --model exports/kormo-tiny --tasks tasks/kobest_boolq.json,tasks/arc_easy.json --out eval-results")]
struct Cli {
    /// A kormo checkpoint directory or a Hugging Face model folder
    #[arg(long, value_name = "CHECKPOINT_OR_HF_FOLDER")]
    model: PathBuf,
    /// Task files, comma-separated
    #[arg(long, value_name = "FILES", value_delimiter = ',', required = true)]
    tasks: Vec<PathBuf>,
    /// Override every task's num_fewshot
    #[arg(long, value_name = "N")]
    num_fewshot: Option<usize>,
    /// Output folder
    #[arg(long, value_name = "DIR", default_value = "eval-results")]
    out: PathBuf,
    #[command(flatten)]
    model_args: kormo_generate::ModelArgs,
}

fn run(cli: Cli) -> Result<(), String> {
    let (weights, tok) = open_model(&cli.model, &cli.model_args.preset, cli.model_args.tokenizer.as_deref())?;
    let threads = cli.model_args.threads();
    let mut decoder = Decoder::new(&weights, threads);
    let bos = tok.tokenizer.special_id("<|BOS|>").ok_or("the tokenizer has no <|BOS|>")?;
    let eot = tok.tokenizer.special_id("<|EOT|>").ok_or("the tokenizer has no <|EOT|>")?;
    let mut scorer = Scorer { decoder: &mut decoder, tok: &tok.tokenizer, bos, eot };
    let mut results = Vec::new();
    for path in &cli.tasks {
        let mut task = Task::load(path)?;
        if let Some(n) = cli.num_fewshot {
            task.spec.num_fewshot = n;
        }
        let r = scorer.run(&task)?;
        eprintln!("{}: {} questions, {:.2} questions/s", r.task, task.docs.len(), r.questions_per_s);
        results.push(r);
    }
    std::fs::create_dir_all(&cli.out).map_err(|e| format!("{}: {e}", cli.out.display()))?;
    let json = serde_json::to_string_pretty(&to_json(&results, &cli.model.display().to_string())).map_err(|e| e.to_string())?;
    write_atomic(&cli.out.join("results.json"), &json)?;
    let md = to_markdown(&results);
    write_atomic(&cli.out.join("results.md"), &md)?;
    print!("{md}");
    Ok(())
}

fn write_atomic(path: &std::path::Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, path)).map_err(|e| format!("{}: {e}", path.display()))
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eval: {e}");
            ExitCode::FAILURE
        }
    }
}
