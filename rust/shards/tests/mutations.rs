//! Seeded mutations of a dataset manifest (property style, bounded, run in CI): entries renamed
//! to other spellings of the same file (`./a.kts`, `sub/../a.kts`, a symlink), to files outside
//! the dataset folder, duplicated, with a count or the text damaged. Whatever the change, a
//! manifest that opens reads every shard file once, from inside its folder unless it says
//! `allow_outside_dir`, with the totals it states; any other outcome is an error naming a file.

mod common;

use common::{meta, write_shard, TempDir, TestDoc};
use kormo_shards::{Manifest, ShardSummary};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::collections::BTreeSet;

const VOCAB: u32 = 100;

/// Spellings of the file `name` (in the dataset folder `data`) as a manifest entry.
fn spellings(name: &str) -> Vec<String> {
    vec![
        name.to_string(),
        format!("./{name}"),
        format!("sub/../{name}"),
        format!("./sub/./../{name}"),
        format!("../data/{name}"),
    ]
}

#[test]
fn seeded_manifest_mutations_never_read_a_file_twice_or_from_outside() {
    let root = TempDir::new("manifest-mutations");
    let data = root.join("data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    let mut files: Vec<(String, ShardSummary)> = Vec::new();
    for (i, name) in ["a.kts", "b.kts", "c.kts"].iter().enumerate() {
        let docs: Vec<TestDoc> = (0..=i as u32)
            .map(|d| TestDoc {
                tokens: vec![d + 1, 2, 3],
                spans: None,
            })
            .collect();
        files.push((
            name.to_string(),
            write_shard(&data.join(name), meta(VOCAB), 16, &docs),
        ));
    }
    let outside = write_shard(
        &root.join("outside.kts"),
        meta(VOCAB),
        16,
        &[TestDoc {
            tokens: vec![9],
            spans: None,
        }],
    );
    std::os::unix::fs::symlink("a.kts", data.join("link.kts")).unwrap();
    std::os::unix::fs::symlink("../outside.kts", data.join("out.kts")).unwrap();
    let a = files[0].1.clone();
    files.push(("link.kts".into(), a));
    files.push(("../outside.kts".into(), outside.clone()));
    files.push(("out.kts".into(), outside));

    let mut base = Manifest::new(meta(VOCAB));
    for (name, summary) in &files[..3] {
        base.push(name.clone(), summary).unwrap();
    }
    let base_json = serde_json::to_value(&base).unwrap();
    let entry = |file: &str, summary: &ShardSummary| {
        json!({ "file": file, "num_documents": summary.num_documents, "num_tokens": summary.num_tokens,
                "num_mask_spans": summary.num_mask_spans, "file_bytes": summary.file_bytes,
                "header_crc32": summary.header_crc32 })
    };
    let path = data.join("manifest.json");
    let canonical_data = data.canonicalize().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(18);
    let (mut opened, mut refused) = (0, 0);
    for case in 0..3000 {
        let mut json = base_json.clone();
        let shards = json["shards"].as_array_mut().unwrap();
        let mut damaged = false;
        for _ in 0..rng.random_range(1..4) {
            let len = shards.len();
            match rng.random_range(0..4) {
                // Another spelling of a file (totals kept right, so only the path can be wrong).
                0 | 1 => {
                    let (name, summary) = &files[rng.random_range(0..files.len())];
                    let names = spellings(name);
                    let file = &names[rng.random_range(0..names.len())];
                    shards[rng.random_range(0..len)] = entry(file, summary);
                }
                // An entry listed twice.
                2 => {
                    let copy = shards[rng.random_range(0..len)].clone();
                    shards.insert(rng.random_range(0..=len), copy);
                }
                _ => {}
            }
        }
        // A count changed (last, so that no later change replaces the entry).
        if rng.random_bool(0.2) {
            let field = ["num_documents", "num_tokens", "file_bytes", "header_crc32"]
                [rng.random_range(0..4)];
            let len = shards.len();
            let at = &mut shards[rng.random_range(0..len)][field];
            *at = json!(at.as_u64().unwrap() + 1);
            damaged = true;
        }
        let sum = |key: &str| -> u64 { shards.iter().map(|s| s[key].as_u64().unwrap()).sum() };
        let (documents, tokens) = (sum("num_documents"), sum("num_tokens"));
        json["num_documents"] = json!(documents);
        json["num_tokens"] = json!(tokens);
        let allow = rng.random_bool(0.3);
        if allow {
            json["allow_outside_dir"] = Value::Bool(true);
        }
        let mut text = json.to_string();
        if rng.random_bool(0.05) {
            text.truncate(rng.random_range(0..text.len()));
            damaged = true;
        }
        std::fs::write(&path, &text).unwrap();
        let result = Manifest::load(&path).and_then(|m| Ok((m.open_shards(&data)?, m)));
        match result {
            Ok((shards, manifest)) => {
                opened += 1;
                assert!(!damaged, "case {case}: a damaged manifest opened: {text}");
                let resolved: Vec<_> = shards
                    .iter()
                    .map(|s| s.path().canonicalize().unwrap())
                    .collect();
                let distinct: BTreeSet<_> = resolved.iter().collect();
                assert_eq!(
                    distinct.len(),
                    resolved.len(),
                    "case {case}: a file is read twice: {text}"
                );
                if !allow {
                    assert!(
                        resolved.iter().all(|p| p.starts_with(&canonical_data)),
                        "case {case}: read from outside: {text}"
                    );
                }
                let read: u64 = shards.iter().map(|s| s.num_documents() as u64).sum();
                assert_eq!(read, manifest.num_documents, "case {case}: {text}");
            }
            Err(e) => {
                refused += 1;
                assert!(
                    e.path.starts_with(root.join("")),
                    "case {case}: error names {}: {e}",
                    e.path.display()
                );
                assert!(!e.to_string().is_empty());
            }
        }
    }
    assert!(
        opened > 200 && refused > 200,
        "opened {opened}, refused {refused}"
    );
}
