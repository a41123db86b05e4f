//! A small command-line parser shared by the interop binaries (`hf`, `generate`, `needle`):
//! `--key value`, `--key=value` and bare `--flag`s, looked up by name, with every option the
//! program did not ask for reported as an error instead of being silently ignored. Paths are
//! taken relative to the directory the user ran the command from, which under `bazel run` is
//! `BUILD_WORKING_DIRECTORY` (the process itself runs in the runfiles tree), as the trainer does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Parsed options (positional arguments are refused: every input is named).
#[derive(Debug, Default)]
pub struct Args {
    values: BTreeMap<String, Option<String>>,
}

impl Args {
    /// Parses `args` (without the program name). `flags` lists the options that take no value.
    pub fn parse(args: impl IntoIterator<Item = String>, flags: &[&str]) -> Result<Args, String> {
        let mut values = BTreeMap::new();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let Some(body) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument `{arg}` (options are --name value)"));
            };
            let (key, value) = match body.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None if flags.contains(&body) => (body.to_string(), None),
                None => {
                    let value = args.next().ok_or(format!("--{body} needs a value"))?;
                    (body.to_string(), Some(value))
                }
            };
            if values.insert(key.clone(), value).is_some() {
                return Err(format!("--{key} given twice"));
            }
        }
        Ok(Args { values })
    }

    /// The value of `--key`, if given.
    pub fn take(&mut self, key: &str) -> Result<Option<String>, String> {
        match self.values.remove(key) {
            None => Ok(None),
            Some(Some(v)) => Ok(Some(v)),
            Some(None) => Err(format!("--{key} needs a value")),
        }
    }

    /// The value of `--key`, which must be given.
    pub fn required(&mut self, key: &str) -> Result<String, String> {
        self.take(key)?.ok_or(format!("missing --{key}"))
    }

    /// The path given as `--key`, if any (see [`user_path`]).
    pub fn path(&mut self, key: &str) -> Result<Option<PathBuf>, String> {
        Ok(self.take(key)?.map(|p| user_path(Path::new(&p))))
    }

    /// The path given as `--key`, which must be given.
    pub fn required_path(&mut self, key: &str) -> Result<PathBuf, String> {
        self.path(key)?.ok_or(format!("missing --{key}"))
    }

    /// `--key` parsed as `T`, or `default`.
    pub fn parsed<T: FromStr>(&mut self, key: &str, default: T) -> Result<T, String> {
        match self.take(key)? {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("--{key}: cannot parse `{v}`")),
        }
    }

    /// Whether the bare flag `--key` was given.
    pub fn flag(&mut self, key: &str) -> Result<bool, String> {
        match self.values.remove(key) {
            None => Ok(false),
            Some(None) => Ok(true),
            Some(Some(v)) => Err(format!("--{key} takes no value (got `{v}`)")),
        }
    }

    /// Fails if any option was not consumed.
    pub fn finish(self) -> Result<(), String> {
        match self.values.keys().next() {
            None => Ok(()),
            Some(key) => Err(format!("unknown option --{key}")),
        }
    }
}

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

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_values_flags_and_reports_leftovers() {
        let mut a = Args::parse(args(&["--out", "dir", "--dtype=f32", "--chat", "--n", "7"]), &["chat"]).unwrap();
        assert_eq!(a.required("out").unwrap(), "dir");
        assert_eq!(a.take("dtype").unwrap().as_deref(), Some("f32"));
        assert!(a.flag("chat").unwrap());
        assert_eq!(a.parsed("missing", 3usize).unwrap(), 3);
        assert_eq!(a.parsed("n", 0usize).unwrap(), 7);
        a.finish().unwrap();

        let a = Args::parse(args(&["--typo", "x"]), &[]).unwrap();
        assert_eq!(a.finish().unwrap_err(), "unknown option --typo");
        assert!(Args::parse(args(&["stray"]), &[]).is_err());
        assert!(Args::parse(args(&["--out"]), &[]).unwrap_err().contains("needs a value"));
        assert!(Args::parse(args(&["--a", "1", "--a", "2"]), &[]).unwrap_err().contains("twice"));
        let mut a = Args::parse(args(&["--n", "x"]), &[]).unwrap();
        assert!(a.parsed("n", 0usize).unwrap_err().contains("cannot parse"));
    }

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
