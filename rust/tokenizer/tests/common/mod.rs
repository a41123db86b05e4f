//! What the tests comparing kormo with Hugging Face `tokenizers` share: the adversarial strings
//! and the bilingual corpus (the Debian FAQ from the build).

#![allow(dead_code)] // each test crate uses part of it

use kormo_corpus::debian::{debian_faq, files_with_suffix};
use kormo_tokenizer::unicode_tables::{LETTER_RANGES, NUMBER_RANGES};
use rand::{Rng, SeedableRng};

/// Deterministic tricky strings.
pub fn adversarial_texts(n: usize) -> Vec<String> {
    let pool: Vec<&str> = vec![
        " ",
        "  ",
        "\t",
        "\n",
        "\r\n",
        "\r",
        "\u{a0}",
        "\u{3000}",
        "\u{2028}",
        "\u{85}",
        "\u{b}",
        "'s",
        "'S",
        "'re",
        "'VE",
        "'ll",
        "'d",
        "'m",
        "'t",
        "'ſ",
        "'",
        "\"",
        "a",
        "Zebra",
        "word",
        "한국어",
        "는",
        "ㄱ",
        "1",
        "2024",
        "٣",
        "½",
        "Ⅻ",
        ".",
        "...",
        "!?",
        "-",
        "😀",
        "👍🏽",
        "\u{301}",
        "\u{345}",
        "é",
        "ß",
        "日本",
        "Ω",
        "<|BOS|>",
        "<think>",
        "</think>",
        "<|EOT|>",
        "<|BO",
        "\u{0}",
        "\u{7f}",
        "$",
        "_",
        "ﬅ",
        "\u{1112}\u{1161}\u{11AB}",
        "e\u{301}",
        "\u{212B}",
        "q\u{301}\u{323}",
    ];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2024);
    let random_char = |rng: &mut rand_chacha::ChaCha8Rng| -> char {
        // Letters and numbers from the tables, or any scalar value (symbols, marks, spaces,
        // controls, unassigned code points), half of them below U+3400.
        match rng.random_range(0..3) {
            0 => {
                let (a, b) = LETTER_RANGES[rng.random_range(0..LETTER_RANGES.len())];
                char::from_u32(rng.random_range(a..=b)).unwrap()
            }
            1 => {
                let (a, b) = NUMBER_RANGES[rng.random_range(0..NUMBER_RANGES.len())];
                char::from_u32(rng.random_range(a..=b)).unwrap()
            }
            _ => loop {
                let limit = if rng.random_bool(0.5) {
                    0x3400
                } else {
                    0x110000
                };
                if let Some(c) = char::from_u32(rng.random_range(1..limit)) {
                    break c;
                }
            },
        }
    };
    (0..n)
        .map(|_| {
            let mut s = String::new();
            for _ in 0..rng.random_range(1..40) {
                if rng.random_bool(0.15) {
                    s.push(random_char(&mut rng));
                } else {
                    s.push_str(pool[rng.random_range(0..pool.len())]);
                }
            }
            s
        })
        .collect()
}

/// The Debian FAQ's English and Korean documents (plain text of each HTML page).
pub fn faq_documents() -> (Vec<String>, Vec<String>) {
    let (english, korean) = debian_faq(&kormo_testdeps::debian_faq());
    eprintln!("using the Debian FAQ: {} English and {} Korean documents", english.len(), korean.len());
    (english, korean)
}

/// The Debian FAQ's HTML sources as they are (markup, attributes, URLs and entities around
/// English and Korean text, as in web crawls).
pub fn faq_html() -> Vec<String> {
    let dir = kormo_testdeps::debian_faq();
    let mut files = files_with_suffix(&dir, ".en.html");
    files.extend(files_with_suffix(&dir.join("ko"), ".ko.html"));
    files.iter().map(|p| std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).collect()
}
