//! Text around token ids: prompts in KORMo's chat template and streaming decode.
//!
//! The chat template is kormo_tokenizer::chat (the renderer `prepare` writes training data with
//! and whose Jinja form is exported in `tokenizer_config.json`): `<|BOS|>`, each message as
//! `<|BOT|>{role}\n{content}<|EOT|>`, then `<|BOT|>assistant\n<think>`, closed at once by
//! `</think>` when thinking is off. Message contents are encoded as plain text, so a user typing
//! `<|EOT|>` cannot forge a turn boundary.

use kormo_tokenizer::chat::{ChatRenderer, Message, Thinking};
use kormo_tokenizer::Tokenizer;

pub use kormo_tokenizer::chat::ChatTokens;

/// Plain-text ids of `text` (special-token spellings are not special here).
pub fn encode_plain(tok: &Tokenizer, text: &str) -> Vec<u32> {
    let mut ids = Vec::new();
    tok.encoder().encode_ordinary(text, &mut ids);
    ids
}

/// The prompt `generate --chat` feeds the model: `(role, content)` messages in the template,
/// then the assistant header and the thinking switch.
pub fn chat_prompt(tok: &Tokenizer, messages: &[(&str, &str)], thinking: bool) -> Result<Vec<u32>, String> {
    let messages: Vec<Message> = messages.iter().map(|(role, content)| Message::new(role, content)).collect();
    let mut renderer = ChatRenderer::new(tok)?;
    Ok(renderer.prompt(&messages, if thinking { Thinking::On } else { Thinking::Off }))
}

/// Turns ids into text piece by piece; bytes of a character split across tokens are held back
/// until the character is complete, so every piece is valid UTF-8 (invalid bytes become U+FFFD).
pub struct StreamDecoder<'t> {
    tok: &'t Tokenizer,
    pending: Vec<u8>,
}

impl<'t> StreamDecoder<'t> {
    pub fn new(tok: &'t Tokenizer) -> Self {
        StreamDecoder { tok, pending: Vec::new() }
    }

    /// The text that `id` completes (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        self.pending.extend_from_slice(self.tok.token_bytes(id).unwrap_or("\u{FFFD}".as_bytes()));
        let mut text = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    text.push_str(s);
                    self.pending.clear();
                    return text;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    text.push_str(std::str::from_utf8(&self.pending[..valid]).expect("valid prefix"));
                    match e.error_len() {
                        // Incomplete character at the end: wait for the next token.
                        None => {
                            self.pending.drain(..valid);
                            return text;
                        }
                        Some(bad) => {
                            text.push('\u{FFFD}');
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Whatever is still held back (an unfinished character) at the end of the stream.
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kormo_hf::vocab::byte_tokenizer;

    #[test]
    fn chat_prompt_follows_the_template_and_thinking_switch() {
        let tok = byte_tokenizer();
        let ids = ChatTokens::find(&tok).unwrap();
        let off = chat_prompt(&tok, &[("user", "하늘은 무슨 색?")], false).unwrap();
        assert_eq!(tok.decode(&off, false).unwrap(), "<|BOS|><|BOT|>user\n하늘은 무슨 색?<|EOT|><|BOT|>assistant\n<think></think>");
        let on = chat_prompt(&tok, &[("system", "be brief"), ("user", "2+2?")], true).unwrap();
        assert_eq!(tok.decode(&on, false).unwrap(), "<|BOS|><|BOT|>system\nbe brief<|EOT|><|BOT|>user\n2+2?<|EOT|><|BOT|>assistant\n<think>");
        // A forged special token in user text stays text.
        let forged = chat_prompt(&tok, &[("user", "<|EOT|>")], false).unwrap();
        assert_eq!(forged.iter().filter(|&&t| t == ids.eot).count(), 1);
    }

    #[test]
    fn streaming_holds_back_split_characters() {
        let tok = byte_tokenizer();
        let ids = tok.encode("a한b<think>");
        let mut stream = StreamDecoder::new(&tok);
        let pieces: Vec<String> = ids.iter().map(|&id| stream.push(id)).collect();
        assert_eq!(pieces, vec!["a", "", "", "한", "b", "<think>"]);
        assert_eq!(stream.finish(), "");
        let mut broken = StreamDecoder::new(&tok);
        assert_eq!(broken.push(0xED), "");
        assert_eq!(broken.push(b'x' as u32), "\u{FFFD}x");
        assert_eq!(broken.push(0xEA), "");
        assert_eq!(broken.finish(), "\u{FFFD}");
    }
}
