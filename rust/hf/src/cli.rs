//! Command-line helpers shared by the interop binaries (`hf`, `generate`, `needle`; their
//! options are clap derives in each binary). Paths are taken relative to the directory the
//! user ran the command from, which under `bazel run` is `BUILD_WORKING_DIRECTORY` (the process
//! itself runs in the runfiles tree), as the trainer does.

use std::path::{Path, PathBuf};

/// `path` as the user meant it: relative paths are relative to `BUILD_WORKING_DIRECTORY` when
/// running under `bazel run`, else to the current directory.
pub fn user_path(path: &Path) -> PathBuf {
    match std::env::var_os("BUILD_WORKING_DIRECTORY") {
        Some(dir) if path.is_relative() => Path::new(&dir).join(path),
        _ => path.to_path_buf(),
    }
}

/// A model preset by the name recipes use (the architecture of a kormo checkpoint, which
/// records none).
pub fn preset(name: &str) -> Result<kormo_model::ModelConfig, String> {
    kormo_model::ModelConfig::preset(name).ok_or(format!("--preset: unknown preset `{name}` (tiny, proxy-1b, kormo-10.8b)"))
}

/// Parses a byte count: `123`, `500MB`, `5GB`, `2GiB` (decimal and binary units).
pub fn parse_bytes(text: &str) -> Option<u64> {
    let upper = text.trim().to_ascii_uppercase();
    let split = upper.find(|c: char| !c.is_ascii_digit()).unwrap_or(upper.len());
    let (digits, unit) = upper.split_at(split);
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KIB" => 1 << 10,
        "MIB" => 1 << 20,
        "GIB" => 1 << 30,
        _ => return None,
    };
    digits.parse::<u64>().ok()?.checked_mul(multiplier)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("123"), Some(123));
        assert_eq!(parse_bytes("5GB"), Some(5_000_000_000));
        assert_eq!(parse_bytes("2gib"), Some(2 << 30));
        assert_eq!(parse_bytes("10 MB"), Some(10_000_000));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("5PB"), None);
    }
}
