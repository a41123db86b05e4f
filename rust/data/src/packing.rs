//! KORMo sequence packing: documents in, fixed-length training rows out.
//!
//! Each document becomes `BOS + text + EOS`; documents are concatenated into one stream and cut
//! into rows of `seq_len` tokens, so a document may straddle two rows (KORMo's
//! `sequence_pack.py`). Per row we derive, like KORMo's collator:
//! * targets: the next token in the row; the last position has no target (weight 0), as in
//!   Hugging Face's shifted loss over a packed row;
//! * document ids: the running count of BOS tokens in the row (tokens before the row's first BOS,
//!   the tail of a straddling document, get id 0); attention is causal within equal ids;
//! * positions: 0..seq_len across the row (KORMo's default), or restarting at each BOS;
//! * languages: per token, the language code of its document (1 Korean, 0 other; 0 when the
//!   shard records none), for cross-lingual document attention (`[attention] mask = "xlda"`);
//! * loss weights: 1 where the target token is trained on, else 0. A target is not trained on
//!   when it is a BOS (predicting the next document across a boundary is noise), when it lies
//!   outside the document's loss-mask spans (SFT: assistant turns only), or when it is `<think>`
//!   in the reasoning phase (KORMo excludes the trigger token so SFT can teach it). The appended
//!   EOS continues the document's last token: trained when the document has no spans or its last
//!   token is inside one (it closes the final assistant turn).

use crate::vocab::SpecialTokens;
use kormo_shards::Document;
use serde::{Deserialize, Serialize};

/// How RoPE position ids are assigned inside a packed row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PositionMode {
    /// 0..seq_len across the whole row (KORMo).
    Row,
    /// Restart at 0 at every BOS.
    Document,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PackingOptions {
    pub seq_len: usize,
    pub specials: SpecialTokens,
    pub positions: PositionMode,
    /// Give `<think>` targets weight 0 (reasoning phase).
    pub mask_think: bool,
}

/// One document as it enters the stream: tokens and, per token, whether it is trained on when
/// it is the target; and the document's language (`None` when its shard records none).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DocumentStream {
    pub tokens: Vec<u32>,
    pub trained: Vec<bool>,
    pub language: Option<u8>,
}

impl DocumentStream {
    pub fn new(doc: &Document<'_>, opts: &PackingOptions) -> DocumentStream {
        let n = doc.tokens.len();
        let mut tokens = Vec::with_capacity(n + 2);
        let mut trained = Vec::with_capacity(n + 2);
        tokens.push(opts.specials.bos);
        trained.push(false);
        for (i, &token) in doc.tokens.iter().enumerate() {
            tokens.push(token);
            trained.push(doc.is_trained(i) && !(opts.mask_think && token == opts.specials.think));
        }
        tokens.push(opts.specials.eos);
        trained.push(doc.loss_mask_spans.is_empty() || (n > 0 && doc.is_trained(n - 1)));
        DocumentStream {
            tokens,
            trained,
            language: doc.language,
        }
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// Packed rows, row-major: every vector has `rows * seq_len` entries.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PackedRows {
    pub tokens: Vec<u32>,
    pub targets: Vec<u32>,
    pub loss_weights: Vec<f32>,
    pub doc_ids: Vec<u32>,
    pub positions: Vec<u32>,
    /// Per token, its document's language code (kormo_shards::format::LANGUAGE_KOREAN or
    /// LANGUAGE_OTHER; LANGUAGE_OTHER where the shard records none).
    pub languages: Vec<u8>,
    pub rows: usize,
    pub seq_len: usize,
}

impl PackedRows {
    pub fn new(seq_len: usize) -> PackedRows {
        PackedRows {
            seq_len,
            ..PackedRows::default()
        }
    }

    /// Appends one row built from exactly `seq_len` stream tokens, their trained flags and
    /// their documents' language codes.
    pub fn push_row(
        &mut self,
        tokens: &[u32],
        trained: &[bool],
        languages: &[u8],
        opts: &PackingOptions,
    ) {
        assert_eq!(
            tokens.len(),
            opts.seq_len,
            "a row is exactly seq_len tokens"
        );
        assert_eq!(trained.len(), tokens.len());
        assert_eq!(languages.len(), tokens.len());
        self.languages.extend_from_slice(languages);
        let mut doc_id = 0u32;
        let mut doc_start = 0usize;
        for (i, &token) in tokens.iter().enumerate() {
            if token == opts.specials.bos {
                doc_id += 1;
                doc_start = i;
            }
            let next = i + 1;
            let (target, weight) = match tokens.get(next) {
                Some(&t) => (t, if trained[next] { 1.0 } else { 0.0 }),
                None => (opts.specials.pad, 0.0),
            };
            self.tokens.push(token);
            self.targets.push(target);
            self.loss_weights.push(weight);
            self.doc_ids.push(doc_id);
            self.positions.push(match opts.positions {
                PositionMode::Row => i as u32,
                PositionMode::Document => (i - doc_start) as u32,
            });
        }
        self.rows += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kormo_shards::MaskSpan;

    const SPECIALS: SpecialTokens = SpecialTokens {
        bos: 100,
        eos: 101,
        think: 102,
        pad: 103,
    };

    fn opts(seq_len: usize, positions: PositionMode, mask_think: bool) -> PackingOptions {
        PackingOptions {
            seq_len,
            specials: SPECIALS,
            positions,
            mask_think,
        }
    }

    #[test]
    fn document_stream_wraps_and_flags() {
        let spans = [MaskSpan { start: 1, end: 3 }];
        let doc = Document {
            tokens: &[7, 8, 102, 9],
            loss_mask_spans: &spans,
            language: None,
        };
        let s = DocumentStream::new(&doc, &opts(4, PositionMode::Row, true));
        assert_eq!(s.tokens, vec![100, 7, 8, 102, 9, 101]);
        // BOS never; 7 outside span; 8 in span; think in span but masked; 9 outside; EOS follows 9.
        assert_eq!(s.trained, vec![false, false, true, false, false, false]);
        let s = DocumentStream::new(&doc, &opts(4, PositionMode::Row, false));
        assert_eq!(s.trained, vec![false, false, true, true, false, false]);
        let spans = [MaskSpan { start: 2, end: 4 }];
        let doc = Document {
            tokens: &[7, 8, 102, 9],
            loss_mask_spans: &spans,
            language: None,
        };
        let s = DocumentStream::new(&doc, &opts(4, PositionMode::Row, false));
        assert_eq!(
            s.trained.last(),
            Some(&true),
            "EOS closes a trained final turn"
        );
        let empty = Document {
            tokens: &[],
            loss_mask_spans: &[],
            language: Some(1),
        };
        let s = DocumentStream::new(&empty, &opts(4, PositionMode::Row, false));
        assert_eq!(
            (s.tokens, s.trained, s.language),
            (vec![100, 101], vec![false, true], Some(1))
        );
    }

    #[test]
    fn row_targets_doc_ids_positions() {
        // Row starts with the tail of a straddling document, then two documents begin.
        let tokens = [5, 101, 100, 6, 7, 101, 100, 8];
        let trained = [true, true, false, true, true, true, false, true];
        let languages = [1, 1, 0, 0, 0, 0, 1, 1];
        let mut rows = PackedRows::new(8);
        rows.push_row(&tokens, &trained, &languages, &opts(8, PositionMode::Row, false));
        rows.push_row(&tokens, &trained, &languages, &opts(8, PositionMode::Document, false));
        assert_eq!(rows.rows, 2);
        assert_eq!(&rows.targets[..8], &[101, 100, 6, 7, 101, 100, 8, 103]);
        assert_eq!(
            &rows.loss_weights[..8],
            &[1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0]
        );
        assert_eq!(&rows.doc_ids[..8], &[0, 0, 1, 1, 1, 1, 2, 2]);
        assert_eq!(&rows.positions[..8], &[0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(&rows.positions[8..], &[0, 1, 0, 1, 2, 3, 0, 1]);
        assert_eq!(&rows.tokens[8..], &tokens);
        assert_eq!(&rows.languages[..8], &languages);
        assert_eq!(&rows.languages[8..], &languages);
    }
}
