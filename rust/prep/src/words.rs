//! The words of a text by Unicode word boundaries (UAX #29, from the `unicode-segmentation`
//! crate), found in one pass that every stage of a document shares:
//!
//! - **tokens**: the segments between word boundaries that are not whitespace only,
//!   punctuation included: the unit of dedup's n-grams, exactly as DCLM's bff takes them
//!   (`split_word_bounds` without whitespace segments);
//! - **words**: the tokens holding a letter or a number (what `unicode_words` yields: "Don't",
//!   "3.14", "운영체제입니다", one Han ideograph): the unit of the filters and the quality
//!   classifier.
//!
//! Boundaries always fall before and after a line break (rules WB3a/b), so a token never spans
//! two lines, and tokenizing a whole document gives the tokens of each of its lines.

use unicode_segmentation::UnicodeSegmentation;

/// A non-whitespace segment of a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token<'a> {
    /// Byte offset in the text.
    pub start: usize,
    pub text: &'a str,
    /// Holds a letter or a number (a word, not punctuation or a symbol).
    pub word: bool,
}

/// The tokens of `text`, in order.
pub fn tokens(text: &str) -> Vec<Token<'_>> {
    text.split_word_bound_indices()
        .filter_map(|(start, segment)| {
            let word = segment.chars().any(char::is_alphanumeric);
            let blank = !word && segment.chars().all(char::is_whitespace);
            (!blank).then_some(Token { start, text: segment, word })
        })
        .collect()
}

/// The words among `tokens`.
pub fn words_of<'a>(tokens: &[Token<'a>]) -> Vec<&'a str> {
    tokens.iter().filter(|t| t.word).map(|t| t.text).collect()
}

/// The words of `text`, in order.
pub fn words(text: &str) -> Vec<&str> {
    words_of(&tokens(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_texts(text: &str) -> Vec<&str> {
        tokens(text).iter().map(|t| t.text).collect()
    }

    #[test]
    fn words_are_unicode_word_segments_with_a_letter_or_number() {
        assert_eq!(
            words("Don't panic, e.g. 3.14 or 1,000!"),
            ["Don't", "panic", "e.g", "3.14", "or", "1,000"]
        );
        assert_eq!(words("데비안은 자유 운영체제입니다."), ["데비안은", "자유", "운영체제입니다"]);
        assert_eq!(words("日本語とカタカナ"), ["日", "本", "語", "と", "カタカナ"]);
        assert_eq!(words("café naïve snake_case x2"), ["café", "naïve", "snake_case", "x2"]);
        assert_eq!(words("  -- ... 'quoted' "), ["quoted"]);
        assert!(words("").is_empty());
    }

    /// bff's n-gram unit on mixed Korean/English text with punctuation: every UAX #29 segment
    /// but whitespace, so punctuation marks are tokens of their own, and runs of spaces, tabs
    /// and line breaks are not tokens.
    #[test]
    fn tokens_are_bff_segments_punctuation_included() {
        let text = "데비안(Debian)은 자유 OS입니다: apt-get install vim, 끝!\n\t- \"Ready?\" 네.  3.14%\r\n";
        assert_eq!(
            token_texts(text),
            [
                "데비안", "(", "Debian", ")", "은", "자유", "OS입니다", ":", "apt", "-", "get",
                "install", "vim", ",", "끝", "!", "-", "\"", "Ready", "?", "\"", "네", ".",
                "3.14", "%"
            ]
        );
        let tokens = tokens(text);
        assert!(tokens.iter().all(|t| &text[t.start..t.start + t.text.len()] == t.text));
        let found = words_of(&tokens);
        assert_eq!(found[..4], ["데비안", "Debian", "은", "자유"]);
        assert!(!found.contains(&"(") && !found.contains(&"%"));
        // An emoji with a skin tone and a ZWJ sequence stay one token each; a lone symbol is a
        // token but not a word.
        assert_eq!(token_texts("ok 👍🏽 👩‍💻 © x"), ["ok", "👍🏽", "👩‍💻", "©", "x"]);
        assert_eq!(words("ok 👍🏽 © x"), ["ok", "x"]);
    }
}
