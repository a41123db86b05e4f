//! `dist_selftest --help`; misspelt options.

use kormo_testdeps::cli::{help_shows, misspelt_suggests};

#[test]
fn help_lists_options_defaults_and_an_example() {
    help_shows(env!("CARGO_BIN_EXE_dist_selftest"), &["--help"], &["--iterations <N>", "[default: 10]", "--interval-ms <MS>", "[default: 0]", "--timeout-secs <S>", "[default: 60]", "Example"]);
}

#[test]
fn a_misspelt_option_gets_a_suggestion_and_exit_code_2() {
    misspelt_suggests(env!("CARGO_BIN_EXE_dist_selftest"), &["--iteration", "3"], "--iterations");
}
