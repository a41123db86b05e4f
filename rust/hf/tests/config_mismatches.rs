//! Folders whose config.json and stored tensors disagree are imported the way transformers 5
//! loads them (`PreTrainedModel.tie_weights`: tie only when the checkpoint agrees, use what is
//! stored), and the import says what it did; missing optional keys take transformers' defaults.

mod common;

use std::path::Path;
use std::process::Command;

use common::{random_weights, scratch, small_config};
use kormo_checkpoint::safetensors::{self, Tensor};
use kormo_hf::vocab::{byte_tokenizer, ModelTokenizer, TokenizerSource};
use kormo_hf::{export_folder, import_hf_folder, ExportDtype, ExportOptions, Flavor, Weights};
use serde_json::Value;

const EMBEDDING: &str = "model.embed_tokens.weight";
const HEAD: &str = "lm_head.weight";

/// An f32 Llama folder of `weights`.
fn export(weights: &Weights, name: &str) -> std::path::PathBuf {
    let dir = scratch(name);
    let tokenizer = ModelTokenizer { tokenizer: byte_tokenizer(), source: TokenizerSource::ByteVocab };
    let options = ExportOptions { flavor: Flavor::Llama, dtype: ExportDtype::F32, ..ExportOptions::default() };
    export_folder(weights, &tokenizer, &dir, &options).unwrap();
    dir
}

/// Rewrites config.json through `edit`.
fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let path = dir.join("config.json");
    let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(doc.as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
}

/// Rewrites model.safetensors with `edit` applied to its (name, shape, values) list.
fn edit_weights(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<f32>)>)) {
    let path = dir.join("model.safetensors");
    let file = kormo_checkpoint::SafetensorsFile::read(&path).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = file
        .tensors()
        .iter()
        .map(|(name, info)| (name.clone(), info.shape.clone(), file.f32(name, None).unwrap()))
        .collect();
    edit(&mut tensors);
    let tensors: Vec<Tensor> = tensors.iter().map(|(n, s, v)| Tensor::f32(n.clone(), s.clone(), v)).collect();
    safetensors::write(&path, &tensors, &Default::default()).unwrap();
}

fn values<'a>(weights: &'a Weights, name: &str) -> &'a [f32] {
    &weights.get(name).unwrap_or_else(|| panic!("no {name}")).values
}

fn untied() -> Weights {
    let mut config = small_config();
    config.vocab = 384;
    random_weights(&config, 7)
}

#[test]
fn tie_true_with_a_different_stored_head_imports_untied_with_that_head() {
    let weights = untied();
    let dir = export(&weights, "tie-true-head-differs");
    edit_config(&dir, |c| {
        c.insert("tie_word_embeddings".into(), Value::Bool(true));
    });
    let imported = import_hf_folder(&dir).unwrap();
    assert!(!imported.weights.config.tie_embeddings);
    assert_eq!(imported.weights, weights, "the stored head and embedding, untied");
    assert_eq!(imported.notes.len(), 1, "{:?}", imported.notes);
    let note = &imported.notes[0];
    assert!(note.contains("config.json") && note.contains("tie_word_embeddings") && note.contains("untied"), "{note}");

    // The CLI prints the note and records it in the checkpoint it writes.
    let out = dir.join("imported-checkpoint");
    let output = Command::new(env!("CARGO_BIN_EXE_hf"))
        .args(["import", "--folder"])
        .arg(&dir)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("hf: note: ") && stderr.contains("untied"), "{stderr}");
    let manifest = std::fs::read_to_string(out.join(kormo_checkpoint::MANIFEST_FILE)).unwrap();
    assert!(manifest.contains("import_notes") && manifest.contains("untied"), "{manifest}");
    let checkpoint = kormo_hf::load_model(&out, &small_config()).unwrap();
    assert_eq!(checkpoint, weights);
    // Converting the folder (`hf export --model FOLDER`) says the same.
    let converted = Command::new(env!("CARGO_BIN_EXE_hf"))
        .args(["export", "--dtype", "f32", "--model"])
        .arg(&dir)
        .arg("--out")
        .arg(dir.join("converted"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&converted.stderr);
    assert!(converted.status.success() && stderr.contains("hf: note: "), "{stderr}");
    assert_eq!(kormo_hf::load_hf_folder(&dir.join("converted")).unwrap(), weights);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tie_true_with_a_stored_head_equal_to_the_embedding_imports_tied() {
    let weights = untied();
    let embedding = values(&weights, EMBEDDING).to_vec();
    let dir = export(&weights, "tie-true-head-equal");
    edit_config(&dir, |c| {
        c.insert("tie_word_embeddings".into(), Value::Bool(true));
    });
    edit_weights(&dir, |tensors| {
        let head = tensors.iter_mut().find(|t| t.0 == HEAD).unwrap();
        head.2 = embedding.clone();
    });
    let imported = import_hf_folder(&dir).unwrap();
    assert!(imported.weights.config.tie_embeddings);
    assert!(imported.weights.get(HEAD).is_none());
    assert_eq!(values(&imported.weights, EMBEDDING), embedding.as_slice());
    assert_eq!(imported.notes, Vec::<String>::new());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tie_true_with_only_a_stored_head_imports_tied_to_it() {
    let weights = untied();
    let head = values(&weights, HEAD).to_vec();
    let dir = export(&weights, "tie-true-head-only");
    edit_config(&dir, |c| {
        c.insert("tie_word_embeddings".into(), Value::Bool(true));
    });
    edit_weights(&dir, |tensors| tensors.retain(|t| t.0 != EMBEDDING));
    let imported = import_hf_folder(&dir).unwrap();
    assert!(imported.weights.config.tie_embeddings);
    assert_eq!(values(&imported.weights, EMBEDDING), head.as_slice());
    assert_eq!(imported.notes.len(), 1);
    assert!(imported.notes[0].contains("no `model.embed_tokens.weight`"), "{}", imported.notes[0]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn untied_config_without_a_stored_head_is_an_error_naming_it() {
    let weights = untied();
    let dir = export(&weights, "tie-false-no-head");
    edit_weights(&dir, |tensors| tensors.retain(|t| t.0 != HEAD));
    for tie in [Some(false), None] {
        edit_config(&dir, |c| match tie {
            Some(tie) => {
                c.insert("tie_word_embeddings".into(), Value::Bool(tie));
            }
            None => {
                c.remove("tie_word_embeddings");
            }
        });
        let err = import_hf_folder(&dir).unwrap_err().to_string();
        assert!(err.contains("missing tensor `lm_head.weight`") && err.contains("randomly"), "{tie:?}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_optional_keys_take_transformers_defaults() {
    // LlamaConfig: tie_word_embeddings false, num_key_value_heads = heads, head_dim =
    // hidden / heads, rms_norm_eps 1e-6, rope_theta 10000.
    let mut config = small_config();
    config.vocab = 384;
    config.kv_heads = config.heads;
    config.head_dim = config.hidden / config.heads;
    config.rms_eps = 1e-6;
    config.rope_theta = 10_000.0;
    let weights = random_weights(&config, 8);
    let dir = export(&weights, "defaults");
    edit_config(&dir, |c| {
        for key in ["tie_word_embeddings", "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "rope_scaling"] {
            c.remove(key);
        }
    });
    let imported = import_hf_folder(&dir).unwrap();
    assert_eq!(imported.weights, weights);
    assert!(imported.notes.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tied_export_round_trips_tied() {
    let mut config = small_config();
    config.vocab = 384;
    config.tie_embeddings = true;
    let weights = random_weights(&config, 9);
    let dir = export(&weights, "tied");
    let imported = import_hf_folder(&dir).unwrap();
    assert_eq!(imported.weights, weights);
    assert!(imported.notes.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}
