//! Records of a file: one JSON value per line of a JSON-lines file (plain, gzip or zstd) or
//! per row of a Parquet file (an object of its columns, lists and structs nested as JSON),
//! streamed. This is the layer every reader of structured corpora builds on: text documents
//! (`documents`), chat conversations, anything with fields.

use std::path::{Path, PathBuf};

use crate::format::{self, Format, Layout};
use crate::parquet_rows::{self, ParquetRows};
use crate::stream::{self, Lines};
use crate::{Location, MalformedInput};

/// One record and where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub location: Location,
    pub value: serde_json::Value,
}

/// Iterator over the records of one file. Errors name file and line/row; after a fatal one
/// the iterator ends.
pub struct Records {
    path: PathBuf,
    source: Source,
}

enum Source {
    Lines { lines: Lines, first: bool },
    Parquet { rows: ParquetRows, row: u64 },
    Failed(Option<MalformedInput>),
}

/// Records of a JSON-lines or Parquet file; `columns` selects Parquet's top-level columns
/// (all if empty; a missing one is a fatal error). Other formats give a fatal error.
pub fn read_records(path: &Path, columns: &[&str]) -> Records {
    match format::detect(path) {
        Ok(format) => Records::open(path, format, columns),
        Err(reason) => Records::failed(path, reason),
    }
}

impl Records {
    /// Records of `path` in a known `format`.
    pub(crate) fn open(path: &Path, format: Format, columns: &[&str]) -> Records {
        let source = match format.layout {
            Layout::JsonLines => match stream::open(path, format.compression) {
                Ok(reader) => Source::Lines {
                    lines: Lines::new(path, reader),
                    first: true,
                },
                Err(e) => return Records::failed(path, e.to_string()),
            },
            Layout::Parquet => match parquet_rows::open(path, columns) {
                Ok(rows) => Source::Parquet { rows, row: 0 },
                Err(reason) => return Records::failed(path, reason),
            },
            Layout::Html | Layout::Text => {
                return Records::failed(
                    path,
                    "holds no records: JSON lines (.jsonl[.gz|.zst]) or Parquet expected".into(),
                )
            }
        };
        Records {
            path: path.to_owned(),
            source,
        }
    }

    fn failed(path: &Path, reason: String) -> Records {
        Records {
            path: path.to_owned(),
            source: Source::Failed(Some(MalformedInput::fatal(path, Location::File, reason))),
        }
    }
}

impl Iterator for Records {
    type Item = Result<Record, MalformedInput>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.source {
            Source::Failed(e) => e.take().map(Err),
            Source::Parquet { rows, row } => {
                *row += 1;
                let location = Location::Row(*row);
                match rows.next()? {
                    Ok(row) => Some(Ok(Record { location, value: row.to_json_value() })),
                    Err(reason) => {
                        let e = MalformedInput::fatal(&self.path, location, reason);
                        self.source = Source::Failed(None);
                        Some(Err(e))
                    }
                }
            }
            Source::Lines { lines, first } => loop {
                let line = match lines.next()? {
                    Ok(l) => l,
                    Err(e) => return Some(Err(e)),
                };
                if line.trim().is_empty() {
                    continue;
                }
                let location = Location::Line(lines.line());
                let was_first = std::mem::replace(first, false);
                return Some(match serde_json::from_str(&line) {
                    Ok(value) => Ok(Record { location, value }),
                    Err(e) if was_first && matches!(line.trim(), "[" | "{") => {
                        let e = MalformedInput::fatal(
                            &self.path,
                            location,
                            format!("not JSON lines (one JSON value per line) but one JSON document spread over lines: {e}"),
                        );
                        self.source = Source::Failed(None);
                        Err(e)
                    }
                    Err(e) => Err(MalformedInput::new(
                        &self.path,
                        location,
                        format!("invalid JSON: {e}"),
                    )),
                });
            },
        }
    }
}
