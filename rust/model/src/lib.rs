//! kormo-model: the KORMo decoder written once against the [`Ops`] backend interface.
//!
//! * [`ModelConfig`] — architecture hyperparameters with presets (`kormo_10_8b`, `proxy_1b`, `tiny`);
//!   [`NormPlacement`] chooses pre-LN (KORMo) or Mix-LN layers.
//! * [`params`] — the parameter layout: Hugging Face names, torch row-major `[out, in]` shapes,
//!   per-tensor weight-decay class, and deterministic normal(0, 0.02) / ones initialisation.
//! * [`Ops`] — the small set of numerical primitives (matmul, RMSNorm, RoPE, attention, SwiGLU,
//!   embedding, cross-entropy, elementwise) that the CPU reference (`kormo-cpu`) and the CUDA
//!   backend (`kormo-cuda`) both implement; the model never touches memory directly.
//! * [`Batch`] — one packed micro-batch: tokens, targets, per-token loss weights, document ids,
//!   position ids.
//! * [`Model`] — hand-written forward and backward passes; gradients accumulate into per-tensor
//!   buffers that the optimizer and checkpoint code read by name. Optional activation
//!   checkpointing (per-layer recomputation); [`ActivationMemory`] / [`MemoryPlan`] size it.
//!
//! * [`profile`] — the per-op time breakdown of benchmarks: op labels, the aggregation every
//!   backend's op timer feeds, and a wall-clock timer for synchronous backends.
//! * [`bf16`] — f32 <-> bf16 (raw `u16` bits) rounding shared by exports and bf16 communication.
//!
//! Nothing here knows about files, ranks or devices.
//!
//! ```
//! use kormo_model::{ModelConfig, params};
//! let cfg = ModelConfig::kormo_10_8b();
//! assert_eq!(cfg.param_count(), 10_756_624_384);
//! assert_eq!(params::layout(&cfg)[0].name, "model.embed_tokens.weight");
//! ```

pub mod bf16;
mod batch;
mod config;
mod error;
pub mod head;
mod model;
pub mod mtp;
pub mod ops;
pub mod params;
pub mod profile;

pub use batch::{Batch, LossSum};
pub use config::{decimal, ModelConfig, NormPlacement, DEFAULT_MIXLN_POST_FRACTION, DEFAULT_MTP_LOSS_WEIGHT, MAX_MTP_DEPTH};
pub use error::ModelError;
pub use head::DEFAULT_HEAD_CHUNK_TOKENS;
pub use model::{ActivationMemory, MemoryPlan, Model, UnitHooks};
pub use ops::{
    attention_visible, AttentionShape, CrossEntropyShape, EmbeddingShape, MatmulShape, Ops, RopeShape, RowsShape,
    DOC_LANGUAGE_BIT,
};
pub use params::{ParamKind, ParamSpec, Unit};
pub use profile::{OpBreakdown, OpProfile, OpRow, OpTimer};
