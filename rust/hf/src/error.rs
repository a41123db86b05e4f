//! The one error type of the crate: a path (file or folder) and what is wrong with it, so a
//! user can find the offending file without a backtrace.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
pub struct HfError {
    pub path: PathBuf,
    pub message: String,
}

impl HfError {
    pub fn new(path: &Path, message: impl Into<String>) -> HfError {
        HfError { path: path.to_path_buf(), message: message.into() }
    }
}

impl fmt::Display for HfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

impl std::error::Error for HfError {}

impl From<kormo_checkpoint::CheckpointError> for HfError {
    fn from(e: kormo_checkpoint::CheckpointError) -> Self {
        HfError { path: e.path, message: e.message }
    }
}
