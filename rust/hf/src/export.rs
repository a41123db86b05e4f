//! Writing a Hugging Face model folder.
//!
//! ```text
//! OUT/config.json                   KORMoForCausalLM or LlamaForCausalLM (config::config_json)
//! OUT/generation_config.json        bos/eos/pad ids, greedy
//! OUT/model.safetensors             one file while the weights fit in `max_shard_bytes`, else
//! OUT/model-0000i-of-0000n.safetensors + model.safetensors.index.json (weight_map, total_size)
//! OUT/tokenizer.json                copied from the run (or the byte vocabulary's, generated)
//! OUT/tokenizer_config.json         the one next to it with kormo's chat_template, or generated
//! ```
//!
//! Shards are filled greedily in layout order (embedding first, layers in order, head last), a
//! tensor larger than the limit going alone into its own shard, and written one at a time so the
//! converted bytes of only one shard are in memory. Safetensors files go through
//! `kormo_checkpoint::safetensors` (the same writer checkpoints use). Old `model*.safetensors`
//! and index files in OUT are removed first so a re-export with fewer shards leaves no strays.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kormo_checkpoint::safetensors::{self, Tensor};
use serde_json::json;

use kormo_model::{bf16, NormPlacement};
use crate::config::{self, Flavor};
use crate::error::HfError;
use crate::names;
use crate::vocab::{ModelTokenizer, TokenizerSource};
use crate::weights::Weights;

/// Element type of the exported weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportDtype {
    F32,
    /// Round to nearest even, as torch does.
    BF16,
}

impl ExportDtype {
    pub fn parse(name: &str) -> Option<ExportDtype> {
        match name {
            "f32" | "float32" => Some(ExportDtype::F32),
            "bf16" | "bfloat16" => Some(ExportDtype::BF16),
            _ => None,
        }
    }

    fn torch_name(self) -> &'static str {
        match self {
            ExportDtype::F32 => "float32",
            ExportDtype::BF16 => "bfloat16",
        }
    }

    fn bytes_per_element(self) -> u64 {
        match self {
            ExportDtype::F32 => 4,
            ExportDtype::BF16 => 2,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub flavor: Flavor,
    pub dtype: ExportDtype,
    /// Shard above this many bytes of tensor data (transformers' default is 5 GB).
    pub max_shard_bytes: u64,
    /// `max_position_embeddings` to declare (the longest context trained on).
    pub max_positions: usize,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions { flavor: Flavor::Kormo, dtype: ExportDtype::BF16, max_shard_bytes: 5_000_000_000, max_positions: 4096 }
    }
}

/// What was written.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSummary {
    /// Weight files, in order.
    pub weight_files: Vec<PathBuf>,
    /// Bytes of tensor data.
    pub total_bytes: u64,
    /// Where tokenizer.json came from (or that it was generated for the byte vocabulary).
    pub tokenizer: TokenizerSource,
    /// Tensors left out: the multi-token-prediction heads (`mtp.*`, `[model] mtp_depth > 0`),
    /// which no transformers architecture has; the exported model is the next-token model.
    pub dropped: Vec<String>,
}

/// Writes `weights` (and `tokenizer`) as a Hugging Face model folder `out`.
///
/// Only pre-LN models export: a model with `norm = "mixln"` is refused (before anything is
/// written), because `LlamaForCausalLM` and `KORMoForCausalLM` are pre-LN and have no setting
/// for post-LN layers, so transformers would load the weights as another network. A model
/// trained with multi-token prediction exports without its MTP heads (`mtp.*`, listed in
/// [`ExportSummary::dropped`]): they are training-only extra heads beside the next-token head,
/// which the exported model is whole without.
pub fn export_folder(weights: &Weights, tokenizer: &ModelTokenizer, out: &Path, opts: &ExportOptions) -> Result<ExportSummary, HfError> {
    check_exportable(&weights.config, opts.flavor, out)?;
    weights.validate(out)?;
    if opts.max_shard_bytes == 0 {
        return Err(HfError::new(out, "the shard size limit must be positive"));
    }
    std::fs::create_dir_all(out).map_err(|e| HfError::new(out, format!("cannot create folder: {e}")))?;
    remove_old_weights(out)?;

    // Group tensors into shards.
    let mut shards: Vec<Vec<usize>> = Vec::new();
    let mut shard_bytes = 0u64;
    let mut total_bytes = 0u64;
    let mut dropped = Vec::new();
    for (index, tensor) in weights.tensors.iter().enumerate() {
        if kormo_model::params::is_mtp_tensor(&tensor.name) {
            dropped.push(tensor.name.clone());
            continue;
        }
        let bytes = tensor.values.len() as u64 * opts.dtype.bytes_per_element();
        total_bytes += bytes;
        match shards.last_mut() {
            Some(shard) if shard_bytes + bytes <= opts.max_shard_bytes => {
                shard.push(index);
                shard_bytes += bytes;
            }
            _ => {
                shards.push(vec![index]);
                shard_bytes = bytes;
            }
        }
    }
    let file_names: Vec<String> = if shards.len() == 1 {
        vec!["model.safetensors".to_string()]
    } else {
        (1..=shards.len()).map(|i| format!("model-{i:05}-of-{:05}.safetensors", shards.len())).collect()
    };
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let mut weight_map = serde_json::Map::new();
    let mut weight_files = Vec::new();
    for (shard, file_name) in shards.iter().zip(&file_names) {
        let tensors: Vec<Tensor> = shard
            .iter()
            .map(|&i| {
                let t = &weights.tensors[i];
                let name = names::to_hf(&t.name, opts.flavor);
                weight_map.insert(name.clone(), json!(file_name));
                match opts.dtype {
                    ExportDtype::F32 => Tensor::f32(name, t.shape.clone(), &t.values),
                    ExportDtype::BF16 => {
                        Tensor::bf16(name, t.shape.clone(), &bf16::from_f32_slice(&t.values))
                    }
                }
            })
            .collect();
        let path = out.join(file_name);
        safetensors::write(&path, &tensors, &metadata)?;
        weight_files.push(path);
    }
    if shards.len() > 1 {
        let index = json!({"metadata": {"total_size": total_bytes}, "weight_map": weight_map});
        write_json(&out.join("model.safetensors.index.json"), &index)?;
    }

    let ids = tokenizer.special_ids();
    let cfg_doc = config::config_json(&weights.config, opts.flavor, ids, opts.dtype.torch_name(), opts.max_positions);
    write_json(&out.join("config.json"), &cfg_doc)?;
    write_json(&out.join("generation_config.json"), &config::generation_config_json(ids))?;
    write_tokenizer(tokenizer, out)?;
    Ok(ExportSummary { weight_files, total_bytes, tokenizer: tokenizer.source.clone(), dropped })
}

/// Refuses configs the Hugging Face architectures cannot express: anything but pre-LN layers.
pub fn check_exportable(cfg: &kormo_model::ModelConfig, flavor: Flavor, out: &Path) -> Result<(), HfError> {
    match cfg.norm {
        NormPlacement::Pre => Ok(()),
        NormPlacement::MixLn => Err(HfError::new(
            out,
            format!(
                "cannot export a model with norm = \"mixln\" (Mix-LN: post-LN in the first {} of {} layers, \
                 mixln_post_fraction = {}): {} is pre-LN only and has no setting for post-LN layers, so \
                 transformers would load these weights as a different network; only norm = \"pre\" models export",
                cfg.post_ln_layers(),
                cfg.layers,
                config::decimal(cfg.mixln_post_fraction),
                flavor.architecture()
            ),
        )),
        NormPlacement::DeepNorm => Err(HfError::new(
            out,
            format!(
                "cannot export a model with norm = \"deepnorm\" (post-LN in all {} layers, residual x {}): {} is \
                 pre-LN only, so transformers would load these weights as a different network; only norm = \"pre\" \
                 models export",
                cfg.layers,
                cfg.residual_scale(),
                flavor.architecture()
            ),
        )),
    }
}

/// Copies the run's tokenizer files (or generates them for the byte vocabulary).
fn write_tokenizer(tokenizer: &ModelTokenizer, out: &Path) -> Result<(), HfError> {
    match &tokenizer.source {
        TokenizerSource::File(path) => {
            copy(path, &out.join("tokenizer.json"))?;
            let sibling = path.with_file_name("tokenizer_config.json");
            let config = if sibling.is_file() {
                with_kormo_chat_template(&sibling, &tokenizer.tokenizer)?
            } else {
                kormo_tokenizer::hf::tokenizer_config_json(&tokenizer.tokenizer)
            };
            write_json(&out.join("tokenizer_config.json"), &config)
        }
        TokenizerSource::ByteVocab => kormo_tokenizer::hf::save(&tokenizer.tokenizer, out).map_err(|e| HfError::new(out, e.0)),
    }
}

/// The tokenizer's own `tokenizer_config.json` with `chat_template` set to kormo's (the template
/// `generate --chat` and the training data use), when the tokenizer has the chat specials; every
/// other key is kept as it is.
fn with_kormo_chat_template(path: &Path, tok: &kormo_tokenizer::Tokenizer) -> Result<serde_json::Value, HfError> {
    let text = std::fs::read_to_string(path).map_err(|e| HfError::new(path, format!("cannot read: {e}")))?;
    let mut config: serde_json::Value = serde_json::from_str(&text).map_err(|e| HfError::new(path, format!("not JSON: {e}")))?;
    let object = config.as_object_mut().ok_or_else(|| HfError::new(path, "not a JSON object"))?;
    if kormo_tokenizer::chat::ChatTokens::find(tok).is_ok() {
        object.insert("chat_template".into(), json!(kormo_tokenizer::chat::CHAT_TEMPLATE));
    }
    Ok(config)
}

fn copy(from: &Path, to: &Path) -> Result<(), HfError> {
    // Copying a file onto itself (exporting into the folder the tokenizer came from) would truncate it.
    if from.canonicalize().ok() == to.canonicalize().ok() && to.exists() {
        return Ok(());
    }
    std::fs::copy(from, to).map(|_| ()).map_err(|e| HfError::new(from, format!("cannot copy to {}: {e}", to.display())))
}

fn write_json(path: &Path, doc: &serde_json::Value) -> Result<(), HfError> {
    let text = serde_json::to_string_pretty(doc).expect("JSON values serialise");
    std::fs::write(path, text + "\n").map_err(|e| HfError::new(path, format!("cannot write: {e}")))
}

fn remove_old_weights(out: &Path) -> Result<(), HfError> {
    let entries = std::fs::read_dir(out).map_err(|e| HfError::new(out, format!("cannot list: {e}")))?;
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("model") && (name.ends_with(".safetensors") || name == "model.safetensors.index.json") {
            std::fs::remove_file(entry.path()).map_err(|e| HfError::new(&entry.path(), format!("cannot remove old weights: {e}")))?;
        }
    }
    Ok(())
}
