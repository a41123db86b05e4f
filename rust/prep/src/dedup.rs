//! BFF paragraph deduplication with a Bloom filter, "old-both" mode, as DCLM's bff
//! (`--remove-type old-both`, AI2's bff extended by DCLM; KORMo used it) does it:
//!
//! - a document's paragraphs are the spans between newlines (each but the first starts
//!   with its `\n`; a text that starts with `\n` has an empty first paragraph, as in bff); a paragraph's tokens are its Unicode word-boundary segments minus
//!   whitespace, punctuation included (`words::tokens`, bff's `tokenize`); they give its
//!   n-grams (`ngram_size`, 13); a paragraph with fewer tokens than that but at least
//!   `min_ngram_size` (13, as DCLM runs bff: so none) gives one n-gram of all its tokens;
//!   shorter ones give none and are always kept;
//! - in document order, a paragraph whose share of n-grams already in the filter exceeds
//!   `threshold` is removed; otherwise its n-grams are inserted at once (so a later paragraph
//!   of the same document can match it);
//! - when the document's total contained / total n-grams exceeds `threshold`, the whole
//!   document is emptied (the n-grams of its kept paragraphs stay inserted, as in bff).
//!
//! Memory is the filter alone, sized up front from the expected n-gram count and the
//! false-positive rate (m = -n ln p / ln^2 2 bits, k = m/n ln 2 hashes) or given directly.
//! Hashing (the expensive part) is a pure function of the text and runs on many threads;
//! the filter decisions run in input order, so results are deterministic for any thread count.

use std::io::{Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::words::Token;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupConfig {
    pub enabled: bool,
    pub ngram_size: usize,
    pub min_ngram_size: usize,
    pub threshold: f64,
    /// Expected number of distinct n-grams (sizes the filter unless `filter_bytes` is set).
    pub expected_ngrams: u64,
    pub false_positive_rate: f64,
    /// Filter size in bytes; 0 = derive from `expected_ngrams` and `false_positive_rate`.
    pub filter_bytes: u64,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            enabled: true,
            ngram_size: 13,
            min_ngram_size: 13,
            threshold: 0.8,
            expected_ngrams: 100_000_000,
            false_positive_rate: 0.01,
            filter_bytes: 0,
        }
    }
}

impl DedupConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.ngram_size == 0 || self.min_ngram_size == 0 || self.min_ngram_size > self.ngram_size
        {
            return Err(format!(
                "dedup: need 0 < min_ngram_size ({}) <= ngram_size ({})",
                self.min_ngram_size, self.ngram_size
            ));
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            return Err(format!(
                "dedup.threshold = {} is not in [0, 1]",
                self.threshold
            ));
        }
        if !(self.false_positive_rate > 0.0 && self.false_positive_rate < 1.0) {
            return Err(format!(
                "dedup.false_positive_rate = {} is not in (0, 1)",
                self.false_positive_rate
            ));
        }
        if self.filter_bytes == 0 && self.expected_ngrams == 0 {
            return Err("dedup: set expected_ngrams or filter_bytes".into());
        }
        Ok(())
    }

    /// (bits, hash count) of the filter.
    pub fn filter_shape(&self) -> (u64, u32) {
        let ln2 = std::f64::consts::LN_2;
        let n = self.expected_ngrams.max(1) as f64;
        let bits = if self.filter_bytes > 0 {
            self.filter_bytes * 8
        } else {
            (-n * self.false_positive_rate.ln() / (ln2 * ln2)).ceil() as u64
        };
        let bits = bits.div_ceil(64).max(1) * 64;
        let hashes = ((bits as f64 / n) * ln2).round().clamp(1.0, 32.0) as u32;
        (bits, hashes)
    }
}

/// A Bloom filter over 64-bit n-gram hashes (double hashing for the k bit positions).
#[derive(Debug)]
pub struct BloomFilter {
    words: Vec<u64>,
    hashes: u32,
}

const MAGIC: &[u8; 8] = b"KORMOBF1";

impl BloomFilter {
    pub fn new(bits: u64, hashes: u32) -> BloomFilter {
        BloomFilter {
            words: vec![0; bits.div_ceil(64) as usize],
            hashes,
        }
    }

    /// The k bit positions of `hash`: double hashing (h1 + i h2), each 64-bit value mapped onto
    /// the bits by a multiply-shift (its high bits), which costs no division.
    fn positions(&self, hash: u64) -> impl Iterator<Item = u64> + '_ {
        let bits = self.words.len() as u64 * 64;
        let h1 = hash;
        let h2 = mix(hash ^ 0x9e37_79b9_7f4a_7c15) | 1;
        (0..self.hashes as u64).map(move |i| {
            let h = h1.wrapping_add(i.wrapping_mul(h2));
            ((h as u128 * bits as u128) >> 64) as u64
        })
    }

    pub fn contains(&self, hash: u64) -> bool {
        self.positions(hash)
            .all(|p| self.words[(p / 64) as usize] & (1 << (p % 64)) != 0)
    }

    pub fn insert(&mut self, hash: u64) {
        let bits = self.words.len() as u64 * 64;
        let h2 = mix(hash ^ 0x9e37_79b9_7f4a_7c15) | 1;
        for i in 0..self.hashes as u64 {
            // As `positions` (written out: the iterator borrows `self`).
            let p = ((hash.wrapping_add(i.wrapping_mul(h2)) as u128 * bits as u128) >> 64) as u64;
            self.words[(p / 64) as usize] |= 1 << (p % 64);
        }
    }

    /// Writes the filter (for resuming); the caller makes it atomic.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let err = |e: std::io::Error| format!("{}: {e}", path.display());
        let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(err)?);
        f.write_all(MAGIC).map_err(err)?;
        f.write_all(&(self.words.len() as u64).to_le_bytes())
            .map_err(err)?;
        f.write_all(&self.hashes.to_le_bytes()).map_err(err)?;
        for w in &self.words {
            f.write_all(&w.to_le_bytes()).map_err(err)?;
        }
        f.into_inner()
            .map_err(|e| err(e.into_error()))?
            .sync_all()
            .map_err(err)
    }

    pub fn load(path: &Path) -> Result<BloomFilter, String> {
        let err = |e: std::io::Error| format!("{}: {e}", path.display());
        let mut f = std::io::BufReader::new(std::fs::File::open(path).map_err(err)?);
        let mut head = [0u8; 20];
        f.read_exact(&mut head).map_err(err)?;
        if &head[..8] != MAGIC {
            return Err(format!("{}: not a kormo Bloom filter file", path.display()));
        }
        let len = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes")) as usize;
        let hashes = u32::from_le_bytes(head[16..20].try_into().expect("4 bytes"));
        let mut words = vec![0u64; len];
        let mut buf = [0u8; 8];
        for w in words.iter_mut() {
            f.read_exact(&mut buf).map_err(err)?;
            *w = u64::from_le_bytes(buf);
        }
        Ok(BloomFilter { words, hashes })
    }
}

/// SplitMix64 finalizer: a fast, well-mixing 64-bit permutation.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A token's hash: FxHash's multiply-rotate over 8-byte words, then a SplitMix64 finalizer.
fn token_hash(token: &str) -> u64 {
    let mut h: u64 = token.len() as u64;
    let mut chunks = token.as_bytes().chunks_exact(8);
    for c in &mut chunks {
        let word = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = (h.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut buf = [0u8; 8];
        buf[..rest.len()].copy_from_slice(rest);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(buf)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    mix(h)
}

/// The hashes of every window of `n` consecutive token hashes (a paragraph's n-grams), by
/// a polynomial rolling hash (one multiply-add per window), finalized by `mix`.
fn window_hashes(hashes: &[u64], n: usize, out: &mut Vec<u64>) {
    const BASE: u64 = 0x9e37_79b9_7f4a_7c15;
    let top = (1..n).fold(1u64, |p, _| p.wrapping_mul(BASE)); // BASE^(n-1)
    let mut rolling = 0u64;
    for (i, &h) in hashes.iter().enumerate() {
        if i >= n {
            rolling = rolling.wrapping_sub(hashes[i - n].wrapping_mul(top));
        }
        rolling = rolling.wrapping_mul(BASE).wrapping_add(h);
        if i + 1 >= n {
            out.push(mix(rolling ^ n as u64));
        }
    }
}

/// The paragraphs of a document (byte ranges) and their n-gram hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentNgrams {
    pub paragraphs: Vec<(usize, usize)>,
    pub hashes: Vec<Vec<u64>>,
}

/// Splits `text` into paragraphs and hashes their n-grams of `tokens` (the text's
/// `words::tokens`); thread-safe, pure.
pub fn hash_document(text: &str, tokens: &[Token], config: &DedupConfig) -> DocumentNgrams {
    let mut bounds = vec![0];
    // Every `\n` starts a paragraph, one at 0 too (an empty first paragraph, as in bff).
    bounds.extend(text.match_indices('\n').map(|(i, _)| i));
    bounds.push(text.len());
    let mut paragraphs = Vec::with_capacity(bounds.len() - 1);
    let mut hashes = Vec::with_capacity(bounds.len() - 1);
    let mut next = 0;
    let mut token_hashes = Vec::new();
    for w in bounds.windows(2) {
        let (start, end) = (w[0], w[1]);
        token_hashes.clear();
        while next < tokens.len() && tokens[next].start < end {
            token_hashes.push(token_hash(tokens[next].text));
            next += 1;
        }
        let mut grams = Vec::new();
        if token_hashes.len() >= config.ngram_size {
            window_hashes(&token_hashes, config.ngram_size, &mut grams);
        } else if token_hashes.len() >= config.min_ngram_size {
            window_hashes(&token_hashes, token_hashes.len(), &mut grams);
        }
        paragraphs.push((start, end));
        hashes.push(grams);
    }
    DocumentNgrams { paragraphs, hashes }
}

/// What dedup did to one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupOutcome {
    /// The text kept (empty when the document was emptied).
    pub text: String,
    pub paragraphs: usize,
    /// Byte ranges of the removed paragraphs (each but a first one starts with its `\n`), as
    /// bff's `bff_duplicate_spans` gives them.
    pub removed: Vec<(usize, usize)>,
    /// The document's n-grams, and those found in the filter before it was read.
    pub ngrams: usize,
    pub contained: usize,
    /// The whole document was a duplicate and is now empty.
    pub emptied: bool,
}

/// Applies old-both dedup to one document against (and updating) `filter`.
pub fn dedup_document(
    text: &str,
    ngrams: &DocumentNgrams,
    filter: &mut BloomFilter,
    threshold: f64,
) -> DedupOutcome {
    let (mut total, mut contained_total) = (0usize, 0usize);
    let mut kept = String::with_capacity(text.len());
    let mut removed = Vec::new();
    for (&(start, end), hashes) in ngrams.paragraphs.iter().zip(&ngrams.hashes) {
        let contained = hashes.iter().filter(|&&h| filter.contains(h)).count();
        total += hashes.len();
        contained_total += contained;
        if !hashes.is_empty() && contained as f64 / hashes.len() as f64 > threshold {
            removed.push((start, end));
        } else {
            for &h in hashes {
                filter.insert(h);
            }
            kept.push_str(&text[start..end]);
        }
    }
    let emptied = total > 0 && contained_total as f64 / total as f64 > threshold;
    if emptied {
        kept.clear();
    }
    DedupOutcome {
        text: kept,
        paragraphs: ngrams.paragraphs.len(),
        removed,
        ngrams: total,
        contained: contained_total,
        emptied,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::words::tokens;

    fn config() -> DedupConfig {
        DedupConfig {
            ngram_size: 4,
            min_ngram_size: 2,
            expected_ngrams: 10_000,
            ..DedupConfig::default()
        }
    }

    fn run(docs: &[&str], c: &DedupConfig) -> Vec<DedupOutcome> {
        let (bits, k) = c.filter_shape();
        let mut f = BloomFilter::new(bits, k);
        docs.iter()
            .map(|d| dedup_document(d, &hash_document(d, &tokens(d), c), &mut f, c.threshold))
            .collect()
    }

    #[test]
    fn old_both_semantics() {
        let c = config();
        let a = "the quick brown fox jumps over the lazy dog\nsecond paragraph with its own words here\nok";
        let b = "a fresh opening paragraph talks about other things\nthe quick brown fox jumps over the lazy dog\nend";
        let out = run(&[a, b, a], &c);
        // First sighting: everything kept.
        assert_eq!(out[0].text, a);
        // b repeats one paragraph of a: it is removed; the short "end" (1 word) stays.
        assert_eq!(out[1].removed.len(), 1);
        assert_eq!(
            out[1].text,
            "a fresh opening paragraph talks about other things\nend"
        );
        assert!(!out[1].emptied);
        // a again: every n-gram is known -> document emptied.
        assert!(out[2].emptied && out[2].text.is_empty());
        // A paragraph repeated inside one document is caught (inserted right after its check).
        let twice = "one two three four five six\none two three four five six";
        assert_eq!(run(&[twice], &c)[0].text, "one two three four five six");
        // Below the threshold (1 of 3 n-grams known): kept.
        let partial = run(
            &[
                "alpha beta gamma delta",
                "alpha beta gamma delta epsilon zeta",
            ],
            &c,
        );
        assert_eq!(partial[1].removed.len(), 0);
    }

    /// bff's paragraphs: every `\n` starts one, at offset 0 too (an empty first paragraph), and
    /// an empty text is one empty paragraph.
    #[test]
    fn paragraphs_split_as_bff_splits_them() {
        let c = config();
        let spans = |t: &str| hash_document(t, &tokens(t), &c).paragraphs;
        assert_eq!(spans("\nab\n\ncd"), [(0, 0), (0, 3), (3, 4), (4, 7)]);
        assert_eq!(spans("ab\r\ncd\n"), [(0, 3), (3, 6), (6, 7)]);
        assert_eq!(spans(""), [(0, 0)]);
    }

    #[test]
    fn filter_size_and_false_positive_rate() {
        let c = DedupConfig {
            expected_ngrams: 20_000,
            ..DedupConfig::default()
        };
        let (bits, k) = c.filter_shape();
        assert_eq!(k, 7); // ln(0.01)/ln(2)^2 * ln 2 ~ 6.6
        assert!((bits as f64 / 20_000.0 - 9.585).abs() < 0.05, "{bits}");
        let mut f = BloomFilter::new(bits, k);
        for i in 0..20_000u64 {
            f.insert(mix(i));
        }
        assert!((0..20_000u64).all(|i| f.contains(mix(i))));
        let fp = (20_000..120_000u64).filter(|&i| f.contains(mix(i))).count() as f64 / 100_000.0;
        assert!(fp < 0.015, "false positive rate {fp}");
    }

    #[test]
    fn save_and_load_round_trip() {
        let mut f = BloomFilter::new(1 << 12, 3);
        for i in 0..100 {
            f.insert(mix(i));
        }
        let dir = kormo_testdeps::test_dir("bloom");
        let path = dir.join("f.bloom");
        f.save(&path).unwrap();
        let g = BloomFilter::load(&path).unwrap();
        assert_eq!((g.words.clone(), g.hashes), (f.words.clone(), f.hashes));
        std::fs::write(&path, b"garbage-garbage-garbage").unwrap();
        assert!(BloomFilter::load(&path)
            .unwrap_err()
            .contains("not a kormo Bloom filter"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
