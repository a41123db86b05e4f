//! `bench --help` and `model_step --help` (no device needed: options are parsed first); misspelt options.

use kormo_testdeps::cli::{help_shows, misspelt_suggests};

#[test]
fn help_lists_options_defaults_and_an_example() {
    help_shows(env!("CARGO_BIN_EXE_bench"), &["--help"], &["--quick", "--only <SUBSTRING>", "--iters <N>", "Examples:\n  bench --quick"]);
    help_shows(env!("CARGO_BIN_EXE_model_step"), &["--help"], &["--model <NAME>", "[default: proxy-1b]", "--seq <N>", "[default: 4096]", "--batch", "--steps", "[default: 5]", "Example:\n  model_step"]);
}

#[test]
fn a_misspelt_option_gets_a_suggestion_and_exit_code_2() {
    misspelt_suggests(env!("CARGO_BIN_EXE_bench"), &["--quik"], "--quick");
    misspelt_suggests(env!("CARGO_BIN_EXE_model_step"), &["--step", "3"], "--steps");
}
