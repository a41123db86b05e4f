//! The embedded fatbin and a per-context cache of its functions.
//!
//! The fatbin is compiled ahead of time (build.rs under cargo, the cuda genrule under Bazel) and
//! embedded; it is loaded into the context on first use of [`Kernels::new`], and functions are
//! looked up lazily by name and cached. Attention variants need more than the default 48 KiB of
//! dynamic shared memory, which the driver only grants after an explicit opt-in per function.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::CUfunction_attribute_enum;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};
use cudarc::nvrtc::Ptx;

use crate::device::{open_context, CudaError};
use crate::kernel_names::ATTENTION_VARIANTS;

/// The fatbin bytes (empty when the crate was built without nvcc).
pub static FATBIN: &[u8] = include_bytes!(env!("KORMO_FATBIN"));

/// True when this build carries compiled kernels.
pub fn kernels_built() -> bool {
    !FATBIN.is_empty()
}

pub struct Kernels {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    module: Arc<CudaModule>,
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
    capability: (i32, i32),
}

impl Kernels {
    /// Opens device `ordinal` and loads the kernels. Fails cleanly without a device or kernels.
    pub fn new(ordinal: usize) -> Result<Self, CudaError> {
        let ctx = open_context(ordinal)?;
        if !kernels_built() {
            return Err(CudaError::KernelsNotBuilt);
        }
        let module = ctx.load_module(Ptx::from_binary(FATBIN.to_vec()))?;
        let stream = ctx.default_stream();
        let capability = ctx.compute_capability()?;
        Ok(Self { ctx, stream, module, functions: Mutex::new(HashMap::new()), capability })
    }

    /// The device's compute capability (major, minor): (9, 0) runs the sm_90a kernels.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.capability
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The function `name` (one of [`crate::kernel_names::KERNEL_NAMES`]), loaded once.
    pub fn function(&self, name: &'static str) -> Result<CudaFunction, CudaError> {
        let mut cache = self.functions.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(f) = cache.get(name) {
            return Ok(f.clone());
        }
        let f = self.module.load_function(name)?;
        let smem = ATTENTION_VARIANTS.iter().find_map(|v| {
            if v.fwd == name {
                Some(v.fwd_smem_bytes)
            } else if v.fwd_sm90 == name {
                Some(v.fwd_sm90_smem_bytes)
            } else if v.bwd_sm90 == name || v.bwd_dkdv_sm90 == name {
                Some(v.bwd_sm90_smem_bytes)
            } else if v.bwd == name || v.bwd_dkdv == name {
                Some(v.bwd_smem_bytes)
            } else if v.bwd_dq == name {
                Some(v.dq_smem_bytes)
            } else {
                None
            }
        });
        if let Some(bytes) = smem {
            f.set_attribute(CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes as i32)?;
        }
        cache.insert(name, f.clone());
        Ok(f)
    }
}
