//! `prepare dedup`: the BFF dedup stage alone (crate::dedup, old-both), without filters or a
//! tokenizer, over the sources `prepare run` reads. Per source NAME it writes to OUT:
//!
//! - `NAME.jsonl` (or `NAME.jsonl.gz` with `gzip`): one `{"text": ...}` line per document
//!   whose kept text is not blank, in input order (as bff writes its output, which drops the
//!   emptied and blank documents);
//! - `NAME.decisions.jsonl`: one line per document read: `doc` (its index in the source),
//!   `file`, `file_doc` (its index in the file), `paragraphs`, `removed` (indices of the
//!   paragraphs removed by the paragraph rule), `removed_spans` (their byte ranges, as bff's
//!   `bff_duplicate_spans`), `ngrams`, `contained`, `emptied` (the document rule emptied it)
//!   and `kept` (a line of it is in `NAME.jsonl`);
//!
//! and `report.json` (per-source counts, seconds, the dedup settings). One Bloom filter spans
//! all sources, in the order given. Hashing runs on all threads, the filter decisions in
//! document order, so the output is the same for any thread count. Every file is written to
//! a `.tmp` beside it and renamed when complete.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use kormo_corpus::documents::read_documents;
use serde::Serialize;

use crate::batches::{par_map, read_ahead};
use crate::dedup::{dedup_document, hash_document, BloomFilter, DedupConfig};
use crate::pipeline::Source;
use crate::words::tokens;

/// Settings of a `prepare dedup` run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DedupRun {
    pub dedup: DedupConfig,
    /// JSONL field (or Parquet column) holding the text.
    pub text_field: String,
    /// Worker threads for hashing (at least 1).
    pub threads: usize,
    /// Documents per batch.
    pub batch_documents: usize,
    /// Write the kept text gzip-compressed (`NAME.jsonl.gz`).
    pub gzip: bool,
}

/// Counts and timings of one source.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DedupCounts {
    pub files: u64,
    pub documents: u64,
    pub malformed: u64,
    pub text_bytes_read: u64,
    pub paragraphs: u64,
    pub paragraphs_removed: u64,
    pub documents_emptied: u64,
    pub documents_written: u64,
    pub text_bytes_written: u64,
    pub seconds_hash: f64,
    pub seconds_decide: f64,
    pub seconds_write: f64,
    pub seconds: f64,
}

/// One document's decisions (a line of `NAME.decisions.jsonl`).
#[derive(Debug, Serialize)]
struct Decision<'a> {
    doc: u64,
    file: &'a str,
    file_doc: u64,
    paragraphs: usize,
    removed: Vec<usize>,
    removed_spans: Vec<(usize, usize)>,
    ngrams: usize,
    contained: usize,
    emptied: bool,
    kept: bool,
}

/// A file written to `path.tmp` and renamed onto `path` by [`AtomicFile::commit`].
struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    out: Out,
}

enum Out {
    Plain(std::io::BufWriter<std::fs::File>),
    Gzip(flate2::write::GzEncoder<std::io::BufWriter<std::fs::File>>),
}

impl AtomicFile {
    fn create(path: PathBuf, gzip: bool) -> Result<AtomicFile, String> {
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let file = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        let buffered = std::io::BufWriter::with_capacity(1 << 20, file);
        let out = match gzip {
            true => Out::Gzip(flate2::write::GzEncoder::new(buffered, flate2::Compression::default())),
            false => Out::Plain(buffered),
        };
        Ok(AtomicFile { path, tmp, out })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match &mut self.out {
            Out::Plain(w) => w,
            Out::Gzip(w) => w,
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.writer().write_all(bytes).map_err(|e| format!("{}: {e}", self.tmp.display()))
    }

    fn line(&mut self, value: &impl Serialize) -> Result<(), String> {
        let mut bytes = serde_json::to_vec(value).map_err(|e| format!("{}: {e}", self.tmp.display()))?;
        bytes.push(b'\n');
        self.write(&bytes)
    }

    /// Ends the gzip stream, flushes, syncs and renames.
    fn commit(self) -> Result<(), String> {
        let tmp = &self.tmp;
        let err = |e: std::io::Error| format!("{}: {e}", tmp.display());
        let buffered = match self.out {
            Out::Plain(w) => w,
            Out::Gzip(w) => w.finish().map_err(err)?,
        };
        let file = buffered.into_inner().map_err(|e| err(e.into_error()))?;
        file.sync_all().map_err(err)?;
        std::fs::rename(tmp, &self.path).map_err(|e| format!("{}: {e}", self.path.display()))
    }
}

/// Runs dedup over `sources` into `out`; returns the per-source counts (also in
/// `out/report.json`).
pub fn run_dedup(run: &DedupRun, sources: &[Source], out: &Path) -> Result<BTreeMap<String, DedupCounts>, String> {
    run.dedup.validate()?;
    if run.threads == 0 || run.batch_documents == 0 {
        return Err("dedup: threads and batch_documents must be positive".into());
    }
    for s in sources {
        let ok = !s.name.is_empty() && s.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            return Err(format!("source name {:?}: use letters, digits, '-' and '_'", s.name));
        }
        if sources.iter().filter(|t| t.name == s.name).count() > 1 {
            return Err(format!("source {:?} is given twice", s.name));
        }
    }
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let started = Instant::now();
    let (bits, hashes) = run.dedup.filter_shape();
    log::info!("dedup Bloom filter: {:.1} MB, {hashes} hashes", bits as f64 / 8e6);
    let mut filter = BloomFilter::new(bits, hashes);
    let mut counts = BTreeMap::new();
    for source in sources {
        let c = dedup_source(run, source, out, &mut filter)?;
        log::info!(
            "{}: {} documents, {} of {} paragraphs removed, {} documents emptied, {:.1}s",
            source.name, c.documents, c.paragraphs_removed, c.paragraphs, c.documents_emptied, c.seconds
        );
        counts.insert(source.name.clone(), c);
    }
    let seconds = started.elapsed().as_secs_f64();
    let text_bytes: u64 = counts.values().map(|c: &DedupCounts| c.text_bytes_read).sum();
    let report = serde_json::json!({
        "settings": run,
        "filter_bits": bits,
        "filter_hashes": hashes,
        "sources": counts,
        "seconds": seconds,
        "text_megabytes_per_second": text_bytes as f64 / 1e6 / seconds.max(1e-9),
    });
    let mut f = AtomicFile::create(out.join("report.json"), false)?;
    f.write(serde_json::to_string_pretty(&report).expect("report serializes").as_bytes())?;
    f.commit()?;
    Ok(counts)
}

/// One source through the filter: its kept text and decisions files.
fn dedup_source(run: &DedupRun, source: &Source, out: &Path, filter: &mut BloomFilter) -> Result<DedupCounts, String> {
    let started = Instant::now();
    let ext = if run.gzip { "jsonl.gz" } else { "jsonl" };
    let mut kept_file = AtomicFile::create(out.join(format!("{}.{ext}", source.name)), run.gzip)?;
    let mut decisions = AtomicFile::create(out.join(format!("{}.decisions.jsonl", source.name)), false)?;
    let mut c = DedupCounts::default();
    let mut units = vec![(); run.threads];
    for file in &source.files {
        c.files += 1;
        let name = file.display().to_string();
        let mut file_doc = 0u64;
        std::thread::scope(|scope| -> Result<(), String> {
            let docs = read_documents(file, &run.text_field);
            let batches = read_ahead(scope, docs, run.batch_documents, c.malformed, |_: &String| {});
            for batch in batches {
                let batch = batch?;
                c.malformed += batch.malformed;
                let t = Instant::now();
                let ngrams = par_map(&batch.items, &mut units, |_, text| hash_document(text, &tokens(text), &run.dedup));
                c.seconds_hash += t.elapsed().as_secs_f64();
                for (text, ngrams) in batch.items.iter().zip(&ngrams) {
                    let t = Instant::now();
                    let o = dedup_document(text, ngrams, filter, run.dedup.threshold);
                    c.seconds_decide += t.elapsed().as_secs_f64();
                    let t = Instant::now();
                    let kept = !o.emptied && !o.text.trim().is_empty();
                    if kept {
                        kept_file.line(&serde_json::json!({ "text": o.text }))?;
                        c.documents_written += 1;
                        c.text_bytes_written += o.text.len() as u64;
                    }
                    let removed = o.removed.iter().map(|r| ngrams.paragraphs.binary_search(r).expect("a paragraph")).collect();
                    decisions.line(&Decision {
                        doc: c.documents,
                        file: &name,
                        file_doc,
                        paragraphs: o.paragraphs,
                        removed,
                        removed_spans: o.removed.clone(),
                        ngrams: o.ngrams,
                        contained: o.contained,
                        emptied: o.emptied,
                        kept,
                    })?;
                    c.seconds_write += t.elapsed().as_secs_f64();
                    c.documents += 1;
                    file_doc += 1;
                    c.text_bytes_read += text.len() as u64;
                    c.paragraphs += o.paragraphs as u64;
                    c.paragraphs_removed += o.removed.len() as u64;
                    c.documents_emptied += o.emptied as u64;
                }
            }
            Ok(())
        })?;
    }
    kept_file.commit()?;
    decisions.commit()?;
    c.seconds = started.elapsed().as_secs_f64();
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        let bytes = std::fs::read(path).unwrap();
        let text = if path.extension().is_some_and(|e| e == "gz") {
            let mut s = String::new();
            flate2::read::GzDecoder::new(&bytes[..]).read_to_string(&mut s).unwrap();
            s
        } else {
            String::from_utf8(bytes).unwrap()
        };
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// Paragraphs of 13+ tokens (punctuation counts), Korean and English mixed.
    const P1: &str = "데비안(Debian)은 자유 운영체제입니다: apt-get으로 패키지를 설치하고, 업그레이드합니다!";
    const P2: &str = "The quick brown fox jumps over the lazy dog, then naps under the old oak tree.";
    const P4: &str = "Ein ganz anderer Absatz: er wiederholt sich im selben Dokument, gleich danach.";
    const INTRO: &str = "Intro words of another page here, long enough to give a few n-grams of its own.";
    const P3: &str = "LibreOffice 도움말: 셀 서식을 바꾸려면 [서식] 메뉴에서 '셀'을 고르세요, 그리고 확인을 누릅니다.";

    fn run_with(threads: usize, gzip: bool, tag: &str) -> (PathBuf, BTreeMap<String, DedupCounts>) {
        let dir = kormo_testdeps::test_dir(tag);
        let input = dir.join("in.jsonl");
        // A near duplicate: P2 with its last token changed (5 of its 6 13-grams known).
        let near = P2.replace("tree.", "tree!");
        let docs = [
            format!("{P1}\n{P2}\nshort line, kept."),
            format!("{INTRO}\n{P1}\nshort line, kept."),
            format!("{P3}\n{near}"),
            format!("{P1}\n{P2}"),
            format!("{P4}\n{P4}\nok"),
        ];
        let mut text = String::new();
        for d in &docs {
            text.push_str(&serde_json::json!({ "text": d }).to_string());
            text.push('\n');
        }
        std::fs::write(&input, text).unwrap();
        let run = DedupRun {
            dedup: DedupConfig { expected_ngrams: 10_000, false_positive_rate: 1e-6, ..DedupConfig::default() },
            text_field: "text".into(),
            threads,
            batch_documents: 2,
            gzip,
        };
        let out = dir.join("out");
        let source = Source { name: "mix".into(), files: vec![input] };
        let counts = run_dedup(&run, &[source], &out).unwrap();
        (out, counts)
    }

    #[test]
    fn decisions_and_kept_text() {
        let (out, counts) = run_with(1, false, "dedup_run_1");
        let d = lines(&out.join("mix.decisions.jsonl"));
        let removed: Vec<_> = d.iter().map(|x| x["removed"].clone()).collect();
        assert_eq!(removed, serde_json::json!([[], [1], [1], [0, 1], [1]]).as_array().unwrap().clone());
        // Doc 3 repeats doc 0 whole: both paragraphs removed and the document emptied.
        let emptied: Vec<bool> = d.iter().map(|x| x["emptied"].as_bool().unwrap()).collect();
        assert_eq!(emptied, [false, false, false, true, false]);
        assert_eq!(d[1]["removed_spans"], serde_json::json!([[INTRO.len(), INTRO.len() + 1 + P1.len()]]));
        assert_eq!(d[2]["paragraphs"], 2);
        let kept: Vec<String> = lines(&out.join("mix.jsonl")).iter().map(|x| x["text"].as_str().unwrap().into()).collect();
        assert_eq!(
            kept,
            [
                format!("{P1}\n{P2}\nshort line, kept."),
                format!("{INTRO}\nshort line, kept."),
                P3.to_string(),
                format!("{P4}\nok"),
            ]
        );
        let c = &counts["mix"];
        assert_eq!((c.documents, c.paragraphs, c.paragraphs_removed, c.documents_emptied, c.documents_written), (5, 13, 5, 1, 4));
        let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
        assert_eq!(report["sources"]["mix"]["paragraphs_removed"], 5);
        assert!(!out.join("mix.jsonl.tmp").exists());
    }

    #[test]
    fn threads_and_gzip_give_the_same_result() {
        let (one, _) = run_with(1, false, "dedup_run_a");
        let (two, _) = run_with(2, true, "dedup_run_b");
        let strip = |v: Vec<serde_json::Value>| -> Vec<serde_json::Value> {
            v.into_iter().map(|mut x| { x["file"] = serde_json::Value::Null; x }).collect()
        };
        assert_eq!(strip(lines(&one.join("mix.decisions.jsonl"))), strip(lines(&two.join("mix.decisions.jsonl"))));
        assert_eq!(lines(&one.join("mix.jsonl")), lines(&two.join("mix.jsonl.gz")));
        assert!(!two.join("mix.jsonl").exists());
    }

    #[test]
    fn errors_name_the_file() {
        let dir = kormo_testdeps::test_dir("dedup_run_err");
        let run = DedupRun {
            dedup: DedupConfig { expected_ngrams: 1000, ..DedupConfig::default() },
            text_field: "text".into(),
            threads: 1,
            batch_documents: 4,
            gzip: false,
        };
        let missing = dir.join("missing.jsonl");
        let err = run_dedup(&run, &[Source { name: "x".into(), files: vec![missing.clone()] }], &dir.join("out")).unwrap_err();
        assert!(err.contains("missing.jsonl"), "{err}");
        let bad = DedupRun { dedup: DedupConfig { threshold: 1.5, ..run.dedup.clone() }, ..run };
        assert!(run_dedup(&bad, &[], &dir.join("out")).unwrap_err().contains("threshold"));
    }
}
