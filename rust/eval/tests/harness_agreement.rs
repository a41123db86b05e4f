//! Agreement with lm-evaluation-harness (docs/eval.md, "Agreement with lm-evaluation-harness").
//!
//! A small model and tokenizer, rebuilt here from fixed seeds, are exported as a Hugging Face
//! Llama folder; `tools/eval_harness_check.py` ran the harness's Hugging Face backend (HFLM, CPU
//! PyTorch) and kormo's `eval` on that folder and the task files of `tests/data/harness/`, and
//! recorded the harness's per-example log-likelihoods, generations and scores in
//! `tests/data/harness/harness_values.json`. This test rebuilds the same folder (its
//! `model.safetensors` and `tokenizer.json` must have the recorded CRC-32s, so it is bitwise
//! the model the harness scored), loads it the way `eval` does and checks that kormo_eval's
//! values equal the recorded ones: log-likelihoods within `LL_ATOL`, every acc / acc_norm /
//! exact_match and generation exactly. No Python is needed.
//!
//! To export the folder for a new harness run:
//!
//!     KORMO_HARNESS_EXPORT=/tmp/harness-model cargo test -p kormo-eval --test harness_agreement -- --ignored export

use std::path::{Path, PathBuf};

use kormo_cpu::CpuOps;
use kormo_eval::task::Task;
use kormo_eval::{Packing, Scorer};
use kormo_generate::Decoder;
use kormo_hf::vocab::{ModelTokenizer, TokenizerSource};
use kormo_hf::{export_folder, ExportDtype, ExportOptions, Flavor, Weights};
use kormo_model::{Model, ModelConfig, ParamKind};
use kormo_tokenizer::train::{train, TrainConfig, WordCounts, KORMO_SPECIALS};
use kormo_tokenizer::{Pattern, Tokenizer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

/// Largest |kormo - harness| of a log-likelihood (kormo: f32 logits, f64 log-softmax; the
/// harness: f32 log-softmax and sum).
const LL_ATOL: f64 = 1e-4;

/// The model's seed (weights) and the tokenizer's training text.
const SEED: u64 = 19;
const TEXT: &str = "The sky is blue. The grass is green. What color is the sky? Answer: blue. \
    Question: Is fire hot or cold? Answer: hot. Water is wet. Is water wet? yes. Is fire cold? no. \
    하늘은 파랗다. 바다는 깊다. 물은 젖었다. Which animal barks? a dog. two plus two is four.";

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/harness")
}

fn tokenizer() -> Tokenizer {
    let specials: Vec<String> = KORMO_SPECIALS.iter().map(|s| s.to_string()).collect();
    let mut counts = WordCounts::default();
    counts.add_text(TEXT, Pattern::Qwen2, &specials, usize::MAX);
    train(&counts.counts, &TrainConfig { specials, ..TrainConfig::kormo(320) }).unwrap()
}

/// The tiny architecture with 2 layers, weights scaled up so the logits are not flat (as in
/// tests/tasks.rs).
fn weights(vocab: usize) -> Weights {
    let mut config = ModelConfig::tiny();
    config.layers = 2;
    config.vocab = vocab;
    let model = Model::new(config, CpuOps::<f32>::with_threads(1), SEED).unwrap();
    let mut w = Weights::from_model(&model);
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    for (t, spec) in w.tensors.iter_mut().zip(model.param_specs()) {
        for x in &mut t.values {
            *x = match spec.kind {
                ParamKind::Norm => rng.random_range(0.5..1.5),
                _ => *x * 8.0,
            };
        }
    }
    w
}

/// Writes the Hugging Face folder the harness scored: LlamaForCausalLM, float32 weights,
/// tokenizer.json and tokenizer_config.json.
fn export(dir: &Path) {
    let tok = tokenizer();
    let w = weights(tok.vocab_size());
    kormo_tokenizer::hf::save(&tok, dir).unwrap();
    let model_tok = ModelTokenizer { tokenizer: tok, source: TokenizerSource::File(dir.join("tokenizer.json")) };
    let opts = ExportOptions { flavor: Flavor::Llama, dtype: ExportDtype::F32, max_positions: 512, ..ExportOptions::default() };
    export_folder(&w, &model_tok, dir, &opts).unwrap();
}

fn crc32(path: &Path) -> u32 {
    crc32fast::hash(&std::fs::read(path).unwrap())
}

/// `cargo test ... -- --ignored export` with KORMO_HARNESS_EXPORT=DIR: the folder for
/// tools/eval_harness_check.py.
#[test]
#[ignore = "writes the harness's model folder to KORMO_HARNESS_EXPORT"]
fn export_for_the_harness() {
    let dir = PathBuf::from(std::env::var("KORMO_HARNESS_EXPORT").expect("set KORMO_HARNESS_EXPORT to the output folder"));
    export(&dir);
    for f in ["model.safetensors", "tokenizer.json"] {
        println!("{f}: crc32 {:08x}", crc32(&dir.join(f)));
    }
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

#[test]
fn kormo_scores_equal_the_recorded_harness_values() {
    let record: Value = serde_json::from_str(&std::fs::read_to_string(data_dir().join("harness_values.json")).unwrap()).unwrap();
    let base = std::env::var_os("TEST_TMPDIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("kormo-eval-harness-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    export(&dir);
    for (file, key) in [("model.safetensors", "model_safetensors_crc32"), ("tokenizer.json", "tokenizer_json_crc32")] {
        let want = u32::from_str_radix(record["model"][key].as_str().unwrap(), 16).unwrap();
        assert_eq!(crc32(&dir.join(file)), want, "{file} differs from the one the harness scored: the model or tokenizer construction changed; rerun tools/eval_harness_check.py");
    }

    // Loaded as `eval --model DIR` loads it.
    let (w, tok) = kormo_generate::open_model(&dir, "tiny", None).unwrap();
    let tok = tok.tokenizer;
    let (bos, eot) = (tok.special_id("<|BOS|>").unwrap(), tok.special_id("<|EOT|>").unwrap());
    // Multiple choice through the batched Ops scorer (small rows, so several forward passes),
    // generation through the CPU decoder.
    let mut model = kormo_eval::scoring_model(&w, CpuOps::<f32>::with_threads(2)).unwrap();
    let mut decoder = Decoder::new(&w, 2);
    let mut scorer = Scorer { model: &mut model, decoder: Some(&mut decoder), tok: &tok, bos, eot, packing: Packing { seq: 256, batch_tokens: 512 } };
    let tasks = record["tasks"].as_array().unwrap();
    assert!(tasks.len() >= 4, "every task type is recorded");
    let mut worst: f64 = 0.0;
    for t in tasks {
        let name = t["task"].as_str().unwrap();
        let task = Task::load(&data_dir().join(t["file"].as_str().unwrap())).unwrap();
        let r = scorer.run(&task).unwrap();
        assert_eq!(r.task, name);
        let examples = t["examples"].as_array().unwrap();
        assert_eq!(r.examples.len(), examples.len(), "{name}: number of documents");
        for (i, (mine, theirs)) in r.examples.iter().zip(examples).enumerate() {
            assert_eq!(mine["context"], theirs["context"], "{name} doc {i}: context (few-shot examples, delimiters)");
            if let Some(lls) = theirs.get("loglikelihoods") {
                let (a, b) = (f64s(&mine["loglikelihoods"]), f64s(lls));
                assert_eq!(a.len(), b.len(), "{name} doc {i}: number of choices");
                for (x, y) in a.iter().zip(&b) {
                    worst = worst.max((x - y).abs());
                    assert!((x - y).abs() <= LL_ATOL, "{name} doc {i}: log-likelihood {x} (kormo) vs {y} (harness)");
                }
                for m in ["acc", "acc_norm"] {
                    assert_eq!(mine[m].as_f64(), theirs[m].as_f64(), "{name} doc {i}: {m}");
                }
            } else {
                assert_eq!(mine["generated"], theirs["generated"], "{name} doc {i}: greedy generation");
                assert_eq!(mine["exact_match"].as_f64(), theirs["exact_match"].as_f64(), "{name} doc {i}: exact_match");
            }
        }
        for (metric, want) in t["scores"].as_object().unwrap() {
            let got = r.scores.iter().find(|s| s.metric == metric.as_str()).unwrap_or_else(|| panic!("{name}: no {metric}"));
            assert!((got.value - want.as_f64().unwrap()).abs() < 1e-12, "{name} {metric}: kormo {} vs harness {want}", got.value);
        }
    }
    println!("max |kormo - harness| log-likelihood: {worst:.3e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The `eval` binary on the same folder (`--backend cpu`, rows small enough for several forward
/// passes) writes the recorded harness log-likelihoods and the throughput fields; `--backend
/// cuda` without a usable device is an error naming the flag and the reason.
#[test]
fn the_eval_binary_writes_the_recorded_values_and_its_throughput() {
    let record: Value = serde_json::from_str(&std::fs::read_to_string(data_dir().join("harness_values.json")).unwrap()).unwrap();
    let base = std::env::var_os("TEST_TMPDIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("kormo-eval-binary-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    export(&dir.join("model"));
    let tasks = ["arc_tiny.json", "boolq_tiny.json"].map(|t| data_dir().join(t).display().to_string()).join(",");
    let (model, out) = (dir.join("model").display().to_string(), dir.join("out").display().to_string());
    let args = ["--model", &model, "--tasks", &tasks, "--out", &out, "--backend", "cpu", "--seq", "64", "--batch-tokens", "128", "--threads", "2"];
    let (code, text) = kormo_testdeps::cli::run(env!("CARGO_BIN_EXE_eval"), &args);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("backend: cpu") && text.contains("arc_tiny: 8 questions") && text.contains("forward passes"), "{text}");
    let results: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("out/results.json")).unwrap()).unwrap();
    for r in results["tasks"].as_array().unwrap() {
        let name = r["task"].as_str().unwrap();
        let recorded = record["tasks"].as_array().unwrap().iter().find(|t| t["task"] == name).unwrap();
        for (mine, theirs) in r["examples"].as_array().unwrap().iter().zip(recorded["examples"].as_array().unwrap()) {
            for (x, y) in f64s(&mine["loglikelihoods"]).iter().zip(f64s(&theirs["loglikelihoods"])) {
                assert!((x - y).abs() <= LL_ATOL, "{name}: {x} (eval) vs {y} (harness)");
            }
        }
        assert!(r["questions_per_s"].as_f64().unwrap() > 0.0 && r["tokens_per_s"].as_f64().unwrap() > 0.0, "{r}");
        let (rows, passes) = (r["forward_rows"].as_u64().unwrap(), r["forward_passes"].as_u64().unwrap());
        assert!(rows >= passes && passes >= 1, "{name}: {rows} rows in {passes} passes");
        let row = r["row_tokens"].as_u64().unwrap();
        assert!(row >= 64, "{name}: rows of {row} tokens");
        assert_eq!(rows * row, r["scored_tokens"].as_u64().unwrap() + r["padding_tokens"].as_u64().unwrap());
    }
    if kormo_cuda::detect_devices().is_err() {
        let mut cuda = args;
        cuda[7] = "cuda";
        let (code, text) = kormo_testdeps::cli::run(env!("CARGO_BIN_EXE_eval"), &cuda);
        assert_eq!(code, Some(1), "{text}");
        assert!(text.contains("eval: --backend=cuda: ") && text.contains("--backend=cpu"), "{text}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
