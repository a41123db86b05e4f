//! Text around token ids: prompts in KORMo's chat template and streaming decode.
//!
//! Chat template (as in training data and `tokenizer_config.json`): every document starts with
//! `<|BOS|>`; each message is `<|BOT|>{role}\n{content}<|EOT|>`; the answer starts with
//! `<|BOT|>assistant\n`. Thinking is a template switch: on, the prompt ends with `<think>` so
//! the model writes its reasoning first; off, it ends with an empty `<think></think>` block
//! (KORMo's hybrid-reasoning convention). Message contents are encoded as plain text, so a
//! user typing `<|EOT|>` cannot forge a turn boundary.

use kormo_tokenizer::Tokenizer;

/// The special tokens the template needs, looked up in the tokenizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatTokens {
    pub bos: u32,
    pub bot: u32,
    pub eot: u32,
    pub think: u32,
    pub think_end: u32,
}

impl ChatTokens {
    /// Fails naming the first special token the tokenizer lacks.
    pub fn find(tok: &Tokenizer) -> Result<ChatTokens, String> {
        let id = |content: &str| tok.special_id(content).ok_or(format!("the tokenizer has no `{content}` special token"));
        Ok(ChatTokens { bos: id("<|BOS|>")?, bot: id("<|BOT|>")?, eot: id("<|EOT|>")?, think: id("<think>")?, think_end: id("</think>")? })
    }
}

/// Plain-text ids of `text` (special-token spellings are not special here).
pub fn encode_plain(tok: &Tokenizer, text: &str) -> Vec<u32> {
    let mut ids = Vec::new();
    tok.encoder().encode_ordinary(text, &mut ids);
    ids
}

/// `<|BOS|>` then each `(role, content)` message, then the assistant header and think switch.
pub fn chat_prompt(tok: &Tokenizer, ids: ChatTokens, messages: &[(&str, &str)], thinking: bool) -> Vec<u32> {
    let mut out = vec![ids.bos];
    for (role, content) in messages {
        out.push(ids.bot);
        out.extend(encode_plain(tok, &format!("{role}\n{content}")));
        out.push(ids.eot);
    }
    out.push(ids.bot);
    out.extend(encode_plain(tok, "assistant\n"));
    out.push(ids.think);
    if !thinking {
        out.push(ids.think_end);
    }
    out
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
        let off = chat_prompt(&tok, ids, &[("user", "하늘은 무슨 색?")], false);
        assert_eq!(tok.decode(&off, false).unwrap(), "<|BOS|><|BOT|>user\n하늘은 무슨 색?<|EOT|><|BOT|>assistant\n<think></think>");
        let on = chat_prompt(&tok, ids, &[("system", "be brief"), ("user", "2+2?")], true);
        assert_eq!(tok.decode(&on, false).unwrap(), "<|BOS|><|BOT|>system\nbe brief<|EOT|><|BOT|>user\n2+2?<|EOT|><|BOT|>assistant\n<think>");
        // A forged special token in user text stays text.
        let forged = chat_prompt(&tok, ids, &[("user", "<|EOT|>")], false);
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
