//! Compatibility with Hugging Face `tokenizers`, both ways, through tests/hf_compat.py:
//! a tokenizer trained by kormo and saved as tokenizer.json encodes identically in
//! `tokenizers`, and tokenizers trained by `tokenizers` (Qwen2 style with its NFC normalizer,
//! and GPT-2 style) load into kormo and encode identically there. The texts: the Debian FAQ in
//! English and Korean plus generated adversarial strings (every whitespace kind, newlines,
//! contractions, digits, Hangul, marks, emoji, special tokens, random code points of every
//! general category). The FAQ and the python3 with `tokenizers` come from the build
//! (kormo_testdeps).

use std::path::{Path, PathBuf};

mod common;

use common::adversarial_texts;
use kormo_testdeps::test_dir;
use kormo_tokenizer::bytelevel::bytes_to_string;
use kormo_tokenizer::train::{count_documents, train, TrainConfig};
use kormo_tokenizer::{hf, pre_tokens, Normalizer, Pattern, Tokenizer};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/hf_compat.py");

fn cases_json(tok: Option<&Tokenizer>, texts: &[String]) -> String {
    let cases: Vec<serde_json::Value> = texts
        .iter()
        .map(|t| {
            let mut case = serde_json::json!({ "text": t });
            if let Some(tok) = tok {
                case["ids"] = serde_json::json!(tok.encode(t));
                if !tok.specials().iter().any(|s| t.contains(&s.content)) {
                    let pieces: Vec<String> = pre_tokens(t, Pattern::Qwen2)
                        .map(|p| bytes_to_string(p.as_bytes()))
                        .collect();
                    case["pieces"] = serde_json::json!(pieces);
                }
            }
            case
        })
        .collect();
    serde_json::to_string(&cases).unwrap()
}

/// Runs the script with the build's python3 (which has `tokenizers`); its stdout.
fn run_script(args: &[&Path]) -> String {
    let output = kormo_testdeps::python(&["tokenizers"])
        .arg(SCRIPT)
        .args(args)
        .output()
        .expect("running the checked python3");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "hf_compat.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn texts_and_corpus() -> (Vec<String>, String) {
    let mut texts = adversarial_texts(3000);
    let (english, korean) = common::faq_documents();
    texts.extend(english);
    texts.extend(korean);
    let corpus = texts.join("\n\n");
    (texts, corpus)
}

#[test]
fn kormo_trained_tokenizer_encodes_identically_in_hf_tokenizers() {
    let (texts, _) = texts_and_corpus();
    let config = TrainConfig::kormo(3000);
    let counts = count_documents(
        texts.iter().cloned(),
        Pattern::Qwen2,
        &config.specials,
        2,
        usize::MAX,
    );
    let tok = train(&counts.counts, &config).unwrap();
    assert!(
        tok.vocab_size() > 1000,
        "trained only {} tokens",
        tok.vocab_size()
    );
    let dir = test_dir("hf-compat-kormo");
    hf::save(&tok, &dir).unwrap();
    let cases = dir.join("cases.json");
    std::fs::write(&cases, cases_json(Some(&tok), &texts)).unwrap();
    let out = run_script(&[Path::new("check"), &dir.join("tokenizer.json"), &cases]);
    assert!(
        out.contains(&format!("{0}/{0} cases identical", texts.len())),
        "{out}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// Trains with `tokenizers` in `style` ("qwen2" or "gpt2"), loads into kormo, compares ids.
fn hf_trained_tokenizer_encodes_identically_in_kormo(
    style: &str,
    pattern: Pattern,
    normalizer: Normalizer,
) {
    let (texts, corpus_text) = texts_and_corpus();
    let dir = test_dir(&format!("hf-compat-{style}"));
    let corpus_path: PathBuf = dir.join("corpus.txt");
    std::fs::write(&corpus_path, corpus_text).unwrap();
    let cases = dir.join("cases.json");
    std::fs::write(&cases, cases_json(None, &texts)).unwrap();
    let out_json = dir.join("hf-tokenizer.json");
    run_script(&[
        Path::new("train"),
        Path::new(style),
        &corpus_path,
        Path::new("3000"),
        &out_json,
        &cases,
    ]);
    let tok = hf::load(&out_json).unwrap();
    assert_eq!(tok.vocab_size(), 3000);
    assert_eq!((tok.pattern(), tok.normalizer()), (pattern, normalizer));
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&cases).unwrap()).unwrap();
    let mut mismatches = 0;
    for case in &cases {
        let text = case["text"].as_str().unwrap();
        let expected: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        if tok.encode(text) != expected {
            mismatches += 1;
            if mismatches <= 5 {
                eprintln!(
                    "mismatch on {text:?}:\n  kormo {:?}\n  hf    {expected:?}",
                    tok.encode(text)
                );
            }
        }
    }
    assert_eq!(
        mismatches,
        0,
        "{mismatches}/{} texts encode differently",
        cases.len()
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn hf_trained_qwen2_style_tokenizer_with_nfc_encodes_identically_in_kormo() {
    hf_trained_tokenizer_encodes_identically_in_kormo("qwen2", Pattern::Qwen2, Normalizer::Nfc);
}

#[test]
fn hf_trained_gpt2_style_tokenizer_encodes_identically_in_kormo() {
    hf_trained_tokenizer_encodes_identically_in_kormo("gpt2", Pattern::Gpt2, Normalizer::None);
}
