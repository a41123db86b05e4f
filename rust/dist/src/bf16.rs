//! Host-side bf16 as raw bits: the top 16 bits of an f32, rounded to nearest even. Used for the
//! bf16 gradient-communication option; device bf16 buffers are `u16` too.

/// Rounds an f32 to bf16 bits (round to nearest, ties to even; NaN stays a quiet NaN).
pub fn from_f32(value: f32) -> u16 {
    let bits = value.to_bits();
    if value.is_nan() {
        return ((bits >> 16) as u16) | 0x0040;
    }
    let rounding = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(rounding) >> 16) as u16
}

/// Exact widening of bf16 bits to f32.
pub fn to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_to_nearest_even_and_widens_exactly() {
        assert_eq!(to_f32(from_f32(1.0)), 1.0);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
        assert_eq!(to_f32(from_f32(1.0 + 1.0 / 256.0)), 1.0);
        // 1 + 3 * 2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: even is 1 + 2^-6.
        assert_eq!(to_f32(from_f32(1.0 + 3.0 / 256.0)), 1.0 + 1.0 / 64.0);
        assert_eq!(to_f32(from_f32(-3.140625)), -3.140625);
        assert!(to_f32(from_f32(f32::NAN)).is_nan());
        assert_eq!(to_f32(from_f32(f32::INFINITY)), f32::INFINITY);
    }
}
