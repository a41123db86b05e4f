//! Token ids the packer and the synthetic corpus need, and the built-in byte-level vocabulary.
//!
//! Until a trained BPE tokenizer is used, the tiny recipe runs on bytes: ids 0..=255 are raw
//! UTF-8 bytes, then KORMo's special tokens, and the table is padded to a multiple of 128 (384)
//! so the embedding and head have GPU-friendly shapes. Real recipes give the ids of their
//! tokenizer's special tokens explicitly (KORMo: `<|BOS|>` 125030, `<think>` 125033, ...).

use serde::{Deserialize, Serialize};

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
