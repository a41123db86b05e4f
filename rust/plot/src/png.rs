//! PNG encoding, written out by hand: 8-bit RGB, one zlib stream in the IDAT chunk.
//!
//! The zlib stream holds a single deflate block with the fixed Huffman code (RFC 1951 3.2.6)
//! and greedy LZ77 matching through a hash chain over 3-byte prefixes. Charts are mostly flat
//! background, which LZ77 turns into long back-references, so this small encoder gets most of
//! what dynamic Huffman codes would. Each scanline uses PNG filter 0 (none). Chunk checksums
//! are CRC-32 (crc32fast); the zlib trailer is Adler-32.

const WINDOW: usize = 32 * 1024;
const MIN_MATCH: usize = 3;
const MAX_MATCH: usize = 258;
const HASH_BITS: u32 = 15;
/// Candidates examined per position: enough for flat images, bounded for noisy ones.
const MAX_CHAIN: usize = 32;

const LENGTH_BASE: [u16; 29] = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258];
const LENGTH_EXTRA: [u8; 29] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0];
const DIST_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289,
    16385, 24577,
];
const DIST_EXTRA: [u8; 30] = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13];

/// Encodes `rgb` (`width * height * 3` bytes, rows top to bottom) as a PNG file.
pub fn encode_rgb(width: usize, height: usize, rgb: &[u8]) -> Vec<u8> {
    assert_eq!(rgb.len(), width * height * 3, "png: pixel buffer size");
    assert!(width > 0 && height > 0 && width <= u32::MAX as usize && height <= u32::MAX as usize, "png: image size");
    let mut raw = Vec::with_capacity(height * (width * 3 + 1));
    for row in rgb.chunks(width * 3) {
        raw.push(0); // filter: none
        raw.extend_from_slice(row);
    }
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&(width as u32).to_be_bytes());
    ihdr.extend_from_slice(&(height as u32).to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8 bits, truecolour, deflate, adaptive filters, no interlace
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", &zlib(&raw));
    chunk(&mut png, b"IEND", &[]);
    png
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// A zlib stream (RFC 1950) of `data`.
pub fn zlib(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01]; // deflate, 32K window, no dictionary, fastest (FCHECK valid)
    out.extend(deflate_fixed(data));
    out.extend_from_slice(&adler32(data).to_be_bytes());
    out
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for block in data.chunks(5552) {
        for &byte in block {
            a += byte as u32;
            b += a;
        }
        a %= 65521;
        b %= 65521;
    }
    (b << 16) | a
}

/// Bits packed least significant first, as deflate requires.
struct BitWriter {
    out: Vec<u8>,
    bits: u64,
    count: u32,
}

impl BitWriter {
    fn put(&mut self, value: u32, bits: u32) {
        self.bits |= (value as u64) << self.count;
        self.count += bits;
        while self.count >= 8 {
            self.out.push(self.bits as u8);
            self.bits >>= 8;
            self.count -= 8;
        }
    }

    /// A Huffman code: its bits go most significant first.
    fn put_code(&mut self, code: u32, bits: u32) {
        self.put(code.reverse_bits() >> (32 - bits), bits);
    }

    fn finish(mut self) -> Vec<u8> {
        if self.count > 0 {
            self.out.push(self.bits as u8);
        }
        self.out
    }
}

/// The fixed literal/length code of `symbol` (0..=287): (code, length).
fn fixed_literal_code(symbol: u32) -> (u32, u32) {
    match symbol {
        0..=143 => (0x30 + symbol, 8),
        144..=255 => (0x190 + symbol - 144, 9),
        256..=279 => (symbol - 256, 7),
        _ => (0xC0 + symbol - 280, 8),
    }
}

fn put_literal(w: &mut BitWriter, symbol: u32) {
    let (code, bits) = fixed_literal_code(symbol);
    w.put_code(code, bits);
}

fn put_match(w: &mut BitWriter, length: usize, distance: usize) {
    let li = LENGTH_BASE.iter().rposition(|&b| b as usize <= length).expect("length >= 3");
    put_literal(w, 257 + li as u32);
    w.put((length - LENGTH_BASE[li] as usize) as u32, LENGTH_EXTRA[li] as u32);
    let di = DIST_BASE.iter().rposition(|&b| b as usize <= distance).expect("distance >= 1");
    w.put_code(di as u32, 5);
    w.put((distance - DIST_BASE[di] as usize) as u32, DIST_EXTRA[di] as u32);
}

fn hash3(data: &[u8], i: usize) -> usize {
    let v = (data[i] as u32) | (data[i + 1] as u32) << 8 | (data[i + 2] as u32) << 16;
    (v.wrapping_mul(0x9E37_79B1) >> (32 - HASH_BITS)) as usize
}

/// One final deflate block with fixed Huffman codes.
fn deflate_fixed(data: &[u8]) -> Vec<u8> {
    let mut w = BitWriter { out: Vec::with_capacity(data.len() / 4 + 16), bits: 0, count: 0 };
    w.put(1, 1); // BFINAL
    w.put(1, 2); // BTYPE = fixed Huffman
    let mut head = vec![usize::MAX; 1 << HASH_BITS];
    let mut prev = vec![usize::MAX; data.len()];
    let insert = |head: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        if i + MIN_MATCH <= data.len() {
            let h = hash3(data, i);
            prev[i] = head[h];
            head[h] = i;
        }
    };
    let mut i = 0;
    while i < data.len() {
        let mut best = (0, 0);
        if i + MIN_MATCH <= data.len() {
            let mut candidate = head[hash3(data, i)];
            let limit = (data.len() - i).min(MAX_MATCH);
            for _ in 0..MAX_CHAIN {
                if candidate == usize::MAX || i - candidate > WINDOW {
                    break;
                }
                let length = data[candidate..].iter().zip(&data[i..i + limit]).take_while(|(a, b)| a == b).count();
                if length > best.0 {
                    best = (length, i - candidate);
                    if length == limit {
                        break;
                    }
                }
                candidate = prev[candidate];
            }
        }
        if best.0 >= MIN_MATCH {
            put_match(&mut w, best.0, best.1);
            for j in i..i + best.0 {
                insert(&mut head, &mut prev, j);
            }
            i += best.0;
        } else {
            put_literal(&mut w, data[i] as u32);
            insert(&mut head, &mut prev, i);
            i += 1;
        }
    }
    put_literal(&mut w, 256); // end of block
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adler32_matches_known_values() {
        assert_eq!(adler32(b""), 1);
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
    }

    #[test]
    fn zlib_header_is_valid_and_flat_data_compresses() {
        let z = zlib(&vec![255u8; 100_000]);
        assert_eq!(((z[0] as u16) << 8 | z[1] as u16) % 31, 0);
        assert!(z.len() < 2_000, "{} bytes", z.len());
    }
}
