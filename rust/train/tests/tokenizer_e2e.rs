//! End to end with a tokenizer trained by the data pipeline instead of the byte vocabulary:
//! train a BPE tokenizer (kormo_tokenizer), tokenize a JSONL corpus into shards with `prepare`
//! (kormo_prep), then train a recipe whose `[tokens]` names that tokenizer.json — on the
//! prepared shards and on the built-in synthetic corpora — and check the run used the
//! tokenizer's vocabulary and special ids, learned (loss falls), left the tokenizer in the run
//! directory for `kormo-hf export`, and refused shards of another tokenizer by name.

mod common;

use common::{options, repo, run_error, run_quiet, scratch};
use kormo_data::synthetic::{generate, SyntheticKind, SyntheticSpec, MANIFEST_FILE};
use kormo_data::{ByteVocab, Vocabulary};
use kormo_prep::pipeline::{PrepConfig, RunLimits, Source};
use kormo_shards::Manifest;
use kormo_tokenizer::train::{train, TrainConfig, WordCounts, KORMO_SPECIALS};
use kormo_tokenizer::{hf, Pattern, Tokenizer};
use kormo_train::recipe::Recipe;
use std::path::{Path, PathBuf};

/// Texts of the built-in bilingual prose corpus (decoded from its byte-level form).
fn prose_texts(documents: u64, seed: u64) -> Vec<String> {
    let spec = SyntheticSpec {
        kind: SyntheticKind::BilingualProse,
        documents,
        seed,
    };
    generate(&spec, &Vocabulary::bytes())
        .iter()
        .map(|doc| ByteVocab::decode(&doc.tokens))
        .collect()
}

/// Trains a tokenizer of `vocab_size` ids with KORMo's specials and saves it under `dir`.
fn train_tokenizer(dir: &Path, vocab_size: usize, seed: u64) -> (Tokenizer, PathBuf) {
    let specials: Vec<String> = KORMO_SPECIALS.iter().map(|s| s.to_string()).collect();
    let mut counts = WordCounts::default();
    for text in prose_texts(150, seed) {
        counts.add_text(&text, Pattern::Qwen2, &specials, usize::MAX);
    }
    let tokenizer = train(&counts.counts, &TrainConfig::kormo(vocab_size)).unwrap();
    hf::save(&tokenizer, dir).unwrap();
    (tokenizer, dir.join("tokenizer.json"))
}

/// Runs `prepare` on a JSONL file of `texts` with `tokenizer`; returns the source's manifest.
fn prepare(root: &Path, name: &str, texts: &[String], tokenizer: &Path) -> PathBuf {
    let input = root.join(format!("{name}.jsonl"));
    let lines: Vec<String> = texts
        .iter()
        .map(|t| serde_json::json!({ "text": t }).to_string())
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let mut config = PrepConfig {
        tokenizer: tokenizer.display().to_string(),
        threads: 2,
        ..PrepConfig::default()
    };
    // The synthetic prose is built from small tables: paragraph dedup would remove most of it.
    config.dedup.enabled = false;
    let out = root.join(format!("{name}-shards"));
    let sources = [Source {
        name: "web".into(),
        files: vec![input],
    }];
    let counts = kormo_prep::pipeline::run(&config, &sources, &out, RunLimits::default()).unwrap();
    assert!(
        counts["web"].documents_written >= 50,
        "prepare kept too little: {:?}",
        counts["web"]
    );
    out.join("web").join("manifest.json")
}

/// tests/recipes/test-small.toml with `[tokens]` naming `tokenizer` (relative to `dir`, where
/// the recipe is written) and, when given, the `web` source read from `web_manifest`.
fn bpe_recipe(dir: &Path, tokenizer: &str, web_manifest: Option<&str>) -> Recipe {
    let mut text = std::fs::read_to_string(repo().join("tests/recipes/test-small.toml")).unwrap();
    let bytes = "vocabulary = \"bytes\"";
    assert!(text.contains(bytes));
    text = text.replace(
        bytes,
        &format!("vocabulary = \"bpe\"\ntokenizer = \"{tokenizer}\""),
    );
    if let Some(manifest) = web_manifest {
        let synthetic = "[sources.web]\nsynthetic = \"bilingual_prose\"\ndocuments = 300";
        assert!(text.contains(synthetic));
        text = text.replace(synthetic, &format!("[sources.web]\npath = \"{manifest}\""));
    }
    let path = dir.join("recipe.toml");
    std::fs::write(&path, text).unwrap();
    Recipe::load(&path).unwrap()
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

#[test]
fn recipe_trains_on_prepared_shards_with_its_bpe_tokenizer() {
    let root = scratch("tokenizer-e2e");
    std::fs::create_dir_all(&root).unwrap();
    let (tokenizer, tokenizer_path) = train_tokenizer(&root.join("tok"), 600, 1);
    let manifest = prepare(&root, "corpus", &prose_texts(200, 2), &tokenizer_path);
    let prepared = Manifest::load(&manifest).unwrap();
    assert_eq!(prepared.tokenizer_fingerprint, tokenizer.fingerprint());

    let recipe = bpe_recipe(
        &root,
        "tok/tokenizer.json",
        Some("corpus-shards/web/manifest.json"),
    );
    assert_eq!(
        recipe.model.vocab, 640,
        "600 ids padded to a multiple of 128"
    );
    let specials = recipe.special_tokens();
    let id = |s: &str| tokenizer.special_id(s).unwrap();
    assert_eq!(
        (specials.bos, specials.eos, specials.think, specials.pad),
        (id("<|BOS|>"), id("<|EOT|>"), id("<think>"), id("<|EOT|>"))
    );
    assert_eq!(
        recipe.tokenizer_fingerprint(),
        Some(tokenizer.fingerprint().as_str())
    );

    let run_dir = root.join("run");
    let mut opts = options("pretrain1", &run_dir);
    opts.max_steps = Some(40);
    let report = run_quiet(&recipe, &opts);
    let losses: Vec<f64> = report.logged.iter().map(|m| m.loss).collect();
    assert_eq!(losses.len(), 40);
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    // Starts near ln(640) (uniform over the model's vocabulary) and falls.
    assert!((losses[0] - 640f64.ln()).abs() < 0.5, "{losses:?}");
    assert!(mean(&losses[35..]) < mean(&losses[..5]) - 1.0, "{losses:?}");
    let weights = std::fs::read(report.checkpoint.join("model.safetensors")).unwrap();
    assert!(!weights.is_empty());

    // The tokenizer travels with the run, where `kormo-hf export` looks for it.
    let found = kormo_hf::vocab::find_tokenizer(None, &report.checkpoint, 640).unwrap();
    assert_eq!(
        found.source,
        kormo_hf::vocab::TokenizerSource::File(run_dir.join("tokenizer").join("tokenizer.json"))
    );
    assert_eq!(found.tokenizer.fingerprint(), tokenizer.fingerprint());

    // Shards of another tokenizer are refused, naming the shard and both fingerprints.
    let (other, other_path) = train_tokenizer(&root.join("other-tok"), 620, 3);
    assert_ne!(other.fingerprint(), tokenizer.fingerprint());
    prepare(&root, "other", &prose_texts(200, 2), &other_path);
    let mismatched = bpe_recipe(
        &root,
        "tok/tokenizer.json",
        Some("other-shards/web/manifest.json"),
    );
    let err = run_error(&mismatched, &options("pretrain1", &root.join("run-other")));
    assert!(
        err.contains("other-shards")
            && err.contains(&other.fingerprint())
            && err.contains(&tokenizer.fingerprint()),
        "{err}"
    );

    // A run directory that holds another tokenizer (earlier stages trained on its ids) is refused.
    let other_recipe = bpe_recipe(&root, "other-tok/tokenizer.json", None);
    let err = run_error(&other_recipe, &options("pretrain2", &run_dir));
    assert!(err.contains("fresh run directory"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn built_in_synthetic_corpora_train_with_a_bpe_tokenizer() {
    let root = scratch("tokenizer-synthetic");
    std::fs::create_dir_all(&root).unwrap();
    let (tokenizer, _) = train_tokenizer(&root.join("tok"), 512, 1);
    let recipe = bpe_recipe(&root, "tok/tokenizer.json", None);
    assert_eq!(recipe.model.vocab, 512);
    let run_dir = root.join("run");
    // pretrain2 mixes prose, reasoning (think blocks) and chat (loss-mask spans).
    let mut opts = options("pretrain2", &run_dir);
    opts.max_steps = Some(4);
    let report = run_quiet(&recipe, &opts);
    assert!(report.logged.iter().all(|m| m.loss.is_finite()));
    for source in ["web", "reasoning", "chat"] {
        let manifest =
            Manifest::load(run_dir.join("data").join(source).join(MANIFEST_FILE)).unwrap();
        assert_eq!(manifest.tokenizer_fingerprint, tokenizer.fingerprint());
        assert_eq!(manifest.vocab_size, 512);
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_missing_or_incomplete_tokenizer_is_a_recipe_error() {
    let root = scratch("tokenizer-errors");
    std::fs::create_dir_all(&root).unwrap();
    let path = root.join("recipe.toml");
    let text = std::fs::read_to_string(repo().join("tests/recipes/test-small.toml"))
        .unwrap()
        .replace(
            "vocabulary = \"bytes\"",
            "vocabulary = \"bpe\"\ntokenizer = \"nowhere/tokenizer.json\"",
        );
    std::fs::write(&path, &text).unwrap();
    let err = Recipe::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("tokens.tokenizer") && err.contains("nowhere/tokenizer.json"),
        "{err}"
    );

    // A tokenizer without <|BOT|>: the error names the file and the token.
    let mut counts = WordCounts::default();
    counts.add_text(
        "some text to learn from, some text",
        Pattern::Qwen2,
        &[],
        usize::MAX,
    );
    let config = TrainConfig {
        specials: ["<|BOS|>", "<|EOT|>", "<think>", "</think>"]
            .map(String::from)
            .to_vec(),
        ..TrainConfig::kormo(300)
    };
    hf::save(
        &train(&counts.counts, &config).unwrap(),
        &root.join("nowhere"),
    )
    .unwrap();
    let err = Recipe::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("nowhere/tokenizer.json") && err.contains("<|BOT|>"),
        "{err}"
    );

    // An explicit model.vocab must agree with the tokenizer.
    std::fs::write(
        &path,
        text.replace("preset = \"tiny\"", "preset = \"tiny\"\nvocab = 512"),
    )
    .unwrap();
    let mut counts = WordCounts::default();
    counts.add_text("some text", Pattern::Qwen2, &[], usize::MAX);
    hf::save(
        &train(&counts.counts, &TrainConfig::kormo(300)).unwrap(),
        &root.join("nowhere"),
    )
    .unwrap();
    let err = Recipe::load(&path).unwrap_err().to_string();
    assert!(err.contains("model.vocab") && err.contains("512"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn downstream_scores_go_to_the_metrics_every_interval_at_one_and_two_ranks() {
    let root = scratch("tokenizer-downstream");
    std::fs::create_dir_all(&root).unwrap();
    train_tokenizer(&root.join("tok"), 512, 1);
    // A multiple-choice task in lm-evaluation-harness's fields (docs/eval.md).
    let docs = [
        r#"{"question": "What color is the sky?", "choices": ["blue", "green", "red"], "answerKey": 0}"#,
        r#"{"question": "하늘은 무슨 색인가?", "choices": ["파랗다", "깊다"], "answerKey": 0}"#,
    ];
    std::fs::write(root.join("arc_tiny.jsonl"), docs.join("\n")).unwrap();
    std::fs::write(
        root.join("arc_tiny.json"),
        r#"{"task": "arc_tiny", "language": "en", "output_type": "multiple_choice", "test_split": "arc_tiny.jsonl",
            "doc_to_text": "Question: {{question}}\nAnswer:", "doc_to_target": "{{answerKey}}", "doc_to_choice": "choices"}"#,
    )
    .unwrap();
    let plain = bpe_recipe(&root, "tok/tokenizer.json", None);
    let path = root.join("recipe.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text + "\n[downstream]\ntasks = [\"arc_tiny.json\"]\ninterval = 2\n").unwrap();
    let recipe = Recipe::load(&path).unwrap();
    assert_eq!(recipe.hash(), plain.hash(), "scoring changes no weight: the hash stays");

    let scores = |world_size: usize| -> Vec<(u64, String, String)> {
        let run_dir = root.join(format!("run-{world_size}"));
        let mut opts = options("pretrain1", &run_dir);
        opts.max_steps = Some(5);
        opts.world_size = world_size;
        run_quiet(&recipe, &opts);
        let metrics = run_dir.join("pretrain1/metrics.jsonl");
        let records: Vec<serde_json::Value> =
            kormo_train::metrics::read_records(&metrics, "downstream").unwrap();
        // Step lines still read back (downstream records carry their own "record").
        assert_eq!(kormo_train::metrics::read_metrics(&metrics).unwrap().len(), 5);
        records
            .iter()
            .map(|r| {
                let score = r["score"].as_f64().unwrap();
                assert!((0.0..=1.0).contains(&score), "{r}");
                let text = |k: &str| r[k].as_str().unwrap().to_string();
                (r["step"].as_u64().unwrap(), text("task"), text("metric"))
            })
            .collect()
    };
    let single = scores(1);
    // Every 2 steps and at the end of the phase (step 5): the task's acc and acc_norm, then the
    // language means.
    let expected: Vec<(u64, String, String)> = [2, 4, 5]
        .into_iter()
        .flat_map(|step| {
            [("arc_tiny", "acc"), ("arc_tiny", "acc_norm"), ("mean_en", "acc"), ("mean_en", "acc_norm")]
                .map(|(task, metric)| (step, task.to_string(), metric.to_string()))
        })
        .collect();
    assert_eq!(single, expected);
    assert_eq!(scores(2), expected, "the same records from two ranks");

    // A task file that does not exist fails before the first step, naming the key.
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("arc_tiny.json\"]", "missing.json\"]")).unwrap();
    let err = run_error(&Recipe::load(&path).unwrap(), &options("pretrain1", &root.join("run-bad")));
    assert!(err.contains("downstream.tasks") && err.contains("missing.json"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}
