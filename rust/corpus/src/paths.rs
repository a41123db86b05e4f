//! The files a corpus path names, and scratch directories for tests.

use std::path::{Path, PathBuf};

use crate::format::Layout;

/// The files named by `path`: itself, or the files below a directory (recursively, sorted).
/// Hidden entries (`.git`, `.gitattributes`, `.cache`) are skipped. A directory holding data
/// files (Parquet or JSON lines, compressed or not), as a Hugging Face dataset folder does
/// (`data/*.parquet` beside `README.md`), yields only those: the documentation and metadata
/// next to them are not corpus.
pub fn expand_path(path: &Path) -> Result<Vec<PathBuf>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    walk(path, &mut files)?;
    if files.iter().any(|f| is_data_file(f)) {
        files.retain(|f| is_data_file(f));
    }
    Ok(files)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    entries.sort();
    for e in entries {
        let meta = std::fs::metadata(&e).map_err(|err| format!("{}: {err}", e.display()))?;
        if meta.is_dir() {
            walk(&e, out)?;
        } else {
            out.push(e);
        }
    }
    Ok(())
}

/// Named as a Parquet or JSON-lines file (with or without .gz/.zst).
fn is_data_file(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    matches!(
        crate::format::by_name(&name).0,
        Some(Layout::Parquet | Layout::JsonLines)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kormo_testdeps::test_dir;

    #[test]
    fn dataset_folders_yield_their_data_files() {
        let dir = test_dir("paths");
        let ds = dir.join("dataset");
        std::fs::create_dir_all(ds.join("data")).unwrap();
        std::fs::create_dir_all(ds.join(".cache/x")).unwrap();
        for f in ["README.md", ".gitattributes", "data/train-00001.parquet", "data/train-00000.parquet", ".cache/x/y.parquet"] {
            std::fs::write(ds.join(f), b"").unwrap();
        }
        assert_eq!(
            expand_path(&ds).unwrap(),
            vec![ds.join("data/train-00000.parquet"), ds.join("data/train-00001.parquet")]
        );
        let plain = dir.join("plain");
        std::fs::create_dir_all(plain.join("sub")).unwrap();
        for f in ["b.txt", "a.html", "sub/c.txt", ".hidden.txt"] {
            std::fs::write(plain.join(f), b"").unwrap();
        }
        assert_eq!(
            expand_path(&plain).unwrap(),
            vec![plain.join("a.html"), plain.join("b.txt"), plain.join("sub/c.txt")]
        );
        assert_eq!(expand_path(&plain.join("b.txt")).unwrap(), vec![plain.join("b.txt")]);
        assert!(expand_path(&dir.join("missing")).unwrap_err().contains("missing"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
