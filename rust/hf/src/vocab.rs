//! The tokenizer that belongs to a model.
//!
//! A run that trained on a BPE tokenizer has a `tokenizer.json` (found next to the model, in a
//! parent folder, or given explicitly). A run on the built-in byte vocabulary
//! (`kormo_data::ByteVocab`) has none; it is expressed here as a byte-level BPE tokenizer
//! without merges (id = byte value for 0..=255, then the six specials at their ByteVocab ids),
//! which encodes and decodes exactly as ByteVocab does and which Hugging Face `tokenizers`
//! can load from the exported `tokenizer.json`.

use std::path::{Path, PathBuf};

use kormo_data::ByteVocab;
use kormo_tokenizer::Tokenizer;

use crate::config::SpecialIds;
use crate::error::HfError;

/// Where a model's tokenizer came from.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenizerSource {
    /// A `tokenizer.json` file (its `tokenizer_config.json` sibling, if any, travels with it).
    File(PathBuf),
    /// The built-in byte vocabulary.
    ByteVocab,
}

/// A tokenizer and its origin.
#[derive(Debug, Clone)]
pub struct ModelTokenizer {
    pub tokenizer: Tokenizer,
    pub source: TokenizerSource,
}

impl ModelTokenizer {
    /// `<|BOS|>`, `<|EOT|>` as bos and eos, and pad = eos (as KORMo's tokenizer_config does).
    pub fn special_ids(&self) -> SpecialIds {
        let eos = self.tokenizer.special_id("<|EOT|>");
        SpecialIds { bos: self.tokenizer.special_id("<|BOS|>"), eos, pad: eos }
    }
}

/// The byte vocabulary as a tokenizer (defined with the vocabulary in kormo_data).
pub use kormo_data::vocab::byte_tokenizer;

/// Finds the tokenizer for a model at `model_path` with `vocab` embedding rows: `explicit`
/// (a `tokenizer.json` or a folder holding one) if given; else a `tokenizer.json` in the model
/// folder or its two parents (checkpoint -> stage -> run directory), directly or in a
/// `tokenizer/` subfolder; else the byte vocabulary when `vocab` is its size.
pub fn find_tokenizer(explicit: Option<&Path>, model_path: &Path, vocab: usize) -> Result<ModelTokenizer, HfError> {
    let file = match explicit {
        Some(path) if path.is_dir() => Some(path.join("tokenizer.json")),
        Some(path) => Some(path.to_path_buf()),
        None => model_path
            .ancestors()
            .take(3)
            .flat_map(|dir| [dir.join("tokenizer.json"), dir.join("tokenizer").join("tokenizer.json")])
            .find(|p| p.is_file()),
    };
    let found = match file {
        Some(path) => {
            let tokenizer = kormo_tokenizer::hf::load(&path).map_err(|e| HfError::new(&path, e.0))?;
            ModelTokenizer { tokenizer, source: TokenizerSource::File(path) }
        }
        None if vocab == ByteVocab::SIZE as usize => ModelTokenizer { tokenizer: byte_tokenizer(), source: TokenizerSource::ByteVocab },
        None => {
            return Err(HfError::new(model_path, format!(
                "no tokenizer.json here or in its parents, and the vocabulary ({vocab}) is not the byte vocabulary ({}); pass --tokenizer",
                ByteVocab::SIZE
            )))
        }
    };
    if found.tokenizer.vocab_size() > vocab {
        let origin = match &found.source {
            TokenizerSource::File(p) => p.clone(),
            TokenizerSource::ByteVocab => model_path.to_path_buf(),
        };
        return Err(HfError::new(&origin, format!(
            "the tokenizer has {} ids but the model only {vocab} embedding rows", found.tokenizer.vocab_size()
        )));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_tokenizer_matches_byte_vocab() {
        let tok = byte_tokenizer();
        let text = "안녕하세요, kormo! 12 + 7 = 19\n\ttabs";
        assert_eq!(tok.encode(text), ByteVocab::encode(text));
        let mut ids = vec![ByteVocab::BOT];
        ids.extend(ByteVocab::encode("user\n질문"));
        ids.extend([ByteVocab::EOT, ByteVocab::THINK, ByteVocab::THINK_END, ByteVocab::BOS]);
        let spelled = ByteVocab::decode(&ids);
        assert_eq!(tok.encode(&spelled), ids);
        assert_eq!(tok.decode(&ids, false).unwrap(), spelled);
        assert!(tok.vocab_size() <= ByteVocab::SIZE as usize);
    }

    #[test]
    fn missing_tokenizer_for_a_bpe_vocab_is_an_error_naming_the_model() {
        let base = std::env::var_os("TEST_TMPDIR").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
        // Nested, so the parent search stays inside this test's folder.
        let root = base.join(format!("kormo-hf-vocab-{}", std::process::id()));
        let dir = root.join("run/stage/final");
        std::fs::create_dir_all(&dir).unwrap();
        let err = find_tokenizer(None, &dir, 125_184).unwrap_err();
        assert!(err.to_string().contains("pass --tokenizer"), "{err}");
        assert_eq!(find_tokenizer(None, &dir, 384).unwrap().source, TokenizerSource::ByteVocab);
        let missing = dir.join("nope.json");
        assert!(find_tokenizer(Some(&missing), &dir, 384).unwrap_err().to_string().contains("nope.json"));
        // A tokenizer.json in the run directory is found from the checkpoint.
        kormo_tokenizer::hf::save(&byte_tokenizer(), &root.join("run")).unwrap();
        let found = find_tokenizer(None, &dir, 384).unwrap();
        assert_eq!(found.source, TokenizerSource::File(root.join("run/tokenizer.json")));
        assert_eq!(found.special_ids().bos, Some(ByteVocab::BOS));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
