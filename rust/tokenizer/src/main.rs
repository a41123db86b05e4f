//! `kormo-tokenizer`: train, use and benchmark kormo's byte-level BPE tokenizer.
//!
//! ```text
//! kormo-tokenizer train --source NAME=WEIGHT:PATH[,PATH...] [--source ...] --out DIR
//!                       [--vocab-size 125000] [--min-frequency 2] [--threads N]
//!                       [--max-words 8000000] [--text-field text]
//! kormo-tokenizer encode --tokenizer FILE [--json]     (stdin text -> ids)
//! kormo-tokenizer bench --tokenizer FILE [--threads N] FILE...
//! kormo-tokenizer extract-html --out FILE DIR...       (HTML docs -> plain text corpus)
//! ```
//! A PATH may be a file or a directory (all files below it, sorted). Progress with rate
//! and ETA goes to stderr; results to stdout.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use kormo_tokenizer::documents::{expand_path, read_documents};
use kormo_tokenizer::train::{count_documents, train, weighted_counts, TrainConfig, WordCounts};
use kormo_tokenizer::{corpus, hf, Tokenizer};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("train") => cmd_train(&args[1..]),
        Some("encode") => cmd_encode(&args[1..]),
        Some("bench") => cmd_bench(&args[1..]),
        Some("extract-html") => cmd_extract_html(&args[1..]),
        _ => Err(
            "usage: kormo-tokenizer train|encode|bench|extract-html ... (see the source header)"
                .to_string(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kormo-tokenizer: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Flag values and positional arguments.
struct Args {
    flags: Vec<(String, String)>,
    positional: Vec<String>,
}

impl Args {
    fn parse(args: &[String], switches: &[&str]) -> Result<Args, String> {
        let mut flags = Vec::new();
        let mut positional = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if let Some(name) = a.strip_prefix("--") {
                if switches.contains(&name) {
                    flags.push((name.to_owned(), String::new()));
                } else {
                    let v = it.next().ok_or(format!("--{name} needs a value"))?;
                    flags.push((name.to_owned(), v.clone()));
                }
            } else {
                positional.push(a.clone());
            }
        }
        Ok(Args { flags, positional })
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.flags
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.all(name).last().copied()
    }

    fn has(&self, name: &str) -> bool {
        self.flags.iter().any(|(n, _)| n == name)
    }

    fn number<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{name}: {v:?} is not a valid number")),
        }
    }
}

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn cmd_train(args: &[String]) -> Result<(), String> {
    let a = Args::parse(args, &[])?;
    let out = PathBuf::from(a.get("out").ok_or("train needs --out DIR")?);
    let vocab_size: usize = a.number("vocab-size", 125_000)?;
    let threads: usize = a.number("threads", default_threads())?;
    let max_words: usize = a.number("max-words", 8_000_000)?;
    let text_field = a.get("text-field").unwrap_or("text").to_owned();
    let mut config = TrainConfig::kormo(vocab_size);
    config.min_frequency = a.number("min-frequency", 2)?;
    config.progress = true;
    let sources = a.all("source");
    if sources.is_empty() {
        return Err("train needs at least one --source NAME=WEIGHT:PATH[,PATH...]".into());
    }
    let started = Instant::now();
    let mut weighted = Vec::new();
    for spec in sources {
        let (name, rest) = spec
            .split_once('=')
            .ok_or(format!("--source {spec:?}: expected NAME=WEIGHT:PATHS"))?;
        let (weight, paths) = rest
            .split_once(':')
            .ok_or(format!("--source {spec:?}: expected NAME=WEIGHT:PATHS"))?;
        let weight: f64 = weight
            .parse()
            .map_err(|_| format!("--source {spec:?}: weight {weight:?} is not a number"))?;
        let mut files = Vec::new();
        for p in paths.split(',') {
            files.extend(expand_path(Path::new(p))?);
        }
        let counts = count_source(name, &files, &text_field, &config, threads, max_words);
        eprintln!(
            "source {name}: {} files, {:.1} MB, {} distinct pre-tokens{}",
            files.len(),
            counts.bytes as f64 / 1e6,
            counts.counts.len(),
            if counts.pruned > 0 {
                format!(", {} rare ones pruned (--max-words)", counts.pruned)
            } else {
                String::new()
            }
        );
        weighted.push((weight, counts));
    }
    let combined = weighted_counts(&weighted).map_err(|e| e.to_string())?;
    drop(weighted);
    let count_secs = started.elapsed().as_secs_f64();
    let merge_start = Instant::now();
    let tok = train(&combined, &config).map_err(|e| e.to_string())?;
    let merge_secs = merge_start.elapsed().as_secs_f64();
    hf::save(&tok, &out).map_err(|e| e.to_string())?;
    println!(
        "{{\"vocab_size\": {}, \"padded_vocab_size\": {}, \"merges\": {}, \"count_seconds\": {count_secs:.3}, \"merge_seconds\": {merge_secs:.3}, \"fingerprint\": \"{}\", \"out\": \"{}\"}}",
        tok.vocab_size(),
        tok.padded_vocab_size(128),
        tok.merges().len(),
        tok.fingerprint(),
        out.display()
    );
    Ok(())
}

/// Counts one source's pre-tokens, reporting malformed inputs and progress (text bytes
/// read against the files' total size, rate, ETA) on stderr about once a second.
fn count_source(
    name: &str,
    files: &[PathBuf],
    field: &str,
    config: &TrainConfig,
    threads: usize,
    max_words: usize,
) -> WordCounts {
    let total: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let started = Instant::now();
    let mut last = Instant::now();
    let mut done = 0u64;
    let mut malformed = 0u64;
    let docs = files
        .iter()
        .flat_map(|f| read_documents(f, field))
        .filter_map(|d| match d {
            Ok(text) => {
                done += text.len() as u64;
                if last.elapsed().as_secs_f64() >= 1.0 {
                    last = Instant::now();
                    let rate = done as f64 / started.elapsed().as_secs_f64();
                    eprintln!(
                        "count {name}: {:.1}/{:.1} MB, {:.1} MB/s, ETA {:.0}s",
                        done as f64 / 1e6,
                        total as f64 / 1e6,
                        rate / 1e6,
                        total.saturating_sub(done) as f64 / rate.max(1.0)
                    );
                }
                Some(text)
            }
            Err(e) => {
                malformed += 1;
                if malformed <= 10 {
                    eprintln!("skipped malformed input: {e}");
                }
                None
            }
        });
    let counts = count_documents(docs, config.pattern, &config.specials, threads, max_words);
    if malformed > 0 {
        eprintln!("source {name}: {malformed} malformed inputs skipped");
    }
    counts
}

fn cmd_encode(args: &[String]) -> Result<(), String> {
    let a = Args::parse(args, &["json"])?;
    let tok = hf::load(Path::new(
        a.get("tokenizer").ok_or("encode needs --tokenizer FILE")?,
    ))
    .map_err(|e| e.to_string())?;
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| format!("stdin: {e}"))?;
    let ids = tok.encode(&text);
    let line = if a.has("json") {
        serde_json::to_string(&ids).expect("ids serialize")
    } else {
        ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
    };
    writeln!(std::io::stdout(), "{line}").map_err(|e| e.to_string())
}

/// Encode throughput per input file: one thread, then `--threads` threads over its documents.
fn cmd_bench(args: &[String]) -> Result<(), String> {
    let a = Args::parse(args, &[])?;
    let tok: Tokenizer = hf::load(Path::new(
        a.get("tokenizer").ok_or("bench needs --tokenizer FILE")?,
    ))
    .map_err(|e| e.to_string())?;
    let threads: usize = a.number("threads", default_threads())?;
    let repeats: usize = a.number("repeats", 3)?;
    for file in &a.positional {
        let docs: Vec<String> = read_documents(Path::new(file), "text")
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
        let bytes: usize = refs.iter().map(|d| d.len()).sum();
        let mut result = serde_json::json!({"file": file, "bytes": bytes});
        let mut thread_counts = vec![1, threads];
        thread_counts.dedup();
        for t in thread_counts {
            // Best of `repeats`, each with fresh encoders (cold caches), as a user would see.
            let mut best = f64::INFINITY;
            let mut tokens = 0;
            for _ in 0..repeats {
                let start = Instant::now();
                let out = tok.encode_batch(&refs, t);
                best = best.min(start.elapsed().as_secs_f64());
                tokens = out.iter().map(Vec::len).sum::<usize>();
            }
            let mb_per_s = (bytes as f64 / best / 1e6 * 100.0).round() / 100.0;
            result[format!("threads_{t}_mb_per_s")] = serde_json::json!(mb_per_s);
            result["tokens"] = serde_json::json!(tokens);
            result["bytes_per_token"] =
                serde_json::json!((bytes as f64 / tokens as f64 * 1000.0).round() / 1000.0);
        }
        println!("{result}");
    }
    Ok(())
}

fn cmd_extract_html(args: &[String]) -> Result<(), String> {
    let a = Args::parse(args, &[])?;
    let out = a.get("out").ok_or("extract-html needs --out FILE")?;
    let mut text = String::new();
    for dir in &a.positional {
        for f in expand_path(Path::new(dir))? {
            let name = f.to_string_lossy();
            if name.ends_with(".html") || name.ends_with(".htm") {
                let html = std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?;
                text.push_str(&corpus::html_to_text(&String::from_utf8_lossy(&html)));
                text.push('\n');
            }
        }
    }
    std::fs::write(out, &text).map_err(|e| format!("{out}: {e}"))?;
    eprintln!("{out}: {:.2} MB of text", text.len() as f64 / 1e6);
    Ok(())
}
