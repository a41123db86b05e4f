//! Character classes of the pre-tokenizer pattern: `\p{L}` (general category L), `\p{N}`
//! (general category N) and `\s` (the White_Space property, which is what both Oniguruma,
//! used by Hugging Face `tokenizers`, and Rust's `char::is_whitespace` mean by it).
//! ASCII is answered from a 128-entry table; everything else by binary search in the
//! generated range tables (`unicode_tables.rs`).

use crate::unicode_tables::{LETTER_RANGES, MARK_RANGES, NUMBER_RANGES};

/// The class of one character as the pre-tokenizer pattern sees it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CharClass {
    Letter,
    Number,
    Space,
    /// Neither letter, number nor whitespace: punctuation, symbols, marks, controls.
    Other,
}

const fn ascii_classes() -> [CharClass; 128] {
    let mut table = [CharClass::Other; 128];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        table[b] = if c.is_ascii_alphabetic() {
            CharClass::Letter
        } else if c.is_ascii_digit() {
            CharClass::Number
        } else if matches!(c, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r') {
            CharClass::Space
        } else {
            CharClass::Other
        };
        b += 1;
    }
    table
}

static ASCII_CLASSES: [CharClass; 128] = ascii_classes();

fn in_ranges(ranges: &[(u32, u32)], cp: u32) -> bool {
    // Index of the first range whose end is >= cp; the code point is inside it or in a gap.
    let i = ranges.partition_point(|&(_, end)| end < cp);
    i < ranges.len() && ranges[i].0 <= cp
}

/// Classifies `c` for the pre-tokenizer.
#[inline]
pub fn classify(c: char) -> CharClass {
    let cp = c as u32;
    if cp < 128 {
        return ASCII_CLASSES[cp as usize];
    }
    if in_ranges(&LETTER_RANGES, cp) {
        CharClass::Letter
    } else if in_ranges(&NUMBER_RANGES, cp) {
        CharClass::Number
    } else if c.is_whitespace() {
        CharClass::Space
    } else {
        CharClass::Other
    }
}

/// Whether `c` is a mark (general category M: combining accents, Hangul/Indic vowel signs).
/// Marks are `CharClass::Other` for the pre-tokenizer; word splitting keeps them in words.
pub fn is_mark(c: char) -> bool {
    (c as u32) >= 0x300 && in_ranges(&MARK_RANGES, c as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_characters() {
        assert_eq!(classify('a'), CharClass::Letter);
        assert_eq!(classify('한'), CharClass::Letter); // Hangul syllable, Lo
        assert_eq!(classify('ㄱ'), CharClass::Letter); // compatibility jamo, Lo
        assert_eq!(classify('7'), CharClass::Number);
        assert_eq!(classify('٣'), CharClass::Number); // Arabic-Indic digit, Nd
        assert_eq!(classify('Ⅻ'), CharClass::Number); // Roman numeral, Nl
        assert_eq!(classify('½'), CharClass::Number); // No
        assert_eq!(classify('\u{3000}'), CharClass::Space); // ideographic space
        assert_eq!(classify('\u{85}'), CharClass::Space);
        assert_eq!(classify('\u{A0}'), CharClass::Space);
        assert_eq!(classify('.'), CharClass::Other);
        // U+0345 is Alphabetic (char::is_alphabetic) but a mark (Mn), not \p{L}.
        assert!('\u{345}'.is_alphabetic());
        assert_eq!(classify('\u{345}'), CharClass::Other);
        assert!(is_mark('\u{345}') && is_mark('\u{301}') && !is_mark('a') && !is_mark('한'));
        // U+1F600 emoji: symbol.
        assert_eq!(classify('😀'), CharClass::Other);
    }

    #[test]
    fn ascii_table_matches_range_tables() {
        for b in 0u8..128 {
            let c = b as char;
            let expected = if in_ranges(&LETTER_RANGES, b as u32) {
                CharClass::Letter
            } else if in_ranges(&NUMBER_RANGES, b as u32) {
                CharClass::Number
            } else if c.is_whitespace() {
                CharClass::Space
            } else {
                CharClass::Other
            };
            assert_eq!(classify(c), expected, "byte {b:#x}");
        }
    }

    #[test]
    fn range_tables_sorted_and_disjoint() {
        for table in [&LETTER_RANGES[..], &NUMBER_RANGES[..], &MARK_RANGES[..]] {
            for w in table.windows(2) {
                assert!(w[0].0 <= w[0].1 && w[0].1 + 1 < w[1].0, "{:x?}", w);
            }
        }
        // No code point is both a letter and a number, and none is whitespace.
        for &(a, b) in NUMBER_RANGES.iter() {
            for cp in a..=b {
                assert!(!in_ranges(&LETTER_RANGES, cp));
                assert!(!char::from_u32(cp).unwrap().is_whitespace());
            }
        }
    }

    /// The committed tables equal the generator's output (run by the build's pinned python3 with
    /// unicodedata2 16.0).
    #[test]
    fn unicode_tables_in_sync() {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/gen_unicode_tables.py");
        let committed = include_str!("unicode_tables.rs");
        let output = kormo_testdeps::python(&["unicodedata2"])
            .arg(script)
            .arg("--stdout")
            .output()
            .expect("running the checked python3");
        assert!(
            output.status.success(),
            "{script} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let generated = String::from_utf8(output.stdout).unwrap();
        assert!(
            generated == committed,
            "src/unicode_tables.rs is stale: rerun {script}"
        );
    }
}
