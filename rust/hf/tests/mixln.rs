//! Mix-LN (`norm = "mixln"`) and Hugging Face interop: `LlamaForCausalLM` and
//! `KORMoForCausalLM` are pre-LN only, so exporting a Mix-LN model is refused with an error
//! naming the setting (library and `hf export` binary, nothing written), while importing a
//! plain folder gives a pre-LN model. The settings are written into kormo's own JSON (checkpoint
//! manifests) only when not at their defaults, so pre-LN configs serialise as before; a config
//! that spells `norm = "pre"` out reads as the default and runs bitwise the same model.

mod common;

use common::{random_weights, scratch, small_config};
use kormo_hf::vocab::{byte_tokenizer, ModelTokenizer, TokenizerSource};
use kormo_hf::{export_folder, load_hf_folder, ExportDtype, ExportOptions, Flavor, Weights};
use kormo_model::{ModelConfig, NormPlacement, DEFAULT_MIXLN_POST_FRACTION};
use std::process::Command;

fn byte_vocab() -> ModelTokenizer {
    ModelTokenizer { tokenizer: byte_tokenizer(), source: TokenizerSource::ByteVocab }
}

fn mixln_config() -> ModelConfig {
    ModelConfig { vocab: 384, layers: 4, norm: NormPlacement::MixLn, ..small_config() }
}

#[test]
fn deepnorm_export_is_refused_naming_the_setting() {
    let config = ModelConfig { norm: NormPlacement::DeepNorm, mixln_post_fraction: DEFAULT_MIXLN_POST_FRACTION, ..mixln_config() };
    let weights = random_weights(&config, 1);
    let dir = scratch("deepnorm-export");
    let out = dir.join("out");
    let options = ExportOptions { flavor: Flavor::Llama, dtype: ExportDtype::F32, ..ExportOptions::default() };
    let err = export_folder(&weights, &byte_vocab(), &out, &options).unwrap_err();
    for needle in ["norm = \"deepnorm\"", "all 4 layers", Flavor::Llama.architecture(), "norm = \"pre\""] {
        assert!(err.message.contains(needle), "{needle}: {err}");
    }
    assert!(!out.exists(), "nothing is written");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn mixln_export_is_refused_naming_the_setting_for_both_flavours() {
    let weights = random_weights(&mixln_config(), 1);
    for flavor in [Flavor::Kormo, Flavor::Llama] {
        let dir = scratch(&format!("mixln-export-{flavor:?}"));
        let out = dir.join("out");
        let options = ExportOptions { flavor, dtype: ExportDtype::F32, ..ExportOptions::default() };
        let err = export_folder(&weights, &byte_vocab(), &out, &options).unwrap_err();
        assert_eq!(err.path, out);
        for needle in ["norm = \"mixln\"", "first 1 of 4 layers", "mixln_post_fraction = 0.25", flavor.architecture(), "norm = \"pre\""] {
            assert!(err.message.contains(needle), "{needle}: {err}");
        }
        assert!(!out.exists(), "nothing is written");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn hf_binary_refuses_to_export_a_mixln_checkpoint() {
    let config = ModelConfig { mixln_post_fraction: 0.5, ..mixln_config() };
    let weights = random_weights(&config, 2);
    let root = scratch("mixln-binary");
    let checkpoint = root.join("run/pretrain1/final");
    weights.save_checkpoint(&checkpoint, "pretrain1", 3, serde_json::json!({})).unwrap();
    // The manifest records the setting, so the checkpoint reads back as the Mix-LN model.
    assert_eq!(Weights::from_checkpoint(&checkpoint, &ModelConfig::tiny()).unwrap(), weights);

    let out = root.join("export");
    let result = Command::new(env!("CARGO_BIN_EXE_hf")).args(["export", "--model"]).arg(&checkpoint).arg("--out").arg(&out).output().unwrap();
    assert!(!result.status.success());
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(stderr.contains("norm = \"mixln\"") && stderr.contains("first 2 of 4 layers"), "{stderr}");
    assert!(!out.exists());
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn import_of_a_plain_folder_is_pre_ln() {
    let config = ModelConfig { vocab: 384, ..small_config() };
    let weights = random_weights(&config, 3);
    let dir = scratch("mixln-import");
    for flavor in [Flavor::Kormo, Flavor::Llama] {
        let out = dir.join(format!("{flavor:?}"));
        let options = ExportOptions { flavor, dtype: ExportDtype::F32, ..ExportOptions::default() };
        export_folder(&weights, &byte_vocab(), &out, &options).unwrap();
        let text = std::fs::read_to_string(out.join("config.json")).unwrap();
        assert!(!text.contains("norm\"") && !text.contains("mixln"), "{text}");
        let back = load_hf_folder(&out).unwrap();
        assert_eq!(back.config.norm, NormPlacement::Pre);
        assert_eq!(back.config.post_ln_layers(), 0);
        assert_eq!(back, weights);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn settings_are_serialised_only_when_not_default() {
    // Pre-LN: the JSON has exactly the keys it had before the setting existed.
    let pre = serde_json::to_value(ModelConfig::tiny()).unwrap();
    let mut keys: Vec<&str> = pre.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["ffn", "head_dim", "heads", "hidden", "kv_heads", "layers", "rms_eps", "rope_theta", "tie_embeddings", "vocab"]);
    // An old config without the keys, and one spelling out the defaults, read as the default.
    let mut explicit = pre.clone();
    explicit["norm"] = serde_json::json!("pre");
    explicit["mixln_post_fraction"] = serde_json::json!(0.25);
    for doc in [pre, explicit] {
        let cfg: ModelConfig = serde_json::from_value(doc).unwrap();
        assert_eq!(cfg, ModelConfig::tiny());
    }
    // Mix-LN round-trips; the fraction is written as its decimal.
    let mixln = ModelConfig { norm: NormPlacement::MixLn, mixln_post_fraction: 0.3, ..ModelConfig::proxy_1b() };
    let value = serde_json::to_value(&mixln).unwrap();
    assert_eq!(value["norm"], "mixln");
    assert_eq!(value["mixln_post_fraction"].to_string(), "0.3");
    assert_eq!(serde_json::from_value::<ModelConfig>(value).unwrap(), mixln);
    let default_fraction = serde_json::to_value(ModelConfig { mixln_post_fraction: DEFAULT_MIXLN_POST_FRACTION, ..mixln }).unwrap();
    assert_eq!(default_fraction["norm"], "mixln");
    assert!(default_fraction.get("mixln_post_fraction").is_none());
    // Unknown spellings are refused.
    let mut bad = serde_json::to_value(ModelConfig::tiny()).unwrap();
    bad["norm"] = serde_json::json!("post");
    let err = serde_json::from_value::<ModelConfig>(bad).unwrap_err().to_string();
    assert!(err.contains("post") && err.contains("mixln"), "{err}");
}

/// A config read from JSON with `"norm": "pre"` runs bitwise the model of one without the key.
#[test]
fn explicit_pre_from_json_runs_bitwise_the_default_model() {
    let config = ModelConfig { layers: 3, ..small_config() };
    let mut doc = serde_json::to_value(&config).unwrap();
    doc["norm"] = serde_json::json!("pre");
    let explicit: ModelConfig = serde_json::from_value(doc).unwrap();
    let batch = kormo_model::Batch::forward_only(&[5, 17, 3, 60, 2, 9, 33]);
    let logits = |cfg: &ModelConfig| {
        let weights = random_weights(cfg, 4);
        let mut model = kormo_model::Model::new(cfg.clone(), kormo_cpu::CpuOps::<f32>::new(), 0).unwrap();
        for t in &weights.tensors {
            model.write_param(&t.name, &t.values).unwrap();
        }
        let out: Vec<u32> = model.forward(&batch).unwrap().iter().map(|x| x.to_bits()).collect();
        out
    };
    let want = logits(&config);
    assert_eq!(logits(&explicit), want);
    let mixln = ModelConfig { layers: 4, norm: NormPlacement::MixLn, ..config.clone() };
    assert_ne!(logits(&mixln)[..], logits(&ModelConfig { layers: 4, ..config })[..]);
}
