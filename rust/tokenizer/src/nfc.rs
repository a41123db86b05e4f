//! Unicode NFC normalization (Unicode 16.0, from the generated tables), for loading
//! `tokenizer.json` files whose normalizer is NFC (Qwen2's are). It matters for Korean: text
//! typed or saved as conjoining jamo (NFD, e.g. from macOS) becomes precomposed syllables.
//!
//! Algorithm (UAX #15): a quick check first -- text without any code point that NFC may
//! change (`NFC_MAYBE_CHANGES`) is returned as is, which covers nearly all real text; else
//! full canonical decomposition (table lookups, Hangul syllables algorithmically), canonical
//! ordering of combining marks (stable sort by combining class within runs of non-starters),
//! then canonical composition (a character combines with the last starter unless blocked by
//! an intervening mark of equal or higher class; Hangul L+V and LV+T algorithmically).

use std::borrow::Cow;

use crate::unicode_tables::{
    CANONICAL_COMPOSITIONS, CANONICAL_DECOMPOSITIONS, COMBINING_CLASS_RANGES, NFC_MAYBE_CHANGES,
};

const S_BASE: u32 = 0xAC00;
const L_BASE: u32 = 0x1100;
const V_BASE: u32 = 0x1161;
const T_BASE: u32 = 0x11A7;
const L_COUNT: u32 = 19;
const V_COUNT: u32 = 21;
const T_COUNT: u32 = 28;
const N_COUNT: u32 = V_COUNT * T_COUNT;
const S_COUNT: u32 = L_COUNT * N_COUNT;

fn combining_class(cp: u32) -> u8 {
    let i = COMBINING_CLASS_RANGES.partition_point(|&(_, end, _)| end < cp);
    match COMBINING_CLASS_RANGES.get(i) {
        Some(&(start, _, class)) if start <= cp => class,
        _ => 0,
    }
}

fn maybe_changes(cp: u32) -> bool {
    let i = NFC_MAYBE_CHANGES.partition_point(|&(_, end)| end < cp);
    NFC_MAYBE_CHANGES
        .get(i)
        .is_some_and(|&(start, _)| start <= cp)
}

fn decompose(cp: u32, out: &mut Vec<u32>) {
    if (S_BASE..S_BASE + S_COUNT).contains(&cp) {
        let s = cp - S_BASE;
        out.push(L_BASE + s / N_COUNT);
        out.push(V_BASE + (s % N_COUNT) / T_COUNT);
        if !s.is_multiple_of(T_COUNT) {
            out.push(T_BASE + s % T_COUNT);
        }
        return;
    }
    match CANONICAL_DECOMPOSITIONS.binary_search_by_key(&cp, |&(c, _, _)| c) {
        Ok(i) => {
            let (_, first, second) = CANONICAL_DECOMPOSITIONS[i];
            decompose(first, out);
            if second != 0 {
                decompose(second, out);
            }
        }
        Err(_) => out.push(cp),
    }
}

fn compose_pair(a: u32, b: u32) -> Option<u32> {
    if (L_BASE..L_BASE + L_COUNT).contains(&a) && (V_BASE..V_BASE + V_COUNT).contains(&b) {
        return Some(S_BASE + ((a - L_BASE) * V_COUNT + (b - V_BASE)) * T_COUNT);
    }
    if (S_BASE..S_BASE + S_COUNT).contains(&a)
        && (a - S_BASE).is_multiple_of(T_COUNT)
        && (T_BASE + 1..T_BASE + T_COUNT).contains(&b)
    {
        return Some(a + (b - T_BASE));
    }
    CANONICAL_COMPOSITIONS
        .binary_search_by_key(&(a, b), |&(x, y, _)| (x, y))
        .ok()
        .map(|i| CANONICAL_COMPOSITIONS[i].2)
}

/// `text` in Normalization Form C.
pub fn nfc(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| maybe_changes(c as u32)) {
        return Cow::Borrowed(text);
    }
    let mut cps = Vec::with_capacity(text.len());
    for c in text.chars() {
        decompose(c as u32, &mut cps);
    }
    // Canonical ordering: insertion sort of each run of non-starters by class (stable).
    let classes: Vec<u8> = cps.iter().map(|&c| combining_class(c)).collect();
    let mut pairs: Vec<(u32, u8)> = cps.into_iter().zip(classes).collect();
    let mut i = 0;
    while i < pairs.len() {
        if pairs[i].1 == 0 {
            i += 1;
            continue;
        }
        let start = i;
        while i < pairs.len() && pairs[i].1 != 0 {
            i += 1;
        }
        pairs[start..i].sort_by_key(|&(_, class)| class);
    }
    // Canonical composition.
    let mut out: Vec<(u32, u8)> = Vec::with_capacity(pairs.len());
    let mut starter: Option<usize> = None;
    for (cp, class) in pairs {
        if let Some(s) = starter {
            let last_class = out.last().map_or(0, |&(_, c)| c);
            let blocked = out.len() - 1 > s && (last_class == 0 || last_class >= class);
            if !blocked {
                if let Some(composite) = compose_pair(out[s].0, cp) {
                    out[s].0 = composite;
                    continue;
                }
            }
        }
        if class == 0 {
            starter = Some(out.len());
        }
        out.push((cp, class));
    }
    Cow::Owned(
        out.into_iter()
            .map(|(cp, _)| char::from_u32(cp).expect("tables hold scalar values"))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composes_hangul_and_latin() {
        assert_eq!(nfc("\u{1100}\u{1161}\u{11A8}"), "각");
        assert_eq!(
            nfc("\u{1112}\u{1161}\u{11AB}\u{1100}\u{1173}\u{11AF}"),
            "한글"
        );
        assert_eq!(nfc("e\u{301}"), "é");
        // Reordering: dot below (220) before acute (230), then both compose where possible.
        assert_eq!(nfc("q\u{301}\u{323}"), "q\u{323}\u{301}");
        assert_eq!(nfc("e\u{301}\u{323}"), "\u{1EB9}\u{301}");
        // Singletons and exclusions: Angstrom sign -> Å, U+0958 stays decomposed.
        assert_eq!(nfc("\u{212B}"), "Å");
        assert_eq!(nfc("\u{958}"), "\u{915}\u{93C}");
        assert!(matches!(nfc("plain 한국어 text"), Cow::Borrowed(_)));
    }

    /// Against Python's NFC (unicodedata2 16.0, the tables' version, from the build's pinned
    /// Python modules) on every code point of planes 0-2 alone (no code point above is one NFC
    /// may touch, as asserted), and on random strings of characters NFC may touch.
    #[test]
    fn matches_python_unicodedata() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(15);
        let mut samples: Vec<String> = (0..0x30000u32)
            .filter_map(char::from_u32)
            .map(String::from)
            .collect();
        assert!((0x30000..0x110000).all(|c| !maybe_changes(c)));
        let interesting: Vec<char> = (0..0x110000u32)
            .filter(|&c| maybe_changes(c) || combining_class(c) != 0)
            .filter_map(char::from_u32)
            .chain("aeouAEK가각한ㄱ\u{1100}\u{1161}\u{11A8} ".chars())
            .collect();
        for _ in 0..20_000 {
            let n = rng.random_range(1..8);
            samples.push(
                (0..n)
                    .map(|_| interesting[rng.random_range(0..interesting.len())])
                    .collect(),
            );
        }
        let hex = |s: &str| {
            s.chars()
                .map(|c| format!("{:x}", c as u32))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let input: String = samples.iter().map(|s| hex(s) + "\n").collect();
        // One line of hex code points in, one line of the NFC's hex code points out.
        let script = "import sys, unicodedata2 as u\n\
                      if u.unidata_version != '16.0.0': sys.exit('unicodedata2 is not 16.0.0')\n\
                      for line in sys.stdin.read().split('\\n')[:-1]:\n\
                      \x20s = ''.join(chr(int(h, 16)) for h in line.split())\n\
                      \x20print(' '.join('%x' % ord(c) for c in u.normalize('NFC', s)))\n";
        let mut child = kormo_testdeps::python(&["unicodedata2"])
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawning the checked python3");
        let mut stdin = child.stdin.take().unwrap();
        let writer =
            std::thread::spawn(move || std::io::Write::write_all(&mut stdin, input.as_bytes()));
        let output = child.wait_with_output().unwrap();
        let written = writer.join().unwrap();
        assert!(
            output.status.success(),
            "the Python NFC helper failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        written.expect("writing to the Python NFC helper");
        let expected: Vec<&str> = std::str::from_utf8(&output.stdout)
            .unwrap()
            .lines()
            .collect();
        assert_eq!(expected.len(), samples.len());
        let mut bad = 0;
        for (s, e) in samples.iter().zip(&expected) {
            let ours = hex(&nfc(s));
            if ours != *e {
                bad += 1;
                assert!(bad < 5, "{} -> ours {ours} python {e}", hex(s));
            }
        }
        assert_eq!(bad, 0);
    }
}
