//! Dataset manifest: a JSON file listing the shards of a dataset.
//!
//! ```json
//! { "format": "kormo-token-shards", "version": 1, "vocab_size": 125184,
//!   "tokenizer_fingerprint": "...", "num_documents": 3, "num_tokens": 10,
//!   "shards": [ { "file": "shard-00000.kts", "num_documents": 3, "num_tokens": 10,
//!                 "num_mask_spans": 1, "file_bytes": 280, "header_crc32": 1234 } ] }
//! ```
//!
//! Shard paths are relative to a base directory given when opening (normally the manifest's
//! own directory). Each is canonicalised before use: on load lexically (`./a.kts` is `a.kts`,
//! `x/../a.kts` too), at open through the filesystem (symlinks resolved), and two entries that
//! name the same file are an error, as is a file outside the base directory unless the manifest
//! sets `"allow_outside_dir": true`. The per-shard `header_crc32` covers the whole file transitively (the header
//! holds every section's CRC), so comparing it at open detects a swapped or rewritten shard
//! without rereading the data. Totals are stored for people reading the file and checked on load.

use crate::atomic;
use crate::error::{ShardError, ShardErrorKind};
use crate::reader::Shard;
use crate::{ShardMeta, ShardSummary};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

/// Value of the manifest's `format` field.
pub const MANIFEST_FORMAT: &str = "kormo-token-shards";
/// Manifest version written by this build; the only one it reads.
pub const MANIFEST_VERSION: u32 = 1;

/// The shards of one dataset, all from the same tokenizer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub vocab_size: u32,
    pub tokenizer_fingerprint: String,
    /// Sum over `shards`.
    pub num_documents: u64,
    /// Sum over `shards`.
    pub num_tokens: u64,
    pub shards: Vec<ManifestEntry>,
    /// Shard files may lie outside the base directory (through `..` or a symlink). Off unless
    /// set, so a manifest cannot pull in another folder's shards by accident.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_outside_dir: bool,
}

/// One shard as recorded in the manifest (copied from its [`ShardSummary`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestEntry {
    /// Path relative to the base directory.
    pub file: String,
    pub num_documents: u64,
    pub num_tokens: u64,
    pub num_mask_spans: u64,
    pub file_bytes: u64,
    pub header_crc32: u32,
}

impl Manifest {
    /// An empty manifest for shards with this vocabulary and tokenizer.
    pub fn new(meta: ShardMeta) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT.to_owned(),
            version: MANIFEST_VERSION,
            vocab_size: meta.vocab_size,
            tokenizer_fingerprint: meta.tokenizer_fingerprint,
            num_documents: 0,
            num_tokens: 0,
            shards: Vec::new(),
            allow_outside_dir: false,
        }
    }

    /// Vocabulary size and tokenizer fingerprint every shard must have.
    pub fn meta(&self) -> ShardMeta {
        ShardMeta {
            vocab_size: self.vocab_size,
            tokenizer_fingerprint: self.tokenizer_fingerprint.clone(),
        }
    }

    /// Records a finished shard under `file` (relative to the base directory). Fails if the
    /// shard's vocabulary or tokenizer differs from the manifest's or `file` is already listed.
    pub fn push(
        &mut self,
        file: impl Into<String>,
        summary: &ShardSummary,
    ) -> Result<(), ShardError> {
        let file = file.into();
        let mismatch = |msg: String| {
            Err(ShardError::new(
                &summary.path,
                ShardErrorKind::ManifestMismatch(msg),
            ))
        };
        if summary.meta != self.meta() {
            return mismatch(format!(
                "shard has {:?}, manifest has {:?}",
                summary.meta,
                self.meta()
            ));
        }
        let normal = normalise(&file);
        if let Some(listed) = self.shards.iter().find(|e| normalise(&e.file) == normal) {
            return mismatch(format!(
                "{file:?} names the same file as {:?}, already listed in the manifest",
                listed.file
            ));
        }
        self.shards.push(ManifestEntry {
            file,
            num_documents: summary.num_documents,
            num_tokens: summary.num_tokens,
            num_mask_spans: summary.num_mask_spans,
            file_bytes: summary.file_bytes,
            header_crc32: summary.header_crc32,
        });
        self.num_documents += summary.num_documents;
        self.num_tokens += summary.num_tokens;
        Ok(())
    }

    /// Reads and validates a manifest (format, version, non-empty fingerprint, relative unique
    /// file names, totals equal to the sums).
    pub fn load(path: impl AsRef<Path>) -> Result<Manifest, ShardError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ShardError::io(path, "read", e))?;
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| ShardError::new(path, ShardErrorKind::BadManifest(e.to_string())))?;
        manifest
            .validate()
            .map_err(|kind| ShardError::new(path, kind))?;
        Ok(manifest)
    }

    fn validate(&self) -> Result<(), ShardErrorKind> {
        let bad = |msg: String| Err(ShardErrorKind::BadManifest(msg));
        if self.format != MANIFEST_FORMAT {
            return bad(format!(
                "format is {:?}, expected {MANIFEST_FORMAT:?}",
                self.format
            ));
        }
        if self.version != MANIFEST_VERSION {
            return Err(ShardErrorKind::UnsupportedVersion {
                found: self.version,
                supported: MANIFEST_VERSION,
            });
        }
        if self.vocab_size == 0 {
            return bad("vocab_size is 0".into());
        }
        if self.tokenizer_fingerprint.is_empty() {
            return bad("tokenizer_fingerprint is empty".into());
        }
        let mut seen: HashMap<PathBuf, usize> = HashMap::new();
        for (i, entry) in self.shards.iter().enumerate() {
            if entry.file.is_empty() || Path::new(&entry.file).is_absolute() {
                return bad(format!(
                    "shards[{i}].file {:?} must be a non-empty relative path",
                    entry.file
                ));
            }
            let Some(normal) = normalise(&entry.file) else {
                return bad(format!(
                    "shards[{i}].file {:?} does not name a file",
                    entry.file
                ));
            };
            if normal.starts_with("..") && !self.allow_outside_dir {
                return bad(format!(
                    "shards[{i}].file {:?} is outside the dataset folder; set \"allow_outside_dir\": true in the manifest to allow that",
                    entry.file
                ));
            }
            if let Some(first) = seen.insert(normal, i) {
                return bad(duplicate_message(&self.shards, first, i));
            }
        }
        let documents = self
            .shards
            .iter()
            .try_fold(0u64, |sum, e| sum.checked_add(e.num_documents));
        let tokens = self
            .shards
            .iter()
            .try_fold(0u64, |sum, e| sum.checked_add(e.num_tokens));
        if documents != Some(self.num_documents) || tokens != Some(self.num_tokens) {
            return bad(format!(
                "totals (documents {}, tokens {}) differ from the sums over shards ({documents:?}, {tokens:?})",
                self.num_documents, self.num_tokens
            ));
        }
        Ok(())
    }

    /// Writes the manifest as pretty JSON, atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), ShardError> {
        let path = path.as_ref();
        self.validate()
            .map_err(|kind| ShardError::new(path, kind))?;
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| ShardError::new(path, ShardErrorKind::BadManifest(e.to_string())))?;
        let temp = atomic::temp_path_for(path).ok_or_else(|| {
            ShardError::new(
                path,
                ShardErrorKind::InvalidArgument("path has no file name".into()),
            )
        })?;
        let written = File::create(&temp).and_then(|mut file| {
            file.write_all(json.as_bytes())?;
            file.write_all(b"\n")?;
            Ok(file)
        });
        let result = written
            .map_err(|e| ShardError::io(&temp, "write", e))
            .and_then(|file| atomic::publish(file, &temp, path));
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        result
    }

    /// Opens shard `index` (path relative to `base_dir`) with full verification and checks it
    /// against its manifest entry.
    pub fn open_shard(
        &self,
        base_dir: impl AsRef<Path>,
        index: usize,
    ) -> Result<Shard, ShardError> {
        let base_dir = base_dir.as_ref();
        let Some(entry) = self.shards.get(index) else {
            return Err(ShardError::new(
                base_dir,
                ShardErrorKind::InvalidArgument(format!(
                    "manifest has {} shards, no shard {index}",
                    self.shards.len()
                )),
            ));
        };
        self.resolve(base_dir, index)?;
        let shard = Shard::open(base_dir.join(&entry.file))?;
        self.check(index, &shard)?;
        Ok(shard)
    }

    /// Opens every shard, in manifest order (see [`open_shard`](Self::open_shard)); two
    /// entries that resolve to the same file (a symlink, say) are an error.
    pub fn open_shards(&self, base_dir: impl AsRef<Path>) -> Result<Vec<Shard>, ShardError> {
        let base_dir = base_dir.as_ref();
        let mut seen: HashMap<PathBuf, usize> = HashMap::new();
        for index in 0..self.shards.len() {
            if let Some(first) = seen.insert(self.resolve(base_dir, index)?, index) {
                return Err(ShardError::new(
                    &base_dir.join(&self.shards[index].file),
                    ShardErrorKind::BadManifest(duplicate_message(&self.shards, first, index)),
                ));
            }
        }
        (0..self.shards.len())
            .map(|i| self.open_shard(base_dir, i))
            .collect()
    }

    /// The canonical path of shard `index` under `base_dir` (symlinks resolved), refused when
    /// it lies outside the canonical base directory and `allow_outside_dir` is not set.
    fn resolve(&self, base_dir: &Path, index: usize) -> Result<PathBuf, ShardError> {
        let path = base_dir.join(&self.shards[index].file);
        let resolved = path
            .canonicalize()
            .map_err(|e| ShardError::io(&path, "open", e))?;
        let base = base_dir
            .canonicalize()
            .map_err(|e| ShardError::io(base_dir, "open", e))?;
        if !self.allow_outside_dir && !resolved.starts_with(&base) {
            return Err(ShardError::new(
                &path,
                ShardErrorKind::BadManifest(format!(
                    "shards[{index}].file {:?} resolves to {}, outside the dataset folder {}; set \"allow_outside_dir\": true in the manifest to allow that",
                    self.shards[index].file,
                    resolved.display(),
                    base.display()
                )),
            ));
        }
        Ok(resolved)
    }

    /// Checks an opened shard against manifest entry `index`: vocabulary, tokenizer, counts,
    /// size and header CRC. Useful after `Shard::open_with(.., StructureOnly)`.
    pub fn check(&self, index: usize, shard: &Shard) -> Result<(), ShardError> {
        let mismatch = |msg: String| {
            Err(ShardError::new(
                shard.path(),
                ShardErrorKind::ManifestMismatch(msg),
            ))
        };
        let Some(entry) = self.shards.get(index) else {
            return mismatch(format!(
                "manifest has {} shards, no shard {index}",
                self.shards.len()
            ));
        };
        if shard.meta().vocab_size != self.vocab_size {
            return mismatch(format!(
                "vocab size: manifest {}, file {}",
                self.vocab_size,
                shard.meta().vocab_size
            ));
        }
        if shard.meta().tokenizer_fingerprint != self.tokenizer_fingerprint {
            return mismatch(format!(
                "tokenizer fingerprint: manifest {:?}, file {:?}",
                self.tokenizer_fingerprint,
                shard.meta().tokenizer_fingerprint
            ));
        }
        let pairs = [
            (
                "document count",
                entry.num_documents,
                shard.num_documents() as u64,
            ),
            ("token count", entry.num_tokens, shard.num_tokens()),
            (
                "mask span count",
                entry.num_mask_spans,
                shard.num_mask_spans(),
            ),
            ("file size", entry.file_bytes, shard.file_bytes()),
            (
                "header crc32",
                entry.header_crc32.into(),
                shard.header_crc32().into(),
            ),
        ];
        for (what, listed, actual) in pairs {
            if listed != actual {
                return mismatch(format!("{what}: manifest {listed}, file {actual}"));
            }
        }
        Ok(())
    }
}

/// `file` with `.` removed and `name/..` folded, lexically (no filesystem access); a path that
/// climbs out of its base keeps its leading `..`. None for a path naming no file (`.`, `a/..`).
fn normalise(file: &str) -> Option<PathBuf> {
    let mut parts: Vec<Component> = Vec::new();
    for component in Path::new(file).components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => match parts.last() {
                Some(Component::Normal(_)) => {
                    parts.pop();
                }
                _ => parts.push(component),
            },
            other => parts.push(other),
        }
    }
    matches!(parts.last(), Some(Component::Normal(_))).then(|| parts.iter().collect())
}

fn duplicate_message(shards: &[ManifestEntry], first: usize, second: usize) -> String {
    format!(
        "shards[{second}].file {:?} is the same file as shards[{first}].file {:?} (its documents would be read twice)",
        shards[second].file, shards[first].file
    )
}
