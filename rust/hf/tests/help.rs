//! `hf --help` and its commands' help; misspelt options.

use kormo_testdeps::cli::{help_shows, misspelt_suggests};

#[test]
fn help_lists_options_defaults_and_an_example() {
    help_shows(env!("CARGO_BIN_EXE_hf"), &["--help"], &["export", "import", "logits", "Examples:\n  hf export"]);
    help_shows(env!("CARGO_BIN_EXE_hf"), &["export", "--help"], &["--model <CHECKPOINT_OR_HF_FOLDER>", "--out <DIR>", "[default: kormo]", "[default: bf16]", "[default: 5GB]", "[default: 4096]", "[default: tiny]", "--tokenizer", "Example:\n  hf export"]);
    help_shows(env!("CARGO_BIN_EXE_hf"), &["import", "--help"], &["--folder <HF_FOLDER>", "--out <CHECKPOINT_DIR>", "Example:\n  hf import"]);
    help_shows(env!("CARGO_BIN_EXE_hf"), &["logits", "--help"], &["--model", "--tokens <IDS>", "--out <FILE>", "--preset", "Example:\n  hf logits"]);
}

#[test]
fn a_misspelt_option_gets_a_suggestion_and_exit_code_2() {
    misspelt_suggests(env!("CARGO_BIN_EXE_hf"), &["export", "--model", "m", "--out", "o", "--dtyp", "f32"], "--dtype");
}
