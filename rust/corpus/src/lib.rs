//! kormo-corpus: corpus files as they are published, read as records or documents, for
//! tokenizer training and `prepare` alike.
//!
//! - `format`: which format a file is in (JSON lines, Parquet, HTML, text; gzip/zstd).
//! - `stream`: decompressing readers and line splitting.
//! - `records`: one JSON value per JSONL line or Parquet row (`parquet_rows`), streamed.
//! - `documents`: the text of each document, from any format.
//! - `paths`: the files a path names (Hugging Face dataset folders included), test dirs.
//! - `html`: plain text of HTML documents.
//! - `debian`: real Korean/English text from Debian's FAQ packages (tests, benchmarks).
//!
//! Both `prepare` (kormo-prep: text and chat sources) and `kormo-tokenizer train` read their
//! input through this crate; nothing else opens corpus files.
//!
//! Errors are [`MalformedInput`]s naming the file and line or row. One that is `fatal`
//! (unreadable, truncated or corrupt file, a Parquet file without the text column) ends
//! the file: callers stop there rather than keep a part of it. The others (a bad JSON
//! line, a non-string text field, invalid UTF-8) lose one record and reading goes on.

pub mod debian;
pub mod documents;
pub mod format;
pub mod html;
mod parquet_rows;
pub mod paths;
pub mod records;
pub mod stream;

use std::fmt;
use std::path::{Path, PathBuf};

/// Where in a file a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// The file as a whole.
    File,
    /// A 1-based line of a text or JSON-lines file (after decompression).
    Line(u64),
    /// A 1-based row of a Parquet file.
    Row(u64),
}

/// A file, line or row that could not be read as a record or document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedInput {
    pub file: PathBuf,
    pub location: Location,
    pub reason: String,
    /// Reading the file stopped here (the rest of it is unreadable).
    pub fatal: bool,
}

impl MalformedInput {
    /// A record that is skipped; reading goes on.
    pub fn new(file: &Path, location: Location, reason: String) -> MalformedInput {
        MalformedInput {
            file: file.to_owned(),
            location,
            reason,
            fatal: false,
        }
    }

    /// An error that ends the file.
    pub fn fatal(file: &Path, location: Location, reason: String) -> MalformedInput {
        MalformedInput {
            fatal: true,
            ..MalformedInput::new(file, location, reason)
        }
    }
}

impl fmt::Display for MalformedInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        match self.location {
            Location::File => write!(f, "{file}: {}", self.reason),
            Location::Line(n) => write!(f, "{file}:{n}: {}", self.reason),
            Location::Row(n) => write!(f, "{file}: row {n}: {}", self.reason),
        }
    }
}

impl std::error::Error for MalformedInput {}

/// Describes a JSON value's type for error messages ("a number", "null").
pub fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
