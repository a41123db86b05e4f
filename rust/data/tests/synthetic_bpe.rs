//! The built-in synthetic corpora encoded with a trained BPE tokenizer instead of bytes: the
//! same text (decoded, it matches the byte-level corpus exactly), fewer tokens, chat spans on
//! the same text, shards stamped with the tokenizer's fingerprint and padded vocabulary, the
//! cache regenerated when the vocabulary changes, and a tokenizer lacking a special refused.

use kormo_data::synthetic::{ensure, generate, SyntheticKind, SyntheticSpec, MANIFEST_FILE};
use kormo_data::{ByteVocab, Vocabulary};
use kormo_shards::Manifest;
use kormo_tokenizer::train::{train, TrainConfig, WordCounts, KORMO_SPECIALS};
use kormo_tokenizer::{Pattern, Tokenizer};

const KINDS: [SyntheticKind; 4] = [
    SyntheticKind::BilingualProse,
    SyntheticKind::LongContext,
    SyntheticKind::Reasoning,
    SyntheticKind::Chat,
];

fn spec(kind: SyntheticKind, seed: u64) -> SyntheticSpec {
    SyntheticSpec {
        kind,
        documents: 30,
        seed,
    }
}

/// A BPE tokenizer of `vocab_size` ids with `specials`, trained on the synthetic text of seed 1.
fn trained_tokenizer(vocab_size: usize, specials: &[&str]) -> Tokenizer {
    let specials: Vec<String> = specials.iter().map(|s| s.to_string()).collect();
    let mut counts = WordCounts::default();
    for kind in KINDS {
        for doc in generate(&spec(kind, 1), &Vocabulary::bytes()) {
            let text = ByteVocab::decode(&doc.tokens);
            counts.add_text(&text, Pattern::Qwen2, &specials, usize::MAX);
        }
    }
    let config = TrainConfig {
        specials,
        ..TrainConfig::kormo(vocab_size)
    };
    train(&counts.counts, &config).unwrap()
}

#[test]
fn synthetic_corpora_encode_with_a_bpe_tokenizer() {
    let tokenizer = trained_tokenizer(640, &KORMO_SPECIALS);
    let vocab = Vocabulary::from_tokenizer(tokenizer.clone(), "test tokenizer").unwrap();
    assert_eq!(vocab.size(), 640);
    assert_eq!(vocab.fingerprint(), tokenizer.fingerprint());
    assert_eq!(vocab.ids().think, tokenizer.special_id("<think>").unwrap());
    assert_eq!(
        vocab.ids().pad,
        vocab.ids().eot,
        "no <|pad|>: pad falls back to <|EOT|>"
    );
    for kind in KINDS {
        // Seed 2: text the tokenizer was not trained on.
        let bpe = generate(&spec(kind, 2), &vocab);
        let bytes = generate(&spec(kind, 2), &Vocabulary::bytes());
        let (bpe_tokens, byte_tokens): (usize, usize) = (
            bpe.iter().map(|d| d.tokens.len()).sum(),
            bytes.iter().map(|d| d.tokens.len()).sum(),
        );
        // Digits stay single tokens under the Qwen2 split, so arithmetic compresses least.
        assert!(
            bpe_tokens * 4 < byte_tokens * 3,
            "{kind:?}: BPE {bpe_tokens} tokens vs {byte_tokens} bytes"
        );
        for (b, y) in bpe.iter().zip(&bytes) {
            assert!(b.tokens.iter().all(|&t| t < vocab.size()));
            assert_eq!(
                tokenizer.decode(&b.tokens, false).unwrap(),
                ByteVocab::decode(&y.tokens)
            );
            assert_eq!(b.spans.len(), y.spans.len());
            for (&(bs, be), &(ys, ye)) in b.spans.iter().zip(&y.spans) {
                let span = |s: u32, e: u32| {
                    tokenizer
                        .decode(&b.tokens[s as usize..e as usize], false)
                        .unwrap()
                };
                assert_eq!(
                    span(bs, be),
                    ByteVocab::decode(&y.tokens[ys as usize..ye as usize])
                );
            }
        }
    }
}

#[test]
fn synthetic_shards_carry_the_tokenizer_and_regenerate_when_it_changes() {
    let base = std::env::var_os("TEST_TMPDIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base
        .join(format!("kormo-synth-bpe-{}", std::process::id()))
        .join("web");
    let _ = std::fs::remove_dir_all(&dir);
    let vocab = Vocabulary::from_tokenizer(trained_tokenizer(600, &KORMO_SPECIALS), "t").unwrap();
    let spec = spec(SyntheticKind::BilingualProse, 3);
    assert!(ensure(&dir, &spec, &vocab).unwrap());
    assert!(!ensure(&dir, &spec, &vocab).unwrap(), "cached");
    let manifest = Manifest::load(dir.join(MANIFEST_FILE)).unwrap();
    assert_eq!(manifest.tokenizer_fingerprint, vocab.fingerprint());
    assert_eq!(
        manifest.vocab_size, 640,
        "600 ids padded to a multiple of 128"
    );
    let shards = manifest.open_shards(&dir).unwrap();
    assert_eq!(
        shards[0].document(4).unwrap().tokens,
        &generate(&spec, &vocab)[4].tokens[..]
    );
    assert!(
        ensure(&dir, &spec, &Vocabulary::bytes()).unwrap(),
        "another vocabulary regenerates"
    );
    let manifest = Manifest::load(dir.join(MANIFEST_FILE)).unwrap();
    assert_eq!(manifest.tokenizer_fingerprint, ByteVocab::FINGERPRINT);
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}

#[test]
fn a_tokenizer_without_a_needed_special_is_refused_by_name() {
    let tokenizer = trained_tokenizer(400, &["<|BOS|>", "<|EOT|>", "<think>", "</think>"]);
    let err = Vocabulary::from_tokenizer(tokenizer, "runs/tok/tokenizer.json").unwrap_err();
    assert!(
        err.0.contains("runs/tok/tokenizer.json") && err.0.contains("<|BOT|>"),
        "{err}"
    );
}
