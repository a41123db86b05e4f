//! `eval --help`; misspelt options; a missing model is a clear error.

use kormo_testdeps::cli::{help_shows, misspelt_suggests, run};

#[test]
fn help_lists_options_defaults_and_an_example() {
    help_shows(env!("CARGO_BIN_EXE_eval"), &["--help"], &["--model", "--tasks <FILES>", "--num-fewshot", "[default: eval-results]", "--preset", "[default: tiny]", "--tokenizer", "--threads <N>", "--backend <NAME>", "[default: auto]", "--seq <N>", "[default: 2048]", "--batch-tokens <N>", "[default: 8192]", "Example:\n  eval --model"]);
}

#[test]
fn a_misspelt_option_gets_a_suggestion_and_exit_code_2() {
    misspelt_suggests(env!("CARGO_BIN_EXE_eval"), &["--model", "m", "--task", "t.json"], "--tasks");
}

#[test]
fn a_missing_model_names_the_path() {
    let (code, out) = run(env!("CARGO_BIN_EXE_eval"), &["--model", "/nonexistent/model", "--tasks", "t.json"]);
    assert_eq!(code, Some(1));
    assert!(out.contains("/nonexistent/model"), "{out}");
}
