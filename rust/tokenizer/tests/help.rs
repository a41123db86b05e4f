//! `kormo-tokenizer --help` and its commands' help; misspelt options.

use std::process::Command;

/// Exit code and stdout + stderr of the binary `bin` run with `args`.
fn run(bin: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(bin).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[test]
fn help_lists_options_defaults_and_an_example() {
    let (code, text) = run(env!("CARGO_BIN_EXE_kormo-tokenizer"), &["--help"]);
    assert_eq!(code, Some(0), "{text}");
    for needle in ["train", "encode", "bench", "extract-html", "Examples:\n  kormo-tokenizer train"] {
        assert!(text.contains(needle), "lacks {needle}: {text}");
    }
    let (code, text) = run(env!("CARGO_BIN_EXE_kormo-tokenizer"), &["train", "--help"]);
    assert_eq!(code, Some(0), "{text}");
    for needle in ["--source <NAME=WEIGHT:PATHS>", "--out <DIR>", "[default: 125000]", "[default: 2]", "--threads <N>", "[default: 8000000]", "[default: text]", "Example:\n  kormo-tokenizer train"] {
        assert!(text.contains(needle), "lacks {needle}: {text}");
    }
    let (code, text) = run(env!("CARGO_BIN_EXE_kormo-tokenizer"), &["encode", "--help"]);
    assert_eq!(code, Some(0), "{text}");
    for needle in ["--tokenizer <FILE>", "--json", "Example:"] {
        assert!(text.contains(needle), "lacks {needle}: {text}");
    }
    let (code, text) = run(env!("CARGO_BIN_EXE_kormo-tokenizer"), &["bench", "--help"]);
    assert_eq!(code, Some(0), "{text}");
    for needle in ["--tokenizer <FILE>", "--threads", "--repeats", "[default: 3]", "Example:"] {
        assert!(text.contains(needle), "lacks {needle}: {text}");
    }
    let (code, text) = run(env!("CARGO_BIN_EXE_kormo-tokenizer"), &["extract-html", "--help"]);
    assert_eq!(code, Some(0), "{text}");
    for needle in ["--out <FILE>", "[DIR]...", "Example:"] {
        assert!(text.contains(needle), "lacks {needle}: {text}");
    }
}

#[test]
fn a_misspelt_option_gets_a_suggestion_and_exit_code_2() {
    let (code, text) = run(env!("CARGO_BIN_EXE_kormo-tokenizer"), &["train", "--out", "x", "--vocab", "3"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("a similar argument exists: '--vocab-size'"), "{text}");
    let (code, text) = run(env!("CARGO_BIN_EXE_kormo-tokenizer"), &["encode", "--tokeniser", "t"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("a similar argument exists: '--tokenizer'"), "{text}");
}
