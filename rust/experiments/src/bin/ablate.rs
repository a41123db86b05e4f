//! `ablate`: trains the recipe variants of a spec with the same seed and data order (one
//! `train` subprocess each) and draws their loss curves on one chart with a summary table.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use kormo_experiments::ablate::{run, summary_markdown, AblationSpec};

#[derive(Parser)]
#[command(name = "ablate", disable_version_flag = true, after_help = "\
Example:
  ablate ablation.toml --out runs/ablation

The spec names the base recipe (base), stage, max_steps, seed, train_args and
[[variant]]s (name, set = { \"optimizer.lr\" = 1e-3 }); see docs/experiments.md.")]
/// Train recipe variants with one data order and compare their loss curves
struct Args {
    /// Ablation spec (TOML)
    spec: PathBuf,
    /// Folder for one sub-folder per variant, loss.png, summary.md and summary.json
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The `train` binary [default: `train` next to this binary]
    #[arg(long, value_name = "FILE")]
    train: Option<PathBuf>,
}

fn main() -> ExitCode {
    kormo_experiments::exit_code("ablate", ablate(&Args::parse()))
}

fn sibling_train() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let train = exe.parent().unwrap_or(Path::new(".")).join("train");
    if train.is_file() {
        Ok(train)
    } else {
        Err(format!("no train binary at {} (build it: cargo build -p kormo-train), or pass --train", train.display()))
    }
}

fn ablate(args: &Args) -> Result<(), String> {
    let spec = AblationSpec::load(&args.spec)?;
    let train = match &args.train {
        Some(t) => t.clone(),
        None => sibling_train()?,
    };
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let summaries = run(&spec, &train, &args.out, &mut |line| eprintln!("{line}"))?;
    print!("{}", summary_markdown(&summaries));
    Ok(())
}
