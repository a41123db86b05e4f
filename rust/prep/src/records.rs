//! JSON records of a file, one per item: the file-format layer under chat sources (crate::chat
//! takes parsed records and knows nothing of files). Today: JSON Lines (`*.jsonl`), one object
//! per line, blank lines skipped; another container format adds a variant of [`Records`].
//! A line that is not valid UTF-8 or JSON is an `Err` naming file:line, and reading goes on.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use kormo_tokenizer::documents::MalformedInput;
use serde_json::Value;

/// Iterator over the records of one file.
pub struct Records {
    path: PathBuf,
    /// None after a read error: a failing read would fail again.
    reader: Option<BufReader<File>>,
    line: u64,
    buf: Vec<u8>,
}

/// Opens `path` as a record source; fails (naming the file) when it cannot be opened or its
/// format holds no records.
pub fn json_records(path: &Path) -> Result<Records, String> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if !name.ends_with(".jsonl") {
        return Err(format!(
            "{}: chat sources are read from JSON Lines files (*.jsonl)",
            path.display()
        ));
    }
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Records {
        path: path.to_owned(),
        reader: Some(BufReader::with_capacity(1 << 20, file)),
        line: 0,
        buf: Vec::new(),
    })
}

impl Records {
    fn malformed(&self, reason: String) -> MalformedInput {
        MalformedInput {
            file: self.path.clone(),
            line: self.line,
            reason,
        }
    }
}

impl Iterator for Records {
    /// A record and its 1-based line.
    type Item = Result<(u64, Value), MalformedInput>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.buf.clear();
            let read = self.reader.as_mut()?.read_until(b'\n', &mut self.buf);
            match read {
                Ok(0) => return None,
                Ok(_) => self.line += 1,
                Err(e) => {
                    self.reader = None;
                    self.line += 1;
                    return Some(Err(self.malformed(format!("read error: {e}"))));
                }
            }
            let line = match std::str::from_utf8(&self.buf) {
                Ok(line) => line.trim(),
                Err(e) => return Some(Err(self.malformed(format!("invalid UTF-8: {e}")))),
            };
            if line.is_empty() {
                continue;
            }
            return Some(
                serde_json::from_str(line)
                    .map(|value| (self.line, value))
                    .map_err(|e| self.malformed(format!("invalid JSON: {e}"))),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kormo_tokenizer::documents::test_dir;

    #[test]
    fn records_with_bad_lines_named_and_skipped() {
        let dir = test_dir("records");
        let path = dir.join("a.jsonl");
        let mut bytes = b"{\"a\": 1}\n\n{oops\n".to_vec();
        bytes.extend_from_slice(b"\xff\n{\"b\": 2}\r\n");
        std::fs::write(&path, bytes).unwrap();
        let items: Vec<_> = json_records(&path).unwrap().collect();
        assert_eq!(items.len(), 4);
        assert_eq!(items[0].as_ref().unwrap(), &(1, serde_json::json!({"a": 1})));
        let bad = items[1].as_ref().unwrap_err();
        assert_eq!(bad.line, 3);
        assert!(bad.reason.contains("invalid JSON"));
        assert!(items[2].as_ref().unwrap_err().reason.contains("UTF-8"));
        assert_eq!(items[3].as_ref().unwrap(), &(5, serde_json::json!({"b": 2})));
        let err = json_records(&dir.join("a.parquet")).err().unwrap();
        assert!(err.contains("a.parquet") && err.contains("jsonl"), "{err}");
        assert!(json_records(&dir.join("missing.jsonl")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
