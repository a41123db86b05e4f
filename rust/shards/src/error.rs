//! The one error type of the crate.
//!
//! Every error carries the path of the file it concerns (shard, temp file or manifest) plus a
//! [`ShardErrorKind`] saying what is wrong, so `Display` always reads `<file>: <problem>`.
//! The kinds are public and specific so callers (and tests) can tell corruption from misuse.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Error from writing, opening, reading or cross-checking shards and manifests.
#[derive(Debug)]
pub struct ShardError {
    /// The file the problem was found in.
    pub path: PathBuf,
    /// What is wrong.
    pub kind: ShardErrorKind,
}

/// What went wrong; see [`ShardError`].
#[derive(Debug)]
#[non_exhaustive]
pub enum ShardErrorKind {
    /// An operating-system call failed; `op` says which ("open", "write", "rename", ...).
    Io { op: &'static str, source: io::Error },
    /// The caller passed something the format cannot hold (writer input, bad index, ...).
    InvalidArgument(String),
    /// The file is not the size its header implies (truncated, extended, or header too short).
    SizeMismatch { expected: u64, actual: u64 },
    /// The first 8 bytes are not [`crate::format::MAGIC`].
    BadMagic { found: [u8; 8] },
    /// The format version is not one this build reads.
    UnsupportedVersion { found: u32, supported: u32 },
    /// A header field is invalid (flags, counts, lengths, reserved bytes, padding).
    BadHeader(String),
    /// A stored CRC32 does not match the data; `section` names the section or token block.
    ChecksumMismatch {
        section: String,
        stored: u32,
        computed: u32,
    },
    /// A token id is not below the vocabulary size.
    TokenOutOfVocab {
        token: u32,
        vocab_size: u32,
        global_offset: u64,
        document: usize,
        position: u64,
    },
    /// The document offsets table is not 0, monotone, ending at the token count.
    BadOffsets(String),
    /// A loss-mask span (or its per-document offsets) is inconsistent.
    BadMaskSpans(String),
    /// The manifest file itself is malformed.
    BadManifest(String),
    /// The manifest and a shard file disagree.
    ManifestMismatch(String),
}

impl ShardError {
    pub(crate) fn new(path: &Path, kind: ShardErrorKind) -> Self {
        ShardError {
            path: path.to_path_buf(),
            kind,
        }
    }

    pub(crate) fn io(path: &Path, op: &'static str, source: io::Error) -> Self {
        Self::new(path, ShardErrorKind::Io { op, source })
    }
}

impl fmt::Display for ShardErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ShardErrorKind::*;
        match self {
            Io { op, source } => write!(f, "{op} failed: {source}"),
            InvalidArgument(msg) => write!(f, "invalid argument: {msg}"),
            SizeMismatch { expected, actual } => {
                write!(f, "file is {actual} bytes but its header implies {expected} (truncated or corrupt)")
            }
            BadMagic { found } => write!(f, "not a kormo token shard (magic bytes {found:02x?})"),
            UnsupportedVersion { found, supported } => {
                write!(f, "unsupported format version {found} (this build reads version {supported})")
            }
            BadHeader(msg) => write!(f, "bad header: {msg}"),
            ChecksumMismatch { section, stored, computed } => write!(
                f,
                "checksum mismatch in {section}: stored crc32 {stored:#010x}, computed {computed:#010x}"
            ),
            TokenOutOfVocab { token, vocab_size, global_offset, document, position } => write!(
                f,
                "token id {token} >= vocab size {vocab_size} at global token offset {global_offset} \
                 (document {document}, position {position})"
            ),
            BadOffsets(msg) => write!(f, "bad document offsets: {msg}"),
            BadMaskSpans(msg) => write!(f, "bad loss-mask spans: {msg}"),
            BadManifest(msg) => write!(f, "bad manifest: {msg}"),
            ManifestMismatch(msg) => write!(f, "manifest and shard disagree: {msg}"),
        }
    }
}

impl fmt::Display for ShardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.kind)
    }
}

impl std::error::Error for ShardError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ShardErrorKind::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
