//! `[attention] mask = "xlda"` (cross-lingual document attention, docs/recipes.md) end to end on
//! the CPU backend: it trains on the synthetic corpora (whose shards record each document's
//! language), the mask matters (the first loss differs from the intra-document mask's on the
//! same rows), and shards without languages stop the run at the start, naming the shard.

mod common;

use common::{options, run_error, run_quiet, scratch};
use kormo_train::recipe::Recipe;

/// test-small with pretrain1 drawing short reasoning documents too (so every step's rows
/// hold document boundaries) and the given extra text.
fn recipe(dir: &std::path::Path, name: &str, extra: &str) -> Recipe {
    std::fs::create_dir_all(dir).unwrap();
    let text = std::fs::read_to_string(common::repo().join("tests/recipes/test-small.toml")).unwrap();
    let phase = "mixture = { web = 1.0 }\nseq_len = 64";
    assert!(text.contains(phase));
    let text = text.replacen(phase, "mixture = { web = 0.5, reasoning = 0.5 }\nseq_len = 64", 1);
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, format!("{text}\n{extra}")).unwrap();
    Recipe::load(&path).unwrap()
}

#[test]
fn an_xlda_recipe_trains_and_its_mask_matters() {
    let dir = scratch("xlda-train");
    let xlda = recipe(&dir, "xlda", "[attention]\nmask = \"xlda\"\n");
    let document = recipe(&dir, "document", "");
    let run = |recipe: &Recipe, name: &str| {
        let mut opts = options("pretrain1", &dir.join(name));
        opts.max_steps = Some(12);
        let mut out = Vec::new();
        let report = kormo_train::trainer::run_stage(recipe, &opts, &mut out).unwrap();
        (report, String::from_utf8(out).unwrap())
    };
    let (trained, console) = run(&xlda, "xlda");
    assert!(console.contains("attention: cross-lingual document attention"), "{console}");
    let losses: Vec<f64> = trained.logged.iter().map(|m| m.loss).collect();
    assert_eq!(losses.len(), 12);
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert!(losses[11] < losses[0] - 0.1, "the loss falls: {losses:?}");
    let (plain, console) = run(&document, "document");
    assert!(!console.contains("cross-lingual"), "{console}");
    // Same rows, same initial weights: only the mask differs, and it changes the first loss.
    assert_ne!(plain.logged[0].loss, trained.logged[0].loss);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn xlda_over_shards_without_languages_fails_at_start_naming_the_shard() {
    let dir = scratch("xlda-nolang");
    let data = dir.join("old");
    std::fs::create_dir_all(&data).unwrap();
    let meta = kormo_shards::ShardMeta {
        vocab_size: 384,
        tokenizer_fingerprint: kormo_data::Vocabulary::bytes().fingerprint().into(),
    };
    let shard = data.join("shard-00000.kts");
    let mut writer = kormo_shards::ShardWriter::create(&shard, meta.clone()).unwrap();
    for i in 0..50u32 {
        let text: Vec<u32> = format!("old document {i} without a language").bytes().map(u32::from).collect();
        writer.append_document(&text, None).unwrap();
    }
    let summary = writer.finish().unwrap();
    let mut manifest = kormo_shards::Manifest::new(meta);
    manifest.push("shard-00000.kts", &summary).unwrap();
    manifest.save(data.join("manifest.json")).unwrap();

    let old_web = |extra: &str| {
        let text = std::fs::read_to_string(common::repo().join("tests/recipes/test-small.toml")).unwrap();
        let web = "[sources.web]\nsynthetic = \"bilingual_prose\"\ndocuments = 300";
        assert!(text.contains(web));
        let text = text.replacen(web, "[sources.web]\npath = \"old/manifest.json\"", 1);
        let path = dir.join("old.toml");
        std::fs::write(&path, format!("{text}\n{extra}")).unwrap();
        Recipe::load(&path).unwrap()
    };
    let mut opts = options("pretrain1", &dir.join("run"));
    opts.max_steps = Some(1);
    let err = run_error(&old_web("[attention]\nmask = \"xlda\"\n"), &opts);
    assert!(err.contains(&shard.display().to_string()), "{err}");
    assert!(err.contains("records no document languages"), "{err}");
    assert!(err.contains("attention.mask"), "{err}");
    assert!(!dir.join("run/pretrain1/metrics.jsonl").exists(), "no step was taken");
    // The same shards train under the intra-document mask.
    let report = run_quiet(&old_web(""), &opts);
    assert_eq!(report.logged.len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}
