//! `curate --help`; misspelt options.

use kormo_testdeps::cli::{help_shows, misspelt_suggests};

#[test]
fn help_lists_options_and_an_example() {
    help_shows(env!("CARGO_BIN_EXE_curate"), &["--help"], &["--config <FILE>", "--input <PATH>", "--out <DIR>", "--max-samples <N>", "--jobs <N>", "[default: 1]", "progress.jsonl", "curated.jsonl", "report.json", "Example:\n  curate --config"]);
}

#[test]
fn a_misspelt_option_gets_a_suggestion_and_exit_code_2() {
    misspelt_suggests(env!("CARGO_BIN_EXE_curate"), &["--config", "c", "--input", "i", "--out", "o", "--max-sample", "3"], "--max-samples");
}
