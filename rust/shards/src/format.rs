//! On-disk layout of a token shard, version 1 (docs/shard-format.md is the prose version).
//!
//! A shard is one little-endian file:
//!
//! ```text
//! header (128 B) | fingerprint (UTF-8) | pad | tokens u32[T] | pad | doc_offsets u64[D+1]
//!   | span_offsets u64[D+1] (only with FLAG_LOSS_MASK) | spans MaskSpan[S] | block_crcs u32[B]
//!   | languages u8[D] (only with FLAG_LANGUAGES) | pad
//! ```
//!
//! Section positions are not stored: they follow from the header counts ([`Layout::new`]), so a
//! header cannot point outside the file or at overlapping sections. Every section after the
//! fingerprint but the trailing u8 languages starts on an 8-byte boundary, so a page-aligned mmap can be viewed as `&[u32]`,
//! `&[u64]` and `&[MaskSpan]` without copying. Every byte of the file is either covered by a CRC32
//! (header, each small section, each token block) or is padding that must be zero, so any
//! single corrupted byte is detected. The header stores the CRCs of all other sections, so the
//! header CRC alone identifies the whole file's content (the manifest records it).

use crate::error::ShardErrorKind;
use bytemuck::{Pod, Zeroable};
use std::ops::Range;

#[cfg(not(target_endian = "little"))]
compile_error!(
    "kormo-shards views the little-endian file format in place and needs a little-endian target"
);

/// First 8 bytes of every shard.
pub const MAGIC: [u8; 8] = *b"KORMOTOK";
/// Format version written by this build; the only one it reads.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the fixed header in bytes.
pub const HEADER_LEN: usize = 128;
/// Header flag: the span_offsets and spans sections are present.
pub const FLAG_LOSS_MASK: u32 = 1;
/// Header flag: the languages section (one u8 per document, [`LANGUAGE_OTHER`] or
/// [`LANGUAGE_KOREAN`]) is present. Shards written before it existed simply lack the flag.
pub const FLAG_LANGUAGES: u32 = 2;
/// Every flag this build knows.
pub const KNOWN_FLAGS: u32 = FLAG_LOSS_MASK | FLAG_LANGUAGES;
/// Language code of a document that is not Korean (English, code, anything else).
pub const LANGUAGE_OTHER: u8 = 0;
/// Language code of a Korean document (crate::language::classify says how `prepare` decides).
pub const LANGUAGE_KOREAN: u8 = 1;
/// Tokens per checksum block by default (4 MiB of token data per CRC).
pub const DEFAULT_CHECKSUM_BLOCK_TOKENS: u32 = 1 << 20;
/// Longest tokenizer fingerprint accepted, in bytes.
pub const MAX_FINGERPRINT_LEN: u32 = 4096;

/// A half-open range `[start, end)` of token positions within one document whose tokens are
/// trained on (positions relative to the document start). Stored as two little-endian u32.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct MaskSpan {
    pub start: u32,
    pub end: u32,
}

impl MaskSpan {
    /// The span as a `usize` range, for slicing a document's tokens.
    pub fn range(&self) -> Range<usize> {
        self.start as usize..self.end as usize
    }
}

impl From<(u32, u32)> for MaskSpan {
    fn from((start, end): (u32, u32)) -> Self {
        MaskSpan { start, end }
    }
}

/// The decoded fixed header. Byte offsets (all little-endian):
///
/// | off | field | | off | field |
/// |---|---|---|---|---|
/// | 0 | magic `[u8; 8]` | | 52 | checksum_block_tokens u32 |
/// | 8 | version u32 | | 56 | fingerprint_crc32 u32 |
/// | 12 | header_len u32 (=128) | | 60 | doc_offsets_crc32 u32 |
/// | 16 | flags u32 | | 64 | span_offsets_crc32 u32 |
/// | 20 | vocab_size u32 | | 68 | spans_crc32 u32 |
/// | 24 | num_documents u64 | | 72 | block_crcs_crc32 u32 |
/// | 32 | num_tokens u64 | | 76 | languages_crc32 u32 (0 without FLAG_LANGUAGES) |
/// | 40 | num_mask_spans u64 | | 80..124 | reserved, zero |
/// | 48 | fingerprint_len u32 | | 124 | header_crc32 u32 (of bytes 0..124) |
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub flags: u32,
    pub vocab_size: u32,
    pub num_documents: u64,
    pub num_tokens: u64,
    pub num_mask_spans: u64,
    pub fingerprint_len: u32,
    pub checksum_block_tokens: u32,
    pub fingerprint_crc32: u32,
    pub doc_offsets_crc32: u32,
    pub span_offsets_crc32: u32,
    pub spans_crc32: u32,
    pub block_crcs_crc32: u32,
    /// CRC32 of the languages section; 0 when the shard has none.
    pub languages_crc32: u32,
}

const HEADER_CRC_AT: usize = HEADER_LEN - 4;
const RESERVED: Range<usize> = 80..HEADER_CRC_AT;

/// The CRC stored in the last 4 bytes of an encoded header (what the manifest records).
pub fn header_crc32(encoded: &[u8; HEADER_LEN]) -> u32 {
    u32_at(encoded, HEADER_CRC_AT)
}

fn u32_at(b: &[u8; HEADER_LEN], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8; HEADER_LEN], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

impl Header {
    /// Serialises the header, computing its own CRC into the last 4 bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        let u32_fields = [
            (8, FORMAT_VERSION),
            (12, HEADER_LEN as u32),
            (16, self.flags),
            (20, self.vocab_size),
            (48, self.fingerprint_len),
            (52, self.checksum_block_tokens),
            (56, self.fingerprint_crc32),
            (60, self.doc_offsets_crc32),
            (64, self.span_offsets_crc32),
            (68, self.spans_crc32),
            (72, self.block_crcs_crc32),
            (76, self.languages_crc32),
        ];
        for (at, v) in u32_fields {
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        for (at, v) in [
            (24, self.num_documents),
            (32, self.num_tokens),
            (40, self.num_mask_spans),
        ] {
            b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        let crc = crc32fast::hash(&b[..HEADER_CRC_AT]);
        b[HEADER_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and checks a header: magic, version, header CRC, then field sanity. Magic and
    /// version are checked before the CRC so a foreign or newer file gets a specific message.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, ShardErrorKind> {
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&b[0..8]);
        if magic != MAGIC {
            return Err(ShardErrorKind::BadMagic { found: magic });
        }
        let version = u32_at(b, 8);
        if version != FORMAT_VERSION {
            return Err(ShardErrorKind::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let stored = u32_at(b, HEADER_CRC_AT);
        let computed = crc32fast::hash(&b[..HEADER_CRC_AT]);
        if stored != computed {
            return Err(ShardErrorKind::ChecksumMismatch {
                section: "header".into(),
                stored,
                computed,
            });
        }
        let bad = |msg: String| Err(ShardErrorKind::BadHeader(msg));
        if u32_at(b, 12) != HEADER_LEN as u32 {
            return bad(format!(
                "header_len is {}, expected {HEADER_LEN}",
                u32_at(b, 12)
            ));
        }
        if b[RESERVED].iter().any(|&x| x != 0) {
            return bad("reserved header bytes 80..124 are not zero".into());
        }
        let header = Header {
            flags: u32_at(b, 16),
            vocab_size: u32_at(b, 20),
            num_documents: u64_at(b, 24),
            num_tokens: u64_at(b, 32),
            num_mask_spans: u64_at(b, 40),
            fingerprint_len: u32_at(b, 48),
            checksum_block_tokens: u32_at(b, 52),
            fingerprint_crc32: u32_at(b, 56),
            doc_offsets_crc32: u32_at(b, 60),
            span_offsets_crc32: u32_at(b, 64),
            spans_crc32: u32_at(b, 68),
            block_crcs_crc32: u32_at(b, 72),
            languages_crc32: u32_at(b, 76),
        };
        if header.flags & !KNOWN_FLAGS != 0 {
            return bad(format!(
                "unknown flag bits {:#x}",
                header.flags & !KNOWN_FLAGS
            ));
        }
        if !header.has_languages() && header.languages_crc32 != 0 {
            return bad("languages_crc32 is set but the languages flag is not".into());
        }
        if header.vocab_size == 0 {
            return bad("vocab_size is 0".into());
        }
        if header.checksum_block_tokens == 0 {
            return bad("checksum_block_tokens is 0".into());
        }
        if header.fingerprint_len == 0 || header.fingerprint_len > MAX_FINGERPRINT_LEN {
            return bad(format!(
                "fingerprint_len {} not in 1..={MAX_FINGERPRINT_LEN}",
                header.fingerprint_len
            ));
        }
        if !header.has_loss_mask() && header.num_mask_spans != 0 {
            return bad(format!(
                "{} mask spans but the loss-mask flag is not set",
                header.num_mask_spans
            ));
        }
        Ok(header)
    }

    /// Whether the span_offsets and spans sections are present.
    pub fn has_loss_mask(&self) -> bool {
        self.flags & FLAG_LOSS_MASK != 0
    }

    /// Whether the languages section (one u8 per document) is present.
    pub fn has_languages(&self) -> bool {
        self.flags & FLAG_LANGUAGES != 0
    }

    /// Number of token checksum blocks (the last one may be partial).
    pub fn num_checksum_blocks(&self) -> u64 {
        self.num_tokens
            .div_ceil(u64::from(self.checksum_block_tokens.max(1)))
    }
}

/// Byte ranges of every section, derived from a header. All arithmetic is checked, so absurd
/// counts in a (CRC-valid but hostile) header give an error instead of wrapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub fingerprint: Range<u64>,
    pub tokens: Range<u64>,
    pub doc_offsets: Range<u64>,
    /// Empty when the shard has no loss mask.
    pub span_offsets: Range<u64>,
    pub spans: Range<u64>,
    pub block_crcs: Range<u64>,
    /// Empty when the shard has no languages; not 8-aligned (u8 elements), and last.
    pub languages: Range<u64>,
    /// Total file size.
    pub file_len: u64,
}

fn align8(x: u64) -> Option<u64> {
    x.checked_add(7).map(|v| v & !7)
}

fn section(start: u64, count: u64, elem_bytes: u64) -> Option<Range<u64>> {
    Some(start..start.checked_add(count.checked_mul(elem_bytes)?)?)
}

impl Layout {
    pub fn new(h: &Header) -> Result<Layout, ShardErrorKind> {
        Self::checked(h).ok_or_else(|| {
            ShardErrorKind::BadHeader(format!(
                "counts overflow the file size (documents {}, tokens {}, spans {})",
                h.num_documents, h.num_tokens, h.num_mask_spans
            ))
        })
    }

    fn checked(h: &Header) -> Option<Layout> {
        let fingerprint = section(HEADER_LEN as u64, h.fingerprint_len.into(), 1)?;
        let tokens = section(align8(fingerprint.end)?, h.num_tokens, 4)?;
        let offsets_len = h.num_documents.checked_add(1)?;
        let doc_offsets = section(align8(tokens.end)?, offsets_len, 8)?;
        let span_offsets_len = if h.has_loss_mask() { offsets_len } else { 0 };
        let span_offsets = section(doc_offsets.end, span_offsets_len, 8)?;
        let spans = section(span_offsets.end, h.num_mask_spans, 8)?;
        let block_crcs = section(spans.end, h.num_checksum_blocks(), 4)?;
        let languages_len = if h.has_languages() { h.num_documents } else { 0 };
        let languages = section(block_crcs.end, languages_len, 1)?;
        let file_len = align8(languages.end)?;
        Some(Layout {
            fingerprint,
            tokens,
            doc_offsets,
            span_offsets,
            spans,
            block_crcs,
            languages,
            file_len,
        })
    }

    /// The byte ranges that hold only alignment padding (must be zero).
    pub fn padding(&self) -> [Range<u64>; 3] {
        [
            self.fingerprint.end..self.tokens.start,
            self.tokens.end..self.doc_offsets.start,
            self.languages.end..self.file_len,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random_header(rng: &mut impl Rng) -> Header {
        let flags = rng.random_range(0..=KNOWN_FLAGS);
        Header {
            flags,
            vocab_size: rng.random_range(1..=u32::MAX),
            num_documents: rng.random_range(0..1 << 20),
            num_tokens: rng.random_range(0..1 << 30),
            num_mask_spans: if flags & FLAG_LOSS_MASK != 0 {
                rng.random_range(0..1 << 20)
            } else {
                0
            },
            fingerprint_len: rng.random_range(1..=MAX_FINGERPRINT_LEN),
            checksum_block_tokens: rng.random_range(1..=1 << 22),
            fingerprint_crc32: rng.random(),
            doc_offsets_crc32: rng.random(),
            span_offsets_crc32: rng.random(),
            spans_crc32: rng.random(),
            block_crcs_crc32: rng.random(),
            languages_crc32: if flags & FLAG_LANGUAGES != 0 { rng.random() } else { 0 },
        }
    }

    #[test]
    fn header_encode_decode_round_trips() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for _ in 0..200 {
            let header = random_header(&mut rng);
            let bytes = header.encode();
            assert_eq!(Header::decode(&bytes).unwrap(), header);
            assert_eq!(
                header_crc32(&bytes),
                crc32fast::hash(&bytes[..HEADER_LEN - 4])
            );
        }
    }

    /// The zero-copy views need every u32/u64 section on an 8-byte boundary, sections in file
    /// order without gaps other than the documented padding.
    #[test]
    fn layout_sections_are_aligned_and_contiguous() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        for _ in 0..200 {
            let h = random_header(&mut rng);
            let l = Layout::new(&h).unwrap();
            for start in [
                l.tokens.start,
                l.doc_offsets.start,
                l.span_offsets.start,
                l.spans.start,
                l.block_crcs.start,
            ] {
                assert_eq!(start % 8, 0, "{l:?}");
            }
            assert_eq!(l.file_len % 8, 0);
            assert_eq!(l.tokens.end - l.tokens.start, 4 * h.num_tokens);
            assert_eq!(
                l.doc_offsets.end - l.doc_offsets.start,
                8 * (h.num_documents + 1)
            );
            let span_offsets_len = if h.has_loss_mask() {
                8 * (h.num_documents + 1)
            } else {
                0
            };
            assert_eq!(l.span_offsets.end - l.span_offsets.start, span_offsets_len);
            assert_eq!(
                l.block_crcs.end - l.block_crcs.start,
                4 * h.num_tokens.div_ceil(h.checksum_block_tokens.into())
            );
            assert_eq!(
                (l.doc_offsets.end, l.span_offsets.end, l.spans.end, l.block_crcs.end),
                (l.span_offsets.start, l.spans.start, l.block_crcs.start, l.languages.start)
            );
            let languages_len = if h.has_languages() { h.num_documents } else { 0 };
            assert_eq!(l.languages.end - l.languages.start, languages_len);
            for pad in l.padding() {
                assert!(pad.end - pad.start < 8 && pad.start <= pad.end);
            }
        }
    }

    /// Edits one field of a header into an invalid value.
    type Breakage = fn(&mut Header);

    #[test]
    fn decode_rejects_bad_fields_with_valid_crc() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let good = random_header(&mut rng);
        let cases: [(Breakage, &str); 6] = [
            (|h| h.flags = 4, "unknown flag"),
            (|h| (h.flags, h.languages_crc32) = (h.flags & !FLAG_LANGUAGES, 7), "languages_crc32"),
            (|h| h.vocab_size = 0, "vocab_size"),
            (|h| h.checksum_block_tokens = 0, "checksum_block_tokens"),
            (
                |h| h.fingerprint_len = MAX_FINGERPRINT_LEN + 1,
                "fingerprint_len",
            ),
            (|h| (h.flags, h.num_mask_spans) = (0, 3), "mask spans"),
        ];
        for (breaks, expected) in cases {
            let mut header = good.clone();
            breaks(&mut header);
            match Header::decode(&header.encode()) {
                Err(ShardErrorKind::BadHeader(msg)) => assert!(msg.contains(expected), "{msg}"),
                other => panic!("{expected}: {other:?}"),
            }
        }
        let mut bytes = good.encode();
        bytes[100] = 1;
        let crc = crc32fast::hash(&bytes[..HEADER_LEN - 4]);
        bytes[HEADER_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
        assert!(
            matches!(Header::decode(&bytes), Err(ShardErrorKind::BadHeader(msg)) if msg.contains("reserved"))
        );
    }
}
