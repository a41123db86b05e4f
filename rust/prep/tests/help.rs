//! `prepare --help` and its commands' help; misspelt options.

use std::process::Command;

/// Exit code and stdout + stderr of the binary `bin` run with `args`.
fn run(bin: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(bin).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[test]
fn help_lists_options_defaults_and_an_example() {
    let (code, text) = run(env!("CARGO_BIN_EXE_prepare"), &["--help"]);
    assert_eq!(code, Some(0), "{text}");
    for needle in ["run", "quality-train", "quality-predict", "Examples:\n  prepare run --source"] {
        assert!(text.contains(needle), "lacks {needle}: {text}");
    }
    let (code, text) = run(env!("CARGO_BIN_EXE_prepare"), &["run", "--help"]);
    assert_eq!(code, Some(0), "{text}");
    for needle in ["--source <NAME=PATHS>", "--out <DIR>", "--config <FILE>", "--tokenizer", "--threads <N>", "--max-files", "Example:\n  prepare run"] {
        assert!(text.contains(needle), "lacks {needle}: {text}");
    }
    let (code, text) = run(env!("CARGO_BIN_EXE_prepare"), &["quality-train", "--help"]);
    assert_eq!(code, Some(0), "{text}");
    for needle in ["--positive", "--negative", "--out <MODEL>", "[default: 5]", "[default: 262144]", "[default: 0.5]", "--text-field", "Example:\n  prepare quality-train"] {
        assert!(text.contains(needle), "lacks {needle}: {text}");
    }
    let (code, text) = run(env!("CARGO_BIN_EXE_prepare"), &["quality-predict", "--help"]);
    assert_eq!(code, Some(0), "{text}");
    for needle in ["--model <MODEL>", "[PATH]...", "Example:\n  prepare quality-predict"] {
        assert!(text.contains(needle), "lacks {needle}: {text}");
    }
}

#[test]
fn a_misspelt_option_gets_a_suggestion_and_exit_code_2() {
    let (code, text) = run(env!("CARGO_BIN_EXE_prepare"), &["run", "--out", "x", "--thread", "2"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("a similar argument exists: '--threads'"), "{text}");
    let (code, text) = run(env!("CARGO_BIN_EXE_prepare"), &["quality-predict", "--modle", "m"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("a similar argument exists: '--model'"), "{text}");
}
