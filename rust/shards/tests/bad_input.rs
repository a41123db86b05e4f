//! Every kind of bad input must give a specific `ShardError` naming the file, never a panic:
//! damaged shard files (truncation, magic, version, checksums, token ids, offsets, spans,
//! padding, absurd header counts), random byte flips and truncations, manifest/data
//! disagreement, malformed manifests, and invalid writer input.

mod common;

use common::{
    header_of, meta, random_docs, read_u64, reseal, write_shard, write_u32, write_u64, TempDir,
    TestDoc,
};
use kormo_shards::format::{HEADER_LEN, MAGIC};
use kormo_shards::{Manifest, Shard, ShardError, ShardErrorKind, ShardWriter, Verification};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};

const VOCAB: u32 = 1000;
const BLOCK_TOKENS: u32 = 16;

/// A small valid shard with spans, its documents and its bytes.
struct Fixture {
    dir: TempDir,
    path: PathBuf,
    docs: Vec<TestDoc>,
    bytes: Vec<u8>,
}

fn fixture(label: &str) -> Fixture {
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let mut docs = random_docs(&mut rng, 30, VOCAB, true);
    // Guarantee a multi-span document and a spanless one at known places.
    docs[0] = TestDoc {
        tokens: (0..20).map(|t| t * 7 % VOCAB).collect(),
        spans: Some(vec![(2, 5), (8, 12)]),
    };
    docs[1] = TestDoc {
        tokens: vec![3, 1, 4, 1, 5, 9, 2, 6],
        spans: None,
    };
    let dir = TempDir::new(label);
    let path = dir.join("fixture.kts");
    write_shard(&path, meta(VOCAB), BLOCK_TOKENS, &docs);
    let bytes = std::fs::read(&path).unwrap();
    Fixture {
        dir,
        path,
        docs,
        bytes,
    }
}

/// Writes `bytes` to a fresh file and opens it with full verification.
fn open_bytes(f: &Fixture, bytes: &[u8]) -> Result<Shard, ShardError> {
    let path = f.dir.join("damaged.kts");
    std::fs::write(&path, bytes).unwrap();
    Shard::open(&path)
}

/// Asserts the error names the damaged file and returns its kind.
fn expect_err(result: Result<Shard, ShardError>, path: &Path) -> ShardErrorKind {
    let err = result.expect_err("damaged shard opened without error");
    assert_eq!(err.path, path);
    assert!(
        err.to_string().starts_with(&path.display().to_string()),
        "{err}"
    );
    err.kind
}

fn damaged(f: &Fixture, bytes: &[u8]) -> ShardErrorKind {
    expect_err(open_bytes(f, bytes), &f.dir.join("damaged.kts"))
}

#[test]
fn fixture_itself_is_valid() {
    let f = fixture("valid");
    assert_eq!(Shard::open(&f.path).unwrap().num_documents(), f.docs.len());
    open_bytes(&f, &f.bytes).unwrap();
}

#[test]
fn truncated_or_extended_file() {
    let f = fixture("truncated");
    for len in [
        0,
        10,
        HEADER_LEN - 1,
        HEADER_LEN,
        HEADER_LEN + 3,
        f.bytes.len() / 2,
        f.bytes.len() - 8,
    ] {
        let kind = damaged(&f, &f.bytes[..len]);
        assert!(
            matches!(kind, ShardErrorKind::SizeMismatch { actual, .. } if actual == len as u64),
            "{len}: {kind:?}"
        );
    }
    let mut longer = f.bytes.clone();
    longer.extend_from_slice(&[0; 8]);
    assert!(matches!(
        damaged(&f, &longer),
        ShardErrorKind::SizeMismatch { .. }
    ));
    let kind = expect_err(
        Shard::open(f.dir.join("missing.kts")),
        &f.dir.join("missing.kts"),
    );
    assert!(matches!(kind, ShardErrorKind::Io { op: "open", .. }));
}

#[test]
fn wrong_magic() {
    let f = fixture("magic");
    let mut bytes = f.bytes.clone();
    bytes[..8].copy_from_slice(b"NOTASHRD");
    assert!(
        matches!(damaged(&f, &bytes), ShardErrorKind::BadMagic { found } if &found == b"NOTASHRD")
    );
}

#[test]
fn wrong_version() {
    let f = fixture("version");
    let mut bytes = f.bytes.clone();
    write_u32(&mut bytes, 8, 2);
    assert!(matches!(
        damaged(&f, &bytes),
        ShardErrorKind::UnsupportedVersion {
            found: 2,
            supported: 1
        }
    ));
    assert_eq!(&bytes[..8], &MAGIC);
}

#[test]
fn checksum_mismatch_is_localised() {
    let f = fixture("checksum");
    let (_, layout) = header_of(&f.bytes);
    // A token in block 3 (tokens 48..64): flipping a low bit keeps the id < vocab.
    let token = 50u64;
    let mut bytes = f.bytes.clone();
    bytes[(layout.tokens.start + token * 4) as usize] ^= 1;
    match damaged(&f, &bytes) {
        ShardErrorKind::ChecksumMismatch { section, .. } => {
            assert_eq!(section, "token block 3 (tokens 48..64)")
        }
        kind => panic!("{kind:?}"),
    }
    // StructureOnly skips the token scan, and verify_tokens finds the damage later.
    let shard = Shard::open_with(f.dir.join("damaged.kts"), Verification::StructureOnly).unwrap();
    assert!(matches!(
        shard.verify_tokens().unwrap_err().kind,
        ShardErrorKind::ChecksumMismatch { .. }
    ));

    let cases = [
        (layout.doc_offsets.start + 8, "document offsets"),
        (layout.span_offsets.start + 8, "span offsets"),
        (layout.spans.start, "mask spans"),
        (layout.block_crcs.start, "token block checksum table"),
        (layout.fingerprint.start, "tokenizer fingerprint"),
        (20, "header"),
    ];
    for (at, expected) in cases {
        let mut bytes = f.bytes.clone();
        bytes[at as usize] ^= 0x40;
        match damaged(&f, &bytes) {
            ShardErrorKind::ChecksumMismatch { section, .. } => assert_eq!(section, expected),
            kind => panic!("byte {at}: {kind:?}"),
        }
    }
}

#[test]
fn token_id_out_of_vocab_reports_position() {
    let f = fixture("vocab");
    let (_, layout) = header_of(&f.bytes);
    // Document 1 is [3, 1, 4, 1, 5, 9, 2, 6] starting at global offset 20; break its 6th token.
    let global = 20 + 5;
    let mut bytes = f.bytes.clone();
    write_u32(
        &mut bytes,
        (layout.tokens.start + global * 4) as usize,
        VOCAB,
    );
    reseal(&mut bytes);
    let kind = damaged(&f, &bytes);
    assert!(
        matches!(
            kind,
            ShardErrorKind::TokenOutOfVocab {
                token: VOCAB,
                vocab_size: VOCAB,
                global_offset: 25,
                document: 1,
                position: 5
            }
        ),
        "{kind:?}"
    );
}

#[test]
fn offsets_not_monotone_or_not_ending_at_token_count() {
    let f = fixture("offsets");
    let (_, layout) = header_of(&f.bytes);
    let offset_at = |doc: u64| (layout.doc_offsets.start + doc * 8) as usize;
    let mut bytes = f.bytes.clone();
    // Document 1 starts at 20; make document 2 start before it.
    write_u64(&mut bytes, offset_at(2), 10);
    reseal(&mut bytes);
    assert!(
        matches!(damaged(&f, &bytes), ShardErrorKind::BadOffsets(msg) if msg.contains("not monotone"))
    );

    let mut bytes = f.bytes.clone();
    let last = offset_at(f.docs.len() as u64);
    let num_tokens = read_u64(&bytes, last);
    write_u64(&mut bytes, last, num_tokens - 1);
    reseal(&mut bytes);
    assert!(matches!(damaged(&f, &bytes), ShardErrorKind::BadOffsets(_)));

    let mut bytes = f.bytes.clone();
    write_u64(&mut bytes, offset_at(0), 1);
    reseal(&mut bytes);
    assert!(matches!(damaged(&f, &bytes), ShardErrorKind::BadOffsets(_)));
}

#[test]
fn bad_mask_spans() {
    let f = fixture("spans");
    let (_, layout) = header_of(&f.bytes);
    // Document 0 has 20 tokens and spans [2,5) [8,12): the first two records of the spans section.
    let span = |i: u64| (layout.spans.start + i * 8) as usize;
    let patches: [(usize, u32, &str); 4] = [
        (span(1) + 4, 21, "ends past"),        // [8, 21) past the 20 tokens
        (span(1), 4, "overlaps"),              // [4, 12) overlaps [2, 5)
        (span(0) + 4, 2, "empty or reversed"), // [2, 2)
        (span(0), 6, "empty or reversed"),     // [6, 5)
    ];
    for (at, value, expected) in patches {
        let mut bytes = f.bytes.clone();
        write_u32(&mut bytes, at, value);
        reseal(&mut bytes);
        match damaged(&f, &bytes) {
            ShardErrorKind::BadMaskSpans(msg) => assert!(
                msg.contains(expected) && msg.contains("document 0"),
                "{msg}"
            ),
            kind => panic!("{kind:?}"),
        }
    }
    // Span offsets that decrease.
    let mut bytes = f.bytes.clone();
    write_u64(&mut bytes, (layout.span_offsets.start + 8) as usize, 5);
    write_u64(&mut bytes, (layout.span_offsets.start + 16) as usize, 1);
    reseal(&mut bytes);
    assert!(matches!(
        damaged(&f, &bytes),
        ShardErrorKind::BadMaskSpans(_)
    ));
}

#[test]
fn nonzero_padding_and_absurd_header_counts() {
    let f = fixture("padding");
    let (header, layout) = header_of(&f.bytes);
    let pad = layout
        .padding()
        .into_iter()
        .find(|p| !p.is_empty())
        .expect("fixture has padding");
    let mut bytes = f.bytes.clone();
    bytes[pad.start as usize] = 1;
    assert!(
        matches!(damaged(&f, &bytes), ShardErrorKind::BadHeader(msg) if msg.contains("padding"))
    );

    for (tokens, documents) in [
        (u64::MAX, header.num_documents),
        (header.num_tokens, u64::MAX),
        (u64::MAX / 4, 0),
    ] {
        let mut bytes = f.bytes.clone();
        let mut h = header.clone();
        h.num_tokens = tokens;
        h.num_documents = documents;
        bytes[..HEADER_LEN].copy_from_slice(&h.encode());
        let kind = damaged(&f, &bytes);
        assert!(
            matches!(
                kind,
                ShardErrorKind::BadHeader(_) | ShardErrorKind::SizeMismatch { .. }
            ),
            "{kind:?}"
        );
    }
}

/// Fuzz-style: any single damaged byte, a few damaged bytes, or a truncation gives an error.
#[test]
fn random_flips_and_truncations_never_open() {
    let f = fixture("fuzz");
    let mut rng = ChaCha8Rng::seed_from_u64(1234);
    let path = f.dir.join("damaged.kts");
    for round in 0..400 {
        let mut bytes = f.bytes.clone();
        if round % 4 == 3 {
            bytes.truncate(rng.random_range(0..bytes.len()));
        } else {
            for _ in 0..rng.random_range(1..=3) {
                let at = rng.random_range(0..bytes.len());
                bytes[at] ^= rng.random_range(1..=255u8);
            }
        }
        std::fs::write(&path, &bytes).unwrap();
        let result = std::panic::catch_unwind(|| Shard::open(&path).map(|_| ()));
        match result {
            Ok(Err(err)) => assert_eq!(err.path, path),
            Ok(Ok(())) => panic!("round {round}: damaged shard opened"),
            Err(_) => panic!("round {round}: open panicked"),
        }
    }
    // Every byte outside the token section, and every 5th token byte, flipped once, is
    // detected (the token section is uniform, so a stride keeps the test fast).
    let (_, layout) = header_of(&f.bytes);
    let tokens = layout.tokens.start as usize..layout.tokens.end as usize;
    for at in (0..f.bytes.len()).filter(|at| !tokens.contains(at) || at % 5 == 0) {
        let mut bytes = f.bytes.clone();
        bytes[at] ^= 0x80;
        std::fs::write(&path, &bytes).unwrap();
        assert!(Shard::open(&path).is_err(), "flip at byte {at} undetected");
    }
}

#[test]
fn manifest_and_data_disagree() {
    let f = fixture("manifest");
    let summary = write_shard(&f.dir.join("a.kts"), meta(VOCAB), BLOCK_TOKENS, &f.docs);
    let mut manifest = Manifest::new(meta(VOCAB));
    manifest.push("a.kts", &summary).unwrap();
    manifest.open_shard(&f.dir.0, 0).unwrap();
    let shard_path = f.dir.join("a.kts");
    let mismatch = |m: &Manifest, expected: &str| {
        let kind = expect_err(m.open_shard(&f.dir.0, 0), &shard_path);
        assert!(
            matches!(&kind, ShardErrorKind::ManifestMismatch(msg) if msg.starts_with(expected)),
            "{kind:?}"
        );
    };
    let mut m = manifest.clone();
    m.shards[0].num_tokens += 1;
    m.num_tokens += 1;
    mismatch(&m, "token count");
    let mut m = manifest.clone();
    m.shards[0].num_documents -= 1;
    m.num_documents -= 1;
    mismatch(&m, "document count");
    let mut m = manifest.clone();
    m.shards[0].header_crc32 ^= 1;
    mismatch(&m, "header crc32");
    let mut m = manifest.clone();
    m.tokenizer_fingerprint = "sha256:another-tokenizer".into();
    mismatch(&m, "tokenizer fingerprint");
    let mut m = manifest.clone();
    m.vocab_size += 1;
    mismatch(&m, "vocab size");

    // Same counts, different content: only the header CRC tells them apart.
    let mut other = f.docs.clone();
    other[1].tokens[0] += 1;
    write_shard(&shard_path, meta(VOCAB), BLOCK_TOKENS, &other);
    mismatch(&manifest, "header crc32");

    // A shard from another tokenizer cannot be pushed.
    let foreign = write_shard(&f.dir.join("b.kts"), meta(VOCAB + 1), BLOCK_TOKENS, &f.docs);
    assert!(matches!(
        manifest.push("b.kts", &foreign).unwrap_err().kind,
        ShardErrorKind::ManifestMismatch(_)
    ));
    assert!(manifest.open_shard(&f.dir.0, 5).is_err());
}

#[test]
fn malformed_manifests() {
    let dir = TempDir::new("bad-manifest");
    let path = dir.join("manifest.json");
    let summary = write_shard(
        &dir.join("a.kts"),
        meta(VOCAB),
        BLOCK_TOKENS,
        &[TestDoc {
            tokens: vec![1, 2],
            spans: None,
        }],
    );
    let mut manifest = Manifest::new(meta(VOCAB));
    manifest.push("a.kts", &summary).unwrap();
    let good = serde_json::to_value(&manifest).unwrap();
    let edits: [(&str, serde_json::Value); 6] = [
        ("version", 2.into()),
        ("format", "something-else".into()),
        ("num_tokens", 3.into()),
        ("tokenizer_fingerprint", "".into()),
        ("extra_field", 1.into()),
        ("vocab_size", (-1).into()),
    ];
    for (key, value) in edits {
        let mut json = good.clone();
        json[key] = value;
        std::fs::write(&path, json.to_string()).unwrap();
        let err = Manifest::load(&path).unwrap_err();
        assert_eq!(err.path, path, "{key}");
        assert!(
            matches!(
                err.kind,
                ShardErrorKind::BadManifest(_)
                    | ShardErrorKind::UnsupportedVersion { found: 2, .. }
            ),
            "{key}: {err}"
        );
    }
    let mut json = good.clone();
    json["shards"][0]["file"] = "/etc/a.kts".into();
    std::fs::write(&path, json.to_string()).unwrap();
    assert!(matches!(
        Manifest::load(&path).unwrap_err().kind,
        ShardErrorKind::BadManifest(_)
    ));
    std::fs::write(&path, "{ not json").unwrap();
    assert!(matches!(
        Manifest::load(&path).unwrap_err().kind,
        ShardErrorKind::BadManifest(_)
    ));
    let missing = dir.join("missing.json");
    assert_eq!(Manifest::load(&missing).unwrap_err().path, missing);
}

/// Arguments of one `append_document` call.
type Appended<'a> = (&'a [u32], Option<&'a [(u32, u32)]>);

#[test]
fn writer_rejects_invalid_input_and_stays_usable() {
    let dir = TempDir::new("writer");
    let path = dir.join("w.kts");
    let mut writer = ShardWriter::create(&path, meta(VOCAB)).unwrap();
    let rejected: [Appended; 6] = [
        (&[1, VOCAB, 2], None),
        (&[1, 2, 3], Some(&[])),
        (&[1, 2, 3], Some(&[(0, 4)])),
        (&[1, 2, 3], Some(&[(1, 1)])),
        (&[1, 2, 3], Some(&[(1, 3), (0, 1)])),
        (&[], Some(&[(0, 1)])),
    ];
    for (tokens, spans) in rejected {
        let err = writer.append_document(tokens, spans).unwrap_err();
        assert!(
            matches!(err.kind, ShardErrorKind::InvalidArgument(_)),
            "{err}"
        );
        assert_eq!(err.path, path);
    }
    writer
        .append_document(&[1, 2, 3], Some(&[(0, 1), (1, 3)]))
        .unwrap();
    let summary = writer.finish().unwrap();
    assert_eq!(
        (
            summary.num_documents,
            summary.num_tokens,
            summary.num_mask_spans
        ),
        (1, 3, 2)
    );

    for bad_meta in [
        meta(0),
        kormo_shards::ShardMeta {
            vocab_size: 5,
            tokenizer_fingerprint: String::new(),
        },
    ] {
        assert!(matches!(
            ShardWriter::create(&path, bad_meta).unwrap_err().kind,
            ShardErrorKind::InvalidArgument(_)
        ));
    }
    // An abandoned writer leaves neither the shard nor its temp file.
    let abandoned = dir.join("abandoned.kts");
    let mut writer = ShardWriter::create(&abandoned, meta(VOCAB)).unwrap();
    writer.append_document(&[1, 2], None).unwrap();
    drop(writer);
    let names: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("w.kts")]);
    let in_missing_dir = dir.join("no-such-dir/x.kts");
    assert!(matches!(
        ShardWriter::create(&in_missing_dir, meta(VOCAB))
            .unwrap_err()
            .kind,
        ShardErrorKind::Io { .. }
    ));
}

#[test]
fn accessors_reject_out_of_range_arguments() {
    let f = fixture("range");
    let shard = Shard::open(&f.path).unwrap();
    let n = shard.num_documents();
    let t = shard.num_tokens();
    for err in [
        shard.document(n).unwrap_err(),
        shard.document_token_range(usize::MAX).unwrap_err(),
        shard.document_at(t).unwrap_err(),
        shard.tokens(t - 1, 2).unwrap_err(),
    ] {
        assert!(
            matches!(err.kind, ShardErrorKind::InvalidArgument(_)),
            "{err}"
        );
        assert_eq!(err.path, f.path);
    }
}

#[test]
fn manifest_entries_that_alias_a_file_or_leave_the_folder() {
    let root = TempDir::new("alias");
    let data = root.join("data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    let doc = [TestDoc {
        tokens: vec![1, 2, 3],
        spans: None,
    }];
    let summary = write_shard(&data.join("shard-a.kts"), meta(VOCAB), BLOCK_TOKENS, &doc);
    let outside = write_shard(&root.join("elsewhere.kts"), meta(VOCAB), BLOCK_TOKENS, &doc);
    let path = data.join("manifest.json");
    let with = |files: &[(&str, &kormo_shards::ShardSummary)], allow: bool| {
        let mut m = Manifest::new(meta(VOCAB));
        for (file, summary) in files {
            // Built by hand: `push` refuses aliases itself (checked below).
            m.shards.push(kormo_shards::ManifestEntry {
                file: file.to_string(),
                num_documents: summary.num_documents,
                num_tokens: summary.num_tokens,
                num_mask_spans: summary.num_mask_spans,
                file_bytes: summary.file_bytes,
                header_crc32: summary.header_crc32,
            });
            m.num_documents += summary.num_documents;
            m.num_tokens += summary.num_tokens;
        }
        let mut json = serde_json::to_value(&m).unwrap();
        if allow {
            json["allow_outside_dir"] = true.into();
        }
        std::fs::write(&path, json.to_string()).unwrap();
        Manifest::load(&path)
    };
    let load_err = |files: &[(&str, &kormo_shards::ShardSummary)]| {
        let err = with(files, false).unwrap_err();
        assert_eq!(err.path, path);
        err.to_string()
    };
    for alias in [
        "./shard-a.kts",
        "sub/../shard-a.kts",
        "./sub/./../shard-a.kts",
    ] {
        let err = load_err(&[("shard-a.kts", &summary), (alias, &summary)]);
        assert!(
            err.contains(&format!(
                "shards[1].file {alias:?} is the same file as shards[0].file \"shard-a.kts\""
            )),
            "{alias}: {err}"
        );
    }
    for escape in ["../elsewhere.kts", "sub/../../elsewhere.kts"] {
        let err = load_err(&[(escape, &outside)]);
        assert!(
            err.contains(&format!(
                "shards[0].file {escape:?} is outside the dataset folder"
            )) && err.contains("\"allow_outside_dir\": true"),
            "{escape}: {err}"
        );
        // Allowed explicitly, it loads and opens.
        let m = with(&[(escape, &outside)], true).unwrap();
        assert_eq!(m.open_shards(&data).unwrap().len(), 1);
    }
    assert!(load_err(&[(".", &summary)]).contains("does not name a file"));

    // A symlink is caught where the filesystem resolves it: another name for a listed file,
    // and a name inside the folder for a file outside it.
    std::os::unix::fs::symlink("shard-a.kts", data.join("link.kts")).unwrap();
    std::os::unix::fs::symlink("../elsewhere.kts", data.join("out.kts")).unwrap();
    let m = with(&[("shard-a.kts", &summary), ("link.kts", &summary)], false).unwrap();
    let err = m.open_shards(&data).unwrap_err().to_string();
    assert!(err.contains("is the same file as shards[0].file"), "{err}");
    let m = with(&[("out.kts", &outside)], false).unwrap();
    let err = m.open_shards(&data).unwrap_err().to_string();
    assert!(err.contains("outside the dataset folder"), "{err}");
    assert!(with(&[("out.kts", &outside)], true)
        .unwrap()
        .open_shards(&data)
        .is_ok());

    // Pushing an alias of a listed file is refused too.
    let mut m = Manifest::new(meta(VOCAB));
    m.push("shard-a.kts", &summary).unwrap();
    let err = m.push("./shard-a.kts", &summary).unwrap_err().to_string();
    assert!(
        err.contains("names the same file as \"shard-a.kts\""),
        "{err}"
    );
}
