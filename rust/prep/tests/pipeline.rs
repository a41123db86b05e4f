//! End-to-end tests of the `prepare` pipeline: counts per stage, shards that decode back
//! to the kept text, determinism across thread counts, resuming after an interruption,
//! refusing a directory of another run, and real Korean and English HTML (the Debian FAQ,
//! from the build: kormo_testdeps).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kormo_prep::pipeline::{run, PrepConfig, RunLimits, Source, StageCounts};
use kormo_corpus::debian::files_with_suffix;
use kormo_testdeps::test_dir;
use kormo_shards::Manifest;
use kormo_tokenizer::train::{train, TrainConfig, WordCounts};
use kormo_tokenizer::{hf, Pattern};
use rand::{Rng, SeedableRng};

const WORDS: [&str; 40] = [
    "the", "of", "and", "to", "in", "is", "system", "package", "user", "install", "debian", "free",
    "software", "computer", "network", "file", "kernel", "driver", "release", "stable", "testing",
    "mirror", "archive", "server", "mail", "printer", "disk", "memory", "update", "security",
    "team", "project", "manual", "question", "answer", "version", "library", "program", "source",
    "binary",
];

fn prose(rng: &mut rand_chacha::ChaCha8Rng, words: usize) -> String {
    let mut s: Vec<&str> = (0..words)
        .map(|_| WORDS[rng.random_range(0..WORDS.len())])
        .collect();
    s.push("end.");
    let mut text = s.join(" ");
    text.insert_str(0, "Notes: ");
    text
}

/// Inputs: a JSONL source (prose, an exact duplicate, a too-short doc, a malformed line,
/// a paragraph copied into another doc) and a plain-text source (blank-line separated docs).
fn make_inputs(dir: &Path) -> (Vec<Source>, Vec<String>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let docs: Vec<String> = (0..12)
        .map(|_| format!("{}\n{}", prose(&mut rng, 40), prose(&mut rng, 30)))
        .collect();
    let mut jsonl = String::new();
    for (i, d) in docs.iter().take(6).enumerate() {
        jsonl.push_str(&serde_json::json!({ "text": d, "id": i }).to_string());
        jsonl.push('\n');
    }
    jsonl.push_str(&serde_json::json!({ "text": docs[0] }).to_string()); // exact duplicate
    jsonl.push('\n');
    jsonl.push_str("{\"text\": \"tiny\"}\n{broken json\n");
    let first_paragraph_of_1 = docs[1].split('\n').next().unwrap();
    jsonl.push_str(
        &serde_json::json!({ "text": format!("{}\n{first_paragraph_of_1}", prose(&mut rng, 35)) })
            .to_string(),
    );
    jsonl.push('\n');
    let a = dir.join("a.jsonl");
    std::fs::write(&a, jsonl).unwrap();
    let b = dir.join("b.txt");
    std::fs::write(&b, docs[6..].join("\n\n")).unwrap();
    let c = dir.join("c.txt");
    std::fs::write(&c, docs[9..].join("\n\n")).unwrap(); // all duplicates of b's tail
    let sources = vec![
        Source {
            name: "web".into(),
            files: vec![a],
        },
        Source {
            name: "books".into(),
            files: vec![b, c],
        },
    ];
    (sources, docs)
}

fn tokenizer_file(dir: &Path) -> PathBuf {
    let mut counts = WordCounts::default();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    for _ in 0..200 {
        counts.add_text(&prose(&mut rng, 20), Pattern::Qwen2, &[], usize::MAX);
    }
    let tok = train(&counts.counts, &TrainConfig::kormo(600)).unwrap();
    hf::save(&tok, dir).unwrap();
    dir.join("tokenizer.json")
}

fn config(tokenizer: &Path, threads: usize) -> PrepConfig {
    let mut c = PrepConfig {
        tokenizer: tokenizer.display().to_string(),
        threads,
        batch_documents: 3,
        ..PrepConfig::default()
    };
    c.dedup.expected_ngrams = 100_000;
    c.filters.languages = vec!["en".into()];
    c
}

/// Every source's documents, as token vectors, from its manifest and shards.
fn read_output(out: &Path, sources: &[Source]) -> Vec<Vec<Vec<u32>>> {
    sources
        .iter()
        .map(|s| {
            let dir = out.join(&s.name);
            let m = Manifest::load(dir.join("manifest.json")).unwrap();
            m.open_shards(&dir)
                .unwrap()
                .iter()
                .flat_map(|sh| {
                    sh.documents()
                        .map(|d| d.tokens.to_vec())
                        .collect::<Vec<_>>()
                })
                .collect()
        })
        .collect()
}

fn without_timings(mut c: BTreeMap<String, StageCounts>) -> BTreeMap<String, StageCounts> {
    for v in c.values_mut() {
        v.seconds_filter_and_hash = 0.0;
        v.seconds_dedup = 0.0;
        v.seconds_quality_and_tokenize = 0.0;
        v.seconds_write = 0.0;
    }
    c
}

#[test]
fn pipeline_counts_stages_writes_shards_and_resumes() {
    let dir = test_dir("prep-pipeline");
    let (sources, docs) = make_inputs(&dir);
    let tok_path = tokenizer_file(&dir.join("tok"));
    let tok = hf::load(&tok_path).unwrap();

    let out = dir.join("out2");
    let counts = run(&config(&tok_path, 2), &sources, &out, RunLimits::default()).unwrap();
    let web = &counts["web"];
    assert_eq!(web.documents_read, 9);
    assert_eq!(web.malformed, 1);
    assert_eq!(web.filter_removed.get("too_short"), Some(&1));
    assert_eq!(web.dedup_documents_emptied, 1); // the exact duplicate of doc 0
    assert_eq!(web.dedup_paragraphs_removed, 1 + 2); // the copied paragraph + doc 0's two
    assert_eq!(web.documents_written, 7);
    let books = &counts["books"];
    assert_eq!(
        (
            books.documents_read,
            books.dedup_documents_emptied,
            books.documents_written
        ),
        (9, 3, 6)
    );

    let written = read_output(&out, &sources);
    // Documents hold their text only: the trainer's packer adds BOS and EOS.
    let first = &written[0][0];
    assert!(first.iter().all(|&id| !tok.is_special(id)));
    assert_eq!(tok.decode(first, false).unwrap(), docs[0]);
    // The doc with a copied paragraph lost exactly that paragraph.
    let last = written[0].last().unwrap();
    assert!(!tok
        .decode(last, true)
        .unwrap()
        .contains(docs[1].split('\n').next().unwrap()));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["sources"]["web"]["malformed"], 1);

    // One thread: identical output and counts.
    let out1 = dir.join("out1");
    let counts1 = run(&config(&tok_path, 1), &sources, &out1, RunLimits::default()).unwrap();
    assert_eq!(without_timings(counts1), without_timings(counts.clone()));
    assert_eq!(read_output(&out1, &sources), written);

    // Interrupted after one file, then resumed: identical to the straight run.
    let resumed = dir.join("resumed");
    run(
        &config(&tok_path, 2),
        &sources,
        &resumed,
        RunLimits { max_files: Some(2) },
    )
    .unwrap();
    assert!(!resumed.join("books/books-00001.kts").exists());
    let counts_r = run(
        &config(&tok_path, 2),
        &sources,
        &resumed,
        RunLimits::default(),
    )
    .unwrap();
    assert_eq!(without_timings(counts_r), without_timings(counts));
    assert_eq!(read_output(&resumed, &sources), written);

    // Other settings into the same directory: refused, naming it.
    let mut other = config(&tok_path, 2);
    other.dedup.threshold = 0.5;
    let e = run(&other, &sources, &resumed, RunLimits::default()).unwrap_err();
    assert!(e.contains("other settings"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// A source of many one-document files (HTML pages, say) is read as one stream: one shard for
/// the run, batches that span files, and the same documents in file order whether the run is
/// straight, on one thread, or interrupted at any file and resumed.
#[test]
fn small_files_share_a_shard_and_resume_at_any_file() {
    let dir = test_dir("prep-small-files");
    let tok_path = tokenizer_file(&dir);
    let tok = hf::load(&tok_path).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(23);
    let mut files = Vec::new();
    let mut texts = Vec::new();
    for i in 0..17 {
        let text = format!("{}
{}", prose(&mut rng, 30), prose(&mut rng, 25));
        let path = dir.join(format!("page{i:02}.txt"));
        std::fs::write(&path, &text).unwrap();
        files.push(path);
        texts.push(text);
    }
    let sources = vec![Source { name: "pages".into(), files }];
    let straight = dir.join("straight");
    let counts = run(&config(&tok_path, 2), &sources, &straight, RunLimits::default()).unwrap();
    assert_eq!(counts["pages"].files, 17);
    // Each page's text with its last line's newline.
    assert_eq!(counts["pages"].text_bytes_read, texts.iter().map(|t| t.len() as u64 + 1).sum::<u64>());
    let manifest = Manifest::load(straight.join("pages/manifest.json")).unwrap();
    assert_eq!(manifest.shards.len(), 1, "one shard for the whole chunk of small files");
    let written = read_output(&straight, &sources);
    // A text file's document keeps its lines; the last one gets its newline.
    let decoded: Vec<String> =
        written[0].iter().map(|d| tok.decode(d, false).unwrap().trim_end().to_string()).collect();
    let kept: Vec<&String> = texts.iter().filter(|t| decoded.contains(t)).collect();
    assert!(kept.len() >= 15, "{} of 17 pages kept: {:?}", kept.len(), counts["pages"]);
    assert_eq!(decoded.iter().collect::<Vec<_>>(), kept, "documents in file order");

    let one = dir.join("one-thread");
    run(&config(&tok_path, 1), &sources, &one, RunLimits::default()).unwrap();
    assert_eq!(read_output(&one, &sources), written);
    for stop in [1, 5, 16] {
        let resumed = dir.join(format!("resumed-{stop}"));
        run(&config(&tok_path, 2), &sources, &resumed, RunLimits { max_files: Some(stop) }).unwrap();
        let partial = Manifest::load(resumed.join("pages/manifest.json")).unwrap();
        assert_eq!(partial.shards.len(), 1, "the chunk before the stop is one shard");
        let again = run(&config(&tok_path, 2), &sources, &resumed, RunLimits::default()).unwrap();
        assert_eq!(without_timings(again), without_timings(counts.clone()), "stop at {stop}");
        assert_eq!(read_output(&resumed, &sources), written, "stop at {stop}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_config_and_inputs_are_reported_not_panicked() {
    let dir = test_dir("prep-errors");
    let cfg = dir.join("prep.toml");
    std::fs::write(&cfg, "[filters]\nmax_symbol_ratio = 2.0\n").unwrap();
    assert!(PrepConfig::load(&cfg)
        .unwrap_err()
        .contains("filters.max_symbol_ratio"));
    std::fs::write(&cfg, "[dedup]\nngram_sise = 3\n").unwrap();
    let e = PrepConfig::load(&cfg).unwrap_err();
    assert!(e.contains("prep.toml") && e.contains("ngram_sise"), "{e}");
    let sources = vec![Source {
        name: "x".into(),
        files: vec![dir.join("missing.jsonl")],
    }];
    let e = run(
        &PrepConfig::default(),
        &sources,
        &dir.join("out"),
        RunLimits::default(),
    )
    .unwrap_err();
    assert!(e.contains("no tokenizer"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn debian_faq_korean_and_english() {
    let faq = kormo_testdeps::debian_faq();
    let dir = test_dir("prep-faq");
    let tok_path = tokenizer_file(&dir.join("tok"));
    let sources = vec![
        Source {
            name: "en".into(),
            files: files_with_suffix(&faq, ".en.html"),
        },
        Source {
            name: "ko".into(),
            files: files_with_suffix(&faq.join("ko"), ".ko.html"),
        },
    ];
    let mut c = config(&tok_path, 2);
    c.filters.languages = vec!["ko".into(), "en".into()];
    c.filters.max_duplicate_line_ratio = 0.5; // the pages repeat their navigation lines
    let counts = run(&c, &sources, &dir.join("out"), RunLimits::default()).unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&counts).unwrap());
    let en = &counts["en"];
    let ko = &counts["ko"];
    assert!(
        en.languages.get("en").copied().unwrap_or(0) * 2 > en.documents_read,
        "{en:?}"
    );
    assert!(
        ko.languages.get("ko").copied().unwrap_or(0) * 2 > ko.documents_read,
        "{ko:?}"
    );
    assert_eq!(en.languages.get("ko"), None);
    assert!(en.documents_written > 0 && ko.documents_written > 0);
    // Every shard records each document's language: the English pages are not Korean, and
    // most Korean ones are (a few Korean pages are mostly untranslated English, e.g.
    // pkg-basics.ko.html at 9% Hangul, so they count as English).
    for (name, expected, at_least) in [("en", 0u8, 10), ("ko", 1u8, 7)] {
        let out = dir.join("out").join(name);
        let shards = Manifest::load(out.join("manifest.json")).unwrap().open_shards(&out).unwrap();
        let languages: Vec<u8> = shards
            .iter()
            .flat_map(|sh| sh.languages().expect("prepare records languages").to_vec())
            .collect();
        let matching = languages.iter().filter(|&&l| l == expected).count();
        assert!(matching * 10 >= languages.len() * at_least, "{name}: {languages:?}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}
