//! `bench --help` and `model_step --help` (no device needed: options are parsed first); misspelt options.

use std::process::Command;

/// Exit code and stdout + stderr of the binary `bin` run with `args`.
fn run(bin: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(bin).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[test]
fn help_lists_options_defaults_and_an_example() {
    let (code, text) = run(env!("CARGO_BIN_EXE_bench"), &["--help"]);
    assert_eq!(code, Some(0), "{text}");
    for needle in ["--quick", "Example:\n  bench --quick"] {
        assert!(text.contains(needle), "lacks {needle}: {text}");
    }
    let (code, text) = run(env!("CARGO_BIN_EXE_model_step"), &["--help"]);
    assert_eq!(code, Some(0), "{text}");
    for needle in ["--model <NAME>", "[default: proxy-1b]", "--seq <N>", "[default: 4096]", "--batch", "--steps", "[default: 5]", "Example:\n  model_step"] {
        assert!(text.contains(needle), "lacks {needle}: {text}");
    }
}

#[test]
fn a_misspelt_option_gets_a_suggestion_and_exit_code_2() {
    let (code, text) = run(env!("CARGO_BIN_EXE_bench"), &["--quik"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("a similar argument exists: '--quick'"), "{text}");
    let (code, text) = run(env!("CARGO_BIN_EXE_model_step"), &["--step", "3"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("a similar argument exists: '--steps'"), "{text}");
}
