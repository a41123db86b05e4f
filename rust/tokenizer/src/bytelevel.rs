//! GPT-2's byte-to-unicode mapping: every byte gets a printable character so that byte-level
//! tokens can be stored as JSON strings in `tokenizer.json`. Printable Latin-1 bytes
//! (`!`..`~`, `¡`..`¬`, `®`..`ÿ`) map to themselves; the other 68 bytes map, in byte order,
//! to U+0100, U+0101, ... (so the space becomes `Ġ` and the newline `Ċ`).

/// `BYTE_TO_CHAR[b]` is the character that represents byte `b`.
pub static BYTE_TO_CHAR: [char; 256] = byte_to_char_table();

const fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next_extra = 256u32;
    let mut b = 0usize;
    while b < 256 {
        let printable =
            (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        let cp = if printable {
            b as u32
        } else {
            next_extra += 1;
            next_extra - 1
        };
        table[b] = match char::from_u32(cp) {
            Some(c) => c,
            None => panic!("unreachable: code points below 0x200 are valid"),
        };
        b += 1;
    }
    table
}

/// Encodes raw bytes as their byte-level string.
pub fn bytes_to_string(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| BYTE_TO_CHAR[b as usize]).collect()
}

/// Decodes a byte-level string back to raw bytes; `None` if it holds a character outside
/// the 256 of the mapping.
pub fn string_to_bytes(s: &str) -> Option<Vec<u8>> {
    s.chars().map(char_to_byte).collect()
}

fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    match cp {
        0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF => Some(cp as u8),
        0x100..=0x143 => BYTE_TO_CHAR.iter().position(|&m| m == c).map(|b| b as u8),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_is_a_bijection_with_gpt2_landmarks() {
        assert_eq!(BYTE_TO_CHAR[b' ' as usize], 'Ġ');
        assert_eq!(BYTE_TO_CHAR[b'\n' as usize], 'Ċ');
        assert_eq!(BYTE_TO_CHAR[0], 'Ā');
        assert_eq!(BYTE_TO_CHAR[b'A' as usize], 'A');
        let mut seen = std::collections::HashSet::new();
        for b in 0..=255u8 {
            assert!(seen.insert(BYTE_TO_CHAR[b as usize]));
            assert_eq!(char_to_byte(BYTE_TO_CHAR[b as usize]), Some(b));
        }
        assert_eq!(string_to_bytes("a€"), None);
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(string_to_bytes(&bytes_to_string(&all)).unwrap(), all);
    }
}
