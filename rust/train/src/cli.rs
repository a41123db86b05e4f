//! Command-line options of `train`, parsed with clap (`Options` is the parsed command line).
//!
//! `--key=value` and `--key value` are both accepted. Relative paths are taken relative to the
//! directory the user ran the command from: under `bazel run` that is `BUILD_WORKING_DIRECTORY`
//! (Bazel runs the binary inside its runfiles tree), otherwise the current directory.

use crate::backend::BackendChoice;
use crate::launcher::Launcher;
use crate::recipe::Recipe;
use clap::builder::RangedU64ValueParser;
use clap::{CommandFactory, Parser};
use std::path::{Path, PathBuf};

const ABOUT: &str = "\
Runs one stage of a KORMo training recipe (configs/*.toml) and writes metrics and checkpoints
to RUN_DIR/STAGE/. Stages run in order pretrain1, pretrain2, midtrain (long_context, then
reasoning), sft; each starts from the previous stage's final checkpoint.";

const AFTER_HELP: &str = "\
SIGTERM or SIGUSR1 (preemption) make train checkpoint at the end of the current step and exit
with code 0; rerun the same command with --resume. One train job per run directory
(RUN_DIR/train.lock).

Examples:
  train --stage=pretrain1 --config=tiny --threads=4
  train --stage=sft --config=proxy-1b --run-dir=runs/proxy --resume
  train --stage=pretrain1 --config=proxy-1b --benchmark --backend=cuda";

/// A positive integer option (`--max-steps=0` is refused: it would train nothing).
fn positive<T: TryFrom<u64> + Clone + Send + Sync + 'static>() -> RangedU64ValueParser<T> {
    RangedU64ValueParser::new().range(1..)
}

#[derive(Clone, Debug, PartialEq, Parser)]
#[command(
    name = "train",
    about = ABOUT,
    override_usage = "train --stage=NAME [OPTIONS]",
    after_help = AFTER_HELP,
    disable_version_flag = true,
    // An option given twice takes its last value (launch scripts append overrides).
    args_override_self = true
)]
pub struct Options {
    /// pretrain1 | pretrain2 | midtrain | sft
    #[arg(long, value_name = "NAME")]
    pub stage: String,
    /// Recipe file, or a preset name: tiny (built in), proxy-1b, kormo-10.8b (configs/<name>.toml)
    #[arg(long, value_name = "RECIPE", default_value = "tiny")]
    pub config: String,
    /// Where checkpoints, metrics and generated data go [default: ./runs/<recipe>]
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// Cap every phase at N optimizer steps (the LR schedule spans the capped length)
    #[arg(long, value_name = "N", value_parser = positive::<u64>())]
    pub max_steps: Option<u64>,
    /// Stop after N steps of this invocation, saving a checkpoint; continue later with --resume
    #[arg(long, value_name = "N", value_parser = positive::<u64>())]
    pub stop_after: Option<u64>,
    /// Override the recipe's seed (model init and data order)
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Continue from the newest checkpoint in RUN_DIR/STAGE/checkpoints
    #[arg(long)]
    pub resume: bool,
    /// auto (cuda when a usable GPU is present, else cpu) | cpu | cuda
    #[arg(long, value_name = "NAME", default_value = "auto", value_parser = BackendChoice::parse)]
    pub backend: BackendChoice,
    /// CPU threads, split between ranks [default: all cores]
    #[arg(long, value_name = "N", value_parser = positive::<usize>())]
    pub threads: Option<usize>,
    /// Print and record metrics every N steps (first and last step always)
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = positive::<u64>())]
    pub log_every: u64,
    /// Train with N FSDP ranks, threads of this process, CPU only (the recipe's [dist] table
    /// picks the strategy)
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = positive::<usize>())]
    pub world_size: usize,
    /// Multi-process FSDP, one process per rank (or per GPU, on the device of its local rank):
    /// auto (RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT when RANK is set) | env (those,
    /// required) | slurm (SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID under srun; rank 0's host is
    /// the first of the job's nodes unless MASTER_ADDR is set) | none (one process, whatever the
    /// environment says). Every rank prints what it detected; rank 0 alone logs progress and
    /// metrics; every rank writes its checkpoint shard and the run directory must be shared
    /// (docs/distributed.md)
    #[arg(long, value_name = "NAME", default_value = "auto", value_parser = Launcher::parse)]
    pub launcher: Launcher,
    /// How long a rank waits for the others (rendezvous, each collective) before exiting with an
    /// error naming the missing rank
    #[arg(long = "dist-timeout", value_name = "SECS", default_value_t = 600, value_parser = positive::<u64>())]
    pub dist_timeout_s: u64,
    /// Start the stage from a Hugging Face model folder (KORMo or Llama naming) instead of its
    /// recipe `init`
    #[arg(long, value_name = "FOLDER")]
    pub init_hf: Option<PathBuf>,
    /// Do not train: time the stage's first phase on synthetic tokens of its shape (one
    /// micro-batch forward+backward, one optimizer update) and report tokens/s, FLOP/s and MFU
    /// (on a GPU of known peak); writes a JSON result
    #[arg(long, conflicts_with_all = ["resume", "world_size"])]
    pub benchmark: bool,
    /// Timed benchmark iterations
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = positive::<usize>())]
    pub benchmark_steps: usize,
    /// Untimed benchmark iterations first
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub benchmark_warmup: usize,
    /// The benchmark's JSON result [default: RUN_DIR/benchmark-STAGE.json]
    #[arg(long, value_name = "FILE")]
    pub benchmark_out: Option<PathBuf>,
}

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Help,
    Train(Box<Options>),
}

/// The `--help` text.
pub fn help() -> String {
    Options::command().render_help().to_string()
}

/// Parses `args` (without the program name). Errors are messages for the user (clap's, with
/// the closest known option suggested for a misspelt one and the usage line).
pub fn parse(args: &[String]) -> Result<Command, String> {
    let argv = std::iter::once("train").chain(args.iter().map(String::as_str));
    match Options::try_parse_from(argv) {
        Ok(opts) => Ok(Command::Train(Box::new(opts))),
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => Ok(Command::Help),
        Err(e) => {
            let text = e.to_string();
            Err(text.strip_prefix("error: ").unwrap_or(&text).trim_end().to_string())
        }
    }
}

/// Runs the command line `args` (without the program name), printing progress to `out`.
pub fn run(args: &[String], out: &mut dyn std::io::Write) -> Result<(), String> {
    let opts = match parse(args)? {
        Command::Help => {
            let _ = write!(out, "{}", help());
            return Ok(());
        }
        Command::Train(opts) => *opts,
    };
    let config = match opts.config.as_str() {
        "tiny" | "proxy-1b" | "kormo-10.8b" => opts.config.clone(),
        path => from_user_dir(std::path::Path::new(path))
            .display()
            .to_string(),
    };
    let recipe = Recipe::resolve(&config, &repo_dir()).map_err(|e| e.to_string())?;
    let run_dir = match &opts.run_dir {
        Some(dir) => from_user_dir(dir),
        None => user_dir().join("runs").join(&recipe.file.name),
    };
    let run = crate::trainer::RunOptions {
        stage: opts.stage,
        run_dir,
        max_steps: opts.max_steps,
        stop_after: opts.stop_after,
        seed: opts.seed,
        resume: opts.resume,
        threads: opts.threads,
        log_every: opts.log_every,
        world_size: opts.world_size,
        backend: opts.backend,
        init_hf: opts.init_hf.as_deref().map(from_user_dir),
        faults: crate::trainer::Faults::default(),
    };
    let (launch, note) = crate::launcher::detect(
        opts.launcher,
        std::time::Duration::from_secs(opts.dist_timeout_s),
    )?;
    if let Some(note) = note {
        let _ = writeln!(out, "{note}");
    }
    if let Some(launch) = &launch {
        let _ = writeln!(out, "{}", launch.describe());
        if opts.world_size > 1 {
            return Err(format!(
                "--world-size={} runs ranks as threads of one process, but this process is rank {} of {} of a launched job (--launcher={}); drop --world-size, or pass --launcher=none",
                opts.world_size,
                launch.env.rank,
                launch.env.world_size,
                launch.env.source
            ));
        }
        if opts.benchmark {
            return Err(
                "--benchmark times one process; pass --launcher=none (or unset RANK/WORLD_SIZE)"
                    .into(),
            );
        }
    }
    if opts.benchmark {
        let bench = crate::benchmark::BenchmarkOptions {
            warmup: opts.benchmark_warmup,
            steps: opts.benchmark_steps,
            out: match &opts.benchmark_out {
                Some(file) => from_user_dir(file),
                None => run.run_dir.join(format!("benchmark-{}.json", run.stage)),
            },
        };
        return crate::benchmark::run(&recipe, &run, &bench, out)
            .map(|_| ())
            .map_err(|e| e.to_string());
    }
    crate::trainer::run_stage_launched(&recipe, &run, launch.as_ref(), out)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The directory relative paths on the command line are relative to.
pub fn user_dir() -> PathBuf {
    std::env::var_os("BUILD_WORKING_DIRECTORY")
        .map(PathBuf::from)
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The repository root, where preset recipes live: BUILD_WORKSPACE_DIRECTORY under `bazel run`,
/// else the nearest of the current directory and its ancestors that has a `configs/` folder.
pub fn repo_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BUILD_WORKSPACE_DIRECTORY") {
        return PathBuf::from(dir);
    }
    let start = user_dir();
    start
        .ancestors()
        .find(|d| d.join("configs").is_dir())
        .map(Path::to_path_buf)
        .unwrap_or(start)
}

/// `path` made absolute against [`user_dir`].
pub fn from_user_dir(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        user_dir().join(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_option_given_twice_takes_its_last_value() {
        let Command::Train(o) = parse(&args(&["--stage=sft", "--config=tiny", "--config=proxy-1b", "--seed=1", "--seed", "2"])).unwrap() else {
            panic!("expected a training command")
        };
        assert_eq!((o.config.as_str(), o.seed), ("proxy-1b", Some(2)));
    }

    #[test]
    fn parses_both_spellings_and_defaults() {
        let Command::Train(o) = parse(&args(&[
            "--stage=midtrain",
            "--max-steps",
            "5",
            "--resume",
            "--log-every=2",
        ]))
        .unwrap() else {
            panic!("expected a training command")
        };
        assert_eq!(
            (o.stage.as_str(), o.max_steps, o.resume, o.log_every),
            ("midtrain", Some(5), true, 2)
        );
        assert_eq!(
            (o.config.as_str(), o.backend, o.run_dir),
            ("tiny", BackendChoice::Auto, None)
        );
        assert_eq!(parse(&args(&["--help"])).unwrap(), Command::Help);
        let Command::Train(o) = parse(&args(&[
            "--stage=sft",
            "--world-size",
            "2",
            "--init-hf=exports/kormo",
        ]))
        .unwrap() else {
            panic!("expected a training command")
        };
        assert_eq!(
            (o.world_size, o.init_hf.as_deref()),
            (2, Some(Path::new("exports/kormo")))
        );
        let Command::Train(o) = parse(&args(&[
            "--stage=pretrain1",
            "--benchmark",
            "--backend",
            "cuda",
            "--benchmark-steps=3",
        ]))
        .unwrap() else {
            panic!("expected a training command")
        };
        assert_eq!(
            (
                o.benchmark,
                o.backend,
                o.benchmark_steps,
                o.benchmark_warmup
            ),
            (true, BackendChoice::Cuda, 3, 2)
        );
    }

    #[test]
    fn mistakes_are_messages() {
        let err = |a: &[&str]| parse(&args(a)).unwrap_err();
        assert!(err(&[]).contains("--stage <NAME>"), "{}", err(&[]));
        assert!(err(&["--stage=sft", "--max-steps=x"]).contains("invalid value 'x' for '--max-steps"));
        assert!(err(&["--stage=sft", "--max-steps=0"]).contains("0 is not in 1.."));
        let typo = err(&["--stage=sft", "--max-step=3"]);
        assert!(typo.contains("unexpected argument '--max-step'") && typo.contains("--max-steps"), "{typo}");
        assert!(err(&["--stage"]).contains("a value is required for '--stage <NAME>'"));
        assert!(err(&["sft"]).contains("unexpected argument 'sft'"));
        assert!(err(&["--stage=sft", "--resume=yes"]).contains("unexpected value 'yes' for '--resume'"));
        assert!(err(&["--stage=sft", "--world-size=0"]).contains("0 is not in 1.."));
        assert!(err(&["--stage=sft", "--backend=tpu"]).contains("auto, cpu or cuda"));
        assert!(err(&["--stage=sft", "--benchmark=3"]).contains("unexpected value '3' for '--benchmark'"));
        let conflict = err(&["--stage=sft", "--benchmark", "--world-size=2"]);
        assert!(conflict.contains("'--benchmark' cannot be used with '--world-size <N>'"), "{conflict}");
        assert!(err(&["--stage=sft", "--benchmark-steps=0"]).contains("0 is not in 1.."));
        assert!(err(&["--stage=sft", "--launcher=mpi"]).contains("auto, env, slurm or none"));
        assert!(err(&["--stage=sft", "--dist-timeout=0"]).contains("0 is not in 1.."));
    }

    #[test]
    fn help_lists_every_option_with_defaults_and_an_example() {
        let text = help();
        for option in [
            "--stage=NAME", "--config <RECIPE>", "--run-dir", "--max-steps", "--stop-after", "--seed",
            "--resume", "--backend", "--threads", "--log-every", "--world-size", "--launcher",
            "--dist-timeout", "--init-hf", "--benchmark", "--benchmark-steps", "--benchmark-warmup",
            "--benchmark-out",
        ] {
            assert!(text.contains(option), "--help lacks {option}:\n{text}");
        }
        assert!(text.contains("[default: tiny]") && text.contains("[default: 600]"), "{text}");
        assert!(text.contains("Examples:\n  train --stage=pretrain1"), "{text}");
    }
}
