//! Zero-copy shard reader.
//!
//! `Shard::open` maps the file and validates it completely before handing out anything: size
//! against the header-derived layout, magic, version, header CRC, zero padding, the CRC and
//! invariants of every metadata section (offsets monotone and in bounds, spans sorted and inside
//! their documents, language codes 0 or 1), and — unless [`Verification::StructureOnly`] is asked for — every token
//! block's CRC and every token id against the vocabulary. After that, accessors are slice
//! casts into the mapping that cannot fail except on out-of-range arguments.
//!
//! Cost: the structural checks touch only the metadata (O(documents + spans)); the token scan
//! reads the whole file once (CRC32 plus a max-reduction, a fraction of a second per GB from
//! page cache, disk-bound when cold). See docs/benchmarks.md for measured figures.

use crate::error::{ShardError, ShardErrorKind};
use crate::format::{header_crc32, Header, Layout, MaskSpan, HEADER_LEN, LANGUAGE_KOREAN};
use crate::writer::check_spans;
use crate::{Document, ShardMeta};
use bytemuck::Pod;
use memmap2::Mmap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// How much `Shard::open_with` checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verification {
    /// Everything, including the token block CRCs and token ids < vocab (reads the whole file).
    Full,
    /// Everything except the token scan: O(documents + spans). Token corruption then goes
    /// unnoticed until [`Shard::verify_tokens`] is called.
    StructureOnly,
}

/// A validated, memory-mapped shard. Cheap to share between threads (`Send + Sync`).
pub struct Shard {
    path: PathBuf,
    map: Mmap,
    meta: ShardMeta,
    header: Header,
    header_crc32: u32,
    sections: Sections,
    num_documents: usize,
}

/// Byte ranges of the sections within the mapping, as `usize`.
struct Sections {
    tokens: Range<usize>,
    doc_offsets: Range<usize>,
    span_offsets: Range<usize>,
    spans: Range<usize>,
    block_crcs: Range<usize>,
    /// Empty without FLAG_LANGUAGES.
    languages: Range<usize>,
}

impl Shard {
    /// Opens and fully verifies a shard (including the whole-file token scan).
    pub fn open(path: impl AsRef<Path>) -> Result<Shard, ShardError> {
        Self::open_with(path, Verification::Full)
    }

    /// Opens a shard with the given level of verification.
    pub fn open_with(
        path: impl AsRef<Path>,
        verification: Verification,
    ) -> Result<Shard, ShardError> {
        let path = path.as_ref();
        let err = |kind| ShardError::new(path, kind);
        let file = File::open(path).map_err(|e| ShardError::io(path, "open", e))?;
        let actual = file
            .metadata()
            .map_err(|e| ShardError::io(path, "stat", e))?
            .len();
        if actual < HEADER_LEN as u64 {
            return Err(err(ShardErrorKind::SizeMismatch {
                expected: HEADER_LEN as u64,
                actual,
            }));
        }
        // SAFETY: the mapping is only sound while nobody modifies the file. Shards are immutable
        // once published: the writer builds a temp file and renames it into place, never
        // writing to an existing shard. Everything read from the map is validated below.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| ShardError::io(path, "mmap", e))?;
        // The map can be shorter than the size read above if the file shrank in between.
        let header_bytes: &[u8; HEADER_LEN] = map
            .get(..HEADER_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                err(ShardErrorKind::SizeMismatch {
                    expected: HEADER_LEN as u64,
                    actual: map.len() as u64,
                })
            })?;
        let header = Header::decode(header_bytes).map_err(err)?;
        let header_crc32 = header_crc32(header_bytes);
        let layout = Layout::new(&header).map_err(err)?;
        if layout.file_len != actual || map.len() as u64 != actual {
            return Err(err(ShardErrorKind::SizeMismatch {
                expected: layout.file_len,
                actual,
            }));
        }
        let range = |r: &Range<u64>| -> Range<usize> { r.start as usize..r.end as usize };
        for pad in layout.padding() {
            if map[range(&pad)].iter().any(|&b| b != 0) {
                return Err(err(ShardErrorKind::BadHeader(format!(
                    "padding bytes {}..{} are not zero",
                    pad.start, pad.end
                ))));
            }
        }
        let Ok(num_documents) = usize::try_from(header.num_documents) else {
            return Err(err(ShardErrorKind::BadHeader(
                "document count exceeds the address space".into(),
            )));
        };
        let fingerprint_bytes = &map[range(&layout.fingerprint)];
        check_crc(
            path,
            "tokenizer fingerprint",
            header.fingerprint_crc32,
            fingerprint_bytes,
        )?;
        let Ok(fingerprint) = std::str::from_utf8(fingerprint_bytes) else {
            return Err(err(ShardErrorKind::BadHeader(
                "tokenizer fingerprint is not UTF-8".into(),
            )));
        };
        let meta = ShardMeta {
            vocab_size: header.vocab_size,
            tokenizer_fingerprint: fingerprint.to_owned(),
        };
        let shard = Shard {
            path: path.to_path_buf(),
            meta,
            header_crc32,
            sections: Sections {
                tokens: range(&layout.tokens),
                doc_offsets: range(&layout.doc_offsets),
                span_offsets: range(&layout.span_offsets),
                spans: range(&layout.spans),
                block_crcs: range(&layout.block_crcs),
                languages: range(&layout.languages),
            },
            num_documents,
            header,
            map,
        };
        shard.validate_structure()?;
        if verification == Verification::Full {
            shard.verify_tokens()?;
        }
        Ok(shard)
    }

    /// Checks the metadata sections' CRCs and invariants (part of every open).
    fn validate_structure(&self) -> Result<(), ShardError> {
        let h = &self.header;
        let doc_offsets = self.section::<u64>(&self.sections.doc_offsets, "document offsets")?;
        check_crc(
            &self.path,
            "document offsets",
            h.doc_offsets_crc32,
            bytemuck::cast_slice(doc_offsets),
        )?;
        check_offsets(doc_offsets, h.num_tokens, "token")
            .map_err(|msg| self.error(ShardErrorKind::BadOffsets(msg)))?;
        self.section::<u32>(&self.sections.tokens, "tokens")?;
        let block_crcs = self.section::<u32>(&self.sections.block_crcs, "token block checksums")?;
        check_crc(
            &self.path,
            "token block checksum table",
            h.block_crcs_crc32,
            bytemuck::cast_slice(block_crcs),
        )?;
        self.validate_languages()?;
        if !h.has_loss_mask() {
            return Ok(());
        }
        let span_offsets = self.section::<u64>(&self.sections.span_offsets, "span offsets")?;
        check_crc(
            &self.path,
            "span offsets",
            h.span_offsets_crc32,
            bytemuck::cast_slice(span_offsets),
        )?;
        let spans = self.section::<MaskSpan>(&self.sections.spans, "mask spans")?;
        check_crc(
            &self.path,
            "mask spans",
            h.spans_crc32,
            bytemuck::cast_slice(spans),
        )?;
        check_offsets(span_offsets, h.num_mask_spans, "span")
            .map_err(|msg| self.error(ShardErrorKind::BadMaskSpans(msg)))?;
        for document in 0..self.num_documents {
            let doc_len = doc_offsets[document + 1] - doc_offsets[document];
            let doc_spans =
                &spans[span_offsets[document] as usize..span_offsets[document + 1] as usize];
            // Spans are u32, so a longer document just cannot be covered past u32::MAX.
            check_spans(
                doc_spans.iter().copied(),
                u32::try_from(doc_len).unwrap_or(u32::MAX),
            )
            .map_err(|msg| {
                self.error(ShardErrorKind::BadMaskSpans(format!(
                    "document {document}: {msg}"
                )))
            })?;
        }
        Ok(())
    }

    /// Checks the languages section's CRC and that every code is 0 or 1 (when present).
    fn validate_languages(&self) -> Result<(), ShardError> {
        let Some(languages) = self.languages() else {
            return Ok(());
        };
        check_crc(&self.path, "languages", self.header.languages_crc32, languages)?;
        match languages.iter().position(|&code| code > LANGUAGE_KOREAN) {
            Some(document) => Err(self.error(ShardErrorKind::BadHeader(format!(
                "document {document}: language code {} is neither 0 (other) nor 1 (Korean)",
                languages[document]
            )))),
            None => Ok(()),
        }
    }

    /// Verifies every token block's CRC and that every token id is below the vocabulary size;
    /// reads the whole token section. `open` does this already; call it after
    /// `open_with(.., StructureOnly)` to verify later (e.g. on a background thread).
    pub fn verify_tokens(&self) -> Result<(), ShardError> {
        let tokens = self.all_tokens();
        let block_crcs: &[u32] = bytemuck::cast_slice(&self.map[self.sections.block_crcs.clone()]);
        let block_len = self.header.checksum_block_tokens as usize;
        for (block, (chunk, &stored)) in tokens.chunks(block_len).zip(block_crcs).enumerate() {
            let first = block as u64 * block_len as u64;
            let section = format!(
                "token block {block} (tokens {first}..{})",
                first + chunk.len() as u64
            );
            check_crc(&self.path, &section, stored, bytemuck::cast_slice(chunk))?;
            // A max-reduction vectorises; the exact position is searched only on failure.
            if chunk
                .iter()
                .copied()
                .max()
                .is_some_and(|max| max >= self.meta.vocab_size)
            {
                let at = chunk
                    .iter()
                    .position(|&t| t >= self.meta.vocab_size)
                    .unwrap_or(0);
                let global_offset = first + at as u64;
                let document = self.document_at(global_offset)?;
                let position = global_offset - self.doc_offsets()[document];
                return Err(self.error(ShardErrorKind::TokenOutOfVocab {
                    token: chunk[at],
                    vocab_size: self.meta.vocab_size,
                    global_offset,
                    document,
                    position,
                }));
            }
        }
        Ok(())
    }

    /// The file this shard was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Vocabulary size and tokenizer fingerprint from the header.
    pub fn meta(&self) -> &ShardMeta {
        &self.meta
    }

    pub fn num_documents(&self) -> usize {
        self.num_documents
    }

    pub fn num_tokens(&self) -> u64 {
        self.header.num_tokens
    }

    pub fn num_mask_spans(&self) -> u64 {
        self.header.num_mask_spans
    }

    /// File size in bytes.
    pub fn file_bytes(&self) -> u64 {
        self.map.len() as u64
    }

    /// CRC32 of the header; identifies the whole file's content (recorded in the manifest).
    pub fn header_crc32(&self) -> u32 {
        self.header_crc32
    }

    /// Whether the shard records each document's language (format::FLAG_LANGUAGES).
    pub fn has_languages(&self) -> bool {
        self.header.has_languages()
    }

    /// Every document's language code (format::LANGUAGE_OTHER / LANGUAGE_KOREAN), in order;
    /// `None` for a shard written without languages.
    pub fn languages(&self) -> Option<&[u8]> {
        self.has_languages()
            .then(|| &self.map[self.sections.languages.clone()])
    }

    /// The language of document `index`; `None` when the shard has no languages or `index` is
    /// past the last document.
    pub fn language(&self, index: usize) -> Option<u8> {
        self.languages().and_then(|l| l.get(index).copied())
    }

    /// Document `index` (tokens, loss-mask spans and language).
    pub fn document(&self, index: usize) -> Result<Document<'_>, ShardError> {
        if index >= self.num_documents {
            return Err(self.out_of_range(format!("document {index} of {}", self.num_documents)));
        }
        Ok(self.document_unchecked(index))
    }

    /// Global token range `[start, end)` of document `index`.
    pub fn document_token_range(&self, index: usize) -> Result<Range<u64>, ShardError> {
        if index >= self.num_documents {
            return Err(self.out_of_range(format!("document {index} of {}", self.num_documents)));
        }
        let offsets = self.doc_offsets();
        Ok(offsets[index]..offsets[index + 1])
    }

    /// Index of the document containing global token `global_offset` (binary search over the
    /// offsets; empty documents never contain a token).
    pub fn document_at(&self, global_offset: u64) -> Result<usize, ShardError> {
        if global_offset >= self.num_tokens() {
            return Err(self.out_of_range(format!(
                "token offset {global_offset} of {}",
                self.num_tokens()
            )));
        }
        // offsets[0] == 0 <= global_offset, so the partition point is >= 1.
        Ok(self
            .doc_offsets()
            .partition_point(|&start| start <= global_offset)
            - 1)
    }

    /// `len` tokens starting at global token offset `global_offset` (may span documents).
    pub fn tokens(&self, global_offset: u64, len: usize) -> Result<&[u32], ShardError> {
        let all = self.all_tokens();
        match global_offset.checked_add(len as u64) {
            Some(end) if end <= all.len() as u64 => Ok(&all[global_offset as usize..end as usize]),
            _ => Err(self.out_of_range(format!(
                "tokens {global_offset}..{global_offset}+{len} of {}",
                all.len()
            ))),
        }
    }

    /// Every token of the shard, in order.
    pub fn all_tokens(&self) -> &[u32] {
        bytemuck::cast_slice(&self.map[self.sections.tokens.clone()])
    }

    /// All documents in order.
    pub fn documents(&self) -> impl ExactSizeIterator<Item = Document<'_>> + '_ {
        (0..self.num_documents).map(move |index| self.document_unchecked(index))
    }

    /// `index < num_documents`; the sections were validated at open, so slicing cannot fail.
    fn document_unchecked(&self, index: usize) -> Document<'_> {
        let offsets = self.doc_offsets();
        let tokens = &self.all_tokens()[offsets[index] as usize..offsets[index + 1] as usize];
        let loss_mask_spans = if self.header.has_loss_mask() {
            let span_offsets: &[u64] =
                bytemuck::cast_slice(&self.map[self.sections.span_offsets.clone()]);
            let spans: &[MaskSpan] = bytemuck::cast_slice(&self.map[self.sections.spans.clone()]);
            &spans[span_offsets[index] as usize..span_offsets[index + 1] as usize]
        } else {
            &[]
        };
        Document {
            tokens,
            loss_mask_spans,
            language: self.language(index),
        }
    }

    fn doc_offsets(&self) -> &[u64] {
        bytemuck::cast_slice(&self.map[self.sections.doc_offsets.clone()])
    }

    /// Views a section as `&[T]`; fails (instead of panicking) if it is misaligned, which can
    /// only happen if the mapping itself is not 8-byte aligned.
    fn section<T: Pod>(&self, range: &Range<usize>, name: &str) -> Result<&[T], ShardError> {
        bytemuck::try_cast_slice(&self.map[range.clone()]).map_err(|e| {
            self.error(ShardErrorKind::BadHeader(format!(
                "{name} section cannot be viewed in place: {e}"
            )))
        })
    }

    fn error(&self, kind: ShardErrorKind) -> ShardError {
        ShardError::new(&self.path, kind)
    }

    fn out_of_range(&self, what: String) -> ShardError {
        self.error(ShardErrorKind::InvalidArgument(format!(
            "{what} is out of range"
        )))
    }
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("path", &self.path)
            .field("meta", &self.meta)
            .field("num_documents", &self.num_documents)
            .field("num_tokens", &self.header.num_tokens)
            .finish()
    }
}

fn check_crc(path: &Path, section: &str, stored: u32, bytes: &[u8]) -> Result<(), ShardError> {
    let computed = crc32fast::hash(bytes);
    if computed != stored {
        return Err(ShardError::new(
            path,
            ShardErrorKind::ChecksumMismatch {
                section: section.to_owned(),
                stored,
                computed,
            },
        ));
    }
    Ok(())
}

/// An offsets table (`count + 1` entries pointing into an array of `total` items) must start at
/// 0, never decrease, and end at `total`.
fn check_offsets(offsets: &[u64], total: u64, item: &str) -> Result<(), String> {
    if offsets.first() != Some(&0) {
        return Err(format!("first offset is {:?}, expected 0", offsets.first()));
    }
    if let Some(document) = offsets.windows(2).position(|w| w[1] < w[0]) {
        return Err(format!(
            "offsets not monotone: document {document} starts at {item} {} but document {} at {}",
            offsets[document],
            document + 1,
            offsets[document + 1]
        ));
    }
    if offsets.last() != Some(&total) {
        return Err(format!(
            "last offset is {:?}, expected the {item} count {total}",
            offsets.last()
        ));
    }
    Ok(())
}
