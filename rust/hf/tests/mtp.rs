//! Multi-token prediction (`mtp_depth > 0`) and Hugging Face export: transformers has no MTP
//! heads, so export drops the `mtp.*` tensors and says so (the summary lists them, the `hf`
//! binary prints a line naming them); what is written is exactly the next-token model, which
//! imports back as the model without MTP. The settings are written into kormo's own JSON only
//! when MTP is on (or the weight is not the default).

mod common;

use common::{random_weights, scratch, small_config};
use kormo_hf::vocab::{byte_tokenizer, ModelTokenizer, TokenizerSource};
use kormo_hf::{export_folder, load_hf_folder, ExportDtype, ExportOptions, Flavor, Weights};
use kormo_model::ModelConfig;
use std::process::Command;

fn byte_vocab() -> ModelTokenizer {
    ModelTokenizer { tokenizer: byte_tokenizer(), source: TokenizerSource::ByteVocab }
}

fn mtp_config() -> ModelConfig {
    ModelConfig { vocab: 384, mtp_depth: 2, ..small_config() }
}

/// The weights without the MTP tensors, under the config without MTP.
fn next_token_part(weights: &Weights) -> Weights {
    let config = ModelConfig { mtp_depth: 0, mtp_loss_weight: kormo_model::DEFAULT_MTP_LOSS_WEIGHT, ..weights.config.clone() };
    let tensors = weights.tensors.iter().filter(|t| !t.name.starts_with("mtp.")).cloned().collect();
    Weights { config, tensors }
}

#[test]
fn mtp_export_drops_the_heads_and_imports_as_the_next_token_model() {
    let weights = random_weights(&mtp_config(), 5);
    let dir = scratch("mtp-export");
    for flavor in [Flavor::Kormo, Flavor::Llama] {
        let out = dir.join(format!("{flavor:?}"));
        let options = ExportOptions { flavor, dtype: ExportDtype::F32, ..ExportOptions::default() };
        let summary = export_folder(&weights, &byte_vocab(), &out, &options).unwrap();
        assert_eq!(summary.dropped, ["mtp.1.proj.weight", "mtp.1.norm.weight", "mtp.2.proj.weight", "mtp.2.norm.weight"]);
        let text = std::fs::read_to_string(out.join("config.json")).unwrap();
        assert!(!text.contains("mtp"), "{text}");
        let back = load_hf_folder(&out).unwrap();
        assert_eq!(back, next_token_part(&weights));
        assert_eq!(summary.total_bytes, 4 * back.config.param_count());
    }
    // Without MTP nothing is dropped.
    let plain = next_token_part(&weights);
    let options = ExportOptions { dtype: ExportDtype::F32, ..ExportOptions::default() };
    assert!(export_folder(&plain, &byte_vocab(), &dir.join("plain"), &options).unwrap().dropped.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn hf_binary_reports_the_dropped_mtp_heads() {
    let config = ModelConfig { mtp_depth: 1, mtp_loss_weight: 0.1, ..mtp_config() };
    let weights = random_weights(&config, 6);
    let root = scratch("mtp-binary");
    let checkpoint = root.join("run/pretrain1/final");
    let tensors = weights.tensors.iter().map(|t| kormo_checkpoint::Tensor::f32(t.name.clone(), t.shape.clone(), &t.values)).collect();
    let model = serde_json::to_value(&config).unwrap();
    assert_eq!((model["mtp_depth"].to_string(), model["mtp_loss_weight"].to_string()), ("1".into(), "0.1".into()));
    let run = kormo_checkpoint::RunState {
        step: 3, stage: "pretrain1".into(), phase: "main".into(), config_hash: "x".into(),
        rng_state: serde_json::Value::Null, data_cursor: serde_json::Value::Null,
        trainer: serde_json::json!({ "model": model }),
    };
    kormo_checkpoint::save(&checkpoint, run, &[("model.safetensors", tensors)]).unwrap();
    assert_eq!(Weights::from_checkpoint(&checkpoint, &ModelConfig::tiny()).unwrap(), weights);

    let out = root.join("export");
    let result = Command::new(env!("CARGO_BIN_EXE_hf")).args(["export", "--model"]).arg(&checkpoint).arg("--out").arg(&out).output().unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(result.status.success(), "{stdout}{}", String::from_utf8_lossy(&result.stderr));
    assert!(stdout.contains("dropped the multi-token-prediction heads (mtp_depth = 1: 2 tensors") && stdout.contains("mtp.1.proj.weight, mtp.1.norm.weight"), "{stdout}");
    let plain = next_token_part(&weights);
    assert!(stdout.contains(&format!("({} parameters", plain.config.param_count())), "{stdout}");
    // The binary exports bf16: the same next-token tensors, rounded.
    let back = load_hf_folder(&out).unwrap();
    assert_eq!(back.config, plain.config);
    let names = |w: &Weights| w.tensors.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&back), names(&plain));
    std::fs::remove_dir_all(&root).unwrap();
}

/// A checkpoint that records no model config (older, or written by hand): its MTP heads are
/// recognised by their tensors, so `hf export`, `generate` and `eval` load it with `--preset`
/// alone.
#[test]
fn a_checkpoint_without_a_recorded_config_gets_its_mtp_depth_from_its_tensors() {
    let config = ModelConfig { mtp_depth: 2, ..mtp_config() };
    let weights = random_weights(&config, 7);
    let root = scratch("mtp-unrecorded");
    let checkpoint = root.join("final");
    let tensors = weights.tensors.iter().map(|t| kormo_checkpoint::Tensor::f32(t.name.clone(), t.shape.clone(), &t.values)).collect();
    let run = kormo_checkpoint::RunState {
        step: 1, stage: "pretrain1".into(), phase: "main".into(), config_hash: "x".into(),
        rng_state: serde_json::Value::Null, data_cursor: serde_json::Value::Null,
        trainer: serde_json::json!({}),
    };
    kormo_checkpoint::save(&checkpoint, run, &[("model.safetensors", tensors)]).unwrap();
    let base = ModelConfig { mtp_depth: 0, vocab: 7, ..config.clone() };
    assert_eq!(Weights::from_checkpoint(&checkpoint, &base).unwrap(), weights);
    std::fs::remove_dir_all(&root).unwrap();
}
