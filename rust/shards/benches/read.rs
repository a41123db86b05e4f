//! Token shard throughput: write, open (full verification vs structure only), sequential
//! document reads, random document reads and random fixed-length windows.
//!
//! Builds a shard of `KORMO_SHARD_BENCH_BYTES` bytes (default 1 GiB; also accepted as the first
//! argument that parses as a number) in a fresh temp directory, which a guard deletes when the
//! benchmark ends, panics included. Run: `cargo bench -p kormo-shards --bench read`.
//! Document lengths are uniform in 1..4096 tokens with a loss-mask span on every 4th document,
//! tokens come from a pre-generated random pool so generation is not timed.

use kormo_shards::{Shard, ShardMeta, ShardWriter, Verification};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

const DEFAULT_BYTES: u64 = 1 << 30;
const VOCAB_SIZE: u32 = 125_184;
const MAX_DOC_TOKENS: usize = 4096;
const WINDOW_TOKENS: usize = 2048;

/// Removes the benchmark directory on drop, so the shard never outlives the run.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("warning: could not remove {}: {e}", self.0.display());
        }
    }
}

fn target_bytes() -> u64 {
    let from_arg = std::env::args().skip(1).find_map(|a| a.parse().ok());
    let from_env = std::env::var("KORMO_SHARD_BENCH_BYTES")
        .ok()
        .and_then(|v| v.parse().ok());
    from_arg.or(from_env).unwrap_or(DEFAULT_BYTES)
}

fn report(what: &str, tokens: u64, seconds: f64) {
    let mtok = tokens as f64 / seconds / 1e6;
    let gbs = tokens as f64 * 4.0 / seconds / 1e9;
    println!("{what:<44} {mtok:>10.1} Mtok/s {gbs:>7.2} GB/s  ({tokens} tokens in {seconds:.3} s)");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let target_tokens = target_bytes() / 4;
    let base = std::env::var_os("TEST_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = TempDir(base.join(format!("kormo-shards-bench-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    let path = dir.0.join("bench.kts");
    let meta = ShardMeta {
        vocab_size: VOCAB_SIZE,
        tokenizer_fingerprint: "bench".into(),
    };

    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let pool: Vec<u32> = (0..1 << 22)
        .map(|_| rng.random_range(0..VOCAB_SIZE))
        .collect();
    let doc_lengths: Vec<usize> = {
        let mut lengths = Vec::new();
        let mut total = 0u64;
        while total < target_tokens {
            let len = rng.random_range(1..=MAX_DOC_TOKENS);
            lengths.push(len);
            total += len as u64;
        }
        lengths
    };

    let start = Instant::now();
    let mut writer = ShardWriter::create(&path, meta)?;
    for (i, &len) in doc_lengths.iter().enumerate() {
        let from = (i * 7919) % (pool.len() - MAX_DOC_TOKENS);
        let span = [(0, len as u32 / 2 + 1)];
        writer.append_document(&pool[from..from + len], (i % 4 == 0).then_some(&span[..]))?;
    }
    let append_s = start.elapsed().as_secs_f64();
    let summary = writer.finish()?;
    let write_s = start.elapsed().as_secs_f64();
    println!(
        "shard: {} documents, {} tokens, {} bytes ({:.2} GB), {}",
        summary.num_documents,
        summary.num_tokens,
        summary.file_bytes,
        summary.file_bytes as f64 / 1e9,
        path.display()
    );
    report(
        "write: append_document calls only",
        summary.num_tokens,
        append_s,
    );
    report(
        "write: total (append + finish incl. fsync)",
        summary.num_tokens,
        write_s,
    );

    let start = Instant::now();
    let shard = Shard::open_with(&path, Verification::StructureOnly)?;
    let structure_s = start.elapsed().as_secs_f64();
    println!(
        "{:<44} {:>10.1} ms",
        "open, structure only (metadata checks)",
        structure_s * 1e3
    );
    drop(shard);
    let start = Instant::now();
    let shard = Shard::open(&path)?;
    report(
        "open, full verification (CRC + vocab scan)",
        shard.num_tokens(),
        start.elapsed().as_secs_f64(),
    );

    let start = Instant::now();
    let mut checksum = 0u64;
    for doc in shard.documents() {
        checksum = doc
            .tokens
            .iter()
            .fold(checksum, |acc, &t| acc.wrapping_add(u64::from(t)));
    }
    black_box(checksum);
    report(
        "sequential document reads (sum every token)",
        shard.num_tokens(),
        start.elapsed().as_secs_f64(),
    );

    let num_documents = shard.num_documents();
    let start = Instant::now();
    let mut tokens_read = 0u64;
    let mut checksum = 0u64;
    for _ in 0..num_documents {
        let doc = shard.document(rng.random_range(0..num_documents))?;
        checksum = doc
            .tokens
            .iter()
            .fold(checksum, |acc, &t| acc.wrapping_add(u64::from(t)));
        tokens_read += doc.tokens.len() as u64;
    }
    black_box(checksum);
    report(
        "random document reads (sum every token)",
        tokens_read,
        start.elapsed().as_secs_f64(),
    );

    let windows = (shard.num_tokens() / WINDOW_TOKENS as u64).max(1);
    let last_start = shard.num_tokens().saturating_sub(WINDOW_TOKENS as u64);
    let start = Instant::now();
    let mut checksum = 0u64;
    for _ in 0..windows {
        let offset = rng.random_range(0..=last_start);
        let window = shard.tokens(offset, WINDOW_TOKENS.min(shard.num_tokens() as usize))?;
        let doc = shard.document_at(offset)?;
        checksum = window
            .iter()
            .fold(checksum.wrapping_add(doc as u64), |acc, &t| {
                acc.wrapping_add(u64::from(t))
            });
    }
    black_box(checksum);
    report(
        &format!("random {WINDOW_TOKENS}-token windows + document_at"),
        windows * WINDOW_TOKENS as u64,
        start.elapsed().as_secs_f64(),
    );
    Ok(())
}
