//! Token ids the packer and the synthetic corpus need, and the vocabularies a run can use.
//!
//! The built-in byte-level vocabulary ([`ByteVocab`]): ids 0..=255 are raw UTF-8 bytes, then
//! KORMo's special tokens, and the table is padded to a multiple of 128 (384) so the embedding
//! and head have GPU-friendly shapes. A [`Vocabulary`] is either that or a trained BPE
//! `tokenizer.json` (kormo_tokenizer), whose special ids are found by their text (`<|BOS|>`,
//! `<|EOT|>`, `<think>`, `</think>`, `<|BOT|>`, optional `<|pad|>`) and whose size is padded to a
//! multiple of 128 the same way; the synthetic corpus is generated as text and encoded with it.

use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

/// The special token ids packing and masking depend on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialTokens {
    /// `<|BOS|>`, prepended to every document; its running count is the document id.
    pub bos: u32,
    /// End of document / end of turn (`<|EOT|>`), appended to every document.
    pub eos: u32,
    /// `<think>`: excluded from the loss in the reasoning phase.
    pub think: u32,
    /// Target id of positions that carry no loss (the last position of each row).
    pub pad: u32,
}

/// The byte-level vocabulary: 256 bytes, specials, padding up to [`ByteVocab::SIZE`].
pub struct ByteVocab;

impl ByteVocab {
    pub const BOS: u32 = 256;
    pub const EOT: u32 = 257;
    pub const THINK: u32 = 258;
    pub const THINK_END: u32 = 259;
    pub const BOT: u32 = 260;
    pub const PAD: u32 = 261;
    /// 256 bytes + 6 specials, rounded up to a multiple of 128.
    pub const SIZE: u32 = 384;
    /// Tokenizer fingerprint recorded in shards made with this vocabulary.
    pub const FINGERPRINT: &'static str = "kormo-byte-vocab-v1";

    pub fn specials() -> SpecialTokens {
        SpecialTokens {
            bos: Self::BOS,
            eos: Self::EOT,
            think: Self::THINK,
            pad: Self::PAD,
        }
    }

    /// UTF-8 bytes of `text` as token ids.
    pub fn encode(text: &str) -> Vec<u32> {
        text.bytes().map(u32::from).collect()
    }

    /// Human-readable text of `ids`: bytes decoded as UTF-8 (lossy), specials spelled out.
    pub fn decode(ids: &[u32]) -> String {
        let mut out = String::new();
        let mut bytes = Vec::new();
        for &id in ids {
            if id < 256 {
                bytes.push(id as u8);
                continue;
            }
            out.push_str(&String::from_utf8_lossy(&bytes));
            bytes.clear();
            out.push_str(match id {
                Self::BOS => "<|BOS|>",
                Self::EOT => "<|EOT|>",
                Self::THINK => "<think>",
                Self::THINK_END => "</think>",
                Self::BOT => "<|BOT|>",
                Self::PAD => "<|pad|>",
                _ => "<|unused|>",
            });
        }
        out.push_str(&String::from_utf8_lossy(&bytes));
        out
    }
}

/// The byte vocabulary as a `kormo_tokenizer` tokenizer: a byte-level BPE without merges (id =
/// byte value for 0..=255, then the six specials at their [`ByteVocab`] ids), which encodes and
/// decodes exactly as [`ByteVocab`] does; the chat template renders with it, and `hf export`
/// writes it as the `tokenizer.json` of byte-vocabulary models.
pub fn byte_tokenizer() -> kormo_tokenizer::Tokenizer {
    let vocab = (0..=255u8).map(|b| vec![b]).collect();
    let specials = [
        ("<|BOS|>", ByteVocab::BOS),
        ("<|EOT|>", ByteVocab::EOT),
        ("<think>", ByteVocab::THINK),
        ("</think>", ByteVocab::THINK_END),
        ("<|BOT|>", ByteVocab::BOT),
        ("<|pad|>", ByteVocab::PAD),
    ]
    .into_iter()
    .map(|(content, id)| kormo_tokenizer::SpecialToken { content: content.to_string(), id })
    .collect();
    kormo_tokenizer::Tokenizer::new(kormo_tokenizer::Pattern::Qwen2, vocab, Vec::new(), specials, false)
        .expect("the byte vocabulary is a valid tokenizer")
}

/// Every special token id the data layer writes (synthetic corpus) or packs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecialIds {
    pub bos: u32,
    /// `<|EOT|>`: end of document and of a chat turn.
    pub eot: u32,
    pub think: u32,
    pub think_end: u32,
    /// `<|BOT|>`: begin of a chat turn.
    pub bot: u32,
    /// Target of positions without loss: `<|pad|>` when the tokenizer has one, else `<|EOT|>`
    /// (its weight is 0, so any valid id does).
    pub pad: u32,
}

impl SpecialIds {
    /// The subset packing needs.
    pub fn packing(&self) -> SpecialTokens {
        SpecialTokens {
            bos: self.bos,
            eos: self.eot,
            think: self.think,
            pad: self.pad,
        }
    }
}

/// The vocabulary of a run: the built-in bytes or a trained BPE tokenizer. Cheap to clone.
#[derive(Clone)]
pub struct Vocabulary {
    ids: SpecialIds,
    /// Embedding rows: the id count rounded up to a multiple of 128.
    size: u32,
    fingerprint: String,
    /// None: the byte vocabulary.
    bpe: Option<Arc<kormo_tokenizer::Tokenizer>>,
}

/// Special tokens a tokenizer must define, by the role they play here.
const REQUIRED_SPECIALS: [(&str, &str); 5] = [
    ("<|BOS|>", "begins every document"),
    ("<|EOT|>", "ends every document and chat turn"),
    ("<think>", "opens a reasoning trace"),
    ("</think>", "closes a reasoning trace"),
    ("<|BOT|>", "begins a chat turn"),
];

impl Vocabulary {
    pub fn bytes() -> Vocabulary {
        Vocabulary {
            ids: SpecialIds {
                bos: ByteVocab::BOS,
                eot: ByteVocab::EOT,
                think: ByteVocab::THINK,
                think_end: ByteVocab::THINK_END,
                bot: ByteVocab::BOT,
                pad: ByteVocab::PAD,
            },
            size: ByteVocab::SIZE,
            fingerprint: ByteVocab::FINGERPRINT.into(),
            bpe: None,
        }
    }

    /// Loads a `tokenizer.json`; errors name the file (and a missing special token).
    pub fn load(path: &Path) -> Result<Vocabulary, crate::DataError> {
        let tokenizer =
            kormo_tokenizer::hf::load(path).map_err(|e| crate::DataError(e.to_string()))?;
        Vocabulary::from_tokenizer(tokenizer, &path.display().to_string())
    }

    /// `origin` names the tokenizer in errors.
    pub fn from_tokenizer(
        tokenizer: kormo_tokenizer::Tokenizer,
        origin: &str,
    ) -> Result<Vocabulary, crate::DataError> {
        let id = |content: &str, role: &str| {
            tokenizer.special_id(content).ok_or_else(|| {
                crate::DataError(format!(
                    "{origin}: the tokenizer has no special token {content} (it {role}; train the \
                     tokenizer with KORMo's specials: {})",
                    REQUIRED_SPECIALS.map(|(c, _)| c).join(" ")
                ))
            })
        };
        let [bos, eot, think, think_end, bot] = REQUIRED_SPECIALS;
        let eot = id(eot.0, eot.1)?;
        let ids = SpecialIds {
            bos: id(bos.0, bos.1)?,
            eot,
            think: id(think.0, think.1)?,
            think_end: id(think_end.0, think_end.1)?,
            bot: id(bot.0, bot.1)?,
            pad: tokenizer.special_id("<|pad|>").unwrap_or(eot),
        };
        let size = u32::try_from(tokenizer.padded_vocab_size(128)).map_err(|_| {
            crate::DataError(format!(
                "{origin}: vocabulary does not fit 32-bit token ids"
            ))
        })?;
        Ok(Vocabulary {
            ids,
            size,
            fingerprint: tokenizer.fingerprint(),
            bpe: Some(Arc::new(tokenizer)),
        })
    }

    pub fn ids(&self) -> &SpecialIds {
        &self.ids
    }

    /// The ids packing needs.
    pub fn specials(&self) -> SpecialTokens {
        self.ids.packing()
    }

    /// Embedding rows the model needs: ids rounded up to a multiple of 128.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Recorded in every shard made with this vocabulary.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The BPE tokenizer, or None for the byte vocabulary.
    pub fn tokenizer(&self) -> Option<&kormo_tokenizer::Tokenizer> {
        self.bpe.as_deref()
    }

    /// An encoder of plain text (special-token text is not matched: specials are added by id).
    pub fn encoder(&self) -> TextEncoder<'_> {
        match &self.bpe {
            None => TextEncoder::Bytes,
            Some(tokenizer) => TextEncoder::Bpe(tokenizer.encoder()),
        }
    }
}

impl PartialEq for Vocabulary {
    /// The fingerprint covers everything that determines the encoding.
    fn eq(&self, other: &Vocabulary) -> bool {
        self.fingerprint == other.fingerprint && self.ids == other.ids && self.size == other.size
    }
}

impl std::fmt::Debug for Vocabulary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vocabulary")
            .field("kind", &if self.bpe.is_some() { "bpe" } else { "bytes" })
            .field("size", &self.size)
            .field("fingerprint", &self.fingerprint)
            .field("ids", &self.ids)
            .finish()
    }
}

/// Encodes plain text with a [`Vocabulary`], keeping the BPE cache across calls.
pub enum TextEncoder<'v> {
    Bytes,
    Bpe(kormo_tokenizer::Encoder<'v>),
}

impl TextEncoder<'_> {
    pub fn encode(&mut self, text: &str) -> Vec<u32> {
        match self {
            TextEncoder::Bytes => ByteVocab::encode(text),
            TextEncoder::Bpe(encoder) => {
                let mut ids = Vec::new();
                encoder.encode_ordinary(text, &mut ids);
                ids
            }
        }
    }
}

// The table must hold every special and keep GPU-friendly shapes; checked at compile time.
const _: () = assert!(ByteVocab::SIZE.is_multiple_of(128) && ByteVocab::PAD < ByteVocab::SIZE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_including_korean_and_specials() {
        let mut ids = ByteVocab::encode("안녕 hi");
        assert_eq!(ids.len(), 6 + 3);
        ids.insert(0, ByteVocab::BOS);
        ids.push(ByteVocab::THINK);
        assert_eq!(ByteVocab::decode(&ids), "<|BOS|>안녕 hi<think>");
    }
}
