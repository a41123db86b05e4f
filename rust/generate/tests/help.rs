//! `generate --help`, `needle --help` and `serve --help`; misspelt options.

use kormo_testdeps::cli::{help_shows, misspelt_suggests};

#[test]
fn help_lists_options_defaults_and_an_example() {
    help_shows(env!("CARGO_BIN_EXE_generate"), &["--help"], &["--model", "--prompt <TEXT>", "--chat", "--thinking", "[default: off]", "--system", "[default: 200]", "--temperature", "--top-p", "--seed", "--preset", "--tokenizer", "[default: 4096]", "--threads <N>", "Examples:\n  generate --model"]);
    help_shows(env!("CARGO_BIN_EXE_needle"), &["--help"], &["--model", "[default: needle-results]", "[default: en,ko]", "[default: 256,512,1024,2048]", "[default: 0,25,50,75,100]", "--trials", "--seed", "[default: 10]", "--preset", "--tokenizer", "--threads <N>", "Example:\n  needle --model"]);
    help_shows(env!("CARGO_BIN_EXE_serve"), &["--help"], &["--model", "[default: 127.0.0.1:8000]", "--name", "[default: 4096]", "--max-requests", "--preset", "--tokenizer", "--threads <N>", "/v1/chat/completions", "Example:\n  serve --model"]);
}

#[test]
fn a_misspelt_option_gets_a_suggestion_and_exit_code_2() {
    misspelt_suggests(env!("CARGO_BIN_EXE_generate"), &["--model", "m", "--prompt", "p", "--max-tokens", "3"], "--max-new-tokens");
    misspelt_suggests(env!("CARGO_BIN_EXE_needle"), &["--model", "m", "--length", "8"], "--lengths");
}
