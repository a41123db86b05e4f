//! `prepare --help` and its commands' help; misspelt options.

use kormo_testdeps::cli::{help_shows, misspelt_suggests};

#[test]
fn help_lists_options_defaults_and_an_example() {
    help_shows(env!("CARGO_BIN_EXE_prepare"), &["--help"], &["run", "dedup", "quality-train", "quality-predict", "Examples:\n  prepare run --source"]);
    help_shows(env!("CARGO_BIN_EXE_prepare"), &["dedup", "--help"], &["--source <NAME=PATHS>", "--out <DIR>", "--ngram-size <N>", "--threshold <X>", "--false-positive-rate <P>", "--filter-bytes", "--gzip", "decisions.jsonl", "Example:\n  prepare dedup"]);
    help_shows(env!("CARGO_BIN_EXE_prepare"), &["run", "--help"], &["--source <NAME=PATHS>", "--out <DIR>", "--config <FILE>", "--tokenizer", "--threads <N>", "--max-files", "Example:\n  prepare run"]);
    help_shows(env!("CARGO_BIN_EXE_prepare"), &["quality-train", "--help"], &["--positive", "--negative", "--out <MODEL>", "[default: 5]", "[default: 262144]", "[default: 0.5]", "--text-field", "Example:\n  prepare quality-train"]);
    help_shows(env!("CARGO_BIN_EXE_prepare"), &["quality-predict", "--help"], &["--model <MODEL>", "[PATH]...", "Example:\n  prepare quality-predict"]);
}

#[test]
fn a_misspelt_option_gets_a_suggestion_and_exit_code_2() {
    misspelt_suggests(env!("CARGO_BIN_EXE_prepare"), &["run", "--out", "x", "--thread", "2"], "--threads");
    misspelt_suggests(env!("CARGO_BIN_EXE_prepare"), &["quality-predict", "--modle", "m"], "--model");
}
