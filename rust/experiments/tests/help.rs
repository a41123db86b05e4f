//! `tokenizer-study --help`; misspelt options.

use kormo_testdeps::cli::{help_shows, misspelt_suggests};

#[test]
fn study_help_lists_options_and_an_example() {
    help_shows(
        env!("CARGO_BIN_EXE_tokenizer-study"),
        &["--help"],
        &["<SPEC>", "--out <DIR>", "--threads <N>", "Example:\n  tokenizer-study configs/study/debian_faq.toml"],
    );
}

#[test]
fn study_misspelt_option_gets_a_suggestion() {
    misspelt_suggests(env!("CARGO_BIN_EXE_tokenizer-study"), &["x.toml", "--output", "y"], "--out");
}

#[test]
fn ablate_help_lists_options_and_an_example() {
    help_shows(env!("CARGO_BIN_EXE_ablate"), &["--help"], &["<SPEC>", "--out <DIR>", "--train <FILE>", "Example:\n  ablate ablation.toml"]);
}
