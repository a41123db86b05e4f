//! The loader over real shard files: packing invariants, masks, mixture determinism, resume.

use kormo_data::synthetic::{self, SyntheticKind, SyntheticSpec};
use kormo_data::{ByteVocab, Loader, PackingOptions, PositionMode, Source, Vocabulary};
use std::path::PathBuf;

fn scratch(name: &str) -> PathBuf {
    let base = std::env::var_os("TEST_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("kormo-loader-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn source(
    root: &std::path::Path,
    name: &str,
    kind: SyntheticKind,
    weight: f64,
    documents: u64,
) -> Source {
    let dir = root.join(name);
    synthetic::ensure(
        &dir,
        &SyntheticSpec {
            kind,
            documents,
            seed: 11,
        },
        &Vocabulary::bytes(),
    )
    .unwrap();
    Source::open(name, weight, &dir.join(synthetic::MANIFEST_FILE)).unwrap()
}

fn opts(seq_len: usize, mask_think: bool) -> PackingOptions {
    PackingOptions {
        seq_len,
        specials: ByteVocab::specials(),
        positions: PositionMode::Row,
        mask_think,
    }
}

#[test]
fn rows_are_the_concatenated_document_stream() {
    let root = scratch("stream");
    let prose = source(&root, "prose", SyntheticKind::BilingualProse, 1.0, 30);
    let expected: Vec<u32> = synthetic::generate(
        &SyntheticSpec {
            kind: SyntheticKind::BilingualProse,
            documents: 30,
            seed: 11,
        },
        &Vocabulary::bytes(),
    )
    .into_iter()
    .flat_map(|d| {
        std::iter::once(ByteVocab::BOS)
            .chain(d.tokens)
            .chain(std::iter::once(ByteVocab::EOT))
    })
    .collect();
    let mut loader = Loader::new(vec![prose], opts(64, false), 3).unwrap();
    let rows = loader.next_rows(40).unwrap();
    assert_eq!(
        rows.tokens,
        expected[..40 * 64],
        "documents straddle rows, nothing is skipped"
    );
    for row in 0..rows.rows {
        let r = row * 64..(row + 1) * 64;
        let tokens = &rows.tokens[r.clone()];
        // Document id = running BOS count; positions run across the row.
        let mut bos = 0;
        for (i, &t) in tokens.iter().enumerate() {
            bos += (t == ByteVocab::BOS) as u32;
            assert_eq!(rows.doc_ids[r.start + i], bos);
            assert_eq!(rows.positions[r.start + i], i as u32);
        }
        assert_eq!(&rows.targets[r.start..r.end - 1], &tokens[1..]);
        assert_eq!(rows.loss_weights[r.end - 1], 0.0);
        for i in 0..63 {
            let w = rows.loss_weights[r.start + i];
            assert_eq!(
                w,
                if tokens[i + 1] == ByteVocab::BOS {
                    0.0
                } else {
                    1.0
                }
            );
        }
    }
}

#[test]
fn sft_trains_only_on_assistant_turns() {
    let root = scratch("sft");
    let chat = source(&root, "chat", SyntheticKind::Chat, 1.0, 50);
    let mut loader = Loader::new(vec![chat], opts(128, false), 1).unwrap();
    let rows = loader.next_rows(20).unwrap();
    let trained: Vec<u32> = (0..rows.tokens.len())
        .filter(|&i| rows.loss_weights[i] > 0.0)
        .map(|i| rows.targets[i])
        .collect();
    assert!(!trained.is_empty());
    let text = ByteVocab::decode(&trained);
    assert!(
        !text.contains("user") && !text.contains("assistant\n") && !text.contains("<|BOT|>"),
        "{text}"
    );
    assert!(text.contains("The answer is") || text.contains("The color of"));
    // The EOS that closes an assistant turn is trained; the one closing a user turn is not.
    let mut saw_trained_eot = false;
    for i in 0..rows.tokens.len() {
        if rows.targets[i] == ByteVocab::EOT && rows.loss_weights[i] > 0.0 {
            saw_trained_eot = true;
        }
    }
    assert!(saw_trained_eot);
}

#[test]
fn reasoning_phase_excludes_think_token_only() {
    let root = scratch("think");
    let reasoning = source(&root, "reasoning", SyntheticKind::Reasoning, 1.0, 50);
    let reasoning2 = Source::open(
        "reasoning",
        1.0,
        &root.join("reasoning").join(synthetic::MANIFEST_FILE),
    )
    .unwrap();
    let masked = Loader::new(vec![reasoning], opts(96, true), 1)
        .unwrap()
        .next_rows(10)
        .unwrap();
    let unmasked = Loader::new(vec![reasoning2], opts(96, false), 1)
        .unwrap()
        .next_rows(10)
        .unwrap();
    assert_eq!(masked.tokens, unmasked.tokens);
    let mut think_targets = 0;
    for i in 0..masked.tokens.len() {
        if masked.targets[i] == ByteVocab::THINK {
            think_targets += 1;
            assert_eq!(masked.loss_weights[i], 0.0);
            assert_eq!(unmasked.loss_weights[i], 1.0);
        } else {
            assert_eq!(masked.loss_weights[i], unmasked.loss_weights[i]);
        }
    }
    assert!(think_targets > 0);
    assert!(
        masked.targets.contains(&ByteVocab::THINK_END),
        "</think> stays trained"
    );
}

#[test]
fn mixture_is_deterministic_and_follows_weights() {
    let root = scratch("mixture");
    let make = || {
        vec![
            source(&root, "prose", SyntheticKind::BilingualProse, 3.0, 40),
            source(&root, "reasoning", SyntheticKind::Reasoning, 1.0, 40),
        ]
    };
    let mut a = Loader::new(make(), opts(64, false), 42).unwrap();
    let mut b = Loader::new(make(), opts(64, false), 42).unwrap();
    let mut c = Loader::new(make(), opts(64, false), 43).unwrap();
    let (ra, rb, rc) = (
        a.next_rows(200).unwrap(),
        b.next_rows(200).unwrap(),
        c.next_rows(200).unwrap(),
    );
    assert_eq!(ra, rb);
    assert_ne!(ra.tokens, rc.tokens);
    let taken = a.documents_taken();
    let share = taken[0] as f64 / (taken[0] + taken[1]) as f64;
    assert!(
        (share - 0.75).abs() < 0.06,
        "prose share {share} for weight 3:1 ({taken:?})"
    );
}

#[test]
fn cursor_resumes_exactly() {
    let root = scratch("cursor");
    let make = || {
        vec![
            source(&root, "long", SyntheticKind::LongContext, 1.0, 20),
            source(&root, "chat", SyntheticKind::Chat, 1.0, 20),
        ]
    };
    // seq_len shorter than a long document: the pending document spans several rows.
    let mut straight = Loader::new(make(), opts(48, true), 9).unwrap();
    let first = straight.next_rows(7).unwrap();
    let cursor = straight.cursor();
    assert!(cursor.pending.is_some());
    let rest = straight.next_rows(60).unwrap();

    let json = serde_json::to_string(&cursor).unwrap();
    let mut resumed = Loader::new(make(), opts(48, true), 1234).unwrap();
    resumed
        .restore(&serde_json::from_str(&json).unwrap())
        .unwrap();
    assert_eq!(resumed.next_rows(60).unwrap(), rest);
    assert_ne!(first.tokens, rest.tokens[..first.tokens.len()]);

    let mut other = Loader::new(
        vec![source(&root, "long", SyntheticKind::LongContext, 1.0, 20)],
        opts(48, true),
        9,
    )
    .unwrap();
    let err = other.restore(&cursor).unwrap_err().to_string();
    assert!(err.contains("data cursor is for sources"), "{err}");
    // Same sources, a count too many: the message says the lengths differ.
    let mut short = cursor.clone();
    short.taken.push(2);
    let err = resumed.restore(&short).unwrap_err().to_string();
    assert!(
        err.contains("has 3 `taken` counts")
            && err.contains("but 2 sources")
            && err.contains("the lengths differ"),
        "{err}"
    );
}

#[test]
fn bad_inputs_are_errors() {
    let root = scratch("bad");
    let missing = root.join("nowhere").join("manifest.json");
    let err = Source::open("web", 1.0, &missing)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("nowhere"), "{err}");
    let prose = source(&root, "prose", SyntheticKind::BilingualProse, 1.0, 5);
    assert!(Loader::new(vec![prose], opts(1, false), 0).is_err());
    assert!(Loader::new(vec![], opts(8, false), 0).is_err());
    let dir = root.join("prose");
    let err = Source::open("prose", 0.0, &dir.join(synthetic::MANIFEST_FILE))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("weight 0"), "{err}");
}

#[test]
fn holdout_split_is_disjoint_from_training() {
    let root = scratch("holdout");
    let all = source(&root, "web", SyntheticKind::BilingualProse, 1.0, 30);
    let (total_docs, total_tokens) = (all.num_documents(), all.num_tokens());
    let (train, held) = all.split_holdout(5).unwrap();
    assert_eq!((train.num_documents(), held.num_documents()), (25, 5));
    assert_eq!(train.num_tokens() + held.num_tokens(), total_tokens);
    assert!(held.num_tokens() > 0 && train.num_tokens() > held.num_tokens());
    // Documents start with BOS; a row of one whole-epoch pass shows which documents each side
    // hands out. Collect the token streams of one epoch of each and check they share no document.
    let epoch = |source: Source| -> Vec<Vec<u32>> {
        let docs = source.num_documents();
        let mut loader = Loader::new(vec![source], opts(4096, false), 5).unwrap();
        let rows = loader.next_rows(8).unwrap();
        let bos = ByteVocab::specials().bos;
        let mut split: Vec<Vec<u32>> = rows
            .tokens
            .split(|&t| t == bos)
            .filter(|d| !d.is_empty())
            .map(<[u32]>::to_vec)
            .collect();
        split.truncate(docs as usize);
        split
    };
    let train_docs = epoch(train);
    let held_docs = epoch(held);
    assert_eq!(held_docs.len(), 5);
    assert!(held_docs.iter().all(|d| !train_docs.contains(d)));
    let again = source(&root, "web", SyntheticKind::BilingualProse, 1.0, 30);
    assert_eq!(again.num_documents(), total_docs);
    for bad in [0, 30, 31] {
        let source = source(&root, "web", SyntheticKind::BilingualProse, 1.0, 30);
        let err = source.split_holdout(bad).err().unwrap().to_string();
        assert!(
            err.contains("source `web`") && err.contains("hold out"),
            "{err}"
        );
    }
}

#[test]
fn tokenizer_fingerprint_mismatch_names_the_shard() {
    use kormo_shards::{Manifest, ShardMeta, ShardWriter};
    let root = scratch("fingerprint");
    std::fs::create_dir_all(&root).unwrap();
    let source_of = |fingerprint: &str| {
        let dir = root.join(fingerprint);
        std::fs::create_dir_all(&dir).unwrap();
        let meta = ShardMeta {
            vocab_size: 384,
            tokenizer_fingerprint: fingerprint.into(),
        };
        let mut writer = ShardWriter::create(dir.join("shard-0.kts"), meta.clone()).unwrap();
        writer.append_document(&[5, 70, 200, 9], None).unwrap();
        let summary = writer.finish().unwrap();
        let mut manifest = Manifest::new(meta);
        manifest.push("shard-0.kts", &summary).unwrap();
        manifest.save(dir.join("manifest.json")).unwrap();
        Source::open("code", 1.0, &dir.join("manifest.json")).unwrap()
    };
    let ours = source_of(ByteVocab::FINGERPRINT);
    ours.check_tokenizer(ByteVocab::FINGERPRINT).unwrap();
    let theirs = source_of("bpe-other-v2");
    let err = theirs
        .check_tokenizer(ByteVocab::FINGERPRINT)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bpe-other-v2/shard-0.kts")
            && err.contains("\"bpe-other-v2\"")
            && err.contains(ByteVocab::FINGERPRINT)
            && err.contains("source `code`"),
        "{err}"
    );
}

/// Every packed token carries its document's language, the tail of a straddling document
/// included; the synthetic corpora record both languages.
#[test]
fn rows_carry_each_tokens_document_language() {
    let root = scratch("languages");
    let prose = source(&root, "prose", SyntheticKind::BilingualProse, 1.0, 30);
    assert_eq!(prose.first_shard_without_languages(), None);
    let spec = SyntheticSpec {
        kind: SyntheticKind::BilingualProse,
        documents: 30,
        seed: 11,
    };
    let expected: Vec<u8> = synthetic::generate(&spec, &Vocabulary::bytes())
        .into_iter()
        .flat_map(|d| std::iter::repeat_n(d.language, d.tokens.len() + 2))
        .collect();
    assert!(expected.contains(&0) && expected.contains(&1));
    let mut loader = Loader::new(vec![prose], opts(64, false), 3).unwrap();
    let rows = loader.next_rows(20).unwrap();
    assert_eq!(rows.languages.len(), rows.tokens.len());
    assert_eq!(rows.languages, expected[..rows.languages.len()]);
    // Within a row, a language changes only where a document starts (at a BOS).
    for (i, pair) in rows.languages.windows(2).enumerate() {
        if pair[0] != pair[1] && (i + 1) % 64 != 0 {
            assert_eq!(rows.tokens[i + 1], ByteVocab::BOS, "token {}", i + 1);
        }
    }
    std::fs::remove_dir_all(&root).unwrap();
}

/// Shards written without languages pack as language 0 and are named by
/// `first_shard_without_languages`.
#[test]
fn shards_without_languages_are_named() {
    let root = scratch("nolanguages");
    std::fs::create_dir_all(&root).unwrap();
    let meta = kormo_shards::ShardMeta {
        vocab_size: 384,
        tokenizer_fingerprint: Vocabulary::bytes().fingerprint().into(),
    };
    let path = root.join("old.kts");
    let mut writer = kormo_shards::ShardWriter::create(&path, meta).unwrap();
    writer.append_document(&[65, 66, 67], None).unwrap();
    writer.finish().unwrap();
    let shard = kormo_shards::Shard::open(&path).unwrap();
    let source = Source::from_shards("old", 1.0, vec![shard]).unwrap();
    assert_eq!(source.first_shard_without_languages(), Some(path.as_path()));
    let rows = Loader::new(vec![source], opts(8, false), 1)
        .unwrap()
        .next_rows(2)
        .unwrap();
    assert!(rows.languages.iter().all(|&l| l == 0));
    std::fs::remove_dir_all(&root).unwrap();
}
