//! `config.json` and `generation_config.json`: kormo's [`ModelConfig`] in the keys transformers
//! reads for `LlamaForCausalLM` and `KORMoForCausalLM` (the same set: KORMo's config class is
//! Llama's with another `model_type`), and back.
//!
//! Reading is strict where a silent default would change the network: a RoPE scaling, biases,
//! another activation or unknown architecture is refused with the key named. Missing optional
//! keys take transformers' defaults for the architecture (Llama: `rms_norm_eps` 1e-6,
//! `rope_theta` 10000; KORMo: 1e-5 and 500000). Both the older top-level `rope_theta` and
//! transformers 5's `rope_parameters` are understood.

use std::path::Path;

use kormo_model::{ModelConfig, NormPlacement};
use serde_json::{json, Map, Value};

use crate::error::HfError;

/// Which architecture an exported folder declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `KORMoForCausalLM`, `model_type` "kormo", kormo's own tensor names.
    Kormo,
    /// `LlamaForCausalLM`, `model_type` "llama", norms renamed (see [`crate::names`]).
    Llama,
}

impl Flavor {
    pub fn architecture(self) -> &'static str {
        match self {
            Flavor::Kormo => "KORMoForCausalLM",
            Flavor::Llama => "LlamaForCausalLM",
        }
    }

    pub fn model_type(self) -> &'static str {
        match self {
            Flavor::Kormo => "kormo",
            Flavor::Llama => "llama",
        }
    }

    /// By command-line name: `kormo` or `llama`.
    pub fn parse(name: &str) -> Option<Flavor> {
        match name {
            "kormo" => Some(Flavor::Kormo),
            "llama" => Some(Flavor::Llama),
            _ => None,
        }
    }

    fn defaults(self) -> (f64, f64) {
        match self {
            Flavor::Kormo => (1e-5, 500_000.0),
            Flavor::Llama => (1e-6, 10_000.0),
        }
    }
}

/// Special token ids recorded in `config.json` / `generation_config.json` (absent = null).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
}

/// The `config.json` document of `cfg`.
pub fn config_json(cfg: &ModelConfig, flavor: Flavor, ids: SpecialIds, torch_dtype: &str, max_positions: usize) -> Value {
    json!({
        "architectures": [flavor.architecture()],
        "model_type": flavor.model_type(),
        "vocab_size": cfg.vocab,
        "hidden_size": cfg.hidden,
        "intermediate_size": cfg.ffn,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": max_positions,
        "initializer_range": kormo_model::params::INIT_STD,
        "rms_norm_eps": decimal(cfg.rms_eps),
        "rope_theta": decimal(cfg.rope_theta),
        "rope_scaling": null,
        "attention_bias": false,
        "attention_dropout": 0.0,
        "mlp_bias": false,
        "pretraining_tp": 1,
        "tie_word_embeddings": cfg.tie_embeddings,
        "use_cache": true,
        "bos_token_id": ids.bos,
        "eos_token_id": ids.eos,
        "pad_token_id": ids.pad,
        "torch_dtype": torch_dtype,
    })
}

/// The f64 whose shortest decimal is the f32's shortest decimal (1e-5, not the widened f32
/// image 9.999999747378752e-06); every f32 kormo writes to JSON goes through it.
pub use kormo_model::decimal;

/// The `generation_config.json` document: greedy by default, stop at EOS.
pub fn generation_config_json(ids: SpecialIds) -> Value {
    json!({
        "bos_token_id": ids.bos,
        "eos_token_id": ids.eos,
        "pad_token_id": ids.pad,
        "do_sample": false,
    })
}

/// Reads `path` (a `config.json`) into a kormo config and the folder's flavour.
pub fn read_config(path: &Path) -> Result<(ModelConfig, Flavor), HfError> {
    let text = std::fs::read_to_string(path).map_err(|e| HfError::new(path, format!("cannot read: {e}")))?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| HfError::new(path, format!("not valid JSON: {e}")))?;
    let obj = doc.as_object().ok_or_else(|| HfError::new(path, "expected a JSON object"))?;
    parse_config(obj).map_err(|m| HfError::new(path, m))
}

fn parse_config(obj: &Map<String, Value>) -> Result<(ModelConfig, Flavor), String> {
    let architecture = obj
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str)
        .or_else(|| obj.get("model_type").and_then(Value::as_str))
        .ok_or("neither `architectures` nor `model_type` says what model this is")?;
    let flavor = match architecture {
        "KORMoForCausalLM" | "kormo" => Flavor::Kormo,
        "LlamaForCausalLM" | "llama" => Flavor::Llama,
        other => return Err(format!("architecture `{other}` is not supported (KORMoForCausalLM or LlamaForCausalLM)")),
    };
    let count = |key: &str| -> Result<Option<usize>, String> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or(format!("`{key}` must be a non-negative integer, found {v}")),
        }
    };
    let required = |key: &str| count(key)?.ok_or(format!("missing `{key}`"));
    let number = |key: &str| -> Result<Option<f64>, String> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or(format!("`{key}` must be a number, found {v}")),
        }
    };
    let flag = |key: &str| obj.get(key).and_then(Value::as_bool);

    let hidden = required("hidden_size")?;
    let heads = required("num_attention_heads")?;
    if heads == 0 {
        return Err("`num_attention_heads` must be at least 1".into());
    }
    let (default_eps, default_theta) = flavor.defaults();
    let rope_theta = match obj.get("rope_parameters").filter(|v| !v.is_null()) {
        Some(params) => {
            let rope_type = params.get("rope_type").and_then(Value::as_str).unwrap_or("default");
            if rope_type != "default" {
                return Err(format!("`rope_parameters.rope_type` = `{rope_type}`: only unscaled RoPE (`default`) is supported"));
            }
            params.get("rope_theta").and_then(Value::as_f64).unwrap_or(default_theta)
        }
        None => number("rope_theta")?.unwrap_or(default_theta),
    };
    if obj.get("rope_scaling").is_some_and(|v| !v.is_null()) {
        return Err(format!("`rope_scaling` = {}: RoPE scaling is not supported", obj["rope_scaling"]));
    }
    for key in ["attention_bias", "mlp_bias"] {
        if flag(key) == Some(true) {
            return Err(format!("`{key}` = true: kormo models have no biases"));
        }
    }
    if let Some(act) = obj.get("hidden_act").and_then(Value::as_str) {
        if act != "silu" {
            return Err(format!("`hidden_act` = `{act}`: only SwiGLU with silu is supported"));
        }
    }
    let cfg = ModelConfig {
        hidden,
        layers: required("num_hidden_layers")?,
        heads,
        kv_heads: count("num_key_value_heads")?.unwrap_or(heads),
        head_dim: count("head_dim")?.unwrap_or(hidden / heads),
        ffn: required("intermediate_size")?,
        vocab: required("vocab_size")?,
        rms_eps: number("rms_norm_eps")?.unwrap_or(default_eps) as f32,
        rope_theta: rope_theta as f32,
        tie_embeddings: flag("tie_word_embeddings").unwrap_or(false),
        // Llama and KORMo layers are pre-LN; transformers has no key for anything else.
        norm: NormPlacement::Pre,
        mixln_post_fraction: kormo_model::DEFAULT_MIXLN_POST_FRACTION,
        mtp_depth: 0,
        mtp_loss_weight: kormo_model::DEFAULT_MTP_LOSS_WEIGHT,
    };
    cfg.validate().map_err(|e| e.to_string())?;
    Ok((cfg, flavor))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<(ModelConfig, Flavor), String> {
        parse_config(v.as_object().unwrap())
    }

    #[test]
    fn f32_settings_are_written_as_their_decimals() {
        let mut cfg = ModelConfig::kormo_10_8b();
        cfg.rms_eps = 1e-5;
        cfg.rope_theta = 500000.0;
        let ids = SpecialIds { bos: None, eos: None, pad: None };
        let text = config_json(&cfg, Flavor::Llama, ids, "bfloat16", 8).to_string();
        assert!(text.contains("\"rms_norm_eps\":0.00001"), "{text}");
        assert!(text.contains("\"rope_theta\":500000.0"), "{text}");
        for x in [1e-6f32, 0.1, 3.3e-7, 1.0e10, f32::MIN_POSITIVE, 123.456] {
            assert_eq!(decimal(x) as f32, x, "{x} round-trips");
            assert_eq!(decimal(x).to_string().parse::<f32>().unwrap(), x);
        }
        assert_eq!(decimal(0.1).to_string(), "0.1");
    }

    #[test]
    fn written_config_reads_back_for_both_flavours() {
        let mut cfg = ModelConfig::kormo_10_8b();
        cfg.tie_embeddings = true;
        for flavor in [Flavor::Kormo, Flavor::Llama] {
            let ids = SpecialIds { bos: Some(125030), eos: Some(125031), pad: None };
            let doc = config_json(&cfg, flavor, ids, "bfloat16", 32768);
            assert_eq!(doc["architectures"][0], flavor.architecture());
            assert_eq!(parse(doc).unwrap(), (cfg.clone(), flavor));
        }
    }

    #[test]
    fn missing_keys_take_the_architecture_defaults() {
        let base = json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
                          "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 100});
        let (cfg, flavor) = parse(base.clone()).unwrap();
        assert_eq!(flavor, Flavor::Llama);
        assert_eq!((cfg.kv_heads, cfg.head_dim, cfg.rms_eps, cfg.rope_theta), (4, 16, 1e-6, 10_000.0));
        let mut v5 = base;
        v5["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 500000.0});
        assert_eq!(parse(v5).unwrap().0.rope_theta, 500_000.0);
    }

    #[test]
    fn unsupported_settings_name_the_key() {
        let ok = config_json(&ModelConfig::tiny(), Flavor::Llama, SpecialIds::default(), "float32", 64);
        let cases = [
            ("rope_scaling", json!({"type": "linear", "factor": 2.0}), "rope_scaling"),
            ("attention_bias", json!(true), "attention_bias"),
            ("hidden_act", json!("gelu"), "hidden_act"),
            ("num_key_value_heads", json!(3), "kv_heads"),
            ("hidden_size", json!("wide"), "hidden_size"),
            ("architectures", json!(["GPT2LMHeadModel"]), "GPT2LMHeadModel"),
        ];
        for (key, value, expected) in cases {
            let mut doc = ok.clone();
            doc[key] = value;
            let err = parse(doc).unwrap_err();
            assert!(err.contains(expected), "{key}: {err}");
        }
        let mut doc = ok;
        doc.as_object_mut().unwrap().remove("vocab_size");
        assert!(parse(doc).unwrap_err().contains("missing `vocab_size`"));
    }
}
