//! `kormo-tokenizer --help` and its commands' help; misspelt options.

use kormo_testdeps::cli::{help_shows, misspelt_suggests};

#[test]
fn help_lists_options_defaults_and_an_example() {
    help_shows(env!("CARGO_BIN_EXE_kormo-tokenizer"), &["--help"], &["train", "encode", "bench", "extract-html", "Examples:\n  kormo-tokenizer train"]);
    help_shows(env!("CARGO_BIN_EXE_kormo-tokenizer"), &["train", "--help"], &["--source <NAME=WEIGHT:PATHS>", "--out <DIR>", "[default: 125000]", "[default: 2]", "--threads <N>", "[default: 8000000]", "[default: text]", "Example:\n  kormo-tokenizer train"]);
    help_shows(env!("CARGO_BIN_EXE_kormo-tokenizer"), &["encode", "--help"], &["--tokenizer <FILE>", "--json", "Example:"]);
    help_shows(env!("CARGO_BIN_EXE_kormo-tokenizer"), &["bench", "--help"], &["--tokenizer <FILE>", "--threads", "--repeats", "[default: 3]", "Example:"]);
    help_shows(env!("CARGO_BIN_EXE_kormo-tokenizer"), &["extract-html", "--help"], &["--out <FILE>", "[DIR]...", "Example:"]);
}

#[test]
fn a_misspelt_option_gets_a_suggestion_and_exit_code_2() {
    misspelt_suggests(env!("CARGO_BIN_EXE_kormo-tokenizer"), &["train", "--out", "x", "--vocab", "3"], "--vocab-size");
    misspelt_suggests(env!("CARGO_BIN_EXE_kormo-tokenizer"), &["encode", "--tokeniser", "t"], "--tokenizer");
}
