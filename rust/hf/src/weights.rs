//! Named f32 tensors with the config they belong to: what an export writes and an import
//! returns, and what a model is built from.
//!
//! Tensors are kept in `kormo_model::params::layout` order under kormo's names, so a
//! [`Weights`] can be checked against its config in one pass and written straight into a
//! [`Model`] with `write_param`.

use std::path::Path;

use kormo_checkpoint::Checkpoint;
use kormo_model::{params, Model, ModelConfig, Ops};

use crate::error::HfError;

/// File of a kormo checkpoint directory that holds the weights (the trainer's `MODEL_FILE`).
pub const CHECKPOINT_MODEL_FILE: &str = "model.safetensors";

/// One parameter tensor: kormo name, row-major shape, f32 values.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// A model's weights: its config and every tensor of `params::layout(&config)`, in that order.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    pub config: ModelConfig,
    pub tensors: Vec<NamedTensor>,
}

impl Weights {
    /// Checks names, order and shapes against the layout of `config` (`origin` names the source).
    pub fn validate(&self, origin: &Path) -> Result<(), HfError> {
        let layout = params::layout(&self.config);
        if layout.len() != self.tensors.len() {
            return Err(HfError::new(origin, format!("{} tensors, the config needs {}", self.tensors.len(), layout.len())));
        }
        for (spec, tensor) in layout.iter().zip(&self.tensors) {
            if spec.name != tensor.name || spec.shape != tensor.shape || tensor.values.len() != spec.numel() {
                return Err(HfError::new(origin, format!(
                    "tensor `{}` {:?} ({} values) where the layout has `{}` {:?}",
                    tensor.name, tensor.shape, tensor.values.len(), spec.name, spec.shape
                )));
            }
        }
        Ok(())
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&NamedTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The weights of a model (read back from its backend).
    pub fn from_model<O: Ops>(model: &Model<O>) -> Weights {
        let tensors = model
            .param_specs()
            .iter()
            .map(|spec| {
                let mut values = vec![0.0; spec.numel()];
                model.read_param(&spec.name, &mut values).expect("a model's own spec");
                NamedTensor { name: spec.name.clone(), shape: spec.shape.clone(), values }
            })
            .collect();
        Weights { config: model.config().clone(), tensors }
    }

    /// A model on backend `ops` holding these weights.
    pub fn to_model<O: Ops>(&self, ops: O, origin: &Path) -> Result<Model<O>, HfError> {
        let model_error = |e: kormo_model::ModelError| HfError::new(origin, e.to_string());
        let mut model = Model::new(self.config.clone(), ops, 0).map_err(model_error)?;
        for tensor in &self.tensors {
            model.write_param(&tensor.name, &tensor.values).map_err(model_error)?;
        }
        Ok(model)
    }

    /// Writes these weights as the kormo checkpoint directory `dir` (atomically, as every
    /// checkpoint): `model.safetensors` in f32 and a manifest whose trainer state records the
    /// config under `model` (so [`Weights::from_checkpoint`] reads it back whatever the preset),
    /// beside the other `trainer` entries given.
    pub fn save_checkpoint(&self, dir: &Path, stage: &str, step: u64, trainer: serde_json::Value) -> Result<(), HfError> {
        let tensors =
            self.tensors.iter().map(|t| kormo_checkpoint::Tensor::f32(t.name.clone(), t.shape.clone(), &t.values)).collect();
        let mut trainer = match trainer {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        trainer.insert("model".into(), serde_json::to_value(&self.config).expect("config serialises"));
        let run = kormo_checkpoint::RunState {
            step,
            stage: stage.into(),
            phase: stage.into(),
            config_hash: String::new(),
            rng_state: serde_json::Value::Null,
            data_cursor: serde_json::Value::Null,
            trainer: serde_json::Value::Object(trainer),
        };
        kormo_checkpoint::save(dir, run, &[(CHECKPOINT_MODEL_FILE, tensors)])?;
        Ok(())
    }

    /// Reads the weights of the kormo checkpoint directory `dir`, as the model config its
    /// manifest records (`run.trainer.model`: `train` and `hf import` write it). A checkpoint
    /// without one is read as `base` (a preset), its vocabulary taken from the embedding since
    /// recipes size it to their tokenizer.
    pub fn from_checkpoint(dir: &Path, base: &ModelConfig) -> Result<Weights, HfError> {
        let checkpoint = Checkpoint::load(dir)?;
        let file = checkpoint.file(CHECKPOINT_MODEL_FILE)?;
        let config = match checkpoint.manifest.run.trainer.get("model") {
            Some(recorded) => serde_json::from_value(recorded.clone()).map_err(|e| {
                HfError::new(&dir.join(kormo_checkpoint::MANIFEST_FILE), format!("bad `run.trainer.model` config: {e}"))
            })?,
            None => {
                let embed = file.info("model.embed_tokens.weight")?;
                let rows = embed.shape.first().copied().filter(|_| embed.shape.len() == 2).ok_or_else(|| {
                    HfError::new(file.path(), format!("`model.embed_tokens.weight` has shape {:?}, expected [vocab, hidden]", embed.shape))
                })?;
                // Multi-token-prediction heads (`mtp.{d}.*`, `[model] mtp_depth = k`) are
                // recognised by their tensors, since a run's checkpoint records no config.
                let mtp_depth = (1..).take_while(|d| file.tensors().contains_key(&format!("mtp.{d}.proj.weight"))).count();
                ModelConfig { mtp_depth, ..base.clone().with_vocab(rows) }
            }
        };
        let layout = params::layout(&config);
        let mut tensors = Vec::with_capacity(layout.len());
        for spec in &layout {
            let values = file.f32(&spec.name, Some(&spec.shape)).map_err(|e| {
                HfError::new(&e.path, format!("{} (is the model preset right? it says hidden {}, {} layers, {} heads / {} kv heads of {}, ffn {})",
                    e.message, config.hidden, config.layers, config.heads, config.kv_heads, config.head_dim, config.ffn))
            })?;
            tensors.push(NamedTensor { name: spec.name.clone(), shape: spec.shape.clone(), values });
        }
        if file.tensors().len() != layout.len() {
            let extra = file.tensors().keys().find(|n| !layout.iter().any(|s| &s.name == *n)).cloned().unwrap_or_default();
            return Err(HfError::new(file.path(), format!(
                "{} tensors but the model preset has {} (e.g. `{extra}` is not in it): is the preset right?",
                file.tensors().len(), layout.len()
            )));
        }
        Ok(Weights { config, tensors })
    }
}

/// The context length the model at `path` was trained for, where it records one: a Hugging
/// Face folder's `max_position_embeddings` (config.json). A kormo checkpoint does not record it.
pub fn trained_context(path: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(path.join("config.json")).ok()?;
    let config: serde_json::Value = serde_json::from_str(&text).ok()?;
    config.get("max_position_embeddings")?.as_u64().map(|n| n as usize)
}

/// Weights from `path`: a Hugging Face folder (has `config.json`) or a kormo checkpoint
/// directory (has `manifest.json`; `base` supplies its architecture, see
/// [`Weights::from_checkpoint`]).
pub fn load_model(path: &Path, base: &ModelConfig) -> Result<Weights, HfError> {
    load_model_with_notes(path, base).map(|imported| imported.weights)
}

/// [`load_model`], with the notes of an HF folder's import (see [`crate::import_hf_folder`]).
pub fn load_model_with_notes(path: &Path, base: &ModelConfig) -> Result<crate::Imported, HfError> {
    if path.join("config.json").is_file() {
        crate::import::import_hf_folder(path)
    } else if path.join(kormo_checkpoint::MANIFEST_FILE).is_file() {
        Ok(crate::Imported { weights: Weights::from_checkpoint(path, base)?, notes: Vec::new() })
    } else {
        Err(HfError::new(path, "neither a Hugging Face model folder (config.json) nor a kormo checkpoint (manifest.json)"))
    }
}
