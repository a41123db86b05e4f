//! Host-side bf16 for the CUDA backend. Device bf16 buffers are `CudaSlice<u16>` (raw bits), so
//! no half-float crate is needed; the conversions are the one implementation in
//! `kormo_model::bf16`, re-exported here with the names the launchers and tests use.

pub use kormo_model::bf16::{from_f32, from_f32_slice as vec_from_f32, to_f32, to_f32_slice as vec_to_f32};

/// A bf16 NaN pattern used to poison output buffers before a launch, so a kernel that leaves an
/// element unwritten is caught.
pub const POISON: u16 = 0x7fc1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poison_is_a_nan_that_rounding_never_produces_from_finite_values() {
        assert!(to_f32(POISON).is_nan());
        for &x in &[0.0f32, 1.0, -2.5, 65504.0, f32::MAX, f32::MIN_POSITIVE] {
            assert_ne!(from_f32(x), POISON);
        }
    }
}
