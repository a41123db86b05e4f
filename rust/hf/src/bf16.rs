//! bf16 <-> f32 conversion. bf16 is the upper half of an f32; rounding to it is round to
//! nearest, ties to even (what torch's `.to(torch.bfloat16)` does), and NaN stays NaN (a NaN
//! whose payload sits only in the low bits would otherwise round to infinity).

/// The bf16 bit pattern nearest to `x` (ties to even).
pub fn from_f32(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) as u16) | 0x0040;
    }
    let lsb = (bits >> 16) & 1;
    ((bits.wrapping_add(0x7fff + lsb)) >> 16) as u16
}

/// The f32 value of a bf16 bit pattern (exact).
pub fn to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_to_nearest_even_and_keeps_specials() {
        // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to the even one (1).
        assert_eq!(to_f32(from_f32(1.0 + 2f32.powi(-8))), 1.0);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even).
        assert_eq!(to_f32(from_f32(1.0 + 3.0 * 2f32.powi(-8))), 1.0 + 2f32.powi(-6));
        // Just above halfway rounds up.
        assert_eq!(to_f32(from_f32(1.0 + 2f32.powi(-8) + 2f32.powi(-20))), 1.0 + 2f32.powi(-7));
        assert_eq!(to_f32(from_f32(-2.5)), -2.5);
        assert!(to_f32(from_f32(f32::NAN)).is_nan());
        assert_eq!(to_f32(from_f32(f32::INFINITY)), f32::INFINITY);
        assert_eq!(to_f32(from_f32(f32::MAX)), f32::INFINITY); // above the largest bf16
    }

    #[test]
    fn relative_error_is_within_half_an_ulp() {
        let mut x = 0.123_456_7f32;
        for _ in 0..1000 {
            let y = to_f32(from_f32(x));
            assert!(((y - x) / x).abs() <= 2f32.powi(-8), "{x} -> {y}");
            x = x * -1.37 + 0.011;
            if x.abs() > 1e30 {
                x = 0.3;
            }
        }
    }
}
