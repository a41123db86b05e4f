//! The `kormo-tokenizer` binary: train from weighted sources (text and JSONL, with a
//! malformed line), encode from stdin identically to the library, errors as messages.

use std::io::Write;
use std::process::{Command, Stdio};

use kormo_testdeps::test_dir;
use kormo_tokenizer::hf;

const BIN: &str = env!("CARGO_BIN_EXE_kormo-tokenizer");

#[test]
fn train_then_encode_through_the_cli() {
    let dir = test_dir("tokenizer-cli");
    let english =
        "The package manager installs software and resolves dependencies for the user.\n\n"
            .repeat(30);
    let korean: String = (0..30)
        .map(|i| format!("{{\"text\": \"패키지 관리자는 소프트웨어를 설치합니다 {i}\"}}\n"))
        .collect::<String>()
        + "{oops\n";
    std::fs::write(dir.join("en.txt"), english).unwrap();
    std::fs::write(dir.join("ko.jsonl"), korean).unwrap();
    let out = dir.join("tok");
    let run = Command::new(BIN)
        .args(["train", "--vocab-size", "330", "--threads", "2", "--out"])
        .arg(&out)
        .arg("--source")
        .arg(format!("en=80:{}", dir.join("en.txt").display()))
        .arg("--source")
        .arg(format!("ko=20:{}", dir.join("ko.jsonl").display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("ko.jsonl:31: invalid JSON"), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(summary["vocab_size"], 330);
    assert_eq!(summary["padded_vocab_size"], 384);
    let tok = hf::load(&out.join("tokenizer.json")).unwrap();
    assert!(out.join("tokenizer_config.json").exists());

    let text = "<|BOS|>The package manager 패키지 관리자<|EOT|>";
    let mut child = Command::new(BIN)
        .args(["encode", "--json", "--tokenizer"])
        .arg(out.join("tokenizer.json"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let encoded = child.wait_with_output().unwrap();
    let ids: Vec<u32> = serde_json::from_slice(&encoded.stdout).unwrap();
    assert_eq!(ids, tok.encode(text));

    let bad = Command::new(BIN)
        .args(["train", "--out"])
        .arg(&out)
        .args(["--source", "x=abc:nowhere"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("weight \"abc\" is not a number"));

    // An empty source is an error naming it, not a tokenizer with 0 merges.
    std::fs::write(dir.join("empty.txt"), "").unwrap();
    let empty = Command::new(BIN)
        .args(["train", "--vocab-size", "330", "--out"])
        .arg(dir.join("tok-empty"))
        .arg("--source")
        .arg(format!("blank=1:{}", dir.join("empty.txt").display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&empty.stderr);
    assert!(!empty.status.success(), "{stderr}");
    assert!(
        stderr.contains("--source blank: its 1 files hold no text to train on"),
        "{stderr}"
    );
    assert!(!dir.join("tok-empty").exists());
    std::fs::remove_dir_all(dir).unwrap();
}

/// Into a pipe, train writes plain log lines (no bar, no escape codes); `RUST_LOG=warn` keeps
/// only the warnings.
#[test]
fn train_logs_plain_lines_filtered_by_rust_log() {
    let dir = test_dir("tokenizer-cli-log");
    let korean: String = (0..20)
        .map(|i| format!("{{\"text\": \"패키지 관리자는 소프트웨어를 설치합니다 {i}\"}}\n"))
        .collect::<String>()
        + "{oops\n";
    std::fs::write(dir.join("ko.jsonl"), korean).unwrap();
    let train = |rust_log: &str| {
        let run = Command::new(BIN)
            .env("RUST_LOG", rust_log)
            .args(["train", "--vocab-size", "300", "--threads", "1", "--out"])
            .arg(dir.join("tok"))
            .arg("--source")
            .arg(format!("ko=1:{}", dir.join("ko.jsonl").display()))
            .output()
            .unwrap();
        let stderr = String::from_utf8(run.stderr).unwrap();
        assert!(run.status.success(), "{stderr}");
        assert!(!stderr.contains(['\x1b', '\r']), "{stderr:?}");
        stderr
    };
    let info = train("info");
    let warning = "warning: skipped malformed input: ";
    for needle in [warning, "source ko: 1 files", "bpe: "] {
        assert!(info.contains(needle), "`{needle}` in {info}");
    }
    let warn = train("warn");
    assert!(warn.contains(warning), "{warn}");
    assert!(
        !warn.contains("source ko: 1 files") && !warn.contains("bpe: "),
        "{warn}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
