//! `eval`: downstream benchmarks on a kormo checkpoint or a Hugging Face folder
//! (`eval --help` lists every option; task format in docs/eval.md).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kormo_eval::task::{OutputType, Task};
use kormo_eval::{scoring_model, to_json, to_markdown, Packing, Scorer, TaskResult};
use kormo_generate::{open_model, Decoder};
use kormo_hf::Weights;
use kormo_model::{Model, Ops};
use kormo_tokenizer::Tokenizer;

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
    /// Multiple-choice scoring on auto | cpu | cuda (auto: CUDA if usable; generation: CPU)
    #[arg(long, value_name = "NAME", default_value = "auto")]
    backend: String,
    /// Tokens per packed row (longer requests get rows of their length)
    #[arg(long, value_name = "N", default_value_t = Packing::default().seq)]
    seq: usize,
    /// Tokens per forward pass: batch_tokens / seq rows (at least one)
    #[arg(long, value_name = "N", default_value_t = Packing::default().batch_tokens)]
    batch_tokens: usize,
    #[command(flatten)]
    model_args: kormo_generate::ModelArgs,
}

fn run(cli: Cli) -> Result<(), String> {
    if !matches!(cli.backend.as_str(), "auto" | "cpu" | "cuda") {
        return Err(format!("unknown backend `{}` (auto, cpu or cuda)", cli.backend));
    }
    if cli.seq == 0 || cli.batch_tokens == 0 {
        return Err("--seq and --batch-tokens must be at least 1".into());
    }
    let (weights, tok) = open_model(&cli.model, &cli.model_args.preset, cli.model_args.tokenizer.as_deref())?;
    let mut tasks = Vec::new();
    for path in &cli.tasks {
        let mut task = Task::load(path)?;
        if let Some(n) = cli.num_fewshot {
            task.spec.num_fewshot = n;
        }
        tasks.push(task);
    }
    let threads = cli.model_args.threads();
    let cpu = || scoring_model(&weights, kormo_cpu::CpuOps::<f32>::with_threads(threads));
    let results = if cli.backend == "cpu" {
        eprintln!("backend: cpu (f32, {threads} threads)");
        score_tasks(cpu()?, &weights, &tok.tokenizer, &tasks, &cli)?
    } else {
        match kormo_cuda::detect_devices().and_then(|_| kormo_cuda::CudaOps::for_model(&weights.config, 0)) {
            Ok((ops, device)) => {
                eprintln!("backend: cuda ({}, device {}; bf16 weights and activations)", device.name, device.ordinal);
                let model = scoring_model(&weights, ops)?;
                score_tasks(model, &weights, &tok.tokenizer, &tasks, &cli)?
            }
            Err(e) if cli.backend == "cuda" => return Err(format!("--backend=cuda: {e} (use --backend=cpu or auto)")),
            Err(e) => {
                eprintln!("backend: cpu ({e}; f32, {threads} threads)");
                score_tasks(cpu()?, &weights, &tok.tokenizer, &tasks, &cli)?
            }
        }
    };
    std::fs::create_dir_all(&cli.out).map_err(|e| format!("{}: {e}", cli.out.display()))?;
    let json = serde_json::to_string_pretty(&to_json(&results, &cli.model.display().to_string())).map_err(|e| e.to_string())?;
    write_atomic(&cli.out.join("results.json"), &json)?;
    let md = to_markdown(&results);
    write_atomic(&cli.out.join("results.md"), &md)?;
    print!("{md}");
    Ok(())
}

/// Every task on `model` (multiple choice) and the CPU decoder (generation), one progress line
/// per task on stderr.
fn score_tasks<O: Ops>(mut model: Model<O>, weights: &Weights, tok: &Tokenizer, tasks: &[Task], cli: &Cli) -> Result<Vec<TaskResult>, String> {
    let bos = tok.special_id("<|BOS|>").ok_or("the tokenizer has no <|BOS|>")?;
    let eot = tok.special_id("<|EOT|>").ok_or("the tokenizer has no <|EOT|>")?;
    let generates = tasks.iter().any(|t| t.spec.output_type == OutputType::GenerateUntil);
    let mut decoder = generates.then(|| Decoder::new(weights, cli.model_args.threads()));
    let packing = Packing { seq: cli.seq, batch_tokens: cli.batch_tokens };
    let mut scorer = Scorer { model: &mut model, decoder: decoder.as_mut(), tok, bos, eot, packing };
    let terminal = std::io::stderr().is_terminal();
    let mut results = Vec::new();
    for task in tasks {
        let name = &task.spec.task;
        let r = scorer.run_with_progress(task, |done, total| {
            if terminal {
                eprint!("\r{name}: forward pass {done}/{total}");
            }
        })?;
        if terminal && r.stats.forwards > 0 {
            eprintln!();
        }
        let s = &r.stats;
        let mut line = format!("{name}: {} questions, {:.2} questions/s", task.docs.len(), r.questions_per_s);
        if s.forwards > 0 {
            let padding = 100.0 * s.padding as f64 / (s.tokens + s.padding).max(1) as f64;
            line += &format!(", {:.0} tokens/s; {} forward passes, {} rows of {}, {} documents, {padding:.1}% padding", r.tokens_per_s, s.forwards, s.rows, s.seq, s.documents);
        }
        eprintln!("{line}");
        results.push(r);
    }
    Ok(results)
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
