//! Helpers shared by the shard tests: self-deleting temp dirs, random datasets and a "reseal"
//! that recomputes every checksum after a test has deliberately broken a structural invariant
//! (so the open fails on the invariant, not on a checksum).
#![allow(dead_code)] // each test binary uses a different subset

use kormo_shards::format::{Header, Layout, HEADER_LEN};
use kormo_shards::{ShardMeta, ShardWriter};
use rand::Rng;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A temporary directory under TEST_TMPDIR (Bazel) or the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let base = std::env::var_os("TEST_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!(
            "kormo-shards-{label}-{}-{unique}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn meta(vocab_size: u32) -> ShardMeta {
    ShardMeta {
        vocab_size,
        tokenizer_fingerprint: "sha256:test-tokenizer-0123456789abcdef".into(),
    }
}

/// A document as written: tokens plus optional (start, end) spans.
#[derive(Clone, Debug)]
pub struct TestDoc {
    pub tokens: Vec<u32>,
    pub spans: Option<Vec<(u32, u32)>>,
}

/// Random documents with lengths biased towards the edge cases (0, 1, block-sized), about half
/// with random valid spans. Spans are only drawn for non-empty documents.
pub fn random_docs(
    rng: &mut impl Rng,
    count: usize,
    vocab_size: u32,
    with_spans: bool,
) -> Vec<TestDoc> {
    (0..count)
        .map(|_| {
            let len = match rng.random_range(0..10) {
                0 => 0,
                1 => 1,
                2 => rng.random_range(100..400),
                _ => rng.random_range(2..40),
            };
            let tokens: Vec<u32> = (0..len).map(|_| rng.random_range(0..vocab_size)).collect();
            let spans = (with_spans && len > 0 && rng.random_bool(0.5))
                .then(|| random_spans(rng, len as u32));
            TestDoc { tokens, spans }
        })
        .collect()
}

/// Sorted, non-overlapping, non-empty spans within `[0, len)`, at least one.
fn random_spans(rng: &mut impl Rng, len: u32) -> Vec<(u32, u32)> {
    let mut spans = Vec::new();
    let mut at = 0;
    while at < len {
        let start = rng.random_range(at..len);
        let end = rng.random_range(start + 1..=len);
        spans.push((start, end));
        at = end + rng.random_range(0..3);
    }
    if spans.is_empty() {
        spans.push((0, len));
    }
    spans
}

pub fn write_shard(
    path: &Path,
    meta: ShardMeta,
    block_tokens: u32,
    docs: &[TestDoc],
) -> kormo_shards::ShardSummary {
    let mut writer = ShardWriter::create_with_checksum_block(path, meta, block_tokens).unwrap();
    for doc in docs {
        writer
            .append_document(&doc.tokens, doc.spans.as_deref())
            .unwrap();
    }
    writer.finish().unwrap()
}

pub fn header_of(bytes: &[u8]) -> (Header, Layout) {
    let header = Header::decode(bytes[..HEADER_LEN].try_into().unwrap()).unwrap();
    let layout = Layout::new(&header).unwrap();
    (header, layout)
}

pub fn range(r: &std::ops::Range<u64>) -> std::ops::Range<usize> {
    r.start as usize..r.end as usize
}

/// Recomputes every section CRC, the token block CRCs and the header CRC of `bytes`.
pub fn reseal(bytes: &mut [u8]) {
    let (mut header, layout) = header_of(bytes);
    let crc = |r: &std::ops::Range<u64>, b: &[u8]| crc32fast::hash(&b[range(r)]);
    header.fingerprint_crc32 = crc(&layout.fingerprint, bytes);
    header.doc_offsets_crc32 = crc(&layout.doc_offsets, bytes);
    if header.has_loss_mask() {
        header.span_offsets_crc32 = crc(&layout.span_offsets, bytes);
    }
    header.spans_crc32 = crc(&layout.spans, bytes);
    let block_bytes = header.checksum_block_tokens as usize * 4;
    let block_crcs: Vec<u32> = bytes[range(&layout.tokens)]
        .chunks(block_bytes)
        .map(crc32fast::hash)
        .collect();
    bytes[range(&layout.block_crcs)].copy_from_slice(bytemuck::cast_slice(&block_crcs));
    header.block_crcs_crc32 = crc(&layout.block_crcs, bytes);
    if header.has_languages() {
        header.languages_crc32 = crc(&layout.languages, bytes);
    }
    bytes[..HEADER_LEN].copy_from_slice(&header.encode());
}

pub fn read_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

pub fn write_u64(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

pub fn write_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}
