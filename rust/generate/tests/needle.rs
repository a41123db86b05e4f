//! Needle prompts (length, depth, content in both languages), the evaluation grid and its
//! reports, and the `needle` binary end to end.

use kormo_cpu::CpuOps;
use kormo_generate::needle::{self, build_prompt, Language, NeedleConfig};
use kormo_generate::Decoder;
use kormo_hf::vocab::byte_tokenizer;
use kormo_hf::Weights;
use kormo_model::{Model, ModelConfig};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;
use std::process::Command;

const BOS: u32 = 256;
const EOT: u32 = 257;

#[test]
fn prompts_fill_the_length_and_place_the_needle_at_its_depth() {
    let tok = byte_tokenizer();
    for language in [Language::English, Language::Korean] {
        for target in [300usize, 1000, 3000] {
            for depth in [0u32, 50, 100] {
                let mut rng = ChaCha8Rng::seed_from_u64(1);
                let p = build_prompt(&tok, BOS, language, target, depth, &mut rng).unwrap();
                assert!(p.ids.len() <= target, "{language:?} {target}: {} tokens", p.ids.len());
                // The filler stops within one sentence (at most ~100 bytes) of the target.
                assert!(p.ids.len() + 110 >= target, "{language:?} {target}: only {} tokens", p.ids.len());
                assert_eq!(p.ids[0], BOS);
                assert_eq!(tok.decode(&p.ids[1..], false).unwrap(), p.text);
                let (needle_end, question_start) = match language {
                    Language::English => (format!("is {}.", p.answer), "\n\nQuestion:"),
                    Language::Korean => (format!("번호는 {}입니다.", p.answer), "\n\n질문:"),
                };
                assert!(p.text.contains(&needle_end), "{}", p.text);
                // Filler before and after the needle, in tokens (= bytes for this tokenizer).
                let before = p.needle_at - 1;
                let after_start = p.text.find(&needle_end).unwrap() + needle_end.len();
                let after = p.text.rfind(question_start).unwrap() - after_start;
                let at = before as f64 / (before + after) as f64;
                let expected = depth as f64 / 100.0;
                // The needle sits between sentences: allow one sentence (< 90 bytes) of slack.
                let slack = 0.05 + 90.0 / (before + after) as f64;
                assert!((at - expected).abs() < slack, "{language:?} {target} depth {depth}: needle at {at:.2} of the filler");
                let question = match language {
                    Language::English => "Answer:",
                    Language::Korean => "답:",
                };
                assert!(p.text.ends_with(question));
            }
        }
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert!(build_prompt(&tok, BOS, language, 20, 50, &mut rng).is_none());
    }
}

fn tiny_weights() -> Weights {
    let mut config = ModelConfig::tiny();
    config.layers = 2;
    Weights::from_model(&Model::new(config, CpuOps::<f32>::with_threads(1), 3).unwrap())
}

#[test]
fn evaluation_covers_the_grid_and_reports_it() {
    let weights = tiny_weights();
    let tok = byte_tokenizer();
    let cfg = NeedleConfig {
        languages: vec![Language::English, Language::Korean],
        lengths: vec![128, 256],
        depths: vec![0, 50, 100],
        trials: 2,
        seed: 4,
        max_new_tokens: 6,
    };
    let mut decoder = Decoder::new(&weights, 2);
    let mut seen = 0;
    let cells = needle::evaluate(&mut decoder, &tok, BOS, EOT, &cfg, |_| seen += 1).unwrap();
    assert_eq!(cells.len(), 2 * 2 * 3);
    assert_eq!(seen, cells.len());
    assert!(cells.iter().all(|c| c.trials == 2 && c.found <= 2 && c.mean_prompt_tokens <= c.length as f64));
    // Deterministic: the same seed gives the same answers.
    let again = needle::evaluate(&mut decoder, &tok, BOS, EOT, &cfg, |_| {}).unwrap();
    assert_eq!(cells, again);

    let doc = needle::to_json(&cells, &cfg, "tiny");
    assert_eq!(doc["cells"].as_array().unwrap().len(), 12);
    assert!(doc["overall_accuracy"]["ko"].is_number());
    let md = needle::to_markdown(&cells, &cfg);
    assert!(md.contains("## English") && md.contains("## Korean"));
    assert_eq!(md.lines().filter(|l| l.starts_with("| 50% |")).count(), 2);
    let png = needle::heat_map(&cells, &cfg).to_png();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    let short = NeedleConfig { lengths: vec![10], ..cfg };
    assert!(needle::evaluate(&mut decoder, &tok, BOS, EOT, &short, |_| {}).unwrap_err().contains("--lengths 10"));
}

#[test]
fn needle_binary_writes_json_markdown_and_png() {
    let weights = Weights::from_model(&Model::new(ModelConfig::tiny(), CpuOps::<f32>::with_threads(1), 2).unwrap());
    let base = std::env::var_os("TEST_TMPDIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("kormo-needle-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let checkpoint = dir.join("run/midtrain/final");
    weights.save_checkpoint(&checkpoint, "midtrain", 1, serde_json::json!({})).unwrap();
    let out = dir.join("results");
    let bin = env!("CARGO_BIN_EXE_needle");
    let status = Command::new(bin)
        .arg("--model").arg(&checkpoint).arg("--out").arg(&out)
        .args(["--lengths", "160,240", "--depths", "0,100", "--trials", "1", "--max-new-tokens", "4"])
        .output().unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    for file in ["needle.json", "needle.md", "needle.png"] {
        assert!(out.join(file).is_file(), "{file}");
    }
    for (args, expected) in [
        (vec!["--depths", "150"], "--depths"),
        (vec!["--languages", "fr"], "--languages"),
        (vec!["--lengths", "abc"], "--lengths"),
        (vec!["--lengths", "256,100000", "--max-context", "512"], "--lengths 100000 is past the model's trained context of 512 tokens"),
    ] {
        let result = Command::new(bin).arg("--model").arg(&checkpoint).args(&args).output().unwrap();
        assert_eq!(result.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&result.stderr).contains(expected));
    }
    // A Hugging Face folder records its context: max_position_embeddings in config.json.
    let folder = dir.join("hf");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("config.json"), r#"{"max_position_embeddings": 512}"#).unwrap();
    assert_eq!(kormo_hf::trained_context(&folder), Some(512));
    assert_eq!(kormo_hf::trained_context(&checkpoint), None);
    let err = needle::check_lengths(&[256, 100000], kormo_hf::trained_context(&folder), "hf").unwrap_err();
    assert!(err.contains("100000") && err.contains("512"), "{err}");
    assert_eq!(needle::check_lengths(&[256, 512], Some(512), "hf"), Ok(None));
    // A kormo checkpoint does not record it: the binary says so.
    let warned = Command::new(bin)
        .arg("--model").arg(&checkpoint).arg("--out").arg(&out)
        .args(["--lengths", "160", "--depths", "0", "--trials", "1", "--max-new-tokens", "1", "--languages", "en"])
        .output().unwrap();
    assert!(warned.status.success());
    assert!(String::from_utf8_lossy(&warned.stderr).contains("does not record the context it was trained for"));
    std::fs::remove_dir_all(&dir).unwrap();
}
