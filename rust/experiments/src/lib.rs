//! The paper's experiments as library code behind small binaries: [`study`] trains several
//! tokenizers from one corpus and compares them by bytes per token on held-out splits.

pub mod ablate;
pub mod study;

/// A binary's exit: success, or its error as one line `command: error` and exit code 1.
pub fn exit_code(command: &str, result: Result<(), String>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{command}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
