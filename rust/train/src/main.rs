//! `train`: runs one stage of a KORMo recipe (see `train --help` and docs/recipes.md).
//!
//! Everything that can go wrong with user input (flags, recipe files, data, checkpoints) ends
//! as one message on stderr and exit code 2; exit code 0 means the stage (or the requested
//! part of it) ran and its checkpoint is on disk. SIGTERM or SIGUSR1 (preemption) make it
//! checkpoint at the end of the current step and exit with code 0; `--resume` continues.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    kormo_train::signals::install_preemption_handlers();
    match kormo_train::cli::run(&args, &mut std::io::stdout()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}
