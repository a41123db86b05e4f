//! kormo-hf: Hugging Face interop for kormo models.
//!
//! * [`export`] — a kormo checkpoint (or any [`Weights`]) written as a Hugging Face model folder:
//!   `config.json` (KORMo's own `KORMoForCausalLM`, or Llama's `LlamaForCausalLM` with the norms
//!   renamed), `model.safetensors` in bf16 or f32 (sharded with `model.safetensors.index.json`
//!   above a size), `generation_config.json`, and the tokenizer files.
//! * [`import`] — such a folder (either naming) read back as kormo-named f32 tensors, usable as
//!   the initial weights of any training stage ([`load_hf_folder`]); where config.json and the
//!   stored tensors disagree on tying it does what transformers does and says so
//!   ([`import_hf_folder`]'s notes).
//! * [`weights`] — the named-tensor container both sides share, and loading weights from a
//!   kormo checkpoint directory or an HF folder ([`load_model`]).
//! * [`vocab`] — the tokenizer that goes with a model: its `tokenizer.json`, or the built-in
//!   byte vocabulary expressed as a byte-level BPE tokenizer with no merges.
//!
//! RoPE: kormo rotates q/k in Hugging Face's "rotate half" layout (pairs `(i, i + d/2)`, see
//! `kormo_model::Ops::rope_fwd`), the layout `LlamaForCausalLM` and KORMo use. Q/K projection
//! rows therefore need no permutation on export or import (the trap of interleaved-pair
//! trainers such as Meta's original Llama code); `tests/rope_convention.rs` pins this down and the
//! NumPy reference test checks the end-to-end logits.

pub mod cli;
pub mod config;
mod error;
pub mod export;
pub mod import;
pub mod names;
pub mod vocab;
pub mod weights;

pub use config::{Flavor, SpecialIds};
pub use error::HfError;
pub use export::{export_folder, ExportDtype, ExportOptions, ExportSummary};
pub use import::{import_hf_folder, load_hf_folder, Imported};
pub use weights::{load_model, load_model_with_notes, trained_context, NamedTensor, Weights};
