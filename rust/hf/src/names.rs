//! Tensor names in the two exported flavours. kormo's own names are KORMo's (see
//! `kormo_model::params`); Llama differs only in the two per-layer norms:
//!
//! | kormo / KORMo                              | Llama                                       |
//! | ------------------------------------------ | ------------------------------------------- |
//! | `model.layers.{i}.pre_attention_layernorm` | `model.layers.{i}.input_layernorm`          |
//! | `model.layers.{i}.pre_mlp_layernorm`       | `model.layers.{i}.post_attention_layernorm` |
//!
//! (Llama's "post attention" norm is the one applied before the MLP: the same tensor.)

use crate::config::Flavor;

const RENAMES: [(&str, &str); 2] =
    [(".pre_attention_layernorm.", ".input_layernorm."), (".pre_mlp_layernorm.", ".post_attention_layernorm.")];

/// The name of kormo tensor `name` in a folder of `flavor`.
pub fn to_hf(name: &str, flavor: Flavor) -> String {
    match flavor {
        Flavor::Kormo => name.to_string(),
        Flavor::Llama => RENAMES.iter().fold(name.to_string(), |n, (ours, theirs)| n.replace(ours, theirs)),
    }
}

/// The kormo name of a tensor called `name` in a folder of `flavor`.
pub fn from_hf(name: &str, flavor: Flavor) -> String {
    match flavor {
        Flavor::Kormo => name.to_string(),
        Flavor::Llama => RENAMES.iter().fold(name.to_string(), |n, (ours, theirs)| n.replace(theirs, ours)),
    }
}

/// Buffers some exporters store next to the weights (RoPE frequencies); recomputed, never loaded.
pub fn is_derived_buffer(name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_renames_only_the_norms_and_round_trips() {
        let cfg = kormo_model::ModelConfig::tiny();
        for spec in kormo_model::params::layout(&cfg) {
            for flavor in [Flavor::Kormo, Flavor::Llama] {
                assert_eq!(from_hf(&to_hf(&spec.name, flavor), flavor), spec.name);
            }
        }
        assert_eq!(to_hf("model.layers.3.pre_attention_layernorm.weight", Flavor::Llama), "model.layers.3.input_layernorm.weight");
        assert_eq!(to_hf("model.layers.3.pre_mlp_layernorm.weight", Flavor::Llama), "model.layers.3.post_attention_layernorm.weight");
        assert_eq!(to_hf("model.layers.3.mlp.up_proj.weight", Flavor::Llama), "model.layers.3.mlp.up_proj.weight");
        assert_eq!(to_hf("model.layers.3.pre_mlp_layernorm.weight", Flavor::Kormo), "model.layers.3.pre_mlp_layernorm.weight");
    }
}
