//! Reading a Hugging Face model folder (KORMo or Llama naming) into kormo-named f32 tensors.
//!
//! `config.json` gives the architecture (see [`crate::config::read_config`]); weights come from
//! `model.safetensors.index.json`'s shards or from `model.safetensors`. F32 and BF16 tensors are
//! accepted (bf16 widened exactly). Every tensor of the layout must be present with its shape,
//! and every tensor in the files must belong to the layout (RoPE frequency buffers excepted;
//! a tied model's `lm_head.weight`, if stored, is the embedding and is skipped), so a
//! mismatched folder is an error naming the file and tensor rather than half-loaded weights.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use kormo_checkpoint::safetensors::{Dtype, SafetensorsFile};
use kormo_model::params;

use kormo_model::bf16;
use crate::config::read_config;
use crate::error::HfError;
use crate::names;
use crate::weights::{NamedTensor, Weights};

/// Loads the Hugging Face model folder `dir`: its config and every weight as kormo-named f32
/// tensors in layout order. The result can initialise any training stage
/// (`Weights::to_model`, or `model.write_param` per tensor).
pub fn load_hf_folder(dir: &Path) -> Result<Weights, HfError> {
    let (config, flavor) = read_config(&dir.join("config.json"))?;
    let layout = params::layout(&config);
    let position: BTreeMap<&str, usize> = layout.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
    let mut slots: Vec<Option<NamedTensor>> = vec![None; layout.len()];

    let (files, weight_map) = weight_files(dir)?;
    for path in &files {
        let file = SafetensorsFile::read(path)?;
        for (hf_name, info) in file.tensors() {
            if names::is_derived_buffer(hf_name) || (config.tie_embeddings && hf_name == "lm_head.weight") {
                continue;
            }
            let name = names::from_hf(hf_name, flavor);
            let &index = position.get(name.as_str()).ok_or_else(|| {
                HfError::new(path, format!("tensor `{hf_name}` is not a weight of this {} (config.json)", flavor.architecture()))
            })?;
            let spec = &layout[index];
            if info.shape != spec.shape {
                return Err(HfError::new(path, format!("tensor `{hf_name}` has shape {:?}, config.json implies {:?}", info.shape, spec.shape)));
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
            if slots[index].is_some() {
                return Err(HfError::new(path, format!("tensor `{hf_name}` appears twice")));
            }
            slots[index] = Some(NamedTensor { name, shape: spec.shape.clone(), values });
        }
    }
    let mut tensors = Vec::with_capacity(slots.len());
    for (slot, spec) in slots.into_iter().zip(&layout) {
        tensors.push(slot.ok_or_else(|| {
            HfError::new(dir, format!("missing tensor `{}`", names::to_hf(&spec.name, flavor)))
        })?);
    }
    Ok(Weights { config, tensors })
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
