//! bf16 <-> f32 on the host, with bf16 kept as raw `u16` bits (kormo has no half-float type;
//! device bf16 buffers are `u16` too). bf16 is the upper half of an f32, so widening is exact;
//! narrowing rounds to nearest, ties to even (what torch's `.to(torch.bfloat16)` does), and a
//! NaN stays a quiet NaN (a NaN whose payload sits only in the low bits would otherwise round
//! to infinity). Used for bf16 Hugging Face exports/imports and bf16 gradient communication.
//!
//! It lives in kormo-model because that is the lowest crate every user (kormo-hf, kormo-dist,
//! kormo-cuda) already depends on; kormo-checkpoint only stores the raw bits and needs none.

/// The bf16 bit pattern nearest to `x` (ties to even; NaN stays NaN).
pub fn from_f32(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) as u16) | 0x0040;
    }
    let lsb = (bits >> 16) & 1;
    (bits.wrapping_add(0x7fff + lsb) >> 16) as u16
}

/// The f32 value of a bf16 bit pattern (exact).
pub fn to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// [`from_f32`] over a slice.
pub fn from_f32_slice(values: &[f32]) -> Vec<u16> {
    values.iter().map(|&x| from_f32(x)).collect()
}

/// [`to_f32`] over a slice.
pub fn to_f32_slice(bits: &[u16]) -> Vec<f32> {
    bits.iter().map(|&b| to_f32(b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_to_nearest_even_and_keeps_specials() {
        assert_eq!(to_f32(from_f32(1.0)), 1.0);
        // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to the even one (1).
        assert_eq!(to_f32(from_f32(1.0 + 2f32.powi(-8))), 1.0);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even).
        assert_eq!(
            to_f32(from_f32(1.0 + 3.0 * 2f32.powi(-8))),
            1.0 + 2f32.powi(-6)
        );
        // Just above halfway rounds up.
        assert_eq!(
            to_f32(from_f32(1.0 + 2f32.powi(-8) + 2f32.powi(-20))),
            1.0 + 2f32.powi(-7)
        );
        assert_eq!(to_f32(from_f32(-2.5)), -2.5);
        assert_eq!(to_f32(from_f32(-3.140625)), -3.140625);
        assert_eq!(to_f32(from_f32(f32::INFINITY)), f32::INFINITY);
        assert_eq!(to_f32(from_f32(f32::MAX)), f32::INFINITY); // above the largest bf16
    }

    #[test]
    fn nan_stays_nan() {
        assert!(to_f32(from_f32(f32::NAN)).is_nan());
        // Payload only in the low 16 bits: plain rounding would carry into the exponent and
        // give infinity.
        let low_payload_nan = f32::from_bits(0x7f80_0001);
        assert!(low_payload_nan.is_nan());
        assert!(to_f32(from_f32(low_payload_nan)).is_nan());
        assert!(to_f32(from_f32(-low_payload_nan)).is_nan());
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

    #[test]
    fn slice_helpers_match_the_scalar_functions() {
        let values = [0.1f32, -7.3e-3, 1234.5, 1.0 + 2f32.powi(-8), -0.0];
        let bits = from_f32_slice(&values);
        assert_eq!(
            bits,
            values.iter().map(|&x| from_f32(x)).collect::<Vec<_>>()
        );
        let widened = to_f32_slice(&bits);
        assert_eq!(widened, bits.iter().map(|&b| to_f32(b)).collect::<Vec<_>>());
        assert_ne!(widened[..3], values[..3], "rounding must be visible");
    }
}
