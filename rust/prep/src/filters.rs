//! Heuristic document filters (the Gopher/C4 family, as KORMo's pipeline applies before
//! dedup), a Korean/English language identifier and broken-encoding detection. Every
//! threshold is a config key (`[filters]` in the prep config); each check is cheap and
//! runs on the raw text; the first failing check names the removal reason, which the
//! pipeline counts per source.

use kormo_tokenizer::chars::{classify, is_mark, CharClass};
use kormo_tokenizer::fxhash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

use crate::words::{tokens, words_of, Token};

/// Thresholds of the heuristic filters; a ratio of 1.0 (or a max of `usize::MAX`) disables
/// the corresponding check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilterConfig {
    pub min_chars: usize,
    pub max_chars: usize,
    pub min_words: usize,
    /// Mean characters per word, outside which text is not prose (Gopher: 3..10 for English;
    /// Korean eojeol are shorter in characters, hence the wider default).
    pub min_mean_word_chars: f64,
    pub max_mean_word_chars: f64,
    /// Non-space characters that are neither letters, digits nor marks, over non-space characters.
    pub max_symbol_ratio: f64,
    /// Words without any letter (numbers, codes) over all words may be at most 1 - this.
    pub min_alpha_word_ratio: f64,
    /// Lines equal to an earlier line of the document, over lines.
    pub max_duplicate_line_ratio: f64,
    /// Characters of the most frequent word bigram's occurrences over characters in words.
    pub max_top_bigram_ratio: f64,
    /// Characters in words covered by word n-grams (n = `repeated_ngram_size`) occurring more
    /// than once, over characters in words.
    pub max_repeated_ngram_ratio: f64,
    pub repeated_ngram_size: usize,
    /// Languages kept ("ko", "en"); empty keeps every language.
    pub languages: Vec<String>,
    /// Share of a document's words that must be in its detected language.
    pub min_language_score: f64,
    /// Broken-encoding evidence (U+FFFD, C1 controls, UTF-8-read-as-Latin-1 pairs) per character.
    pub max_broken_ratio: f64,
}

impl Default for FilterConfig {
    fn default() -> Self {
        FilterConfig {
            min_chars: 50,
            max_chars: 1_000_000,
            min_words: 5,
            min_mean_word_chars: 1.5,
            max_mean_word_chars: 12.0,
            max_symbol_ratio: 0.25,
            min_alpha_word_ratio: 0.6,
            max_duplicate_line_ratio: 0.3,
            max_top_bigram_ratio: 0.2,
            max_repeated_ngram_ratio: 0.3,
            repeated_ngram_size: 5,
            languages: vec!["ko".into(), "en".into()],
            min_language_score: 0.5,
            max_broken_ratio: 0.001,
        }
    }
}

impl FilterConfig {
    /// Checks value ranges; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        let ratios = [
            ("max_symbol_ratio", self.max_symbol_ratio),
            ("min_alpha_word_ratio", self.min_alpha_word_ratio),
            ("max_duplicate_line_ratio", self.max_duplicate_line_ratio),
            ("max_top_bigram_ratio", self.max_top_bigram_ratio),
            ("max_repeated_ngram_ratio", self.max_repeated_ngram_ratio),
            ("min_language_score", self.min_language_score),
            ("max_broken_ratio", self.max_broken_ratio),
        ];
        for (key, v) in ratios {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("filters.{key} = {v} is not in [0, 1]"));
            }
        }
        if self.min_chars > self.max_chars {
            return Err(format!(
                "filters.min_chars {} > max_chars {}",
                self.min_chars, self.max_chars
            ));
        }
        if self.repeated_ngram_size < 2 {
            return Err("filters.repeated_ngram_size must be at least 2".into());
        }
        if let Some(l) = self
            .languages
            .iter()
            .find(|l| !matches!(l.as_str(), "ko" | "en"))
        {
            return Err(format!(
                "filters.languages: {l:?} is not one of \"ko\", \"en\""
            ));
        }
        Ok(())
    }
}

/// Detected language of a text: "ko", "en" or "other", with the share of words supporting it.
pub fn identify_language(word_list: &[&str]) -> (&'static str, f64) {
    const ENGLISH_FUNCTION_WORDS: [&str; 24] = [
        "the", "of", "and", "to", "a", "in", "is", "it", "that", "for", "you", "was", "on", "are",
        "with", "as", "be", "this", "or", "by", "not", "can", "if", "from",
    ];
    let (mut korean, mut latin, mut function, mut lettered) = (0usize, 0usize, 0usize, 0usize);
    for w in word_list {
        let hangul = w
            .chars()
            .any(|c| matches!(c as u32, 0xAC00..=0xD7A3 | 0x1100..=0x11FF | 0x3130..=0x318F));
        let has_letter = w.chars().any(|c| classify(c) == CharClass::Letter);
        if !has_letter {
            continue;
        }
        lettered += 1;
        if hangul {
            korean += 1;
        } else if w
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '\'' || c == '.' || c == '_')
        {
            latin += 1;
            if ENGLISH_FUNCTION_WORDS
                .iter()
                .any(|f| f.eq_ignore_ascii_case(w))
            {
                function += 1;
            }
        }
    }
    if lettered == 0 {
        return ("other", 0.0);
    }
    let ko = korean as f64 / lettered as f64;
    // ASCII words count as English only if function words show up (French or code don't).
    let en = if latin > 0 && function as f64 / latin as f64 >= 0.05 {
        latin as f64 / lettered as f64
    } else {
        0.0
    };
    if ko >= en {
        ("ko", ko)
    } else {
        ("en", en)
    }
}

/// Broken-encoding evidence per character: U+FFFD, C1 controls and pairs typical of UTF-8
/// decoded as Latin-1 or Windows-1252 ("Ã©", "â€").
pub fn broken_ratio(text: &str) -> f64 {
    let mut evidence = 0usize;
    let mut chars = 0usize;
    let mut prev = '\0';
    for c in text.chars() {
        chars += 1;
        let cp = c as u32;
        let replacement_or_c1 = c == '\u{FFFD}' || (0x80..=0x9F).contains(&cp);
        let mojibake =
            (matches!(prev, 'Ã' | 'Â') && (0xA0..=0xBF).contains(&cp)) || (prev == 'â' && c == '€');
        if replacement_or_c1 || mojibake {
            evidence += 1;
        }
        prev = c;
    }
    if chars == 0 {
        0.0
    } else {
        evidence as f64 / chars as f64
    }
}

/// A document that passed the filters: its language and its tokens (`words::tokens`, which
/// dedup hashes next).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passed<'a> {
    pub language: &'static str,
    pub tokens: Vec<Token<'a>>,
}

/// The filters' verdict: the document passed, or the reason it is removed.
pub fn check<'a>(text: &'a str, config: &FilterConfig) -> Result<Passed<'a>, &'static str> {
    let chars = text.chars().count();
    if chars < config.min_chars {
        return Err("too_short");
    }
    if chars > config.max_chars {
        return Err("too_long");
    }
    if broken_ratio(text) > config.max_broken_ratio {
        return Err("broken_encoding");
    }
    let tokens = tokens(text);
    let word_list = words_of(&tokens);
    check_words(text, &word_list, config)?;
    let (language, score) = identify_language(&word_list);
    if !config.languages.is_empty()
        && (score < config.min_language_score || !config.languages.iter().any(|l| l == language))
    {
        return Err("language");
    }
    Ok(Passed { language, tokens })
}

/// The checks on words, symbols and repetition.
fn check_words(text: &str, word_list: &[&str], config: &FilterConfig) -> Result<(), &'static str> {
    if word_list.len() < config.min_words {
        return Err("too_few_words");
    }
    let word_chars: usize = word_list.iter().map(|w| w.chars().count()).sum();
    let mean = word_chars as f64 / word_list.len() as f64;
    if mean < config.min_mean_word_chars || mean > config.max_mean_word_chars {
        return Err("mean_word_length");
    }
    let (mut non_space, mut symbols) = (0usize, 0usize);
    for c in text.chars() {
        match classify(c) {
            CharClass::Space => {}
            CharClass::Other if !is_mark(c) => {
                non_space += 1;
                symbols += 1;
            }
            _ => non_space += 1,
        }
    }
    if symbols as f64 > config.max_symbol_ratio * non_space as f64 {
        return Err("symbol_ratio");
    }
    let alpha_words = word_list
        .iter()
        .filter(|w| w.chars().any(|c| classify(c) == CharClass::Letter))
        .count();
    if (alpha_words as f64) < config.min_alpha_word_ratio * word_list.len() as f64 {
        return Err("alpha_word_ratio");
    }
    let (mut lines, mut duplicate_lines) = (0usize, 0usize);
    let mut seen = FxHashSet::default();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        lines += 1;
        duplicate_lines += usize::from(!seen.insert(line));
    }
    if duplicate_lines as f64 > config.max_duplicate_line_ratio * lines as f64 {
        return Err("duplicate_lines");
    }
    if word_list.len() >= 2 * config.repeated_ngram_size {
        let ids = word_ids(word_list);
        if top_bigram_chars(word_list, &ids) as f64 > config.max_top_bigram_ratio * word_chars as f64 {
            return Err("top_bigram_ratio");
        }
        if repeated_ngram_chars(word_list, &ids, config.repeated_ngram_size) as f64
            > config.max_repeated_ngram_ratio * word_chars as f64
        {
            return Err("repeated_ngrams");
        }
    }
    Ok(())
}

/// A small id per distinct word, so bigrams and n-grams are compared as integers.
fn word_ids(word_list: &[&str]) -> Vec<u32> {
    let mut ids: FxHashMap<&str, u32> = FxHashMap::default();
    word_list
        .iter()
        .map(|w| {
            let next = ids.len() as u32;
            *ids.entry(w).or_insert(next)
        })
        .collect()
}

/// Characters covered by the occurrences of the most frequent word bigram.
fn top_bigram_chars(word_list: &[&str], ids: &[u32]) -> usize {
    let mut counts: FxHashMap<(u32, u32), (usize, usize)> = FxHashMap::default();
    for (i, p) in ids.windows(2).enumerate() {
        counts.entry((p[0], p[1])).or_insert((0, i)).0 += 1;
    }
    counts
        .into_values()
        .filter(|&(c, _)| c > 1)
        .map(|(c, at)| c * (word_list[at].chars().count() + word_list[at + 1].chars().count()))
        .max()
        .unwrap_or(0)
}

/// Characters of words inside some n-gram that occurs more than once (each word counted once).
fn repeated_ngram_chars(word_list: &[&str], ids: &[u32], n: usize) -> usize {
    let mut counts: FxHashMap<&[u32], usize> = FxHashMap::default();
    for g in ids.windows(n) {
        *counts.entry(g).or_insert(0) += 1;
    }
    let mut covered = vec![false; word_list.len()];
    for (i, g) in ids.windows(n).enumerate() {
        if counts[g] > 1 {
            covered[i..i + n].iter_mut().for_each(|c| *c = true);
        }
    }
    covered
        .iter()
        .zip(word_list)
        .filter(|(c, _)| **c)
        .map(|(_, w)| w.chars().count())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(text: &str, config: &FilterConfig) -> Result<&'static str, &'static str> {
        check(text, config).map(|passed| passed.language)
    }

    const ENGLISH: &str = "Debian is a free operating system for your computer. It comes with thousands of \
        packages that are easy to install, and it is developed by volunteers from all over the world.";
    const KOREAN: &str = "데비안은 여러분의 컴퓨터를 위한 자유 운영체제입니다. 수천 개의 꾸러미를 쉽게 설치할 수 있으며, \
        전 세계의 자원봉사자들이 함께 개발하고 있습니다.";

    #[test]
    fn prose_passes_with_its_language() {
        let c = FilterConfig::default();
        assert_eq!(verdict(ENGLISH, &c), Ok("en"));
        assert_eq!(verdict(KOREAN, &c), Ok("ko"));
    }

    #[test]
    fn each_check_removes_its_case() {
        let c = FilterConfig::default();
        assert_eq!(verdict("short", &c), Err("too_short"));
        let broken = ENGLISH.replace("free", "fr\u{FFFD}e");
        assert_eq!(verdict(&broken, &c), Err("broken_encoding"));
        assert_eq!(
            verdict(&ENGLISH.replace("computer", "cafÃ©"), &c),
            Err("broken_encoding")
        );
        assert_eq!(
            verdict(&"!!! ### $$$ %%% &&& *** ".repeat(5), &c),
            Err("too_few_words")
        );
        assert_eq!(
            verdict(
                &format!("{ENGLISH} {}", "=-=-=-=-=-=-=-=-=-=-=-=-=-=-".repeat(4)),
                &c
            ),
            Err("symbol_ratio")
        );
        assert_eq!(
            verdict(&"12 345 6789 1011 ".repeat(10), &c),
            Err("alpha_word_ratio")
        );
        assert_eq!(
            verdict(&"buy cheap pills now\n".repeat(10), &c),
            Err("duplicate_lines")
        );
        let spam = format!(
            "{ENGLISH} {}",
            "click here click here click here ".repeat(8)
        );
        assert_eq!(verdict(&spam, &c), Err("top_bigram_ratio"));
        let repeated = format!("{ENGLISH} {ENGLISH} {ENGLISH}");
        assert_eq!(verdict(&repeated, &c), Err("repeated_ngrams"));
        let french = "Debian est un système d'exploitation libre pour votre ordinateur, développé par des bénévoles.";
        assert_eq!(verdict(french, &c), Err("language"));
        let anything = FilterConfig {
            languages: vec![],
            ..c.clone()
        };
        assert!(verdict(french, &anything).is_ok());
    }

    #[test]
    fn validation_names_the_key() {
        let bad = FilterConfig {
            max_symbol_ratio: 1.5,
            ..FilterConfig::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .contains("filters.max_symbol_ratio"));
        let bad = FilterConfig {
            languages: vec!["fr".into()],
            ..FilterConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("\"fr\""));
    }
}
