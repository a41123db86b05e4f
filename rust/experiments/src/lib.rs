//! The paper's experiments as library code behind small binaries: [`study`] trains several
//! tokenizers from one corpus and compares them by bytes per token on held-out splits.

pub mod ablate;
pub mod study;
