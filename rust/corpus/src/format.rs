//! Which format a corpus file is in, from its first bytes and its name.
//!
//! Compression comes from the content: gzip (`1f 8b`) and zstd (`28 b5 2f fd`) streams are
//! recognised whatever the file is called, and a name ending in `.gz` / `.zst` / `.zstd`
//! whose content is not that stream is refused (a mislabelled or corrupt download). The
//! layout comes from the name once the compression suffix is removed: `.jsonl`, `.ndjson`
//! and `.json` are JSON lines (a `.json` file holding one JSON array is refused when read),
//! `.html`/`.htm` one HTML document, `.parquet` a Parquet file; anything else is plain text.
//! A Parquet file is also recognised by content (`PAR1` at both ends) under any name.
//! Compressed Parquet is refused: Parquet compresses its pages itself.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One JSON value per line (records).
    JsonLines,
    /// One HTML document per file.
    Html,
    /// Plain UTF-8 text, documents separated by blank lines.
    Text,
    /// Apache Parquet: one record per row.
    Parquet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    pub layout: Layout,
    pub compression: Compression,
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const PARQUET_MAGIC: &[u8] = b"PAR1";

/// The format of `path`; the error is the reason only (callers name the file).
pub fn detect(path: &Path) -> Result<Format, String> {
    let mut file = File::open(path).map_err(|e| e.to_string())?;
    let mut head = [0u8; 4];
    let head_len = read_up_to(&mut file, &mut head).map_err(|e| e.to_string())?;
    let head = &head[..head_len];
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let (named_layout, named) = by_name(&name);
    let compression = if head.starts_with(GZIP_MAGIC) {
        Compression::Gzip
    } else if head.starts_with(ZSTD_MAGIC) {
        Compression::Zstd
    } else {
        Compression::None
    };
    if named != Compression::None && named != compression {
        let expected = if named == Compression::Gzip {
            "gzip"
        } else {
            "zstd"
        };
        return Err(format!(
            "named like {expected} but is not a {expected} stream (starts with {})",
            hex(head)
        ));
    }
    let named_parquet = named_layout == Some(Layout::Parquet);
    let layout = if named_parquet || (compression == Compression::None && is_parquet(&mut file, head)) {
        if compression != Compression::None {
            return Err("a compressed Parquet file: Parquet compresses its pages itself; decompress the file".into());
        }
        if !head.starts_with(PARQUET_MAGIC) {
            return Err(format!(
                "named .parquet but is not a Parquet file (starts with {})",
                hex(head)
            ));
        }
        Layout::Parquet
    } else {
        named_layout.unwrap_or(Layout::Text)
    };
    Ok(Format {
        layout,
        compression,
    })
}

/// The layout (`None`: no known extension) and compression a lowercase file name announces.
pub(crate) fn by_name(name: &str) -> (Option<Layout>, Compression) {
    let (stem, compression) = [
        (".gz", Compression::Gzip),
        (".zst", Compression::Zstd),
        (".zstd", Compression::Zstd),
    ]
    .iter()
    .find_map(|&(suffix, c)| name.strip_suffix(suffix).map(|stem| (stem, c)))
    .unwrap_or((name, Compression::None));
    let layout = [
        (".parquet", Layout::Parquet),
        (".jsonl", Layout::JsonLines),
        (".ndjson", Layout::JsonLines),
        (".json", Layout::JsonLines),
        (".html", Layout::Html),
        (".htm", Layout::Html),
    ]
    .iter()
    .find(|(suffix, _)| stem.ends_with(suffix))
    .map(|&(_, layout)| layout);
    (layout, compression)
}

/// `PAR1` at the start and at the end (the footer's magic).
fn is_parquet(file: &mut File, head: &[u8]) -> bool {
    if !head.starts_with(PARQUET_MAGIC) {
        return false;
    }
    let mut tail = [0u8; 4];
    file.seek(SeekFrom::End(-4)).is_ok()
        && file.read_exact(&mut tail).is_ok()
        && tail == PARQUET_MAGIC
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn hex(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "nothing: the file is empty".into();
    }
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kormo_testdeps::test_dir;

    fn format_of(dir: &Path, name: &str, bytes: &[u8]) -> Result<Format, String> {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        detect(&path)
    }

    #[test]
    fn content_decides_compression_and_name_decides_layout() {
        let dir = test_dir("format");
        let f = |layout, compression| Ok(Format {
            layout,
            compression,
        });
        let gz = [0x1f, 0x8b, 8, 0];
        let zst = [0x28, 0xb5, 0x2f, 0xfd, 0];
        assert_eq!(format_of(&dir, "a.jsonl", b"{}\n"), f(Layout::JsonLines, Compression::None));
        assert_eq!(format_of(&dir, "a.JSONL.GZ", &gz), f(Layout::JsonLines, Compression::Gzip));
        assert_eq!(format_of(&dir, "a.json.zst", &zst), f(Layout::JsonLines, Compression::Zstd));
        assert_eq!(format_of(&dir, "a.ndjson", &zst), f(Layout::JsonLines, Compression::Zstd));
        assert_eq!(format_of(&dir, "page.htm", b"<p>x"), f(Layout::Html, Compression::None));
        assert_eq!(format_of(&dir, "notes.txt.gz", &gz), f(Layout::Text, Compression::Gzip));
        assert_eq!(format_of(&dir, "README", b"PAR1 is"), f(Layout::Text, Compression::None));
        assert_eq!(format_of(&dir, "x.bin", b"PAR1....PAR1"), f(Layout::Parquet, Compression::None));
        assert_eq!(format_of(&dir, "empty.txt", b""), f(Layout::Text, Compression::None));
        assert_eq!(
            format_of(&dir, "a.jsonl.gz", b"{\"text\": 1}"),
            Err("named like gzip but is not a gzip stream (starts with 7b 22 74 65)".into())
        );
        assert_eq!(
            format_of(&dir, "b.jsonl.zst", b""),
            Err("named like zstd but is not a zstd stream (starts with nothing: the file is empty)".into())
        );
        assert!(format_of(&dir, "t.parquet", b"<html>").unwrap_err().contains("not a Parquet file"));
        assert!(format_of(&dir, "t.parquet.gz", &gz).unwrap_err().contains("compressed Parquet"));
        assert!(detect(&dir.join("missing.jsonl")).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
