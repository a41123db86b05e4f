//! Hand-written matcher for the Qwen2 pre-tokenizer regular expression (and Llama 3's,
//! which differs only in grouping up to three digits):
//!
//! ```text
//! (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//! ```
//!
//! The pattern needs a lookahead (`(?!\S)`), which the `regex` crate lacks; matching it by
//! hand is also several times faster than a regex engine. The matcher reproduces the
//! leftmost-first (backtracking) semantics of Oniguruma, which Hugging Face `tokenizers`
//! uses: at each position the alternatives are tried in order and the first that matches
//! wins, greedy quantifiers backtracking as the engine would. Every character is covered by
//! some alternative, so the pieces tile the input exactly (the "Isolated" split behaviour
//! has no gaps to emit). The per-alternative reasoning is in `match_at`.

use crate::chars::{classify, CharClass};

/// Qwen2's pattern (digits one by one); what kormo trains with.
pub const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GPT-2's pattern (what a `ByteLevel` pre-tokenizer with `use_regex = true` applies).
pub const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3's pattern (digits in groups of up to three).
pub const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Which of the supported patterns to match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    Qwen2,
    Llama3,
    Gpt2,
}

impl Pattern {
    /// The pattern for a regex string found in a `tokenizer.json`, if kormo implements it.
    pub fn from_regex(regex: &str) -> Option<Pattern> {
        match regex {
            QWEN2_PATTERN => Some(Pattern::Qwen2),
            LLAMA3_PATTERN => Some(Pattern::Llama3),
            GPT2_PATTERN => Some(Pattern::Gpt2),
            _ => None,
        }
    }

    pub fn regex(self) -> &'static str {
        match self {
            Pattern::Qwen2 => QWEN2_PATTERN,
            Pattern::Llama3 => LLAMA3_PATTERN,
            Pattern::Gpt2 => GPT2_PATTERN,
        }
    }
}

/// Iterator over the pre-tokens of a text, as subslices.
pub struct PreTokens<'a> {
    text: &'a str,
    pos: usize,
    pattern: Pattern,
}

/// Splits `text` into pre-tokens with `pattern`.
pub fn pre_tokens(text: &str, pattern: Pattern) -> PreTokens<'_> {
    PreTokens {
        text,
        pos: 0,
        pattern,
    }
}

impl<'a> Iterator for PreTokens<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        if self.pos >= self.text.len() {
            return None;
        }
        let rest = &self.text[self.pos..];
        let len = match self.pattern {
            Pattern::Qwen2 => match_at(rest, 1),
            Pattern::Llama3 => match_at(rest, 3),
            Pattern::Gpt2 => match_gpt2(rest),
        };
        debug_assert!(len > 0 && rest.is_char_boundary(len));
        self.pos += len;
        Some(&rest[..len])
    }
}

#[inline]
fn is_newline(c: char) -> bool {
    c == '\r' || c == '\n'
}

/// `'s 't 're 've 'm 'll 'd`; with `(?i)` (Qwen2, Llama 3) also upper case, and Oniguruma's
/// Unicode case folding maps U+017F LONG S to `s`; GPT-2's is case-sensitive.
fn contraction_len(rest: &str, case_insensitive: bool) -> usize {
    let mut it = rest.chars();
    if it.next() != Some('\'') {
        return 0;
    }
    let lower = |c: Option<char>| {
        c.map(|c| match c {
            _ if !case_insensitive => c,
            '\u{17F}' => 's',
            _ => c.to_ascii_lowercase(),
        })
    };
    let (c1, c2) = (it.next(), it.next());
    match lower(c1) {
        Some('s' | 't' | 'm' | 'd') => 1 + c1.map_or(0, char::len_utf8),
        Some(first @ ('r' | 'v' | 'l')) => {
            let second = if first == 'l' { 'l' } else { 'e' };
            if lower(c2) == Some(second) {
                1 + c1.map_or(0, char::len_utf8) + c2.map_or(0, char::len_utf8)
            } else {
                0
            }
        }
        _ => 0,
    }
}

/// Length in bytes of the leading run of characters satisfying `pred`.
#[inline]
fn run_len(s: &str, pred: impl Fn(char) -> bool) -> usize {
    s.char_indices()
        .find(|&(_, c)| !pred(c))
        .map_or(s.len(), |(i, _)| i)
}

/// Length of the match at the start of `rest` (non-empty); every input matches something.
fn match_at(rest: &str, max_digits: usize) -> usize {
    let mut chars = rest.chars();
    let c0 = chars.next().expect("match_at on empty input");
    let l0 = c0.len_utf8();
    let class0 = classify(c0);
    let c1 = chars.next();
    let class1 = c1.map(classify);
    let is_letter = |c: char| classify(c) == CharClass::Letter;

    // 1. (?i:'s|'t|'re|'ve|'m|'ll|'d)
    if c0 == '\'' {
        let n = contraction_len(rest, true);
        if n > 0 {
            return n;
        }
    }
    // 2. [^\r\n\p{L}\p{N}]?\p{L}+ : a letter run, optionally led by one character that is
    //    neither newline, letter nor number (a space, a quote, ...). Backtracking means the
    //    optional character is taken only if a letter follows it.
    if class0 == CharClass::Letter {
        return l0 + run_len(&rest[l0..], is_letter);
    }
    if class0 != CharClass::Number && !is_newline(c0) && class1 == Some(CharClass::Letter) {
        return l0 + run_len(&rest[l0..], is_letter);
    }
    // 3. \p{N} (Llama 3: \p{N}{1,3})
    if class0 == CharClass::Number {
        let mut len = 0;
        for c in rest.chars().take(max_digits) {
            if classify(c) != CharClass::Number {
                break;
            }
            len += c.len_utf8();
        }
        return len;
    }
    // 4. ` ?[^\s\p{L}\p{N}]+[\r\n]*` : a run of "other" characters, optionally led by one
    //    ASCII space, followed by any newlines.
    let others_from = if c0 == ' ' && class1 == Some(CharClass::Other) {
        Some(l0)
    } else if class0 == CharClass::Other {
        Some(0)
    } else {
        None
    };
    if let Some(start) = others_from {
        let end = start + run_len(&rest[start..], |c| classify(c) == CharClass::Other);
        return end + run_len(&rest[end..], is_newline);
    }
    // Only whitespace is left.
    debug_assert_eq!(class0, CharClass::Space);
    let ws = whitespace_run(rest);
    // 5. \s*[\r\n]+ : `\s*` backs off from the end of the run to the last newline in it, and
    //    `[\r\n]+` takes that newline (nothing after it in the run is a newline).
    if let Some(end) = ws.last_newline_end {
        return end;
    }
    // 6. and 7.
    whitespace_tail(rest, &ws)
}

/// The maximal whitespace run at the start of a text.
struct WhitespaceRun {
    /// Its length in bytes.
    len: usize,
    /// Where its last character starts.
    last_char_start: usize,
    /// End of its last `\r` or `\n`, if any.
    last_newline_end: Option<usize>,
}

fn whitespace_run(rest: &str) -> WhitespaceRun {
    let mut ws = WhitespaceRun {
        len: 0,
        last_char_start: 0,
        last_newline_end: None,
    };
    for (i, c) in rest.char_indices() {
        if classify(c) != CharClass::Space {
            break;
        }
        if is_newline(c) {
            ws.last_newline_end = Some(i + c.len_utf8());
        }
        ws.last_char_start = i;
        ws.len = i + c.len_utf8();
    }
    ws
}

/// `\s+(?!\S)|\s+` : the whole run at the end of the text; otherwise the run minus its last
/// character (which is followed by whitespace, satisfying the lookahead) if that is
/// non-empty; otherwise the single whitespace character.
fn whitespace_tail(rest: &str, ws: &WhitespaceRun) -> usize {
    if ws.len == rest.len() || ws.last_char_start == 0 {
        ws.len
    } else {
        ws.last_char_start
    }
}

/// GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
fn match_gpt2(rest: &str) -> usize {
    let mut chars = rest.chars();
    let c0 = chars.next().expect("match_gpt2 on empty input");
    let class0 = classify(c0);
    let class1 = chars.next().map(classify);
    let n = contraction_len(rest, false);
    if n > 0 {
        return n;
    }
    // ` ?X+` for X = letters, numbers, others: the optional space is taken if an X follows.
    let (start, class) = if c0 == ' ' && class1.is_some_and(|c| c != CharClass::Space) {
        (1, class1.expect("checked"))
    } else {
        (0, class0)
    };
    if class != CharClass::Space {
        return start + run_len(&rest[start..], |c| classify(c) == class);
    }
    whitespace_tail(rest, &whitespace_run(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(text: &str) -> Vec<&str> {
        pre_tokens(text, Pattern::Qwen2).collect()
    }

    #[test]
    fn splits_like_the_regex() {
        assert_eq!(split("Hello world"), ["Hello", " world"]);
        assert_eq!(
            split("I'm here, they'RE"),
            ["I", "'m", " here", ",", " they", "'RE"]
        );
        assert_eq!(split("year 2024!"), ["year", " ", "2", "0", "2", "4", "!"]);
        assert_eq!(split("a  b"), ["a", " ", " b"]);
        assert_eq!(split("a \n\n  b"), ["a", " \n\n", " ", " b"]);
        assert_eq!(split("end.\n\nNext"), ["end", ".\n\n", "Next"]);
        assert_eq!(split("x   "), ["x", "   "]);
        assert_eq!(split("  ...ok"), [" ", " ...", "ok"]);
        assert_eq!(
            split("안녕하세요, 세계!"),
            ["안녕하세요", ",", " 세계", "!"]
        );
        assert_eq!(split("'ſ 'x"), ["'ſ", " '", "x"]);
        assert_eq!(split("\t\tif"), ["\t", "\tif"]);
        assert_eq!(split("\r\nfoo"), ["\r\n", "foo"]);
        assert_eq!(split("😀😀 hi"), ["😀😀", " hi"]);
        assert_eq!(
            pre_tokens("12345", Pattern::Llama3).collect::<Vec<_>>(),
            ["123", "45"]
        );
        let gpt2 = |t| pre_tokens(t, Pattern::Gpt2).collect::<Vec<_>>();
        assert_eq!(
            gpt2("I'M here's 12345 ab  !!x"),
            ["I", "'", "M", " here", "'s", " 12345", " ab", " ", " !!", "x"]
        );
        assert_eq!(gpt2("a\n\n b"), ["a", "\n\n", " b"]);
        assert_eq!(gpt2("  x "), [" ", " x", " "]);
    }

    #[test]
    fn pieces_tile_random_text() {
        use rand::{Rng, SeedableRng};
        let alphabet = [
            'a', 'Z', '한', '1', '٣', ' ', '\n', '\r', '\t', '\u{3000}', '\'', 's', '.', '😀',
            '\u{345}',
        ];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for _ in 0..2000 {
            let n = rng.random_range(1..24);
            let text: String = (0..n)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect();
            for pattern in [Pattern::Qwen2, Pattern::Llama3, Pattern::Gpt2] {
                let pieces: Vec<&str> = pre_tokens(&text, pattern).collect();
                assert_eq!(pieces.concat(), text);
                assert!(pieces.iter().all(|p| !p.is_empty()));
            }
        }
    }
}
