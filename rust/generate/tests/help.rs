//! `generate --help` and `needle --help`; misspelt options.

use std::process::Command;

/// Exit code and stdout + stderr of the binary `bin` run with `args`.
fn run(bin: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(bin).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[test]
fn help_lists_options_defaults_and_an_example() {
    let (code, text) = run(env!("CARGO_BIN_EXE_generate"), &["--help"]);
    assert_eq!(code, Some(0), "{text}");
    for needle in ["--model", "--prompt <TEXT>", "--chat", "--thinking", "[default: off]", "--system", "[default: 200]", "--temperature", "--top-p", "--seed", "--preset", "--tokenizer", "[default: 4096]", "--threads <N>", "Examples:\n  generate --model"] {
        assert!(text.contains(needle), "lacks {needle}: {text}");
    }
    let (code, text) = run(env!("CARGO_BIN_EXE_needle"), &["--help"]);
    assert_eq!(code, Some(0), "{text}");
    for needle in ["--model", "[default: needle-results]", "[default: en,ko]", "[default: 256,512,1024,2048]", "[default: 0,25,50,75,100]", "--trials", "--seed", "[default: 10]", "--preset", "--tokenizer", "--threads <N>", "Example:\n  needle --model"] {
        assert!(text.contains(needle), "lacks {needle}: {text}");
    }
}

#[test]
fn a_misspelt_option_gets_a_suggestion_and_exit_code_2() {
    let (code, text) = run(env!("CARGO_BIN_EXE_generate"), &["--model", "m", "--prompt", "p", "--max-tokens", "3"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("a similar argument exists: '--max-new-tokens'"), "{text}");
    let (code, text) = run(env!("CARGO_BIN_EXE_needle"), &["--model", "m", "--length", "8"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("a similar argument exists: '--lengths'"), "{text}");
}
