//! Host-side bf16: the top 16 bits of an f32, rounded to nearest even (NaN kept quiet). Device
//! buffers of bf16 are `CudaSlice<u16>`, so no half-float crate is needed.

/// Rounds an f32 to bf16 bits (round to nearest, ties to even).
pub fn from_f32(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) as u16) | 0x0040; // keep sign and payload top, force quiet
    }
    let rounding = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(rounding) >> 16) as u16
}

/// Exact widening of bf16 bits to f32.
pub fn to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

pub fn vec_from_f32(xs: &[f32]) -> Vec<u16> {
    xs.iter().map(|&x| from_f32(x)).collect()
}

pub fn vec_to_f32(bs: &[u16]) -> Vec<f32> {
    bs.iter().map(|&b| to_f32(b)).collect()
}

/// A bf16 NaN pattern used to poison output buffers before a launch, so a kernel that leaves an
/// element unwritten is caught.
pub const POISON: u16 = 0x7fc1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rounding() {
        for &x in &[1.0f32, -2.5, 0.15625, 65504.0, -1e-20] {
            let b = from_f32(x);
            let back = to_f32(b);
            assert!((back - x).abs() <= x.abs() / 128.0, "{x} -> {back}");
        }
        // 1 + 2^-8 is exactly halfway between two bf16 values: ties go to even (1.0).
        assert_eq!(to_f32(from_f32(1.0 + 1.0 / 256.0)), 1.0);
        // 1 + 3 * 2^-8 is halfway too: rounds up to the even neighbour 1 + 2^-6.
        assert_eq!(to_f32(from_f32(1.0 + 3.0 / 256.0)), 1.0 + 1.0 / 64.0);
        assert!(to_f32(from_f32(f32::NAN)).is_nan());
        assert!(to_f32(POISON).is_nan());
        assert_eq!(to_f32(from_f32(f32::INFINITY)), f32::INFINITY);
    }
}
