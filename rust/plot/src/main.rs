//! `plot`: training curves of every stage of a run directory as PNGs (`plot --help`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

/// Plots the training curves of every stage in RUN_DIR (its `<stage>/metrics.jsonl` files) as
/// PNGs: loss, learning rate, gradient norm, throughput and any eval metric. Prints the paths
/// written.
#[derive(Parser)]
#[command(name = "plot", disable_version_flag = true, after_help = "\
Example:
  plot runs/tiny --out runs/tiny/plots")]
struct Cli {
    /// A run directory written by `train --run-dir`
    #[arg(value_name = "RUN_DIR")]
    run_dir: PathBuf,
    /// Where the PNGs go [default: RUN_DIR/plots]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let run_dir = user_path(&cli.run_dir);
    let out = cli.out.map_or_else(|| run_dir.join("plots"), |o| user_path(&o));
    match kormo_plot::metrics::plot_run(&run_dir, &out) {
        Ok(paths) => {
            for path in paths {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("plot: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Relative paths are relative to where the user ran the command: `BUILD_WORKING_DIRECTORY`
/// under `bazel run` (whose process runs in the runfiles tree), else the current directory.
fn user_path(path: &Path) -> PathBuf {
    match std::env::var_os("BUILD_WORKING_DIRECTORY") {
        Some(dir) if path.is_relative() => Path::new(&dir).join(path),
        _ => path.to_path_buf(),
    }
}
