//! The `prepare` binary: quality-train / quality-predict, and `run` with a TOML config,
//! a quality model and a malformed input line, reporting file:line and per-stage counts.

use std::process::Command;

use kormo_testdeps::test_dir;
use kormo_tokenizer::hf;
use kormo_tokenizer::train::{train, TrainConfig, WordCounts};
use kormo_tokenizer::Pattern;

const BIN: &str = env!("CARGO_BIN_EXE_prepare");

#[test]
fn quality_model_and_run_through_the_cli() {
    let dir = test_dir("prepare-cli");
    let good: String = (0..40)
        .map(|i| format!("The Debian project {i} is an association of individuals who make free software and the system for it.\n\n"))
        .collect();
    let bad: String = (0..40)
        .map(|i| {
            format!(
                "buy the cheap pills now {i} and click here to win the casino bonus money fast\n\n"
            )
        })
        .collect();
    std::fs::write(dir.join("good.txt"), &good).unwrap();
    std::fs::write(dir.join("bad.txt"), &bad).unwrap();
    let model = dir.join("quality.kqc");
    let trained = Command::new(BIN)
        .args([
            "quality-train",
            "--buckets",
            "4096",
            "--dim",
            "8",
            "--epochs",
            "20",
            "--positive",
        ])
        .arg(dir.join("good.txt"))
        .arg("--negative")
        .arg(dir.join("bad.txt"))
        .arg("--out")
        .arg(&model)
        .output()
        .unwrap();
    assert!(
        trained.status.success(),
        "{}",
        String::from_utf8_lossy(&trained.stderr)
    );
    assert!(String::from_utf8_lossy(&trained.stderr).contains("training accuracy 1.000"));
    let predicted = Command::new(BIN)
        .args(["quality-predict", "--model"])
        .arg(&model)
        .arg(dir.join("bad.txt"))
        .output()
        .unwrap();
    let first: serde_json::Value =
        serde_json::from_slice(predicted.stdout.split(|&b| b == b'\n').next().unwrap()).unwrap();
    assert!(first["score"].as_f64().unwrap() < 0.5);

    let mut counts = WordCounts::default();
    counts.add_text(&good, Pattern::Qwen2, &[], usize::MAX);
    counts.add_text(&bad, Pattern::Qwen2, &[], usize::MAX);
    let tok = train(&counts.counts, &TrainConfig::kormo(500)).unwrap();
    hf::save(&tok, &dir.join("tok")).unwrap();

    // Input: unique good docs (numbered) and spam, as JSONL with a custom field and a bad line.
    let mut jsonl = String::new();
    for i in 0..10 {
        let text = format!("Volunteer number {i} maintains packages of the archive and answers the questions of users.");
        jsonl.push_str(&serde_json::json!({ "body": text }).to_string());
        jsonl.push('\n');
        let spam = format!(
            "buy the cheap pills now {i} and click here to win the casino bonus money fast tonight"
        );
        jsonl.push_str(&serde_json::json!({ "body": spam }).to_string());
        jsonl.push('\n');
    }
    jsonl.push_str("{\"text\": \"no body field\"}\n");
    std::fs::write(dir.join("in.jsonl"), jsonl).unwrap();
    let config = format!(
        "tokenizer = {:?}\ntext_field = \"body\"\n[filters]\nlanguages = [\"en\"]\nmin_language_score = 0.3\n[dedup]\nexpected_ngrams = 10000\n[quality]\nmodel = {:?}\nthreshold = 0.5\n",
        dir.join("tok/tokenizer.json").display().to_string(),
        model.display().to_string()
    );
    std::fs::write(dir.join("prep.toml"), config).unwrap();
    let out = dir.join("out");
    let run = Command::new(BIN)
        .args(["run", "--threads", "2", "--config"])
        .arg(dir.join("prep.toml"))
        .arg("--source")
        .arg(format!("web={}", dir.join("in.jsonl").display()))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains("in.jsonl:21: no field \"body\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("MB/s") && stderr.contains("ETA"),
        "{stderr}"
    );
    // Into a pipe: plain log lines, no progress bar.
    assert!(!stderr.contains(['\x1b', '\r']), "{stderr:?}");
    let counts: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(counts["web"]["malformed"], 1, "{counts}");
    assert_eq!(counts["web"]["quality_removed"], 10);
    assert_eq!(counts["web"]["documents_written"], 10);
    assert!(out.join("web/manifest.json").exists() && out.join("report.json").exists());

    let bad_args = Command::new(BIN)
        .args(["run", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!bad_args.status.success());
    assert!(String::from_utf8_lossy(&bad_args.stderr).contains("at least one --source"));
    std::fs::remove_dir_all(dir).unwrap();
}

/// `prepare dedup` from the command line: an HTML page and a blank-line text file, gzip output,
/// a config's [dedup] table overridden by options, and errors that name the input.
#[test]
fn dedup_through_the_cli() {
    let dir = test_dir("prepare-cli-dedup");
    const NEW: &str = "these new words are not found anywhere else in the corpus, so they stay here.";
    let para = "Debian은 자유 운영체제입니다: apt-get으로 설치하고, 업그레이드하며, 관리합니다 (쉽게).";
    std::fs::write(dir.join("page.html"), format!("<html><body><p>{para}</p><p>ok</p></body></html>")).unwrap();
    std::fs::write(dir.join("docs.txt"), format!("{para}\n{NEW}\n\nanother document here\n")).unwrap();
    std::fs::write(dir.join("prep.toml"), "[dedup]\nthreshold = 0.1\nexpected_ngrams = 1000\n").unwrap();
    let out = dir.join("out");
    let files = format!("a={},{}", dir.join("page.html").display(), dir.join("docs.txt").display());
    let ran = Command::new(BIN)
        .args(["dedup", "--source", &files, "--threshold", "0.8", "--gzip", "--threads", "2"])
        .arg("--config")
        .arg(dir.join("prep.toml"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
    let decisions = std::fs::read_to_string(out.join("a.decisions.jsonl")).unwrap();
    let decisions: Vec<serde_json::Value> = decisions.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(decisions.len(), 3);
    // The paragraph again in docs.txt is removed; the new one keeps the document.
    assert_eq!(decisions[1]["removed"], serde_json::json!([0]));
    assert_eq!(decisions[1]["emptied"], false);
    let gz = std::fs::read(out.join("a.jsonl.gz")).unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut text).unwrap();
    let kept: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(kept.len(), 3);
    assert_eq!(kept[1]["text"], format!("\n{NEW}\n")); // the text reader keeps the line end
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["settings"]["dedup"]["threshold"], 0.8);
    assert_eq!(report["sources"]["a"]["paragraphs_removed"], 1);
    let missing = Command::new(BIN)
        .args(["dedup", "--source", "a=/nonexistent/in.jsonl", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/in.jsonl"));
}
