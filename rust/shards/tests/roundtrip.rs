//! Property tests: random datasets (empty and 1-token documents, with and without spans,
//! checksum blocks smaller and larger than documents) must read back exactly, through every
//! accessor, and through the manifest.

mod common;

use common::{meta, random_docs, write_shard, TempDir, TestDoc};
use kormo_shards::{Manifest, MaskSpan, Shard, ShardWriter, Verification};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Checks every accessor of `shard` against the documents it was written from.
fn assert_matches(shard: &Shard, docs: &[TestDoc]) {
    assert_eq!(shard.num_documents(), docs.len());
    let all: Vec<u32> = docs.iter().flat_map(|d| d.tokens.iter().copied()).collect();
    assert_eq!(shard.num_tokens(), all.len() as u64);
    assert_eq!(shard.all_tokens(), &all[..]);
    assert_eq!(shard.documents().len(), docs.len());
    let mut start = 0u64;
    for (i, (doc, read)) in docs.iter().zip(shard.documents()).enumerate() {
        assert_eq!(read, shard.document(i).unwrap());
        assert_eq!(read.tokens, &doc.tokens[..], "document {i}");
        let spans: Vec<MaskSpan> = doc.spans.iter().flatten().map(|&s| s.into()).collect();
        assert_eq!(read.loss_mask_spans, &spans[..], "document {i}");
        let end = start + doc.tokens.len() as u64;
        assert_eq!(shard.document_token_range(i).unwrap(), start..end);
        for offset in start..end {
            assert_eq!(shard.document_at(offset).unwrap(), i, "token {offset}");
        }
        for position in 0..doc.tokens.len() {
            let trained = match &doc.spans {
                None => true,
                Some(spans) => spans
                    .iter()
                    .any(|&(s, e)| (s as usize..e as usize).contains(&position)),
            };
            assert_eq!(
                read.is_trained(position),
                trained,
                "document {i} position {position}"
            );
        }
        start = end;
    }
    assert!(shard.document(docs.len()).is_err());
    assert!(shard.document_at(all.len() as u64).is_err());
}

#[test]
fn random_shards_round_trip_exactly() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed);
    let dir = TempDir::new("roundtrip");
    for case in 0..40 {
        let vocab_size = if case % 4 == 0 {
            125_184
        } else {
            rng.random_range(1..1000)
        };
        let with_spans = case % 3 != 0;
        let count = rng.random_range(0..60);
        let docs = random_docs(&mut rng, count, vocab_size, with_spans);
        let block_tokens = [1, 7, 64, 1 << 20][case % 4];
        let path = dir.join(&format!("case-{case}.kts"));
        let summary = write_shard(&path, meta(vocab_size), block_tokens, &docs);
        let shard = Shard::open(&path).unwrap_or_else(|e| panic!("case {case}: {e}"));
        assert_matches(&shard, &docs);
        assert_eq!(shard.meta(), &meta(vocab_size));
        assert_eq!(summary.num_documents, docs.len() as u64);
        assert_eq!(summary.num_tokens, shard.num_tokens());
        assert_eq!(summary.num_mask_spans, shard.num_mask_spans());
        assert_eq!(summary.file_bytes, std::fs::metadata(&path).unwrap().len());
        assert_eq!(summary.header_crc32, shard.header_crc32());
        assert_eq!(summary.path, path);
        let structure_only = Shard::open_with(&path, Verification::StructureOnly).unwrap();
        structure_only.verify_tokens().unwrap();
        assert_matches(&structure_only, &docs);
    }
}

#[test]
fn token_windows_cross_documents() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let dir = TempDir::new("windows");
    let docs = random_docs(&mut rng, 50, 5000, true);
    let path = dir.join("windows.kts");
    write_shard(&path, meta(5000), 16, &docs);
    let shard = Shard::open(&path).unwrap();
    let all: Vec<u32> = docs.iter().flat_map(|d| d.tokens.iter().copied()).collect();
    for _ in 0..200 {
        let start = rng.random_range(0..=all.len());
        let len = rng.random_range(0..=all.len() - start);
        assert_eq!(
            shard.tokens(start as u64, len).unwrap(),
            &all[start..start + len]
        );
    }
    assert!(shard.tokens(all.len() as u64, 1).is_err());
    assert!(shard.tokens(u64::MAX, 2).is_err());
}

#[test]
fn empty_shard_round_trips() {
    let dir = TempDir::new("empty");
    let path = dir.join("empty.kts");
    let summary = ShardWriter::create(&path, meta(10))
        .unwrap()
        .finish()
        .unwrap();
    assert_eq!((summary.num_documents, summary.num_tokens), (0, 0));
    let shard = Shard::open(&path).unwrap();
    assert_matches(&shard, &[]);
    assert!(shard.tokens(0, 0).unwrap().is_empty());
}

#[test]
fn manifest_round_trips_and_opens_all_shards() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let dir = TempDir::new("manifest");
    let mut manifest = Manifest::new(meta(300));
    let mut datasets = Vec::new();
    for i in 0..3 {
        let docs = random_docs(&mut rng, 20, 300, i != 1);
        let name = format!("shard-{i:05}.kts");
        let summary = write_shard(&dir.join(&name), meta(300), 32, &docs);
        manifest.push(name, &summary).unwrap();
        datasets.push(docs);
    }
    let manifest_path = dir.join("manifest.json");
    manifest.save(&manifest_path).unwrap();
    let loaded = Manifest::load(&manifest_path).unwrap();
    assert_eq!(loaded, manifest);
    assert_eq!(loaded.num_documents, 60);
    let shards = loaded.open_shards(&dir.0).unwrap();
    for (shard, docs) in shards.iter().zip(&datasets) {
        assert_matches(shard, docs);
    }
    let leftovers: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.contains(".tmp-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temp files left behind: {leftovers:?}"
    );
}
