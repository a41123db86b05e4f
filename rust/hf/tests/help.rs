//! `hf --help` and its commands' help; misspelt options.

use std::process::Command;

/// Exit code and stdout + stderr of the binary `bin` run with `args`.
fn run(bin: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(bin).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[test]
fn help_lists_options_defaults_and_an_example() {
    let (code, text) = run(env!("CARGO_BIN_EXE_hf"), &["--help"]);
    assert_eq!(code, Some(0), "{text}");
    for needle in ["export", "import", "logits", "Examples:\n  hf export"] {
        assert!(text.contains(needle), "lacks {needle}: {text}");
    }
    let (code, text) = run(env!("CARGO_BIN_EXE_hf"), &["export", "--help"]);
    assert_eq!(code, Some(0), "{text}");
    for needle in ["--model <CHECKPOINT_OR_HF_FOLDER>", "--out <DIR>", "[default: kormo]", "[default: bf16]", "[default: 5GB]", "[default: 4096]", "[default: tiny]", "--tokenizer", "Example:\n  hf export"] {
        assert!(text.contains(needle), "lacks {needle}: {text}");
    }
    let (code, text) = run(env!("CARGO_BIN_EXE_hf"), &["import", "--help"]);
    assert_eq!(code, Some(0), "{text}");
    for needle in ["--folder <HF_FOLDER>", "--out <CHECKPOINT_DIR>", "Example:\n  hf import"] {
        assert!(text.contains(needle), "lacks {needle}: {text}");
    }
    let (code, text) = run(env!("CARGO_BIN_EXE_hf"), &["logits", "--help"]);
    assert_eq!(code, Some(0), "{text}");
    for needle in ["--model", "--tokens <IDS>", "--out <FILE>", "--preset", "Example:\n  hf logits"] {
        assert!(text.contains(needle), "lacks {needle}: {text}");
    }
}

#[test]
fn a_misspelt_option_gets_a_suggestion_and_exit_code_2() {
    let (code, text) = run(env!("CARGO_BIN_EXE_hf"), &["export", "--model", "m", "--out", "o", "--dtyp", "f32"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("a similar argument exists: '--dtype'"), "{text}");
}
