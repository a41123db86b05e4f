//! Command-line options of `train`, parsed by hand (no argument-parsing dependency).
//!
//! `--key=value` and `--key value` are both accepted. Relative paths are taken relative to the
//! directory the user ran the command from: under `bazel run` that is `BUILD_WORKING_DIRECTORY`
//! (Bazel runs the binary inside its runfiles tree), otherwise the current directory.

use crate::backend::BackendChoice;
use crate::recipe::Recipe;
use std::path::{Path, PathBuf};

pub const USAGE: &str = "\
usage: train --stage=STAGE [options]

Runs one stage of a KORMo training recipe (configs/*.toml) and writes metrics and checkpoints
to RUN_DIR/STAGE/. Stages run in order pretrain1, pretrain2, midtrain (long_context, then
reasoning), sft; each starts from the previous stage's final checkpoint.

options:
  --stage=NAME        pretrain1 | pretrain2 | midtrain | sft (required)
  --config=RECIPE     recipe file, or a preset name: tiny (built in, default), proxy-1b,
                      kormo-10.8b (configs/<name>.toml)
  --run-dir=DIR       where checkpoints, metrics and generated data go (default ./runs/<recipe>)
  --max-steps=N       cap every phase at N optimizer steps (the LR schedule spans the capped length)
  --stop-after=N      stop after N steps of this invocation, saving a checkpoint; continue later
                      with --resume
  --seed=N            override the recipe's seed (model init and data order)
  --resume            continue from the newest checkpoint in RUN_DIR/STAGE/checkpoints
  --backend=NAME      auto (default: cuda when a usable GPU is present, else cpu) | cpu | cuda
  --threads=N         CPU threads (default: all cores; split between ranks)
  --init-hf=FOLDER    start the stage from a Hugging Face model folder (KORMo or Llama
                      naming) instead of its recipe `init`
  --world-size=N      train with N FSDP ranks, threads of this process, CPU only (default 1;
                      the recipe's [dist] table picks the strategy)
  --launcher=NAME     multi-process FSDP, one process per rank (or per GPU, on the device of
                      its local rank): auto (default: RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/
                      MASTER_PORT when RANK is set) | env (those, required) | slurm
                      (SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID under srun; rank 0's host is
                      the first of the job's nodes unless MASTER_ADDR is set) | none (one
                      process, whatever the environment says). Every rank prints what it
                      detected; rank 0 alone logs progress and metrics; every rank writes its
                      checkpoint shard and the run directory must be shared (docs/distributed.md)
  --dist-timeout=SECS how long a rank waits for the others (rendezvous, each collective)
                      before exiting with an error naming the missing rank (default 600)
  --log-every=N       print and record metrics every N steps (default 10; first and last step always)
  --benchmark         do not train: time the stage's first phase on synthetic tokens of its shape
                      (one micro-batch forward+backward, one optimizer update) and report
                      tokens/s, FLOP/s and MFU (on a GPU of known peak); writes a JSON result
  --benchmark-steps=N timed iterations (default 5)
  --benchmark-warmup=N  untimed iterations first (default 2)
  --benchmark-out=FILE  the JSON result (default RUN_DIR/benchmark-STAGE.json)
  --help              show this text

SIGTERM or SIGUSR1 (preemption) make train checkpoint at the end of the current step and exit
with code 0; rerun the same command with --resume. One train job per run directory
(RUN_DIR/train.lock).";

#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    pub stage: String,
    pub config: String,
    pub run_dir: Option<PathBuf>,
    pub max_steps: Option<u64>,
    pub stop_after: Option<u64>,
    pub seed: Option<u64>,
    pub resume: bool,
    pub backend: BackendChoice,
    pub threads: Option<usize>,
    pub log_every: u64,
    pub world_size: usize,
    pub launcher: crate::launch::Launcher,
    pub dist_timeout_s: u64,
    pub init_hf: Option<PathBuf>,
    pub benchmark: bool,
    pub benchmark_steps: usize,
    pub benchmark_warmup: usize,
    pub benchmark_out: Option<PathBuf>,
}

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Help,
    Train(Box<Options>),
}

/// Parses `args` (without the program name). Errors are messages for the user.
pub fn parse(args: &[String]) -> Result<Command, String> {
    let mut stage = None;
    let mut opts = Options {
        stage: String::new(),
        config: "tiny".into(),
        run_dir: None,
        max_steps: None,
        stop_after: None,
        seed: None,
        resume: false,
        backend: BackendChoice::Auto,
        threads: None,
        log_every: 10,
        world_size: 1,
        launcher: crate::launch::Launcher::Auto,
        dist_timeout_s: 600,
        init_hf: None,
        benchmark: false,
        benchmark_steps: 5,
        benchmark_warmup: 2,
        benchmark_out: None,
    };
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let Some(flag) = arg.strip_prefix("--") else {
            return Err(format!(
                "unexpected argument `{arg}` (options start with --; see --help)"
            ));
        };
        let (key, inline) = match flag.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (flag, None),
        };
        match key {
            "help" => return Ok(Command::Help),
            "resume" | "benchmark" => {
                if inline.is_some() {
                    return Err(format!("--{key} takes no value"));
                }
                match key {
                    "resume" => opts.resume = true,
                    _ => opts.benchmark = true,
                }
                continue;
            }
            _ => {}
        }
        const VALUED: [&str; 16] = [
            "stage",
            "config",
            "run-dir",
            "max-steps",
            "stop-after",
            "seed",
            "backend",
            "threads",
            "log-every",
            "world-size",
            "launcher",
            "dist-timeout",
            "init-hf",
            "benchmark-steps",
            "benchmark-warmup",
            "benchmark-out",
        ];
        if !VALUED.contains(&key) {
            return Err(format!("unknown option `--{key}` (see --help)"));
        }
        let value = match inline {
            Some(v) => v,
            None => iter
                .next()
                .cloned()
                .ok_or_else(|| format!("--{key} needs a value"))?,
        };
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("--{key}: `{v}` is not a non-negative integer"))
        };
        let positive = |v: &str| {
            number(v).and_then(|n| {
                if n == 0 {
                    Err(format!("--{key} must be at least 1"))
                } else {
                    Ok(n)
                }
            })
        };
        match key {
            "stage" => stage = Some(value),
            "config" => opts.config = value,
            "run-dir" => opts.run_dir = Some(PathBuf::from(value)),
            "max-steps" => opts.max_steps = Some(positive(&value)?),
            "stop-after" => opts.stop_after = Some(positive(&value)?),
            "seed" => opts.seed = Some(number(&value)?),
            "backend" => opts.backend = BackendChoice::parse(&value)?,
            "threads" => opts.threads = Some(positive(&value)? as usize),
            "log-every" => opts.log_every = positive(&value)?,
            "world-size" => opts.world_size = positive(&value)? as usize,
            "launcher" => opts.launcher = crate::launch::Launcher::parse(&value)?,
            "dist-timeout" => opts.dist_timeout_s = positive(&value)?,
            "init-hf" => opts.init_hf = Some(PathBuf::from(value)),
            "benchmark-steps" => opts.benchmark_steps = positive(&value)? as usize,
            "benchmark-warmup" => opts.benchmark_warmup = number(&value)? as usize,
            "benchmark-out" => opts.benchmark_out = Some(PathBuf::from(value)),
            _ => unreachable!("checked against VALUED above"),
        }
    }
    opts.stage = stage.ok_or("missing --stage (pretrain1, pretrain2, midtrain or sft)")?;
    if opts.benchmark && (opts.world_size > 1 || opts.resume) {
        return Err(
            "--benchmark times one process from fresh weights; drop --world-size and --resume"
                .into(),
        );
    }
    Ok(Command::Train(Box::new(opts)))
}

/// Runs the command line `args` (without the program name), printing progress to `out`.
pub fn run(args: &[String], out: &mut dyn std::io::Write) -> Result<(), String> {
    let opts = match parse(args)? {
        Command::Help => {
            let _ = writeln!(out, "{USAGE}");
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
    let (launch, note) = crate::launch::detect(
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
        assert!(err(&[]).contains("missing --stage"));
        assert!(err(&["--stage=sft", "--max-steps=x"]).contains("`x` is not"));
        assert!(err(&["--stage=sft", "--max-steps=0"]).contains("at least 1"));
        assert!(err(&["--stage=sft", "--frobnicate"]).contains("unknown option `--frobnicate`"));
        assert!(err(&["--stage"]).contains("needs a value"));
        assert!(err(&["sft"]).contains("unexpected argument"));
        assert!(err(&["--stage=sft", "--resume=yes"]).contains("no value"));
        assert!(err(&["--stage=sft", "--world-size=0"]).contains("at least 1"));
        assert!(err(&["--stage=sft", "--backend=tpu"]).contains("auto, cpu or cuda"));
        assert!(err(&["--stage=sft", "--benchmark=3"]).contains("--benchmark takes no value"));
        assert!(
            err(&["--stage=sft", "--benchmark", "--world-size=2"]).contains("drop --world-size")
        );
        assert!(err(&["--stage=sft", "--benchmark-steps=0"]).contains("at least 1"));
        assert!(err(&["--stage=sft", "--launcher=mpi"]).contains("auto, env, slurm or none"));
        assert!(err(&["--stage=sft", "--dist-timeout=0"]).contains("at least 1"));
    }
}
