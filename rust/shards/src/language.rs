//! The language of a document, as `prepare` records it in a shard's languages section
//! ([`crate::format::FLAG_LANGUAGES`]); cross-lingual document attention (XLDA,
//! docs/recipes.md) reads it.
//!
//! Two classes, as KORMo is a Korean-English model: [`LANGUAGE_KOREAN`] (1) and
//! [`LANGUAGE_OTHER`] (0, English and everything else). A document is Korean when Hangul makes
//! up at least [`KOREAN_MIN_SHARE_PERCENT`] percent of its letters (characters that are
//! alphabetic in Unicode: Latin, Hangul, Han, ... — digits, punctuation, spaces and symbols do
//! not count). Hangul is the syllables block and every jamo block. The share is low because a
//! Hangul syllable is a whole syllable where English spells one with several letters: a Korean
//! web page that quotes English names, code or URLs still counts as Korean, while an English
//! document with a Korean word or two does not. A document without letters is `OTHER`.

pub use crate::format::{LANGUAGE_KOREAN, LANGUAGE_OTHER};

/// Smallest share of Hangul among a document's letters, in percent, for it to be Korean.
pub const KOREAN_MIN_SHARE_PERCENT: u64 = 30;

/// Whether `c` is Hangul: a precomposed syllable or a jamo (conjoining, compatibility,
/// extended-A/B or half-width).
pub fn is_hangul(c: char) -> bool {
    matches!(c,
        '\u{AC00}'..='\u{D7A3}'   // syllables
        | '\u{1100}'..='\u{11FF}' // jamo
        | '\u{3130}'..='\u{318F}' // compatibility jamo
        | '\u{A960}'..='\u{A97F}' // jamo extended-A
        | '\u{D7B0}'..='\u{D7FF}' // jamo extended-B
        | '\u{FFA0}'..='\u{FFDC}' // half-width jamo
    )
}

/// The language code of `text`: [`LANGUAGE_KOREAN`] when at least
/// [`KOREAN_MIN_SHARE_PERCENT`]% of its letters are Hangul, else [`LANGUAGE_OTHER`].
pub fn classify(text: &str) -> u8 {
    let (mut letters, mut hangul) = (0u64, 0u64);
    for c in text.chars() {
        if is_hangul(c) {
            hangul += 1;
            letters += 1;
        } else if c.is_alphabetic() {
            letters += 1;
        }
    }
    if letters > 0 && hangul * 100 >= letters * KOREAN_MIN_SHARE_PERCENT {
        LANGUAGE_KOREAN
    } else {
        LANGUAGE_OTHER
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn korean_english_mixed_and_empty() {
        assert_eq!(classify("안녕하세요. 오늘은 날씨가 좋습니다."), LANGUAGE_KOREAN);
        assert_eq!(classify("The weather is nice today."), LANGUAGE_OTHER);
        assert_eq!(classify(""), LANGUAGE_OTHER);
        assert_eq!(classify("12345 !!! ..."), LANGUAGE_OTHER);
        // Korean prose quoting English: 11 Hangul of 21 letters is Korean.
        assert_eq!(classify("서울에서 Kubernetes 클러스터를 운영"), LANGUAGE_KOREAN);
        // One Korean word in English text is not.
        assert_eq!(classify("We ate bibimbap (비빔밥) for lunch in Seoul."), LANGUAGE_OTHER);
        // Jamo count too.
        assert_eq!(classify("ㅋㅋㅋ ㅎㅎ"), LANGUAGE_KOREAN);
        // The threshold is inclusive: 3 Hangul of 10 letters.
        assert_eq!(classify("가나다abcdefg"), LANGUAGE_KOREAN);
        assert_eq!(classify("가나abcdefgh"), LANGUAGE_OTHER);
    }
}
