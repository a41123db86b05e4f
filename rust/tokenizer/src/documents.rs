//! Reading documents from corpus files, shared by tokenizer training and kormo-prep.
//!
//! Formats, chosen by file name: `*.jsonl` holds one JSON object per line with the text in a
//! configurable field; `*.html`/`*.htm` is one document (tags stripped, `corpus`); any other
//! file is plain UTF-8 text whose documents are separated by blank lines (lines inside a
//! document stay its paragraphs). Files are streamed line by line, so memory is bounded by
//! the largest document. A malformed line (bad JSON, missing or non-string field, invalid
//! UTF-8) is returned as an `Err` naming file:line, and reading continues with the next
//! document (in plain text, the whole document holding the bad line is dropped).

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// A line or file that could not be read as a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedInput {
    pub file: PathBuf,
    /// 1-based line number; 0 for the whole file.
    pub line: u64,
    pub reason: String,
}

impl fmt::Display for MalformedInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.reason)
    }
}

impl std::error::Error for MalformedInput {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Jsonl,
    Html,
    Text,
}

/// Iterator over the documents of one file.
pub struct Documents {
    path: PathBuf,
    format: Format,
    text_field: String,
    reader: Option<BufReader<File>>,
    line: u64,
    buf: Vec<u8>,
    open_error: Option<String>,
}

/// Opens `path` for reading documents; `text_field` names the JSONL text field. An open
/// error is reported as the first item.
pub fn read_documents(path: &Path, text_field: &str) -> Documents {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let format = if name.ends_with(".jsonl") {
        Format::Jsonl
    } else if name.ends_with(".html") || name.ends_with(".htm") {
        Format::Html
    } else {
        Format::Text
    };
    let (reader, open_error) = match File::open(path) {
        Ok(f) => (Some(BufReader::with_capacity(1 << 20, f)), None),
        Err(e) => (None, Some(e.to_string())),
    };
    Documents {
        path: path.to_owned(),
        format,
        text_field: text_field.to_owned(),
        reader,
        line: 0,
        buf: Vec::new(),
        open_error,
    }
}

impl Documents {
    fn malformed(&self, line: u64, reason: String) -> MalformedInput {
        MalformedInput {
            file: self.path.clone(),
            line,
            reason,
        }
    }

    /// Next raw line without its terminator; `None` at end of file.
    fn next_line(&mut self) -> Option<Result<String, MalformedInput>> {
        let reader = self.reader.as_mut()?;
        self.buf.clear();
        match reader.read_until(b'\n', &mut self.buf) {
            Ok(0) => None,
            Ok(_) => {
                self.line += 1;
                while matches!(self.buf.last(), Some(b'\n' | b'\r')) {
                    self.buf.pop();
                }
                match std::str::from_utf8(&self.buf) {
                    Ok(s) => Some(Ok(s.to_owned())),
                    Err(e) => Some(Err(self.malformed(self.line, format!("invalid UTF-8: {e}")))),
                }
            }
            Err(e) => {
                self.reader = None;
                Some(Err(
                    self.malformed(self.line + 1, format!("read error: {e}"))
                ))
            }
        }
    }
}

impl Iterator for Documents {
    type Item = Result<String, MalformedInput>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.open_error.take() {
            return Some(Err(self.malformed(0, e)));
        }
        match self.format {
            Format::Html => {
                let mut reader = self.reader.take()?;
                let mut bytes = Vec::new();
                let result = std::io::Read::read_to_end(&mut reader, &mut bytes)
                    .map_err(|e| e.to_string())
                    .and_then(|_| {
                        String::from_utf8(bytes).map_err(|e| format!("invalid UTF-8: {e}"))
                    });
                Some(
                    result
                        .map(|html| crate::corpus::html_to_text(&html))
                        .map_err(|e| self.malformed(0, e)),
                )
            }
            Format::Jsonl => {
                loop {
                    let line = match self.next_line()? {
                        Ok(l) => l,
                        Err(e) => return Some(Err(e)),
                    };
                    if line.trim().is_empty() {
                        continue;
                    }
                    let parsed = serde_json::from_str::<serde_json::Value>(&line);
                    return Some(match parsed {
                        Err(e) => Err(self.malformed(self.line, format!("invalid JSON: {e}"))),
                        Ok(v) => match v.get(&self.text_field) {
                            Some(serde_json::Value::String(s)) => Ok(s.clone()),
                            Some(other) => Err(self.malformed(
                                self.line,
                                format!(
                                    "field {:?} is not a string: {}",
                                    self.text_field,
                                    kind(other)
                                ),
                            )),
                            None => Err(self
                                .malformed(self.line, format!("no field {:?}", self.text_field))),
                        },
                    });
                }
            }
            Format::Text => {
                let mut doc = String::new();
                loop {
                    match self.next_line() {
                        None => break,
                        Some(Err(e)) => {
                            // The document with the bad line is dropped whole: skip to its end.
                            while let Some(next) = self.next_line() {
                                if next.is_ok_and(|l| l.trim().is_empty()) {
                                    break;
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
        }
    }
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The files named by `path`: itself, or every file below it (recursively, sorted).
pub fn expand_path(path: &Path) -> Result<Vec<PathBuf>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    let mut out = Vec::new();
    for e in entries {
        out.extend(expand_path(&e)?);
    }
    Ok(out)
}

/// A unique empty directory for a test: under $TEST_TMPDIR (Bazel) or the system temp dir.
pub fn test_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("TEST_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = base.join(format!("kormo-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating a test directory");
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_jsonl_text_and_reports_malformed_lines() {
        let dir = test_dir("documents");
        let jsonl = dir.join("a.jsonl");
        std::fs::write(&jsonl, "{\"text\":\"one\"}\n\n{\"body\":\"x\"}\nnot json\n{\"text\":3}\n{\"text\":\"two\\nlines\"}\n").unwrap();
        let got: Vec<_> = read_documents(&jsonl, "text").collect();
        assert_eq!(got.len(), 5);
        assert_eq!(got[0], Ok("one".to_string()));
        let e = got[1].as_ref().unwrap_err();
        assert_eq!((e.line, e.reason.as_str()), (3, "no field \"text\""));
        assert!(got[2]
            .as_ref()
            .unwrap_err()
            .to_string()
            .ends_with("a.jsonl:4: invalid JSON: expected ident at line 1 column 2"));
        assert!(got[3].as_ref().unwrap_err().reason.contains("a number"));
        assert_eq!(got[4], Ok("two\nlines".to_string()));

        let txt = dir.join("b.txt");
        std::fs::write(&txt, b"p1\np2\n\n\n\ndoc two\n\xff\nsame doc\n\nafter\n").unwrap();
        let got: Vec<_> = read_documents(&txt, "text").collect();
        assert_eq!(got[0], Ok("p1\np2\n".to_string()));
        assert_eq!(got[1].as_ref().unwrap_err().line, 7);
        assert_eq!(got[2], Ok("after\n".to_string()));
        assert_eq!(got.len(), 3);
        let missing: Vec<_> = read_documents(&dir.join("nope.txt"), "text").collect();
        assert_eq!(missing.len(), 1);
        assert!(missing[0]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("nope.txt:0:"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
