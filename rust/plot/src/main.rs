//! `plot RUN_DIR [--out DIR]`: training curves of every stage in RUN_DIR (its
//! `<stage>/metrics.jsonl` files) as PNGs in DIR (default RUN_DIR/plots): loss, learning rate,
//! gradient norm, throughput and any eval metric.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

const USAGE: &str = "usage: plot RUN_DIR [--out DIR]";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("plot: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> Result<(), String> {
    let (run_dir, out) = match args.as_slice() {
        [flag] if flag == "--help" || flag == "-h" => {
            println!("{USAGE}");
            return Ok(());
        }
        [dir] if !dir.starts_with("--") => (user_path(dir), None),
        [dir, flag, out] if flag == "--out" && !dir.starts_with("--") => (user_path(dir), Some(user_path(out))),
        [flag, out, dir] if flag == "--out" && !dir.starts_with("--") => (user_path(dir), Some(user_path(out))),
        _ => return Err(format!("expected a run directory\n{USAGE}")),
    };
    let out = out.unwrap_or_else(|| run_dir.join("plots"));
    for path in kormo_plot::metrics::plot_run(&run_dir, &out)? {
        println!("{}", path.display());
    }
    Ok(())
}

/// Relative paths are relative to where the user ran the command: `BUILD_WORKING_DIRECTORY`
/// under `bazel run` (whose process runs in the runfiles tree), else the current directory.
fn user_path(text: &str) -> PathBuf {
    match std::env::var_os("BUILD_WORKING_DIRECTORY") {
        Some(dir) if Path::new(text).is_relative() => Path::new(&dir).join(text),
        _ => PathBuf::from(text),
    }
}
