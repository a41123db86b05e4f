//! The text documents of a corpus file, in any format `format` recognises: a string field
//! (`text_field`, default `text`) of each JSON-lines record or Parquet row, one document per
//! HTML file (tags stripped, `html`), or blank-line separated documents of plain text (lines
//! inside a document stay its paragraphs). Compressed files are decompressed as they are
//! read; nothing is held in memory beyond the current document (and, for Parquet, a few
//! pages). A bad record (invalid JSON, a missing, null or non-string field, invalid UTF-8)
//! is an `Err` and reading goes on with the next document (in plain text, the whole
//! document holding the bad line is dropped); a fatal `Err` (see the crate docs) ends it.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::format::{self, Layout};
use crate::parquet_rows::{self, ParquetRows};
use crate::records::Records;
use crate::stream::{self, Lines};
use crate::{json_kind, Location, MalformedInput};

/// Iterator over the documents of one file.
pub struct Documents {
    path: PathBuf,
    text_field: String,
    source: Source,
}

enum Source {
    JsonLines(Records),
    Parquet { rows: ParquetRows, row: u64 },
    Text(Lines),
    Html(Lines),
    Failed(Option<MalformedInput>),
}

/// Opens `path` for reading documents; `text_field` names the JSON field or Parquet column
/// holding the text. A file that cannot be opened is reported as the first item.
pub fn read_documents(path: &Path, text_field: &str) -> Documents {
    let fatal = |reason: String| Source::Failed(Some(MalformedInput::fatal(path, Location::File, reason)));
    let source = match format::detect(path) {
        Err(reason) => fatal(reason),
        Ok(format) => match format.layout {
            Layout::JsonLines => Source::JsonLines(Records::open(path, format, &[])),
            Layout::Parquet => match parquet_rows::open_text(path, text_field) {
                Ok(rows) => Source::Parquet { rows, row: 0 },
                Err(reason) => fatal(reason),
            },
            Layout::Text | Layout::Html => match stream::open(path, format.compression) {
                Err(e) => fatal(e.to_string()),
                Ok(reader) if format.layout == Layout::Text => Source::Text(Lines::new(path, reader)),
                Ok(reader) => Source::Html(Lines::new(path, reader)),
            },
        },
    };
    Documents {
        path: path.to_owned(),
        text_field: text_field.to_owned(),
        source,
    }
}

impl Iterator for Documents {
    type Item = Result<String, MalformedInput>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.source {
            Source::Failed(e) => e.take().map(Err),
            Source::JsonLines(records) => {
                let record = match records.next()? {
                    Ok(r) => r,
                    Err(e) => return Some(Err(e)),
                };
                let field = &self.text_field;
                let reason = match record.value {
                    serde_json::Value::Object(mut map) => match map.remove(field) {
                        Some(serde_json::Value::String(text)) => return Some(Ok(text)),
                        Some(other) => {
                            format!("field {field:?} is not a string: {}", json_kind(&other))
                        }
                        None => format!("no field {field:?}"),
                    },
                    other => format!("not a JSON object but {}", json_kind(&other)),
                };
                Some(Err(MalformedInput::new(&self.path, record.location, reason)))
            }
            Source::Parquet { rows, row } => {
                *row += 1;
                let location = Location::Row(*row);
                match rows.next()? {
                    Ok(values) => Some(parquet_rows::text_of(values).ok_or_else(|| {
                        let reason = format!("field {:?} is not a string: null", self.text_field);
                        MalformedInput::new(&self.path, location, reason)
                    })),
                    Err(reason) => {
                        self.source = Source::Failed(None);
                        Some(Err(MalformedInput::fatal(&self.path, location, reason)))
                    }
                }
            }
            Source::Html(lines) => {
                let mut reader = lines.take_reader()?;
                let mut bytes = Vec::new();
                let result = match reader.read_to_end(&mut bytes) {
                    Err(e) => Err(MalformedInput::fatal(
                        &self.path,
                        Location::File,
                        format!("read error (truncated or corrupt file?): {e}"),
                    )),
                    Ok(_) => String::from_utf8(bytes)
                        .map(|html| crate::html::html_to_text(&html))
                        .map_err(|e| {
                            MalformedInput::new(
                                &self.path,
                                Location::File,
                                format!("invalid UTF-8: {e}"),
                            )
                        }),
                };
                Some(result)
            }
            Source::Text(lines) => next_text_document(lines),
        }
    }
}

/// The next blank-line separated document; a document holding an invalid line is dropped
/// whole (skipped to its end) and reported.
fn next_text_document(lines: &mut Lines) -> Option<Result<String, MalformedInput>> {
    let mut doc = String::new();
    loop {
        match lines.next() {
            None => break,
            Some(Err(e)) if e.fatal => return Some(Err(e)),
            Some(Err(e)) => {
                for next in lines.by_ref() {
                    match next {
                        Ok(l) if l.trim().is_empty() => break,
                        Err(fatal) if fatal.fatal => return Some(Err(fatal)),
                        _ => {}
                    }
                }
                return Some(Err(e));
            }
            Some(Ok(line)) if line.trim().is_empty() => {
                if !doc.is_empty() {
                    break;
                }
            }
            Some(Ok(line)) => {
                doc.push_str(&line);
                doc.push('\n');
            }
        }
    }
    (!doc.is_empty()).then_some(Ok(doc))
}
