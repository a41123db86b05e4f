//! Atomic file publication shared by the shard writer and the manifest: write under a unique
//! temporary name in the target directory, fsync, rename over the target, fsync the directory.
//! A reader therefore sees either the old file or the complete new one, also after a crash.

use crate::error::ShardError;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Distinguishes temp files of several writers in one process (the pid covers other processes).
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh temporary path next to `path` (same directory, so the rename cannot cross devices).
pub(crate) fn temp_path_for(path: &Path) -> Option<PathBuf> {
    let mut name = path.file_name()?.to_os_string();
    let unique = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    name.push(format!(".tmp-{}-{unique}", std::process::id()));
    Some(path.with_file_name(name))
}

/// Fsyncs `file` (written at `temp`), renames it to `path` and fsyncs the directory.
pub(crate) fn publish(file: File, temp: &Path, path: &Path) -> Result<(), ShardError> {
    file.sync_all()
        .map_err(|e| ShardError::io(temp, "fsync", e))?;
    drop(file);
    fs::rename(temp, path).map_err(|e| ShardError::io(path, "rename", e))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ShardError::io(dir, "fsync directory", e))
}
