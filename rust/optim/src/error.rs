//! Errors for bad optimizer or schedule settings (naming the key) and mismatched tensors.

use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum OptimError {
    /// A hyperparameter is out of range.
    Config { key: &'static str, message: String },
    /// A tensor list or state tensor does not match what the optimizer was built for.
    Tensor(String),
}

impl fmt::Display for OptimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptimError::Config { key, message } => write!(f, "optimizer setting `{key}`: {message}"),
            OptimError::Tensor(message) => write!(f, "optimizer tensors: {message}"),
        }
    }
}

impl std::error::Error for OptimError {}
