//! One error type for everything the model rejects: bad configs (naming the key), malformed
//! batches, and unknown or mis-sized parameter names. User input never panics.

use std::fmt;

/// What was wrong, with enough context to find it.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelError {
    /// A config key holds an unusable value.
    Config { key: &'static str, message: String },
    /// A batch is inconsistent (lengths, token ids out of range, ...).
    Batch(String),
    /// No parameter tensor has this name.
    UnknownParam(String),
    /// A host slice passed for a named tensor has the wrong length.
    SizeMismatch { name: String, expected: usize, got: usize },
    /// A model built for inference ([`crate::Model::for_inference`]) was asked for gradients.
    NoGradients,
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelError::Config { key, message } => write!(f, "model config key `{key}`: {message}"),
            ModelError::Batch(message) => write!(f, "invalid batch: {message}"),
            ModelError::UnknownParam(name) => write!(f, "unknown parameter tensor `{name}`"),
            ModelError::SizeMismatch { name, expected, got } => write!(
                f,
                "parameter tensor `{name}` has {expected} elements but {got} were given"
            ),
            ModelError::NoGradients => write!(f, "this model was built for inference (Model::for_inference) and has no gradient buffers"),
        }
    }
}

impl std::error::Error for ModelError {}
