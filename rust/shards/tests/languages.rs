//! The optional per-document languages section (format::FLAG_LANGUAGES): round trip, shards
//! without it read as before (language `None`, the same bytes as the format before the flag),
//! every damaged byte of it detected, invalid codes and mixed writers refused.

mod common;

use common::{header_of, meta, random_docs, reseal, TempDir, TestDoc};
use kormo_shards::format::{FLAG_LANGUAGES, HEADER_LEN, LANGUAGE_KOREAN, LANGUAGE_OTHER};
use kormo_shards::{Shard, ShardErrorKind, ShardWriter};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;

const VOCAB: u32 = 500;

fn write_with_languages(path: &Path, block: u32, docs: &[TestDoc], languages: &[u8]) {
    let mut writer = ShardWriter::create_with_checksum_block(path, meta(VOCAB), block).unwrap();
    for (doc, &language) in docs.iter().zip(languages) {
        writer
            .append_document_with_language(&doc.tokens, doc.spans.as_deref(), language)
            .unwrap();
    }
    writer.finish().unwrap();
}

fn random_case(rng: &mut ChaCha8Rng, count: usize) -> (Vec<TestDoc>, Vec<u8>) {
    let docs = random_docs(rng, count, VOCAB, true);
    let languages = (0..count).map(|_| rng.random_range(0..=1u8)).collect();
    (docs, languages)
}

#[test]
fn languages_round_trip_with_every_accessor() {
    let mut rng = ChaCha8Rng::seed_from_u64(20);
    let dir = TempDir::new("languages-roundtrip");
    for case in 0..24 {
        let count = rng.random_range(0..50);
        let (docs, languages) = random_case(&mut rng, count);
        let path = dir.join(&format!("case-{case}.kts"));
        write_with_languages(&path, [1, 7, 1 << 20][case % 3], &docs, &languages);
        let shard = Shard::open(&path).unwrap_or_else(|e| panic!("case {case}: {e}"));
        // A shard without documents records no languages (nothing to label).
        assert_eq!(shard.has_languages(), count > 0);
        assert_eq!(shard.languages(), (count > 0).then_some(&languages[..]));
        for (i, (doc, read)) in docs.iter().zip(shard.documents()).enumerate() {
            assert_eq!(read.tokens, &doc.tokens[..]);
            assert_eq!(read.language, Some(languages[i]));
            assert_eq!(shard.language(i), Some(languages[i]));
            assert_eq!(shard.document(i).unwrap().language, Some(languages[i]));
        }
        assert_eq!(shard.language(count), None);
    }
}

/// A shard written without languages has no flag, no section, a zero languages CRC, and reads
/// with language `None`: byte for byte the format before the flag existed.
#[test]
fn shards_without_languages_read_as_before() {
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let dir = TempDir::new("languages-old");
    let docs = random_docs(&mut rng, 20, VOCAB, true);
    let path = dir.join("old.kts");
    common::write_shard(&path, meta(VOCAB), 16, &docs);
    let bytes = std::fs::read(&path).unwrap();
    let (header, layout) = header_of(&bytes);
    assert_eq!(header.flags & FLAG_LANGUAGES, 0);
    assert_eq!(header.languages_crc32, 0);
    assert!(bytes[76..HEADER_LEN - 4].iter().all(|&b| b == 0));
    assert!(layout.languages.is_empty());
    assert_eq!(layout.languages.start, layout.block_crcs.end);
    let shard = Shard::open(&path).unwrap();
    assert!(!shard.has_languages());
    assert_eq!(shard.languages(), None);
    assert!(shard.documents().all(|d| d.language.is_none()));
    assert_eq!(shard.language(0), None);

    // The same documents with languages: the same file plus the section (and its padding).
    let with = dir.join("new.kts");
    write_with_languages(&with, 16, &docs, &vec![LANGUAGE_KOREAN; docs.len()]);
    let new_bytes = std::fs::read(&with).unwrap();
    let (_, new_layout) = header_of(&new_bytes);
    let end = layout.block_crcs.end as usize;
    assert_eq!(new_bytes[HEADER_LEN..end], bytes[HEADER_LEN..end]);
    assert_eq!(new_layout.languages.end - new_layout.languages.start, docs.len() as u64);
}

#[test]
fn damaged_languages_section_is_detected() {
    let mut rng = ChaCha8Rng::seed_from_u64(22);
    let dir = TempDir::new("languages-damage");
    let (docs, languages) = random_case(&mut rng, 30);
    let path = dir.join("good.kts");
    write_with_languages(&path, 16, &docs, &languages);
    let good = std::fs::read(&path).unwrap();
    let (_, layout) = header_of(&good);
    let damaged_path = dir.join("damaged.kts");
    let open = |bytes: &[u8]| {
        std::fs::write(&damaged_path, bytes).unwrap();
        Shard::open(&damaged_path)
    };
    // Every byte of the section and of the padding after it, flipped: a checksum or padding error.
    for at in layout.languages.start as usize..good.len() {
        let mut bytes = good.clone();
        bytes[at] ^= 0x01;
        let err = open(&bytes).err().unwrap_or_else(|| panic!("flip at {at} undetected"));
        assert_eq!(err.path, damaged_path);
        match err.kind {
            ShardErrorKind::ChecksumMismatch { section, .. } => assert_eq!(section, "languages"),
            ShardErrorKind::BadHeader(msg) => assert!(msg.contains("padding"), "{msg}"),
            other => panic!("flip at {at}: {other:?}"),
        }
    }
    // A code other than 0 or 1 with a valid checksum: named with its document.
    let mut bytes = good.clone();
    bytes[layout.languages.start as usize + 3] = 2;
    reseal(&mut bytes);
    match open(&bytes).map(|_| ()).unwrap_err().kind {
        ShardErrorKind::BadHeader(msg) => assert!(msg.contains("document 3: language code 2"), "{msg}"),
        other => panic!("{other:?}"),
    }
    // The flag cleared (section then taken as trailing bytes): a size mismatch.
    let mut bytes = good.clone();
    let (mut header, _) = header_of(&bytes);
    (header.flags, header.languages_crc32) = (header.flags & !FLAG_LANGUAGES, 0);
    bytes[..HEADER_LEN].copy_from_slice(&header.encode());
    assert!(matches!(
        open(&bytes).map(|_| ()).unwrap_err().kind,
        ShardErrorKind::SizeMismatch { .. }
    ));
    // Random flips anywhere never open, never panic.
    for round in 0..200 {
        let mut bytes = good.clone();
        let at = rng.random_range(0..bytes.len());
        bytes[at] ^= rng.random_range(1..=255u8);
        let result = std::panic::catch_unwind(|| open(&bytes).map(|_| ()));
        assert!(matches!(result, Ok(Err(_))), "round {round}: flip at {at}");
    }
}

#[test]
fn writer_refuses_bad_codes_and_mixed_shards() {
    let dir = TempDir::new("languages-writer");
    let mut writer = ShardWriter::create(dir.join("a.kts"), meta(VOCAB)).unwrap();
    let err = writer.append_document_with_language(&[1, 2], None, 2).unwrap_err();
    assert!(err.to_string().contains("language code 2"), "{err}");
    writer.append_document_with_language(&[1, 2], None, LANGUAGE_OTHER).unwrap();
    let err = writer.append_document(&[3], None).unwrap_err();
    assert!(err.to_string().contains("has no language"), "{err}");
    writer.append_document_with_language(&[3], None, LANGUAGE_KOREAN).unwrap();
    writer.finish().unwrap();
    let shard = Shard::open(dir.join("a.kts")).unwrap();
    assert_eq!(shard.languages(), Some(&[LANGUAGE_OTHER, LANGUAGE_KOREAN][..]));

    let mut writer = ShardWriter::create(dir.join("b.kts"), meta(VOCAB)).unwrap();
    writer.append_document(&[1], None).unwrap();
    let err = writer.append_document_with_language(&[1], None, LANGUAGE_KOREAN).unwrap_err();
    assert!(err.to_string().contains("earlier documents have none"), "{err}");
    writer.finish().unwrap();
    assert!(!Shard::open(dir.join("b.kts")).unwrap().has_languages());
}
