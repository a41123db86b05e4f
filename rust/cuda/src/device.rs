//! Device detection and the crate's error type.
//!
//! cudarc loads libcuda lazily and PANICS on the first driver call when it is absent, so every
//! entry point of this crate first asks `is_culib_present()` and turns "no driver" and "no
//! device" into [`CudaError::NoDevice`]: the trainer can probe for a GPU on any machine.

use std::fmt;
use std::sync::Arc;

use cudarc::driver::{CudaContext, DriverError};

#[derive(Debug)]
pub enum CudaError {
    /// No usable device: no libcuda, driver init failed, or zero devices.
    NoDevice(String),
    /// The crate was built without nvcc, so the embedded fatbin is empty.
    KernelsNotBuilt,
    /// A driver call failed.
    Driver(DriverError),
    /// A launcher refused arguments that break a kernel precondition.
    InvalidLaunch { kernel: &'static str, reason: String },
    /// cuBLASLt is missing or one of its calls failed.
    Cublas(String),
}

impl fmt::Display for CudaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CudaError::NoDevice(why) => write!(f, "no CUDA device: {why}"),
            CudaError::KernelsNotBuilt => write!(f, "kernels not built (no nvcc at build time)"),
            CudaError::Driver(e) => write!(f, "CUDA driver error: {e}"),
            CudaError::InvalidLaunch { kernel, reason } => write!(f, "cannot launch {kernel}: {reason}"),
            CudaError::Cublas(why) => write!(f, "cuBLASLt: {why}"),
        }
    }
}

impl std::error::Error for CudaError {}

impl From<DriverError> for CudaError {
    fn from(e: DriverError) -> Self {
        CudaError::Driver(e)
    }
}

/// What the trainer needs to know about one device.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub total_memory_bytes: usize,
}

/// True when the CUDA driver library can be loaded; the only call that is safe without it.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen libcuda; no CUDA function is called.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Lists the CUDA devices, or says why there are none.
pub fn detect_devices() -> Result<Vec<DeviceInfo>, CudaError> {
    if !driver_present() {
        return Err(CudaError::NoDevice("the CUDA driver library (libcuda) is not installed".into()));
    }
    let count = CudaContext::device_count().map_err(|e| CudaError::NoDevice(format!("driver init failed: {e}")))?;
    if count <= 0 {
        return Err(CudaError::NoDevice("the driver reports 0 devices".into()));
    }
    (0..count as usize)
        .map(|ordinal| {
            let ctx = CudaContext::new(ordinal)?;
            Ok(DeviceInfo {
                ordinal,
                name: ctx.name()?,
                compute_capability: ctx.compute_capability()?,
                total_memory_bytes: ctx.total_mem()?,
            })
        })
        .collect()
}

/// Opens the primary context of device `ordinal`, refusing GPUs older than sm_80 (the fatbin has
/// sm_80 and sm_90a code and compute_90 PTX, and the kernels use bf16 tensor cores).
pub fn open_context(ordinal: usize) -> Result<Arc<CudaContext>, CudaError> {
    let devices = detect_devices()?;
    let info = devices.get(ordinal).ok_or_else(|| {
        CudaError::NoDevice(format!("device {ordinal} requested, {} present", devices.len()))
    })?;
    if info.compute_capability.0 < 8 {
        return Err(CudaError::NoDevice(format!(
            "device {ordinal} ({}) has compute capability {}.{}; kormo needs 8.0 or newer",
            info.name, info.compute_capability.0, info.compute_capability.1
        )));
    }
    Ok(CudaContext::new(ordinal)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_never_panics_and_explains_absence() {
        match detect_devices() {
            Ok(devices) => assert!(!devices.is_empty()),
            Err(CudaError::NoDevice(why)) => {
                assert!(!why.is_empty());
                assert!(CudaError::NoDevice(why).to_string().starts_with("no CUDA device"));
            }
            Err(other) => panic!("detection failed with a non-NoDevice error: {other}"),
        }
    }
}
