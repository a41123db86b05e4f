//! Reading a Hugging Face model folder (KORMo or Llama naming) into kormo-named f32 tensors.
//!
//! `config.json` gives the architecture (see [`crate::config::read_config`]); weights come from
//! `model.safetensors.index.json`'s shards or from `model.safetensors`. F32 and BF16 tensors are
//! accepted (bf16 widened exactly). Every tensor of the layout must be present with its shape,
//! and every tensor in the files must belong to the layout (RoPE frequency buffers excepted), so
//! a mismatched folder is an error naming the file and tensor rather than half-loaded weights.
//!
//! Tying follows what transformers 5 does in `PreTrainedModel.tie_weights` when a config and
//! its checkpoint disagree (each resolution is reported in [`Imported::notes`]):
//!
//! | `tie_word_embeddings` | stored                                   | imported as                              |
//! | --------------------- | ---------------------------------------- | ---------------------------------------- |
//! | true                  | embedding only                           | tied                                     |
//! | true                  | embedding and `lm_head.weight`, equal    | tied                                     |
//! | true                  | embedding and `lm_head.weight`, different | untied, the stored head (note)          |
//! | true                  | `lm_head.weight` only                    | tied, the embedding is the head (note)   |
//! | false or absent       | embedding and `lm_head.weight`           | untied                                   |
//! | false or absent       | embedding only                           | error: transformers would leave the head randomly initialised |

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use kormo_checkpoint::safetensors::{Dtype, SafetensorsFile};
use kormo_model::params;

use kormo_model::bf16;
use crate::config::read_config;
use crate::error::HfError;
use crate::names;
use crate::weights::{NamedTensor, Weights};

const EMBEDDING: &str = "model.embed_tokens.weight";
const HEAD: &str = "lm_head.weight";

/// An imported folder: its weights, and what the import resolved where config.json and the
/// stored tensors disagree (one sentence each, for the user to see).
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    pub weights: Weights,
    pub notes: Vec<String>,
}

/// Loads the Hugging Face model folder `dir`: its config and every weight as kormo-named f32
/// tensors in layout order. The result can initialise any training stage
/// (`Weights::to_model`, or `model.write_param` per tensor). [`import_hf_folder`] also says
/// how a disagreement between config.json and the weights was resolved.
pub fn load_hf_folder(dir: &Path) -> Result<Weights, HfError> {
    import_hf_folder(dir).map(|imported| imported.weights)
}

/// A stored tensor: the file it came from, its shape and its values widened to f32.
struct Stored {
    path: PathBuf,
    shape: Vec<usize>,
    values: Vec<f32>,
}

/// [`load_hf_folder`], with the notes on how tying was resolved (see the module docs).
pub fn import_hf_folder(dir: &Path) -> Result<Imported, HfError> {
    let config_path = dir.join("config.json");
    let (mut config, flavor) = read_config(&config_path)?;
    let (files, weight_map) = weight_files(dir)?;
    let mut stored: BTreeMap<String, Stored> = BTreeMap::new();
    for path in &files {
        let file = SafetensorsFile::read(path)?;
        for (hf_name, info) in file.tensors() {
            if names::is_derived_buffer(hf_name) {
                continue;
            }
            if let Some(mapped) = weight_map.get(hf_name) {
                if mapped != path {
                    return Err(HfError::new(path, format!("tensor `{hf_name}` is here but the index puts it in {}", mapped.display())));
                }
            }
            let values = match info.dtype {
                Dtype::F32 => file.f32(hf_name, None)?,
                Dtype::BF16 => file.bf16(hf_name, None)?.into_iter().map(bf16::to_f32).collect(),
                other => return Err(HfError::new(path, format!("tensor `{hf_name}` is {}, expected F32 or BF16", other.name()))),
            };
            let tensor = Stored { path: path.clone(), shape: info.shape.clone(), values };
            if stored.insert(hf_name.clone(), tensor).is_some() {
                return Err(HfError::new(path, format!("tensor `{hf_name}` appears twice")));
            }
        }
    }

    let notes = resolve_tying(&mut config, &mut stored, &config_path, dir)?;
    let layout = params::layout(&config);
    let position: BTreeMap<&str, usize> = layout.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
    let mut slots: Vec<Option<NamedTensor>> = vec![None; layout.len()];
    for (hf_name, tensor) in stored {
        let name = names::from_hf(&hf_name, flavor);
        let &index = position.get(name.as_str()).ok_or_else(|| {
            HfError::new(&tensor.path, format!("tensor `{hf_name}` is not a weight of this {} (config.json)", flavor.architecture()))
        })?;
        let spec = &layout[index];
        if tensor.shape != spec.shape {
            return Err(HfError::new(&tensor.path, format!("tensor `{hf_name}` has shape {:?}, config.json implies {:?}", tensor.shape, spec.shape)));
        }
        slots[index] = Some(NamedTensor { name, shape: tensor.shape, values: tensor.values });
    }
    let mut tensors = Vec::with_capacity(slots.len());
    for (slot, spec) in slots.into_iter().zip(&layout) {
        tensors.push(slot.ok_or_else(|| {
            HfError::new(dir, format!("missing tensor `{}`", names::to_hf(&spec.name, flavor)))
        })?);
    }
    Ok(Imported { weights: Weights { config, tensors }, notes })
}

/// Settles `config.tie_embeddings` and the stored embedding/head as transformers' `tie_weights`
/// does (the table in the module docs); returns the notes.
fn resolve_tying(
    config: &mut kormo_model::ModelConfig,
    stored: &mut BTreeMap<String, Stored>,
    config_path: &Path,
    dir: &Path,
) -> Result<Vec<String>, HfError> {
    let mut notes = Vec::new();
    let (has_embedding, has_head) = (stored.contains_key(EMBEDDING), stored.contains_key(HEAD));
    if !config.tie_embeddings {
        if has_embedding && !has_head {
            return Err(HfError::new(dir, format!(
                "missing tensor `{HEAD}`: {} says the head is not tied (`tie_word_embeddings` false or absent), and \
                 transformers would initialise it randomly; if the head is the embedding, set `\"tie_word_embeddings\": true`",
                config_path.display()
            )));
        }
        return Ok(notes);
    }
    match (has_embedding, has_head) {
        (true, true) => {
            let (embedding, head) = (&stored[EMBEDDING], &stored[HEAD]);
            // transformers ties only when both hold exactly the same values (torch.equal).
            if embedding.shape == head.shape && embedding.values == head.values {
                stored.remove(HEAD);
            } else {
                config.tie_embeddings = false;
                notes.push(format!(
                    "{} says `tie_word_embeddings`: true, but the folder stores `{HEAD}` with values other than \
                     `{EMBEDDING}`; imported untied with the stored head, as transformers does (\"both are present \
                     ... so we will NOT tie them\")",
                    config_path.display()
                ));
            }
        }
        (false, true) => {
            let head = stored.remove(HEAD).expect("present");
            stored.insert(EMBEDDING.to_string(), head);
            notes.push(format!(
                "{} says `tie_word_embeddings`: true and the folder stores `{HEAD}` but no `{EMBEDDING}`; \
                 imported tied with the stored head as the embedding, as transformers does",
                config_path.display()
            ));
        }
        _ => {}
    }
    Ok(notes)
}

/// The weight files of `dir` and, when sharded, which file the index assigns each tensor to.
fn weight_files(dir: &Path) -> Result<(Vec<PathBuf>, BTreeMap<String, PathBuf>), HfError> {
    let index_path = dir.join("model.safetensors.index.json");
    if !index_path.is_file() {
        let single = dir.join("model.safetensors");
        if !single.is_file() {
            return Err(HfError::new(dir, "no model.safetensors or model.safetensors.index.json"));
        }
        return Ok((vec![single], BTreeMap::new()));
    }
    let text = std::fs::read_to_string(&index_path).map_err(|e| HfError::new(&index_path, format!("cannot read: {e}")))?;
    let doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| HfError::new(&index_path, format!("not valid JSON: {e}")))?;
    let map = doc
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| HfError::new(&index_path, "missing `weight_map` object"))?;
    let mut weight_map = BTreeMap::new();
    let mut files = BTreeSet::new();
    for (tensor, file) in map {
        let file = file.as_str().filter(|f| !f.contains('/') && !f.contains('\\') && f.ends_with(".safetensors")).ok_or_else(|| {
            HfError::new(&index_path, format!("`weight_map.{tensor}` must be a plain *.safetensors file name, found {file}"))
        })?;
        weight_map.insert(tensor.clone(), dir.join(file));
        files.insert(dir.join(file));
    }
    Ok((files.into_iter().collect(), weight_map))
}
