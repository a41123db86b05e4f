//! One error type for the distributed layer; every variant says which rank, file or key.

use std::fmt;

use kormo_checkpoint::CheckpointError;
use kormo_model::ModelError;
use kormo_optim::OptimError;

use crate::comm::CommError;

#[derive(Debug, Clone, PartialEq)]
pub enum DistError {
    Comm(CommError),
    Model(ModelError),
    Optim(OptimError),
    Checkpoint(CheckpointError),
    /// A setting or input that cannot work (names the key or value).
    Config(String),
    /// A device call failed (names the operation).
    Device(String),
}

impl fmt::Display for DistError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DistError::Comm(e) => e.fmt(f),
            DistError::Model(e) => e.fmt(f),
            DistError::Optim(e) => e.fmt(f),
            DistError::Checkpoint(e) => e.fmt(f),
            DistError::Config(message) => write!(f, "distributed setting: {message}"),
            DistError::Device(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for DistError {}

impl From<CommError> for DistError {
    fn from(e: CommError) -> Self {
        DistError::Comm(e)
    }
}

impl From<ModelError> for DistError {
    fn from(e: ModelError) -> Self {
        DistError::Model(e)
    }
}

impl From<OptimError> for DistError {
    fn from(e: OptimError) -> Self {
        DistError::Optim(e)
    }
}

impl From<CheckpointError> for DistError {
    fn from(e: CheckpointError) -> Self {
        DistError::Checkpoint(e)
    }
}
