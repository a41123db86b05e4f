//! Real-language text for tests and benchmarks, taken from HTML documentation of Debian
//! packages (nothing third-party is committed): `debian-faq` (English) and `debian-faq-ko`
//! (Korean), which the Bazel build unpacks for the tests (kormo_testdeps::debian_faq names the
//! folder), or any directory of HTML files.

use std::path::{Path, PathBuf};

use crate::html::html_to_text;

/// Files in `dir` (not recursive) whose names end with `suffix`, sorted.
pub fn files_with_suffix(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(suffix)))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Plain text of each HTML file (unreadable files are skipped).
pub fn html_files_text(files: &[PathBuf]) -> Vec<String> {
    files
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|h| html_to_text(&h))
        .collect()
}

/// English and Korean Debian FAQ documents: `dir`'s `*.en.html` and its `ko/*.ko.html`.
pub fn debian_faq(dir: &Path) -> (Vec<String>, Vec<String>) {
    let english = html_files_text(&files_with_suffix(dir, ".en.html"));
    let korean = html_files_text(&files_with_suffix(&dir.join("ko"), ".ko.html"));
    (english, korean)
}
