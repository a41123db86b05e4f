//! `plot --help`; misspelt options.

use kormo_testdeps::cli::{help_shows, misspelt_suggests};

#[test]
fn help_lists_options_defaults_and_an_example() {
    help_shows(env!("CARGO_BIN_EXE_plot"), &["--help"], &["<RUN_DIR>", "--out <DIR>", "[default: RUN_DIR/plots]", "Example:\n  plot runs/tiny"]);
}

#[test]
fn a_misspelt_option_gets_a_suggestion_and_exit_code_2() {
    misspelt_suggests(env!("CARGO_BIN_EXE_plot"), &["runs/x", "--output", "y"], "--out");
}
