//! Export -> import round trips (exact in f32, bf16-rounded in bf16), sharding, both
//! flavours, the kormo checkpoint path, the `hf` binary, and errors on damaged folders.

mod common;

use common::{random_weights, scratch, small_config};
use kormo_hf::vocab::{byte_tokenizer, ModelTokenizer, TokenizerSource};
use kormo_hf::{export_folder, load_hf_folder, ExportDtype, ExportOptions, Flavor, Weights};
use kormo_model::bf16;
use std::process::Command;

fn byte_vocab() -> ModelTokenizer {
    ModelTokenizer { tokenizer: byte_tokenizer(), source: TokenizerSource::ByteVocab }
}

fn options(flavor: Flavor, dtype: ExportDtype) -> ExportOptions {
    ExportOptions { flavor, dtype, ..ExportOptions::default() }
}

#[test]
fn f32_round_trip_is_exact_for_both_flavours() {
    let mut config = small_config();
    config.vocab = 384; // the byte vocabulary's size, so its tokenizer fits
    let weights = random_weights(&config, 1);
    for flavor in [Flavor::Kormo, Flavor::Llama] {
        let dir = scratch(&format!("f32-{flavor:?}"));
        let summary = export_folder(&weights, &byte_vocab(), &dir, &options(flavor, ExportDtype::F32)).unwrap();
        assert_eq!(summary.weight_files, vec![dir.join("model.safetensors")]);
        for file in ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"] {
            assert!(dir.join(file).is_file(), "{file}");
        }
        let config_text = std::fs::read_to_string(dir.join("config.json")).unwrap();
        assert!(config_text.contains(flavor.architecture()));
        let file = kormo_checkpoint::SafetensorsFile::read(&dir.join("model.safetensors")).unwrap();
        let llama_norm = file.tensors().contains_key("model.layers.0.input_layernorm.weight");
        assert_eq!(llama_norm, flavor == Flavor::Llama);
        assert_eq!(load_hf_folder(&dir).unwrap(), weights);
        // The generated tokenizer.json is readable and is the byte vocabulary.
        let tok = kormo_tokenizer::hf::load(&dir.join("tokenizer.json")).unwrap();
        assert_eq!(tok.encode("<|BOT|>user\n안녕"), byte_tokenizer().encode("<|BOT|>user\n안녕"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn bf16_export_rounds_each_value_once() {
    let mut config = small_config();
    config.vocab = 384;
    let weights = random_weights(&config, 2);
    let dir = scratch("bf16");
    export_folder(&weights, &byte_vocab(), &dir, &options(Flavor::Llama, ExportDtype::BF16)).unwrap();
    let loaded = load_hf_folder(&dir).unwrap();
    for (ours, theirs) in weights.tensors.iter().zip(&loaded.tensors) {
        let expected = bf16::to_f32_slice(&bf16::from_f32_slice(&ours.values));
        assert_eq!(expected, theirs.values, "{}", ours.name);
        assert_ne!(ours.values, theirs.values, "{}: bf16 changed nothing?", ours.name);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sharded_export_writes_an_index_and_round_trips() {
    let mut config = small_config();
    config.vocab = 384;
    let weights = random_weights(&config, 3);
    let dir = scratch("sharded");
    // Leftovers of an earlier single-file export must disappear.
    std::fs::write(dir.join("model.safetensors"), b"stale").unwrap();
    let opts = ExportOptions { max_shard_bytes: 40_000, ..options(Flavor::Kormo, ExportDtype::F32) };
    let summary = export_folder(&weights, &byte_vocab(), &dir, &opts).unwrap();
    let n = summary.weight_files.len();
    assert!(n > 2, "{n} shards");
    assert!(!dir.join("model.safetensors").exists());
    assert!(dir.join(format!("model-00001-of-{n:05}.safetensors")).is_file());
    let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap()).unwrap();
    assert_eq!(index["metadata"]["total_size"], summary.total_bytes);
    assert_eq!(index["weight_map"].as_object().unwrap().len(), weights.tensors.len());
    assert_eq!(load_hf_folder(&dir).unwrap(), weights);

    // A shard that lost a tensor: the error names the missing tensor.
    let last = summary.weight_files.last().unwrap();
    kormo_checkpoint::safetensors::write(last, &[], &Default::default()).unwrap();
    let err = load_hf_folder(&dir).unwrap_err().to_string();
    assert!(err.contains("missing tensor `lm_head.weight`"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn damaged_folders_give_errors_naming_the_file() {
    let mut config = small_config();
    config.vocab = 384;
    let weights = random_weights(&config, 4);
    let dir = scratch("damaged");
    export_folder(&weights, &byte_vocab(), &dir, &options(Flavor::Llama, ExportDtype::F32)).unwrap();
    let config_path = dir.join("config.json");
    let good = std::fs::read_to_string(&config_path).unwrap();

    std::fs::write(&config_path, good.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1")).unwrap();
    let err = load_hf_folder(&dir).unwrap_err();
    assert!(err.message.contains("model.layers.1."), "{err}");
    assert_eq!(err.path, dir.join("model.safetensors"));

    std::fs::write(&config_path, good.replace("\"hidden_size\": 48", "\"hidden_size\": 40")).unwrap();
    assert!(load_hf_folder(&dir).unwrap_err().message.contains("shape"));

    std::fs::write(&config_path, "{ not json").unwrap();
    let err = load_hf_folder(&dir).unwrap_err();
    assert_eq!(err.path, config_path);

    std::fs::write(&config_path, &good).unwrap();
    std::fs::write(dir.join("model.safetensors"), b"\x10\x00\x00\x00\x00\x00\x00\x00{}").unwrap();
    let err = load_hf_folder(&dir).unwrap_err();
    assert_eq!(err.path, dir.join("model.safetensors"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// kormo checkpoint -> `hf export` (binary) -> `hf import` (binary) -> the same weights.
#[test]
fn hf_binary_exports_a_checkpoint_and_imports_it_back() {
    let mut config = kormo_model::ModelConfig::tiny();
    config.layers = 1;
    let weights = random_weights(&config, 5);
    let root = scratch("binary");
    let checkpoint = root.join("run/pretrain1/final");
    let tensors = weights.tensors.iter().map(|t| kormo_checkpoint::Tensor::f32(t.name.clone(), t.shape.clone(), &t.values)).collect();
    let run = kormo_checkpoint::RunState {
        step: 7, stage: "pretrain1".into(), phase: "main".into(), config_hash: "x".into(),
        rng_state: serde_json::Value::Null, data_cursor: serde_json::Value::Null, trainer: serde_json::json!({}),
    };
    kormo_checkpoint::save(&checkpoint, run, &[("model.safetensors", tensors)]).unwrap();

    let hf = env!("CARGO_BIN_EXE_hf");
    let out = root.join("export");
    // The tiny preset has 4 layers; this checkpoint has 1: a clear error, not a panic.
    let wrong = Command::new(hf).args(["export", "--model"]).arg(&checkpoint).arg("--out").arg(&out).output().unwrap();
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("preset") && stderr.contains("model.safetensors"), "{stderr}");

    // With the right architecture the checkpoint reads back exactly.
    let loaded = Weights::from_checkpoint(&checkpoint, &config).unwrap();
    assert_eq!(loaded, weights);
    export_folder(&loaded, &byte_vocab(), &out, &options(Flavor::Llama, ExportDtype::F32)).unwrap();

    let imported = root.join("run/pretrain2/final");
    let status = Command::new(hf).args(["import", "--folder"]).arg(&out).arg("--out").arg(&imported).status().unwrap();
    assert!(status.success());
    // The imported checkpoint records its architecture, so no preset is needed to read it.
    let back = Weights::from_checkpoint(&imported, &kormo_model::ModelConfig::proxy_1b()).unwrap();
    assert_eq!(back, weights);

    // `hf logits` writes the reference that tools/hf_transformers_check.py compares against.
    let reference = root.join("reference.json");
    let status = Command::new(hf).args(["logits", "--model"]).arg(&out).args(["--tokens", "5,300,7"]).arg("--out").arg(&reference).status().unwrap();
    assert!(status.success());
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&reference).unwrap()).unwrap();
    assert_eq!(doc["tokens"], serde_json::json!([5, 300, 7]));
    let rows = doc["logits"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[2].as_array().unwrap().len(), config.vocab);
    assert!(rows.iter().flat_map(|r| r.as_array().unwrap()).all(|x| x.as_f64().unwrap().is_finite()));
    let bad = Command::new(hf).args(["logits", "--model"]).arg(&out).args(["--tokens", "5,99999", "--out"]).arg(&reference).output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("99999"));

    // Bad command lines are errors, not panics: usage mistakes exit 2 with clap's message,
    // failures of a well-formed command exit 1 naming what failed.
    for (args, code, prefix) in [
        (vec!["export"], 2, "error: the following required arguments were not provided"),
        (vec!["export", "--model", "/nonexistent", "--out", "x"], 1, "hf: "),
        (vec!["import", "--folder"], 2, "error: a value is required for '--folder"),
        (vec!["frobnicate"], 2, "error: unrecognized subcommand 'frobnicate'"),
    ] {
        let result = Command::new(hf).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.starts_with(prefix), "{args:?}: {stderr}");
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn export_writes_kormos_chat_template_over_the_tokenizers_own() {
    let mut config = small_config();
    config.vocab = 384;
    let weights = random_weights(&config, 5);
    let dir = scratch("chat-template");
    let tok_dir = dir.join("tok");
    kormo_tokenizer::hf::save(&byte_tokenizer(), &tok_dir).unwrap();
    // A tokenizer_config.json from elsewhere: an older template and a key kormo does not write.
    let sibling = tok_dir.join("tokenizer_config.json");
    let mut own: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&sibling).unwrap()).unwrap();
    own["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}".into();
    own["model_max_length"] = 4096.into();
    std::fs::write(&sibling, own.to_string()).unwrap();
    let tokenizer = ModelTokenizer { tokenizer: byte_tokenizer(), source: TokenizerSource::File(tok_dir.join("tokenizer.json")) };
    let out = dir.join("out");
    export_folder(&weights, &tokenizer, &out, &options(Flavor::Kormo, ExportDtype::F32)).unwrap();
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(written["chat_template"].as_str(), Some(kormo_tokenizer::chat::CHAT_TEMPLATE));
    assert_eq!(written["model_max_length"], 4096);
    assert_eq!(written["bos_token"], "<|BOS|>");
    // A damaged sibling is an error naming it.
    std::fs::write(&sibling, "{not json").unwrap();
    let err = export_folder(&weights, &tokenizer, &out, &options(Flavor::Kormo, ExportDtype::F32)).unwrap_err();
    assert!(err.to_string().contains("tokenizer_config.json"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
