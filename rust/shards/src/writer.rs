//! Streaming shard writer.
//!
//! Tokens go straight to disk through a 1 MiB buffer while their block CRCs are computed on the
//! fly, so memory does not grow with the token count. What IS buffered until `finish` is small
//! per-document metadata: two u64 offsets per document (16 B, plus 1 B with languages), 8 B per mask span and 4 B per
//! 4 MiB token block — about 16 MB for a million documents. The file is written under a
//! temporary name in the target directory, fsynced, renamed over the target and the directory
//! fsynced, so readers never see a partial shard; dropping an unfinished writer deletes the
//! temporary file.

use crate::atomic;
use crate::error::{ShardError, ShardErrorKind};
use crate::format::{
    header_crc32, Header, Layout, MaskSpan, DEFAULT_CHECKSUM_BLOCK_TOKENS, FLAG_LANGUAGES,
    FLAG_LOSS_MASK, HEADER_LEN, LANGUAGE_KOREAN, MAX_FINGERPRINT_LEN,
};
use crate::{ShardMeta, ShardSummary};
use std::fs::{self, File};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Writes one shard; see the module docs for memory use and atomicity.
pub struct ShardWriter {
    path: PathBuf,
    temp_path: PathBuf,
    /// `None` once finished or after a failed write (the writer is then unusable).
    out: Option<BufWriter<File>>,
    meta: ShardMeta,
    fingerprint_crc32: u32,
    checksum_block_tokens: u32,
    /// doc_offsets[i] = global offset of document i's first token; starts with 0.
    doc_offsets: Vec<u64>,
    /// span_offsets[i] = index of document i's first span; starts with 0.
    span_offsets: Vec<u64>,
    spans: Vec<MaskSpan>,
    /// One language code per document; `Some` once the first document came with a language
    /// (then every document must), `None` before or when the first came without.
    languages: Option<Vec<u8>>,
    num_tokens: u64,
    block_crcs: Vec<u32>,
    block_hasher: crc32fast::Hasher,
    tokens_in_block: u32,
}

const WRITE_BUFFER_BYTES: usize = 1 << 20;

impl ShardWriter {
    /// Starts a shard at `path` (parent directory must exist; an existing file is replaced on
    /// `finish`). Uses 1 Mi tokens per checksum block.
    pub fn create(path: impl AsRef<Path>, meta: ShardMeta) -> Result<ShardWriter, ShardError> {
        Self::create_with_checksum_block(path, meta, DEFAULT_CHECKSUM_BLOCK_TOKENS)
    }

    /// Like [`create`](Self::create) with `checksum_block_tokens` tokens per CRC block: smaller
    /// blocks localise corruption more finely at 4 bytes of CRC per block.
    pub fn create_with_checksum_block(
        path: impl AsRef<Path>,
        meta: ShardMeta,
        checksum_block_tokens: u32,
    ) -> Result<ShardWriter, ShardError> {
        let path = path.as_ref().to_path_buf();
        let invalid =
            |msg: String| Err(ShardError::new(&path, ShardErrorKind::InvalidArgument(msg)));
        if meta.vocab_size == 0 {
            return invalid("vocab_size must be > 0".into());
        }
        let fingerprint_len = meta.tokenizer_fingerprint.len();
        if fingerprint_len == 0 || fingerprint_len > MAX_FINGERPRINT_LEN as usize {
            return invalid(format!(
                "tokenizer fingerprint must be 1..={MAX_FINGERPRINT_LEN} bytes, got {fingerprint_len}"
            ));
        }
        if checksum_block_tokens == 0 {
            return invalid("checksum_block_tokens must be > 0".into());
        }
        let Some(temp_path) = atomic::temp_path_for(&path) else {
            return invalid("path has no file name".into());
        };
        let file = File::create(&temp_path).map_err(|e| ShardError::io(&temp_path, "create", e))?;
        let mut writer = ShardWriter {
            path,
            temp_path,
            out: Some(BufWriter::with_capacity(WRITE_BUFFER_BYTES, file)),
            fingerprint_crc32: crc32fast::hash(meta.tokenizer_fingerprint.as_bytes()),
            meta,
            checksum_block_tokens,
            doc_offsets: vec![0],
            span_offsets: vec![0],
            spans: Vec::new(),
            languages: None,
            num_tokens: 0,
            block_crcs: Vec::new(),
            block_hasher: crc32fast::Hasher::new(),
            tokens_in_block: 0,
        };
        // Placeholder header (rewritten by finish), then the fingerprint and its padding; the
        // token section starts right after, so tokens can be streamed.
        let fingerprint = writer.meta.tokenizer_fingerprint.clone().into_bytes();
        writer.write_bytes(&[0u8; HEADER_LEN])?;
        writer.write_bytes(&fingerprint)?;
        writer.write_bytes(&[0u8; 8][..padding_to_8(HEADER_LEN + fingerprint.len())])?;
        Ok(writer)
    }

    /// Appends one document. `loss_mask_spans`: `None` trains on every token; otherwise a
    /// non-empty list of sorted, non-overlapping, non-empty half-open `(start, end)` position
    /// ranges within the document that are trained on. Empty documents are allowed (without
    /// spans). Invalid input is rejected before anything is written, so the writer stays usable.
    pub fn append_document(
        &mut self,
        tokens: &[u32],
        loss_mask_spans: Option<&[(u32, u32)]>,
    ) -> Result<(), ShardError> {
        self.append(tokens, loss_mask_spans, None)
    }

    /// Like [`append_document`](Self::append_document), also recording the document's
    /// `language` ([`crate::format::LANGUAGE_OTHER`] or [`crate::format::LANGUAGE_KOREAN`]).
    /// A shard records languages for all of its documents or for none: mixing this with
    /// `append_document` in one shard is refused. (A shard without documents has no
    /// languages section.)
    pub fn append_document_with_language(
        &mut self,
        tokens: &[u32],
        loss_mask_spans: Option<&[(u32, u32)]>,
        language: u8,
    ) -> Result<(), ShardError> {
        self.append(tokens, loss_mask_spans, Some(language))
    }

    fn append(
        &mut self,
        tokens: &[u32],
        loss_mask_spans: Option<&[(u32, u32)]>,
        language: Option<u8>,
    ) -> Result<(), ShardError> {
        let document = self.doc_offsets.len() - 1;
        let invalid = |msg: String| {
            Err(ShardError::new(
                &self.path,
                ShardErrorKind::InvalidArgument(msg),
            ))
        };
        let Ok(len) = u32::try_from(tokens.len()) else {
            return invalid(format!(
                "document {document} has {} tokens, more than u32::MAX",
                tokens.len()
            ));
        };
        // A max-reduction vectorises; the exact position is searched only on failure.
        if tokens
            .iter()
            .copied()
            .max()
            .is_some_and(|max| max >= self.meta.vocab_size)
        {
            let position = tokens
                .iter()
                .position(|&t| t >= self.meta.vocab_size)
                .unwrap_or(0);
            return invalid(format!(
                "document {document} position {position}: token id {} >= vocab size {}",
                tokens[position], self.meta.vocab_size
            ));
        }
        if let Err(msg) = self.check_language(document, language) {
            return invalid(msg);
        }
        if let Some(spans) = loss_mask_spans {
            if spans.is_empty() {
                return invalid(format!(
                    "document {document}: empty span list (pass None to train on every token)"
                ));
            }
            if let Err(msg) = check_spans(spans.iter().map(|&s| MaskSpan::from(s)), len) {
                return invalid(format!("document {document}: {msg}"));
            }
        }
        self.write_tokens(tokens)?;
        self.num_tokens += u64::from(len);
        self.doc_offsets.push(self.num_tokens);
        self.spans.extend(
            loss_mask_spans
                .unwrap_or_default()
                .iter()
                .map(|&s| MaskSpan::from(s)),
        );
        self.span_offsets.push(self.spans.len() as u64);
        if let Some(language) = language {
            self.languages.get_or_insert_with(Vec::new).push(language);
        }
        Ok(())
    }

    /// Whether document number `document` may come with `language`: a valid code, and the
    /// same choice (with or without a language) as the shard's earlier documents.
    fn check_language(&self, document: usize, language: Option<u8>) -> Result<(), String> {
        match (language, &self.languages, document) {
            (Some(code), _, _) if code > LANGUAGE_KOREAN => Err(format!(
                "document {document}: language code {code} is neither 0 (other) nor 1 (Korean)"
            )),
            (Some(_), None, 1..) => Err(format!(
                "document {document} has a language but the shard's earlier documents have none"
            )),
            (None, Some(_), _) => Err(format!(
                "document {document} has no language but the shard's earlier documents have one"
            )),
            _ => Ok(()),
        }
    }

    /// Number of documents appended so far.
    pub fn num_documents(&self) -> u64 {
        self.doc_offsets.len() as u64 - 1
    }

    /// Number of tokens appended so far.
    pub fn num_tokens(&self) -> u64 {
        self.num_tokens
    }

    /// Writes the metadata sections and header, fsyncs, and atomically renames the file into place.
    pub fn finish(mut self) -> Result<ShardSummary, ShardError> {
        if self.tokens_in_block > 0 {
            self.block_crcs
                .push(std::mem::take(&mut self.block_hasher).finalize());
            self.tokens_in_block = 0;
        }
        let has_loss_mask = !self.spans.is_empty();
        let languages = self.languages.take();
        let header = Header {
            flags: if has_loss_mask { FLAG_LOSS_MASK } else { 0 }
                | if languages.is_some() { FLAG_LANGUAGES } else { 0 },
            vocab_size: self.meta.vocab_size,
            num_documents: self.num_documents(),
            num_tokens: self.num_tokens,
            num_mask_spans: self.spans.len() as u64,
            fingerprint_len: self.meta.tokenizer_fingerprint.len() as u32,
            checksum_block_tokens: self.checksum_block_tokens,
            fingerprint_crc32: self.fingerprint_crc32,
            doc_offsets_crc32: crc32fast::hash(bytemuck::cast_slice(&self.doc_offsets)),
            span_offsets_crc32: if has_loss_mask {
                crc32fast::hash(bytemuck::cast_slice(&self.span_offsets))
            } else {
                0
            },
            spans_crc32: crc32fast::hash(bytemuck::cast_slice(&self.spans)),
            block_crcs_crc32: crc32fast::hash(bytemuck::cast_slice(&self.block_crcs)),
            languages_crc32: languages.as_deref().map_or(0, crc32fast::hash),
        };
        let layout = Layout::new(&header).map_err(|kind| ShardError::new(&self.path, kind))?;
        // Sections in file order; each is a multiple of 4 bytes, and only the token section can
        // end off an 8-byte boundary, which the first padding fixes.
        let token_padding = padding_to_8(usize::from(self.num_tokens % 2 == 1) * 4);
        let doc_offsets = std::mem::take(&mut self.doc_offsets);
        let span_offsets = if has_loss_mask {
            std::mem::take(&mut self.span_offsets)
        } else {
            Vec::new()
        };
        let spans = std::mem::take(&mut self.spans);
        let block_crcs = std::mem::take(&mut self.block_crcs);
        self.write_bytes(&[0u8; 8][..token_padding])?;
        self.write_bytes(bytemuck::cast_slice(&doc_offsets))?;
        self.write_bytes(bytemuck::cast_slice(&span_offsets))?;
        self.write_bytes(bytemuck::cast_slice(&spans))?;
        self.write_bytes(bytemuck::cast_slice(&block_crcs))?;
        let languages = languages.unwrap_or_default();
        self.write_bytes(&languages)?;
        self.write_bytes(&[0u8; 8][..padding_to_8(block_crcs.len() * 4 + languages.len())])?;

        let temp_path = self.temp_path.clone();
        let out = self.out.take().ok_or_else(|| self.failed_earlier())?;
        let mut file = out
            .into_inner()
            .map_err(|e| ShardError::io(&temp_path, "write", e.into_error()))?;
        let written = file
            .stream_position()
            .map_err(|e| ShardError::io(&temp_path, "seek", e))?;
        if written != layout.file_len {
            return Err(ShardError::new(
                &temp_path,
                ShardErrorKind::BadHeader(format!(
                    "wrote {written} bytes but the layout needs {}",
                    layout.file_len
                )),
            ));
        }
        let header_bytes = header.encode();
        file.seek(SeekFrom::Start(0))
            .map_err(|e| ShardError::io(&temp_path, "seek", e))?;
        file.write_all(&header_bytes)
            .map_err(|e| ShardError::io(&temp_path, "write", e))?;
        atomic::publish(file, &temp_path, &self.path)?;
        Ok(ShardSummary {
            path: self.path.clone(),
            meta: self.meta.clone(),
            num_documents: header.num_documents,
            num_tokens: header.num_tokens,
            num_mask_spans: header.num_mask_spans,
            file_bytes: layout.file_len,
            header_crc32: header_crc32(&header_bytes),
        })
    }

    /// Streams tokens to disk, closing a CRC block every `checksum_block_tokens` tokens.
    fn write_tokens(&mut self, mut tokens: &[u32]) -> Result<(), ShardError> {
        while !tokens.is_empty() {
            let room = (self.checksum_block_tokens - self.tokens_in_block) as usize;
            let (chunk, rest) = tokens.split_at(room.min(tokens.len()));
            let bytes: &[u8] = bytemuck::cast_slice(chunk);
            self.block_hasher.update(bytes);
            self.write_bytes(bytes)?;
            self.tokens_in_block += chunk.len() as u32;
            if self.tokens_in_block == self.checksum_block_tokens {
                self.block_crcs
                    .push(std::mem::take(&mut self.block_hasher).finalize());
                self.tokens_in_block = 0;
            }
            tokens = rest;
        }
        Ok(())
    }

    /// Writes to the temp file; after an I/O error the writer refuses further use, because the
    /// file no longer matches the buffered metadata.
    fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), ShardError> {
        let Some(out) = self.out.as_mut() else {
            return Err(self.failed_earlier());
        };
        if let Err(e) = out.write_all(bytes) {
            self.out = None;
            return Err(ShardError::io(&self.temp_path, "write", e));
        }
        Ok(())
    }

    fn failed_earlier(&self) -> ShardError {
        ShardError::new(
            &self.temp_path,
            ShardErrorKind::InvalidArgument(
                "writer is unusable after an earlier write error".into(),
            ),
        )
    }
}

impl std::fmt::Debug for ShardWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardWriter")
            .field("path", &self.path)
            .field("meta", &self.meta)
            .field("num_documents", &self.num_documents())
            .field("num_tokens", &self.num_tokens)
            .finish()
    }
}

impl Drop for ShardWriter {
    /// Removes the temp file of an unfinished (or failed) writer. After a successful `finish`
    /// the temp name no longer exists (it was renamed), so this is a no-op; the name is unique
    /// per process and writer, so it can never refer to someone else's file.
    fn drop(&mut self) {
        self.out = None;
        let _ = fs::remove_file(&self.temp_path);
    }
}

fn padding_to_8(len: usize) -> usize {
    (8 - len % 8) % 8
}

/// Checks one document's spans: each non-empty, sorted, non-overlapping, inside `[0, len)`.
/// Shared by the writer (input) and the reader (file validation).
pub(crate) fn check_spans(spans: impl Iterator<Item = MaskSpan>, len: u32) -> Result<(), String> {
    let mut previous_end = 0u32;
    for (i, span) in spans.enumerate() {
        if span.start >= span.end {
            return Err(format!(
                "span {i} [{}, {}) is empty or reversed",
                span.start, span.end
            ));
        }
        if span.end > len {
            return Err(format!(
                "span {i} [{}, {}) ends past the document length {len}",
                span.start, span.end
            ));
        }
        if span.start < previous_end {
            return Err(format!(
                "span {i} [{}, {}) overlaps or precedes the previous span",
                span.start, span.end
            ));
        }
        previous_end = span.end;
    }
    Ok(())
}
