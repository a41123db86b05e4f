//! Every JSON file kormo-hf writes states its numbers as the decimals they are: an f32 setting
//! such as `rms_eps = 1e-5` appears as `1e-5`/`0.00001`, never as the widened f32 image
//! 9.999999747378752e-06 (config.json, generation_config.json, the tokenizer files, the
//! checkpoint manifest `hf import` writes, the logits `hf logits` writes, and `ModelConfig`
//! serialised through `serde_json::Value`).

mod common;

use std::path::Path;
use std::process::Command;

use common::{random_weights, scratch, small_config};
use kormo_hf::vocab::{byte_tokenizer, ModelTokenizer, TokenizerSource};
use kormo_hf::{export_folder, ExportDtype, ExportOptions, Flavor};
use serde_json::Value;

/// True when `v` is exactly an f32 whose own shortest decimal is shorter than `v`'s: the f32
/// was widened to f64 before it was written.
fn widened_f32(v: f64) -> bool {
    let f = v as f32;
    f64::from(f) == v && f.to_string() != v.to_string()
}

/// Every number in `doc` that is a widened f32, with its path.
fn widened(doc: &Value, path: &str, found: &mut Vec<String>) {
    match doc {
        Value::Number(n) if n.as_f64().is_some_and(widened_f32) => found.push(format!("{path} = {n}")),
        Value::Array(items) => items.iter().enumerate().for_each(|(i, v)| widened(v, &format!("{path}[{i}]"), found)),
        Value::Object(map) => map.iter().for_each(|(k, v)| widened(v, &format!("{path}.{k}"), found)),
        _ => {}
    }
}

fn assert_decimals(file: &Path) {
    let text = std::fs::read_to_string(file).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let mut found = Vec::new();
    widened(&doc, "", &mut found);
    assert!(found.is_empty(), "{}: f32 images instead of decimals: {:?}", file.display(), &found[..found.len().min(5)]);
}

/// The number text of `key` in a JSON text (`"key": 1e-5,` -> `1e-5`).
fn number_text<'a>(text: &'a str, key: &str) -> &'a str {
    let needle = format!("\"{key}\":");
    let at = text.find(&needle).unwrap_or_else(|| panic!("no {key} in {text}")) + needle.len();
    text[at..].trim_start().split([',', '\n', '}']).next().unwrap().trim()
}

#[test]
fn exported_json_writes_f32_settings_as_decimals() {
    for (eps, spellings) in [(1e-5f32, ["1e-5", "1e-05", "0.00001"]), (1e-6, ["1e-6", "1e-06", "0.000001"])] {
        let mut config = small_config();
        config.vocab = 384;
        config.rms_eps = eps;
        config.rope_theta = 500_000.0;
        let weights = random_weights(&config, 3);
        let dir = scratch(&format!("decimals-{eps}"));
        let tokenizer = ModelTokenizer { tokenizer: byte_tokenizer(), source: TokenizerSource::ByteVocab };
        for (flavor, sub) in [(Flavor::Llama, "llama"), (Flavor::Kormo, "kormo")] {
            let out = dir.join(sub);
            let options = ExportOptions { flavor, dtype: ExportDtype::F32, ..ExportOptions::default() };
            export_folder(&weights, &tokenizer, &out, &options).unwrap();
            let text = std::fs::read_to_string(out.join("config.json")).unwrap();
            let written = number_text(&text, "rms_norm_eps");
            assert!(spellings.contains(&written), "rms_norm_eps written as {written}: {text}");
            assert!(["500000", "500000.0", "5e5", "5e+5"].contains(&number_text(&text, "rope_theta")), "{text}");
            assert!(!text.contains("9.99999"), "{text}");
            for file in ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"] {
                assert_decimals(&out.join(file));
            }
        }

        // `hf import` records the config in the checkpoint manifest; `hf logits` writes f32 logits.
        let hf = env!("CARGO_BIN_EXE_hf");
        let checkpoint = dir.join("checkpoint");
        let status = Command::new(hf).args(["import", "--folder"]).arg(dir.join("llama")).arg("--out").arg(&checkpoint).status().unwrap();
        assert!(status.success());
        let manifest = checkpoint.join(kormo_checkpoint::MANIFEST_FILE);
        assert_decimals(&manifest);
        let text = std::fs::read_to_string(&manifest).unwrap();
        assert!(spellings.contains(&number_text(&text, "rms_eps")), "{text}");
        let reference = dir.join("reference.json");
        let status = Command::new(hf).args(["logits", "--model"]).arg(dir.join("llama")).args(["--tokens", "5,300,7"]).arg("--out").arg(&reference).status().unwrap();
        assert!(status.success());
        assert_decimals(&reference);

        // ModelConfig through a serde_json::Value (as manifests and messages build it).
        let value = serde_json::to_value(&config).unwrap();
        assert_eq!(value["rms_eps"].as_f64(), Some(spellings[0].parse::<f64>().unwrap()));
        assert_eq!(value["rope_theta"].as_f64(), Some(500_000.0));
        let back: kormo_model::ModelConfig = serde_json::from_value(value).unwrap();
        assert_eq!(back, config);
        std::fs::remove_dir_all(&dir).unwrap();
    }
    // The detector itself: the widened image of 1e-5 is caught, the decimal is not; and a plain
    // f32 through serde_json::Value is widened, which is why the f32 fields need decimal().
    assert!(widened_f32(f64::from(1e-5f32)) && !widened_f32(1e-5) && !widened_f32(0.5));
    assert!(serde_json::to_value(1e-5f32).unwrap().as_f64().is_some_and(widened_f32));
}
