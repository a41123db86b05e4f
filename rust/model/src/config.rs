//! Architecture hyperparameters of a KORMo-style decoder and the named presets.
//!
//! The config describes only the network (shapes, norm epsilon, RoPE base); training
//! hyperparameters live in the recipe. Field names are short and stable because recipes
//! (`configs/*.toml`) spell them; unknown keys are rejected so a typo cannot silently fall back
//! to a default.

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// The f64 whose shortest decimal is the f32's shortest decimal: 1e-5 stays `1e-5` when written
/// as JSON instead of the widened f32 image 9.999999747378752e-06, and reads back as the same
/// f32. Every f32 setting kormo writes (config.json, manifests) goes through it.
pub fn decimal(x: f32) -> f64 {
    // Rust prints an f32 as the shortest decimal that reads back as it.
    x.to_string().parse().unwrap_or(f64::from(x))
}

/// Serialises an f32 setting as its decimal (serde_json's `to_value` would widen it).
fn serialize_decimal<S: serde::Serializer>(x: &f32, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(decimal(*x))
}

fn default_rms_eps() -> f32 {
    1e-5
}

fn default_rope_theta() -> f32 {
    500_000.0
}

/// MixLN's default share of post-LN layers (Li et al. 2024: the first 25% of the layers).
pub const DEFAULT_MIXLN_POST_FRACTION: f32 = 0.25;

fn default_mixln_post_fraction() -> f32 {
    DEFAULT_MIXLN_POST_FRACTION
}

fn is_default_mixln_post_fraction(x: &f32) -> bool {
    *x == DEFAULT_MIXLN_POST_FRACTION
}

/// Default weight of the multi-token-prediction loss (`mtp_loss_weight`): DeepSeek-V3's 0.3
/// (used for its first 10T tokens, 0.1 after).
pub const DEFAULT_MTP_LOSS_WEIGHT: f32 = 0.3;

/// Largest `mtp_depth` accepted (each depth adds a head pass of `T x hidden x vocab`).
pub const MAX_MTP_DEPTH: usize = 8;

fn default_mtp_loss_weight() -> f32 {
    DEFAULT_MTP_LOSS_WEIGHT
}

fn is_default_mtp_loss_weight(x: &f32) -> bool {
    *x == DEFAULT_MTP_LOSS_WEIGHT
}

fn is_zero(x: &usize) -> bool {
    *x == 0
}

/// Where each decoder layer puts its two RMSNorms (`[model] norm` in a recipe).
///
/// * `"pre"` (the default, KORMo's and Llama's): `x = x + Attn(Norm_a(x))`,
///   `x = x + FFN(Norm_f(x))`.
/// * `"mixln"` (Mix-LN, Li et al. 2024, "Mix-LN: Unleashing the Power of Deeper Layers by
///   Combining Pre-LN and Post-LN"): the first [`ModelConfig::post_ln_layers`] layers are post-LN,
///   `x = Norm_a(x + Attn(x))`, `x = Norm_f(x + FFN(x))`, the rest pre-LN as above. The final
///   norm before the LM head stays. `Norm_a` is the layer's `pre_attention_layernorm` tensor and
///   `Norm_f` its `pre_mlp_layernorm` (in a post-LN layer they sit after the residual additions
///   of attention and FFN; the names and the parameter layout do not change).
/// * `"deepnorm"` (DeepNet, Wang et al. 2022, "DeepNet: Scaling Transformers to 1,000
///   Layers"): every layer post-LN with the residual up-weighted, `x = Norm_a(α x + Attn(x))`,
///   `x = Norm_f(α x + FFN(x))`, `α = (2N)^(1/4)` for N layers (the decoder-only setting), and
///   the value, output and FFN projections initialised with gain `β = (8N)^(-1/4)`
///   ([`ModelConfig::residual_scale`], [`ModelConfig::init_gain`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum NormPlacement {
    #[default]
    #[serde(rename = "pre")]
    Pre,
    #[serde(rename = "mixln")]
    MixLn,
    #[serde(rename = "deepnorm")]
    DeepNorm,
}

impl NormPlacement {
    /// The spelling recipes and configs use: `pre`, `mixln` or `deepnorm`.
    pub fn name(self) -> &'static str {
        match self {
            NormPlacement::Pre => "pre",
            NormPlacement::MixLn => "mixln",
            NormPlacement::DeepNorm => "deepnorm",
        }
    }

    fn is_pre(&self) -> bool {
        *self == NormPlacement::Pre
    }
}

/// Decoder shape. Pre-norm RMSNorm (or Mix-LN, see [`NormPlacement`]), GQA attention with RoPE on q and k, SwiGLU FFN, final norm,
/// untied LM head unless `tie_embeddings`, no biases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Residual stream width.
    pub hidden: usize,
    /// Number of decoder layers.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (GQA); must divide `heads`.
    pub kv_heads: usize,
    /// Per-head width; RoPE rotates pairs, so it must be even.
    pub head_dim: usize,
    /// SwiGLU intermediate width.
    pub ffn: usize,
    /// Embedding rows / logits width.
    pub vocab: usize,
    /// RMSNorm epsilon (KORMo: 1e-5).
    #[serde(default = "default_rms_eps", serialize_with = "serialize_decimal")]
    pub rms_eps: f32,
    /// RoPE base (KORMo: 500000, no scaling).
    #[serde(default = "default_rope_theta", serialize_with = "serialize_decimal")]
    pub rope_theta: f32,
    /// Share the embedding matrix with the LM head (KORMo: false).
    #[serde(default)]
    pub tie_embeddings: bool,
    /// Norm placement: `pre` (default, KORMo), `mixln` or `deepnorm` (see [`NormPlacement`]). Not written
    /// when `pre`, so pre-LN configs serialise exactly as before the setting existed.
    #[serde(default, skip_serializing_if = "NormPlacement::is_pre")]
    pub norm: NormPlacement,
    /// With `norm = "mixln"`: the share of layers, from the first, that are post-LN
    /// (`floor(fraction * layers)` of them, see [`ModelConfig::post_ln_layers`]); MixLN's default
    /// 0.25. Not written when 0.25.
    #[serde(
        default = "default_mixln_post_fraction",
        skip_serializing_if = "is_default_mixln_post_fraction",
        serialize_with = "serialize_decimal"
    )]
    pub mixln_post_fraction: f32,
    /// Multi-token prediction (`[model] mtp_depth = k`, default 0 = off): `k` extra heads on the
    /// last layer's output, head `d` (1..=k) predicting the token `d + 1` places after the next
    /// one (see `crate::mtp`). Not written when 0, so configs without MTP serialise as before.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mtp_depth: usize,
    /// With `mtp_depth >= 1`: the weight of the MTP loss (the mean over depths) added to the
    /// next-token loss; DeepSeek-V3's 0.3 by default. Not written when 0.3.
    #[serde(
        default = "default_mtp_loss_weight",
        skip_serializing_if = "is_default_mtp_loss_weight",
        serialize_with = "serialize_decimal"
    )]
    pub mtp_loss_weight: f32,
}

impl ModelConfig {
    /// KORMo-10.8B exactly as released: 10,756,624,384 parameters.
    pub fn kormo_10_8b() -> Self {
        ModelConfig {
            hidden: 4096,
            layers: 40,
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
            ffn: 16384,
            vocab: 125_184,
            rms_eps: 1e-5,
            rope_theta: 500_000.0,
            tie_embeddings: false,
            norm: NormPlacement::Pre,
            mixln_post_fraction: DEFAULT_MIXLN_POST_FRACTION,
            mtp_depth: 0,
            mtp_loss_weight: DEFAULT_MTP_LOSS_WEIGHT,
        }
    }

    /// A ~1B-parameter proxy for ablations, in the spirit of the paper's 1B proxies (whose exact
    /// shape was not published). It keeps every ratio of the 10.8B model — head dim 128, 4:1 GQA,
    /// FFN = 4 x hidden, the full 125,184-token untied vocabulary — and scales width and depth:
    /// hidden 1536, 18 layers, 12 query / 3 KV heads, FFN 6144. Parameter count 1,000,398,336
    /// (384,565,248 of them in embedding + head).
    pub fn proxy_1b() -> Self {
        ModelConfig {
            hidden: 1536,
            layers: 18,
            heads: 12,
            kv_heads: 3,
            head_dim: 128,
            ffn: 6144,
            vocab: 125_184,
            rms_eps: 1e-5,
            rope_theta: 500_000.0,
            tie_embeddings: false,
            norm: NormPlacement::Pre,
            mixln_post_fraction: DEFAULT_MIXLN_POST_FRACTION,
            mtp_depth: 0,
            mtp_loss_weight: DEFAULT_MTP_LOSS_WEIGHT,
        }
    }

    /// A CPU-sized model for demos and CI: hidden 128, 4 layers, 4 query / 2 KV heads of 32,
    /// FFN 384 (SwiGLU's usual ~8/3 x hidden rounded to a multiple of 128), vocab 384 (256 bytes +
    /// specials, padded to a multiple of 128). Recipes override `vocab` for their tokenizer via
    /// [`ModelConfig::with_vocab`]. About 0.89M parameters.
    pub fn tiny() -> Self {
        ModelConfig {
            hidden: 128,
            layers: 4,
            heads: 4,
            kv_heads: 2,
            head_dim: 32,
            ffn: 384,
            vocab: 384,
            rms_eps: 1e-5,
            rope_theta: 500_000.0,
            tie_embeddings: false,
            norm: NormPlacement::Pre,
            mixln_post_fraction: DEFAULT_MIXLN_POST_FRACTION,
            mtp_depth: 0,
            mtp_loss_weight: DEFAULT_MTP_LOSS_WEIGHT,
        }
    }

    /// Looks a preset up by the name recipes use: `kormo-10.8b`, `proxy-1b`, `tiny`.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "kormo-10.8b" => Some(Self::kormo_10_8b()),
            "proxy-1b" => Some(Self::proxy_1b()),
            "tiny" => Some(Self::tiny()),
            _ => None,
        }
    }

    /// The same architecture with another vocabulary size.
    pub fn with_vocab(mut self, vocab: usize) -> Self {
        self.vocab = vocab;
        self
    }

    /// Keys a serialised config may leave out (written only when not at their defaults):
    /// `norm`, `mixln_post_fraction`, `mtp_depth` and `mtp_loss_weight`. A reader that checks
    /// keys against a serialised preset (the recipe's `[model]` table) must accept these too.
    pub const OPTIONAL_KEYS: [&'static str; 4] = ["norm", "mixln_post_fraction", "mtp_depth", "mtp_loss_weight"];

    /// Number of post-LN layers at the bottom of the stack: 0 for `norm = "pre"`, and
    /// `floor(mixln_post_fraction * layers)` for `mixln` (the product taken on the fraction's
    /// decimal, so 0.3 of 10 layers is 3, not 2).
    pub fn post_ln_layers(&self) -> usize {
        match self.norm {
            NormPlacement::Pre => 0,
            NormPlacement::DeepNorm => self.layers,
            NormPlacement::MixLn => {
                let product = decimal(self.mixln_post_fraction) * self.layers as f64;
                ((product + 1e-9).floor().max(0.0) as usize).min(self.layers)
            }
        }
    }

    /// Whether layer `l` (from 0) is post-LN.
    pub fn is_post_ln_layer(&self, l: usize) -> bool {
        l < self.post_ln_layers()
    }

    /// The weight α of the residual in a post-LN layer, `Norm(α x + f(x))`: DeepNorm's
    /// `(2 * layers)^(1/4)`, else 1.
    pub fn residual_scale(&self) -> f32 {
        match self.norm {
            NormPlacement::DeepNorm => (2.0 * self.layers as f64).powf(0.25) as f32,
            _ => 1.0,
        }
    }

    /// The factor on the normal initialisation of tensor `index` of [`crate::params::layout`]:
    /// DeepNorm's `β = (8 * layers)^(-1/4)` on each layer's value, output, gate, up and down
    /// projections, else 1.
    pub fn init_gain(&self, index: usize) -> f64 {
        use crate::params::{layer_index, LayerSlot};
        if self.norm != NormPlacement::DeepNorm {
            return 1.0;
        }
        let scaled = [LayerSlot::V, LayerSlot::O, LayerSlot::Gate, LayerSlot::Up, LayerSlot::Down];
        let hit = (0..self.layers).any(|l| scaled.iter().any(|&slot| layer_index(l, slot) == index));
        if hit {
            (8.0 * self.layers as f64).powf(-0.25)
        } else {
            1.0
        }
    }

    /// Width of all query heads together (`heads * head_dim`).
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Width of all key (or value) heads together (`kv_heads * head_dim`).
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Total number of parameters (sum over [`crate::params::layout`]).
    pub fn param_count(&self) -> u64 {
        crate::params::layout(self).iter().map(|p| p.numel() as u64).sum()
    }

    /// Checks that the shapes are usable; the error names the offending key.
    pub fn validate(&self) -> Result<(), ModelError> {
        let positive = [
            ("hidden", self.hidden),
            ("layers", self.layers),
            ("heads", self.heads),
            ("kv_heads", self.kv_heads),
            ("head_dim", self.head_dim),
            ("ffn", self.ffn),
            ("vocab", self.vocab),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ModelError::Config { key, message: "must be at least 1".into() });
            }
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(ModelError::Config {
                key: "kv_heads",
                message: format!("{} must divide heads = {}", self.kv_heads, self.heads),
            });
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(ModelError::Config {
                key: "head_dim",
                message: format!("{} must be even (RoPE rotates pairs)", self.head_dim),
            });
        }
        if self.vocab > u32::MAX as usize {
            return Err(ModelError::Config {
                key: "vocab",
                message: format!("{} does not fit token ids of 32 bits", self.vocab),
            });
        }
        if !(self.rms_eps.is_finite() && self.rms_eps > 0.0) {
            return Err(ModelError::Config {
                key: "rms_eps",
                message: format!("{} must be a positive finite number", self.rms_eps),
            });
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err(ModelError::Config {
                key: "rope_theta",
                message: format!("{} must be a finite number above 1", self.rope_theta),
            });
        }
        let fraction = self.mixln_post_fraction;
        match self.norm {
            NormPlacement::Pre | NormPlacement::DeepNorm if fraction != DEFAULT_MIXLN_POST_FRACTION => {
                return Err(ModelError::Config {
                    key: "mixln_post_fraction",
                    message: format!(
                        "{fraction} is set but applies only with norm = \"mixln\" (norm is \"{}\")",
                        self.norm.name()
                    ),
                });
            }
            NormPlacement::MixLn => {
                if !(fraction.is_finite() && fraction > 0.0 && fraction <= 1.0) {
                    return Err(ModelError::Config {
                        key: "mixln_post_fraction",
                        message: format!("{fraction} must be in (0, 1]"),
                    });
                }
                if self.post_ln_layers() == 0 {
                    return Err(ModelError::Config {
                        key: "mixln_post_fraction",
                        message: format!(
                            "{fraction} of {} layers gives no post-LN layer (floor({fraction} * {}) = 0); raise it or use norm = \"pre\"",
                            self.layers, self.layers
                        ),
                    });
                }
            }
            NormPlacement::Pre | NormPlacement::DeepNorm => {}
        }
        self.validate_mtp()
    }

    fn validate_mtp(&self) -> Result<(), ModelError> {
        let weight = self.mtp_loss_weight;
        if self.mtp_depth == 0 && weight != DEFAULT_MTP_LOSS_WEIGHT {
            return Err(ModelError::Config {
                key: "mtp_loss_weight",
                message: format!("{weight} is set but applies only with mtp_depth >= 1 (mtp_depth is 0, MTP off)"),
            });
        }
        if self.mtp_depth > MAX_MTP_DEPTH {
            return Err(ModelError::Config {
                key: "mtp_depth",
                message: format!("{} is above the largest supported depth {MAX_MTP_DEPTH}", self.mtp_depth),
            });
        }
        if self.mtp_depth > 0 && !(weight.is_finite() && weight > 0.0) {
            return Err(ModelError::Config {
                key: "mtp_loss_weight",
                message: format!("{weight} must be a positive finite number"),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_is_the_f32s_shortest_decimal() {
        for (x, text) in [(1e-5f32, "0.00001"), (1e-6, "0.000001"), (500_000.0, "500000"), (0.1, "0.1"), (3.3e-7, "0.00000033")] {
            assert_eq!(decimal(x).to_string(), text);
            assert_eq!(decimal(x) as f32, x);
        }
        for x in [f32::MIN_POSITIVE, f32::MAX, 123.456, 1.0e10, 9.999999e-6] {
            assert_eq!(decimal(x) as f32, x, "{x} round-trips");
            assert_eq!(decimal(x).to_string().parse::<f32>().unwrap(), x);
        }
        assert_ne!(f64::from(1e-5f32), 1e-5, "widening is what decimal avoids");
    }

    #[test]
    fn kormo_10_8b_param_count_matches_release() {
        assert_eq!(ModelConfig::kormo_10_8b().param_count(), 10_756_624_384);
    }

    #[test]
    fn proxy_1b_param_count_is_documented_value() {
        assert_eq!(ModelConfig::proxy_1b().param_count(), 1_000_398_336);
    }

    #[test]
    fn presets_validate_and_resolve_by_name() {
        for name in ["kormo-10.8b", "proxy-1b", "tiny"] {
            ModelConfig::preset(name).unwrap().validate().unwrap();
        }
        assert!(ModelConfig::preset("gpt-5").is_none());
    }

    #[test]
    fn post_ln_layers_follow_the_fraction() {
        let mixln = |layers, fraction| ModelConfig { layers, norm: NormPlacement::MixLn, mixln_post_fraction: fraction, ..ModelConfig::tiny() };
        assert_eq!(ModelConfig::tiny().post_ln_layers(), 0);
        for (layers, fraction, want) in [(4, 0.25, 1), (18, 0.25, 4), (40, 0.25, 10), (10, 0.3, 3), (10, 0.7, 7), (100, 0.29, 29), (3, 1.0, 3), (7, 0.5, 3)] {
            let cfg = mixln(layers, fraction);
            assert_eq!(cfg.post_ln_layers(), want, "{fraction} of {layers}");
            cfg.validate().unwrap();
            assert!(cfg.is_post_ln_layer(want - 1) && !cfg.is_post_ln_layer(want));
        }
        for fraction in [0.0, -0.5, 1.5, f32::NAN] {
            assert_eq!(mixln(4, fraction).validate().unwrap_err(), ModelError::Config { key: "mixln_post_fraction", message: format!("{fraction} must be in (0, 1]") });
        }
        let err = mixln(3, 0.25).validate().unwrap_err().to_string();
        assert!(err.contains("mixln_post_fraction") && err.contains("no post-LN layer"), "{err}");
        let pre_with_fraction = ModelConfig { mixln_post_fraction: 0.5, ..ModelConfig::tiny() };
        let err = pre_with_fraction.validate().unwrap_err().to_string();
        assert!(err.contains("mixln_post_fraction") && err.contains("only with norm = \"mixln\""), "{err}");
        assert_eq!(NormPlacement::MixLn.name(), "mixln");
        assert_eq!(NormPlacement::default(), NormPlacement::Pre);
    }

    #[test]
    fn mtp_settings_validate_with_clear_errors() {
        let mtp = |depth, weight| ModelConfig { mtp_depth: depth, mtp_loss_weight: weight, ..ModelConfig::tiny() };
        for (depth, weight) in [(0, DEFAULT_MTP_LOSS_WEIGHT), (1, 0.3), (2, 0.1), (MAX_MTP_DEPTH, 1.0)] {
            mtp(depth, weight).validate().unwrap();
        }
        let err = mtp(0, 0.1).validate().unwrap_err().to_string();
        assert!(err.contains("mtp_loss_weight") && err.contains("only with mtp_depth >= 1"), "{err}");
        let err = mtp(MAX_MTP_DEPTH + 1, 0.3).validate().unwrap_err().to_string();
        assert!(err.contains("mtp_depth") && err.contains("largest supported depth"), "{err}");
        for weight in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let err = mtp(1, weight).validate().unwrap_err().to_string();
            assert!(err.contains("mtp_loss_weight") && err.contains("positive finite"), "{err}");
        }
    }

    #[test]
    fn validate_names_the_bad_key() {
        let mut cfg = ModelConfig::tiny();
        cfg.kv_heads = 3;
        match cfg.validate() {
            Err(ModelError::Config { key, .. }) => assert_eq!(key, "kv_heads"),
            other => panic!("expected a kv_heads error, got {other:?}"),
        }
        let mut cfg = ModelConfig::tiny();
        cfg.head_dim = 31;
        assert!(cfg.validate().unwrap_err().to_string().contains("head_dim"));
    }
}
