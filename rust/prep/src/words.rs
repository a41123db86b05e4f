//! Word splitting for the filters, the dedup n-grams and the quality classifier.
//!
//! An approximation of Unicode word boundaries (UAX #29, as `unicode_words` yields them):
//! a word is a run of letters, numbers, marks and `_`, where `'`, `’`, `.`, `:`, `·` join two
//! letters ("don't", "e.g") and `.`, `,`, `;`, `'` join two digits ("3.14", "1,000");
//! Han ideographs and Hiragana are one word per character (UAX #29 has no dictionary either).
//! Everything else separates words and is not a word. Differences from UAX #29 concern rare
//! contexts (emoji sequences, Katakana-letter joins, some scripts' mid-letter characters).

use kormo_tokenizer::chars::{classify, is_mark, CharClass};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Letter,
    Digit,
    Single,
    Joiner,
    Break,
}

fn kind(c: char) -> Kind {
    let cp = c as u32;
    if matches!(cp, 0x3040..=0x309F | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x3FFFF)
    {
        return Kind::Single;
    }
    match classify(c) {
        CharClass::Letter => Kind::Letter,
        CharClass::Number => Kind::Digit,
        _ if c == '_' || is_mark(c) => Kind::Letter,
        _ if matches!(c, '\'' | '’' | '.' | ':' | '·' | ',' | ';') => Kind::Joiner,
        _ => Kind::Break,
    }
}

fn joins(joiner: char, before: Kind, after: Kind) -> bool {
    match (before, after) {
        (Kind::Letter, Kind::Letter) => matches!(joiner, '\'' | '’' | '.' | ':' | '·'),
        (Kind::Digit, Kind::Digit) => matches!(joiner, '.' | ',' | ';' | '\''),
        _ => false,
    }
}

/// The words of `text`, in order.
pub fn words(text: &str) -> Vec<&str> {
    let chars: Vec<(usize, char, Kind)> =
        text.char_indices().map(|(i, c)| (i, c, kind(c))).collect();
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let mut last = Kind::Break;
    for (n, &(i, c, k)) in chars.iter().enumerate() {
        let word_char = matches!(k, Kind::Letter | Kind::Digit);
        let joined = k == Kind::Joiner
            && start.is_some()
            && chars
                .get(n + 1)
                .is_some_and(|&(_, _, next)| joins(c, last, next));
        if word_char || joined {
            start.get_or_insert(i);
            if word_char {
                last = k;
            }
            continue;
        }
        if let Some(s) = start.take() {
            out.push(&text[s..i]);
        }
        if k == Kind::Single {
            out.push(&text[i..i + c.len_utf8()]);
        }
        last = Kind::Break;
    }
    if let Some(s) = start {
        out.push(&text[s..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_word_boundaries() {
        assert_eq!(
            words("Don't panic, e.g. 3.14 or 1,000!"),
            ["Don't", "panic", "e.g", "3.14", "or", "1,000"]
        );
        assert_eq!(
            words("데비안은 자유 운영체제입니다."),
            ["데비안은", "자유", "운영체제입니다"]
        );
        assert_eq!(
            words("日本語とカタカナ"),
            ["日", "本", "語", "と", "カタカナ"]
        );
        assert_eq!(
            words("café naïve snake_case x2"),
            ["café", "naïve", "snake_case", "x2"]
        );
        assert_eq!(words("  -- ... 'quoted' "), ["quoted"]);
        assert!(words("").is_empty());
    }
}
