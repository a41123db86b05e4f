//! The byte-level BPE tokenizer: vocabulary (id <-> raw bytes), merges by rank, special
//! tokens, encoding and decoding.
//!
//! Encoding: special tokens are cut out first (leftmost, longest match wins, like the
//! `added_tokens` of Hugging Face `tokenizers`); the text between them is split into
//! pre-tokens (`pretokenize`); each pre-token's bytes start as one symbol per byte and
//! adjacent pairs are merged lowest rank first, equal ranks leftmost first (a heap of
//! (rank, position) over a linked list of symbols, so long pre-tokens stay O(n log n)).
//! An `Encoder` caches the ids of pre-tokens it has seen: natural text repeats most words,
//! so the cache hit rate is high and BPE runs only on new words. Tokens are stored as raw
//! bytes; the GPT-2 byte-to-unicode strings exist only in `tokenizer.json` (`hf.rs`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;

use crate::fxhash::FxHashMap;
use crate::nfc::nfc;
use crate::pretokenize::{pre_tokens, Pattern};

/// Unicode normalization applied to text (not to special tokens) before pre-tokenization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Normalizer {
    /// kormo's own tokenizers: text is taken as is.
    #[default]
    None,
    /// NFC, as Qwen2's tokenizer.json declares.
    Nfc,
}

/// Invalid tokenizer data or input ids; the message says what and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizerError(pub String);

impl fmt::Display for TokenizerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TokenizerError {}

/// A token matched verbatim in the input before pre-tokenization (`<|BOS|>`, `<think>`...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialToken {
    pub content: String,
    pub id: u32,
}

/// Byte-level BPE tokenizer. Immutable and `Sync`: share it between threads, give each
/// thread its own `Encoder`.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    pattern: Pattern,
    normalizer: Normalizer,
    /// Raw bytes of every id (special tokens: their UTF-8 text).
    id_to_bytes: Vec<Vec<u8>>,
    is_special: Vec<bool>,
    /// Added tokens that `decode(.., skip_special = true)` keeps (`tokenizers`' added tokens
    /// with `special: false`, such as Qwen3's `<think>`); sorted.
    kept_on_skip: Vec<u32>,
    /// Raw bytes of every model (non-special) token -> id.
    bytes_to_id: FxHashMap<Vec<u8>, u32>,
    byte_ids: [u32; 256],
    /// (left, right) -> (rank, merged id).
    merges: FxHashMap<(u32, u32), (u32, u32)>,
    merge_list: Vec<(u32, u32)>,
    /// Longest first, so the first match at a position is the longest.
    specials: Vec<SpecialToken>,
    special_first_byte: [bool; 256],
    /// Llama 3 style: a pre-token that is itself in the vocabulary is emitted whole.
    ignore_merges: bool,
}

impl Tokenizer {
    /// Builds a tokenizer from its parts. `vocab[id]` is the raw bytes of model token `id`;
    /// `merges` are (left id, right id) in rank order, and the concatenation of each pair
    /// must itself be in the vocabulary; special token ids must not collide with model ids,
    /// and model plus special ids must cover 0..n without gaps.
    pub fn new(
        pattern: Pattern,
        vocab: Vec<Vec<u8>>,
        merges: Vec<(u32, u32)>,
        specials: Vec<SpecialToken>,
        ignore_merges: bool,
    ) -> Result<Tokenizer, TokenizerError> {
        let err = |m: String| Err(TokenizerError(m));
        let total = vocab.len().max(
            specials
                .iter()
                .map(|s| s.id as usize + 1)
                .max()
                .unwrap_or(0),
        );
        let mut id_to_bytes: Vec<Option<Vec<u8>>> = vec![None; total];
        let mut is_special = vec![false; total];
        let mut bytes_to_id = FxHashMap::default();
        for (id, bytes) in vocab.into_iter().enumerate() {
            if bytes.is_empty() {
                continue; // a gap in the model vocabulary, filled by a special token below
            }
            if let Some(other) = bytes_to_id.insert(bytes.clone(), id as u32) {
                return err(format!(
                    "tokens {other} and {id} have the same bytes {:?}",
                    String::from_utf8_lossy(&bytes)
                ));
            }
            id_to_bytes[id] = Some(bytes);
        }
        for s in &specials {
            let slot = &mut id_to_bytes[s.id as usize];
            if slot.is_some() {
                return err(format!("special token {:?} reuses id {}", s.content, s.id));
            }
            if s.content.is_empty() {
                return err(format!("special token with id {} is empty", s.id));
            }
            *slot = Some(s.content.as_bytes().to_vec());
            is_special[s.id as usize] = true;
        }
        let mut filled = Vec::with_capacity(total);
        for (id, slot) in id_to_bytes.into_iter().enumerate() {
            match slot {
                Some(b) => filled.push(b),
                None => return err(format!("no token has id {id} (ids must cover 0..{total})")),
            }
        }
        let mut byte_ids = [0u32; 256];
        for b in 0..=255u8 {
            match bytes_to_id.get(&[b][..]) {
                Some(&id) => byte_ids[b as usize] = id,
                None => {
                    return err(format!(
                        "byte {b:#04x} has no token: a byte-level vocabulary needs all 256"
                    ))
                }
            }
        }
        let mut merge_map = FxHashMap::default();
        for (rank, &(a, b)) in merges.iter().enumerate() {
            let (Some(left), Some(right)) = (filled.get(a as usize), filled.get(b as usize)) else {
                return err(format!("merge #{rank} refers to unknown id ({a}, {b})"));
            };
            let joined = [left.as_slice(), right.as_slice()].concat();
            let Some(&merged) = bytes_to_id.get(&joined) else {
                return err(format!(
                    "merge #{rank} gives {:?}, which is not in the vocabulary",
                    String::from_utf8_lossy(&joined)
                ));
            };
            // A repeated pair takes its last rank, as in `tokenizers` (which collects the list
            // into a map).
            merge_map.insert((a, b), (rank as u32, merged));
        }
        let mut specials = specials;
        specials.sort_by(|x, y| y.content.len().cmp(&x.content.len()).then(x.id.cmp(&y.id)));
        let mut special_first_byte = [false; 256];
        for s in &specials {
            special_first_byte[s.content.as_bytes()[0] as usize] = true;
        }
        Ok(Tokenizer {
            pattern,
            normalizer: Normalizer::None,
            id_to_bytes: filled,
            is_special,
            kept_on_skip: Vec::new(),
            bytes_to_id,
            byte_ids,
            merges: merge_map,
            merge_list: merges,
            specials,
            special_first_byte,
            ignore_merges,
        })
    }

    pub fn pattern(&self) -> Pattern {
        self.pattern
    }

    /// The same tokenizer normalizing text with `normalizer` first.
    pub fn with_normalizer(mut self, normalizer: Normalizer) -> Tokenizer {
        self.normalizer = normalizer;
        self
    }

    pub fn normalizer(&self) -> Normalizer {
        self.normalizer
    }

    /// The same tokenizer with the added tokens `ids` kept by `decode(.., skip_special = true)`:
    /// `tokenizers`' added tokens marked `special: false` (matched like special tokens when
    /// encoding, but ordinary text when decoding). Ids that are not added tokens are ignored.
    pub fn with_kept_on_skip(mut self, ids: &[u32]) -> Tokenizer {
        self.kept_on_skip = ids.iter().copied().filter(|&id| self.is_special(id)).collect();
        self.kept_on_skip.sort_unstable();
        self.kept_on_skip.dedup();
        self
    }

    /// Whether added token `id` is kept by `decode(.., skip_special = true)`.
    pub fn is_kept_on_skip(&self, id: u32) -> bool {
        self.kept_on_skip.binary_search(&id).is_ok()
    }

    /// Number of ids (model tokens and special tokens).
    pub fn vocab_size(&self) -> usize {
        self.id_to_bytes.len()
    }

    /// Vocabulary size rounded up to a multiple of `multiple` (the model's embedding rows;
    /// KORMo pads to 128).
    pub fn padded_vocab_size(&self, multiple: usize) -> usize {
        self.vocab_size().div_ceil(multiple) * multiple
    }

    /// Raw bytes of `id`, if it exists.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.id_to_bytes.get(id as usize).map(Vec::as_slice)
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.is_special.get(id as usize).copied().unwrap_or(false)
    }

    /// Id of a special token by its text (`"<|BOS|>"`).
    pub fn special_id(&self, content: &str) -> Option<u32> {
        self.specials
            .iter()
            .find(|s| s.content == content)
            .map(|s| s.id)
    }

    /// Special tokens sorted by id.
    pub fn specials(&self) -> Vec<SpecialToken> {
        let mut s = self.specials.clone();
        s.sort_by_key(|t| t.id);
        s
    }

    /// Merges as (left id, right id) in rank order.
    pub fn merges(&self) -> &[(u32, u32)] {
        &self.merge_list
    }

    pub fn ignore_merges(&self) -> bool {
        self.ignore_merges
    }

    /// A stable 64-bit FNV-1a digest of everything that determines the encoding (pattern,
    /// tokens, merges, specials), as 16 hex digits. Shards record it so that data tokenized
    /// with one tokenizer is never trained with another.
    pub fn fingerprint(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |bytes: &[u8]| {
            for &b in bytes
                .iter()
                .chain((bytes.len() as u32).to_le_bytes().iter())
            {
                h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
            }
        };
        feed(self.pattern.regex().as_bytes());
        feed(&[self.ignore_merges as u8, self.normalizer as u8]);
        for (id, bytes) in self.id_to_bytes.iter().enumerate() {
            feed(bytes);
            feed(&[self.is_special[id] as u8]);
        }
        for &(a, b) in &self.merge_list {
            feed(&a.to_le_bytes());
            feed(&b.to_le_bytes());
        }
        format!("{h:016x}")
    }

    /// A fresh encoder (with an empty pre-token cache) for this tokenizer.
    pub fn encoder(&self) -> Encoder<'_> {
        Encoder {
            tokenizer: self,
            cache: FxHashMap::default(),
            scratch: BpeScratch::default(),
        }
    }

    /// Encodes one text (special tokens recognised). For many texts use an `Encoder`, whose
    /// cache persists, or `encode_batch`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        self.encoder().encode(text, &mut out);
        out
    }

    /// Encodes texts on `threads` threads (contiguous slices, one encoder each); the result is
    /// in input order and independent of the thread count.
    pub fn encode_batch(&self, texts: &[&str], threads: usize) -> Vec<Vec<u32>> {
        let threads = threads.max(1).min(texts.len().max(1));
        let per = texts.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let handles: Vec<_> = texts
                .chunks(per.max(1))
                .map(|chunk| {
                    scope.spawn(move || {
                        let mut enc = self.encoder();
                        chunk
                            .iter()
                            .map(|t| {
                                let mut v = Vec::new();
                                enc.encode(t, &mut v);
                                v
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("encoder thread panicked"))
                .collect()
        })
    }

    /// Decodes ids to text; invalid UTF-8 (a sequence cut inside a character) becomes U+FFFD,
    /// as in `tokenizers`. Special tokens are kept as their text unless `skip_special` (which
    /// keeps those of [`Tokenizer::with_kept_on_skip`]).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        let mut bytes = Vec::new();
        for &id in ids {
            let Some(b) = self.id_to_bytes.get(id as usize) else {
                return Err(TokenizerError(format!(
                    "id {id} is outside the vocabulary of {}",
                    self.vocab_size()
                )));
            };
            if !(skip_special && self.is_special[id as usize] && !self.is_kept_on_skip(id)) {
                bytes.extend_from_slice(b);
            }
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Position and special token of the leftmost (then longest) special token in `text`.
    fn find_special(&self, text: &str) -> Option<(usize, &SpecialToken)> {
        if self.specials.is_empty() {
            return None;
        }
        let bytes = text.as_bytes();
        for i in 0..bytes.len() {
            if self.special_first_byte[bytes[i] as usize] {
                if let Some(s) = self
                    .specials
                    .iter()
                    .find(|s| bytes[i..].starts_with(s.content.as_bytes()))
                {
                    return Some((i, s));
                }
            }
        }
        None
    }

    /// Applies the merges to one pre-token, appending its ids to `out`.
    fn bpe(&self, word: &[u8], scratch: &mut BpeScratch, out: &mut Vec<u32>) {
        if self.ignore_merges {
            if let Some(&id) = self.bytes_to_id.get(word) {
                out.push(id);
                return;
            }
        }
        let syms = &mut scratch.symbols;
        syms.clear();
        syms.extend(word.iter().enumerate().map(|(i, &b)| Symbol {
            id: self.byte_ids[b as usize],
            prev: i as u32 as i32 - 1,
            next: if i + 1 < word.len() { i as i32 + 1 } else { -1 },
        }));
        let heap = &mut scratch.heap;
        heap.clear();
        for i in 0..syms.len().saturating_sub(1) {
            if let Some(&(rank, _)) = self.merges.get(&(syms[i].id, syms[i + 1].id)) {
                heap.push(Reverse((rank, i as u32)));
            }
        }
        while let Some(Reverse((rank, pos))) = heap.pop() {
            let pos = pos as usize;
            let sym = syms[pos];
            if sym.id == DEAD || sym.next < 0 {
                continue;
            }
            let next = sym.next as usize;
            // Stale entry: the pair at `pos` has changed since it was pushed.
            let Some(&(current_rank, merged)) = self.merges.get(&(sym.id, syms[next].id)) else {
                continue;
            };
            if current_rank != rank {
                continue;
            }
            syms[pos].id = merged;
            syms[pos].next = syms[next].next;
            syms[next].id = DEAD;
            if syms[pos].next >= 0 {
                let after = syms[pos].next as usize;
                syms[after].prev = pos as i32;
                if let Some(&(r, _)) = self.merges.get(&(merged, syms[after].id)) {
                    heap.push(Reverse((r, pos as u32)));
                }
            }
            if sym.prev >= 0 {
                let before = sym.prev as usize;
                if let Some(&(r, _)) = self.merges.get(&(syms[before].id, merged)) {
                    heap.push(Reverse((r, before as u32)));
                }
            }
        }
        let mut i = 0i32;
        while i >= 0 {
            out.push(syms[i as usize].id);
            i = syms[i as usize].next;
        }
    }
}

const DEAD: u32 = u32::MAX;

#[derive(Clone, Copy)]
struct Symbol {
    id: u32,
    prev: i32,
    next: i32,
}

#[derive(Default)]
struct BpeScratch {
    symbols: Vec<Symbol>,
    heap: BinaryHeap<Reverse<(u32, u32)>>,
}

/// Encodes texts with one tokenizer, caching the ids of every pre-token seen (up to
/// `CACHE_CAPACITY` entries, then the cache restarts empty so memory stays bounded).
pub struct Encoder<'t> {
    tokenizer: &'t Tokenizer,
    cache: FxHashMap<Box<str>, Box<[u32]>>,
    scratch: BpeScratch,
}

const CACHE_CAPACITY: usize = 1 << 18;

impl Encoder<'_> {
    /// Appends the ids of `text` to `out`, recognising special tokens.
    pub fn encode(&mut self, text: &str, out: &mut Vec<u32>) {
        let mut rest = text;
        while let Some((at, special)) = self.tokenizer.find_special(rest) {
            self.encode_ordinary(&rest[..at], out);
            out.push(special.id);
            rest = &rest[at + special.content.len()..];
        }
        self.encode_ordinary(rest, out);
    }

    /// Appends the ids of `text` to `out`, treating special-token text as ordinary text.
    pub fn encode_ordinary(&mut self, text: &str, out: &mut Vec<u32>) {
        let tok = self.tokenizer;
        let text = match tok.normalizer {
            Normalizer::None => std::borrow::Cow::Borrowed(text),
            Normalizer::Nfc => nfc(text),
        };
        for piece in pre_tokens(&text, tok.pattern) {
            if piece.len() == 1 {
                out.push(tok.byte_ids[piece.as_bytes()[0] as usize]);
                continue;
            }
            if let Some(ids) = self.cache.get(piece) {
                out.extend_from_slice(ids);
                continue;
            }
            let start = out.len();
            tok.bpe(piece.as_bytes(), &mut self.scratch, out);
            if self.cache.len() >= CACHE_CAPACITY {
                self.cache.clear();
            }
            self.cache.insert(piece.into(), out[start..].into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vocabulary: 256 bytes, then "ab", "abc", "bc", " a"; specials after.
    fn tiny() -> Tokenizer {
        let mut vocab: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        for t in ["ab", "bc", "abc", " a"] {
            vocab.push(t.as_bytes().to_vec());
        }
        let id = |s: &str| vocab.iter().position(|v| v == s.as_bytes()).unwrap() as u32;
        let merges = vec![
            (id("b"), id("c")),
            (id("a"), id("b")),
            (id("a"), id("bc")),
            (id(" "), id("a")),
        ];
        let specials = vec![
            SpecialToken {
                content: "<s>".into(),
                id: 260,
            },
            SpecialToken {
                content: "<s>x".into(),
                id: 261,
            },
        ];
        Tokenizer::new(Pattern::Qwen2, vocab, merges, specials, false).unwrap()
    }

    #[test]
    fn merges_by_rank_and_decodes_back() {
        let t = tiny();
        // "abc": (b,c) has rank 0, then (a,bc) -> "abc" = 258.
        assert_eq!(t.encode("abc"), [258]);
        // "abab": (a,b) rank 1 twice, leftmost first.
        assert_eq!(t.encode("abab"), [256, 256]);
        // " abc": pre-token " abc"; (b,c) first, then (a,bc), and " " + "abc" has no merge.
        assert_eq!(t.encode(" abc"), [32, 258]);
        assert_eq!(
            t.decode(&t.encode("x abc<s>abab<s>x"), false).unwrap(),
            "x abc<s>abab<s>x"
        );
        assert_eq!(t.encode("a<s>x<s>"), [97, 261, 260]);
        assert_eq!(t.decode(&[97, 261, 260], true).unwrap(), "a");
        assert!(t.decode(&[999], false).is_err());
    }

    #[test]
    fn cached_and_batch_encoding_agree_with_fresh_encoding() {
        let t = tiny();
        let texts = ["abc abc", "héllo wörld abab", "<s>abc", "", "한국어 abc"];
        let mut enc = t.encoder();
        for text in texts {
            let mut cached = Vec::new();
            enc.encode(text, &mut cached);
            enc.encode(text, &mut Vec::new());
            assert_eq!(cached, t.encode(text));
            assert_eq!(t.decode(&cached, false).unwrap(), text);
        }
        let batch = t.encode_batch(&texts, 2);
        assert_eq!(batch, texts.iter().map(|x| t.encode(x)).collect::<Vec<_>>());
    }

    #[test]
    fn nfc_normalizer_applies_to_text_not_specials() {
        let t = tiny().with_normalizer(Normalizer::Nfc);
        assert_eq!(t.encode("e\u{301}<s>"), t.encode("é<s>"));
        assert_ne!(t.encode("e\u{301}"), tiny().encode("e\u{301}"));
        assert_ne!(t.fingerprint(), tiny().fingerprint());
    }

    #[test]
    fn repeated_merge_takes_its_last_rank() {
        let mut vocab: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        vocab.push(b"ab".to_vec());
        vocab.push(b"bc".to_vec());
        let merges = vec![(97, 98), (98, 99), (97, 98)];
        let t = Tokenizer::new(Pattern::Qwen2, vocab, merges, vec![], false).unwrap();
        // (a, b) ranks 2, after (b, c) at 1: "abc" -> "a" "bc", as `tokenizers` encodes it.
        assert_eq!(t.encode("abc"), [97, 257]);
    }

    #[test]
    fn rejects_bad_parts() {
        let vocab: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        let e = Tokenizer::new(Pattern::Qwen2, vocab.clone(), vec![(97, 98)], vec![], false)
            .unwrap_err();
        assert!(e.0.contains("not in the vocabulary"), "{e}");
        let e = Tokenizer::new(Pattern::Qwen2, vocab[..255].to_vec(), vec![], vec![], false)
            .unwrap_err();
        assert!(e.0.contains("0xff"), "{e}");
        let s = vec![SpecialToken {
            content: "<x>".into(),
            id: 300,
        }];
        let e = Tokenizer::new(Pattern::Qwen2, vocab, vec![], s, false).unwrap_err();
        assert!(e.0.contains("no token has id 256"), "{e}");
    }
}
