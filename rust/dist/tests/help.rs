//! `dist_selftest --help`; misspelt options.

use std::process::Command;

/// Exit code and stdout + stderr of the binary `bin` run with `args`.
fn run(bin: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(bin).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[test]
fn help_lists_options_defaults_and_an_example() {
    let (code, text) = run(env!("CARGO_BIN_EXE_dist_selftest"), &["--help"]);
    assert_eq!(code, Some(0), "{text}");
    for needle in ["--iterations <N>", "[default: 10]", "--interval-ms <MS>", "[default: 0]", "--timeout-secs <S>", "[default: 60]", "Example"] {
        assert!(text.contains(needle), "lacks {needle}: {text}");
    }
}

#[test]
fn a_misspelt_option_gets_a_suggestion_and_exit_code_2() {
    let (code, text) = run(env!("CARGO_BIN_EXE_dist_selftest"), &["--iteration", "3"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("a similar argument exists: '--iterations'"), "{text}");
}
