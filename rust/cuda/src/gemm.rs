//! Row-major GEMMs of [`kormo_model::MatmulShape`] through cuBLASLt: bf16 A and B, f32
//! accumulation (`CUBLAS_COMPUTE_32F`), C/D in bf16 or f32, `beta = 1` for accumulation.
//!
//! cuBLASLt is column-major; a row-major `C[m, n] = op(A) op(B)` is the column-major
//! `C^T[n, m] = op(B)^T op(A)^T`, so the call swaps the operands and passes each one's own
//! transpose flag: no data moves. One plan (descriptor, three layouts, the heuristic's algorithm)
//! is built per distinct shape and cached, so steady-state calls only enqueue `cublasLtMatmul`;
//! the 32 MiB workspace (NVIDIA's Hopper recommendation) is allocated once.
//!
//! libcublasLt is loaded at run time (cudarc dynamic loading); [`Gemm::new`] reports its absence
//! as an error instead of letting cudarc panic on the first call.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use cudarc::cublaslt::result;
use cudarc::cublaslt::sys;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use kormo_model::MatmulShape;

use crate::device::CudaError;
use crate::ops::Dtype;

const WORKSPACE_BYTES: usize = 32 << 20;

fn cublas(what: &str) -> impl FnOnce(result::CublasError) -> CudaError + '_ {
    move |e| CudaError::Cublas(format!("{what}: {e}"))
}

/// What identifies a plan: every input of the heuristic.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct PlanKey {
    m: usize,
    n: usize,
    k: usize,
    trans_a: bool,
    trans_b: bool,
    c_dtype: Dtype,
}

/// cuBLASLt objects of one shape. Raw handles, destroyed on drop.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    layouts: [sys::cublasLtMatrixLayout_t; 3],
    algo: sys::cublasLtMatmulAlgo_t,
}

// SAFETY: the handles are plain cuBLASLt objects, used only under the plan cache's mutex.
unsafe impl Send for Plan {}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: created by this plan and destroyed once; errors at teardown are ignored.
        unsafe {
            let _ = result::destroy_matmul_desc(self.desc);
            for layout in self.layouts {
                let _ = result::destroy_matrix_layout(layout);
            }
        }
    }
}

pub struct Gemm {
    handle: sys::cublasLtHandle_t,
    stream: Arc<CudaStream>,
    workspace: CudaSlice<u8>,
    plans: Mutex<HashMap<PlanKey, Plan>>,
}

// SAFETY: the handle is used only to enqueue work on `stream` and to build plans under the mutex;
// cuBLASLt handles may be used from any thread as long as calls do not race on the same
// descriptors, which the mutex ensures.
unsafe impl Send for Gemm {}
unsafe impl Sync for Gemm {}

impl Drop for Gemm {
    fn drop(&mut self) {
        self.plans.get_mut().unwrap_or_else(|p| p.into_inner()).clear();
        // SAFETY: the handle was created in `new` and is destroyed once.
        unsafe {
            let _ = result::destroy_handle(self.handle);
        }
    }
}

/// One matrix as cuBLASLt sees it: a column-major `rows x cols` view (leading dimension `ld`) of a
/// row-major buffer, and whether the product uses it transposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnMajor {
    pub rows: usize,
    pub cols: usize,
    pub ld: usize,
    pub transpose: bool,
}

/// The column-major problem equal to the row-major `C[m, n] = op(A) op(B)`:
/// `C^T[n, m] = op(B)^T op(A)^T`, i.e. cuBLASLt's first operand is B and its second is A, each
/// keeping its own transpose flag (a row-major `[r, c]` buffer is a column-major `c x r` matrix,
/// its transpose). Returns [first (B), second (A), C].
pub fn column_major_problem(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> [ColumnMajor; 3] {
    // B stored [n, k] (trans_b) or [k, n]; A stored [k, m] (trans_a) or [m, k].
    let first = if trans_b {
        ColumnMajor { rows: k, cols: n, ld: k, transpose: true }
    } else {
        ColumnMajor { rows: n, cols: k, ld: n, transpose: false }
    };
    let second = if trans_a {
        ColumnMajor { rows: m, cols: k, ld: m, transpose: true }
    } else {
        ColumnMajor { rows: k, cols: m, ld: k, transpose: false }
    };
    [first, second, ColumnMajor { rows: n, cols: m, ld: n, transpose: false }]
}

fn data_type(d: Dtype) -> sys::cudaDataType {
    match d {
        Dtype::Bf16 => sys::cudaDataType::CUDA_R_16BF,
        Dtype::F32 => sys::cudaDataType::CUDA_R_32F,
    }
}

impl Gemm {
    /// Loads cuBLASLt, creates its handle and the workspace on `stream`.
    pub fn new(stream: Arc<CudaStream>) -> Result<Self, CudaError> {
        // SAFETY: only tries to dlopen libcublasLt.
        if !unsafe { sys::is_culib_present() } {
            return Err(CudaError::Cublas(
                "libcublasLt (CUDA 13 or 12) is not on the library path; set LD_LIBRARY_PATH to its directory".into(),
            ));
        }
        // cuBLASLt works in the calling thread's current context: make it ours.
        stream.context().bind_to_thread()?;
        let handle = result::create_handle().map_err(cublas("cublasLtCreate"))?;
        let workspace = stream.alloc_zeros::<u8>(WORKSPACE_BYTES)?;
        Ok(Gemm { handle, stream, workspace, plans: Mutex::new(HashMap::new()) })
    }

    /// Bytes of device memory held (the workspace).
    pub fn workspace_bytes(&self) -> usize {
        WORKSPACE_BYTES
    }

    fn plan(&self, key: PlanKey) -> Result<Plan, CudaError> {
        let PlanKey { m, n, k, trans_a, trans_b, c_dtype } = key;
        let [first, second, out] = column_major_problem(m, n, k, trans_a, trans_b);
        let layout = |dtype, op: ColumnMajor| {
            result::create_matrix_layout(data_type(dtype), op.rows as u64, op.cols as u64, op.ld as i64)
                .map_err(cublas("cublasLtMatrixLayoutCreate"))
        };
        let desc = result::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, sys::cudaDataType::CUDA_R_32F)
            .map_err(cublas("cublasLtMatmulDescCreate"))?;
        // Built piece by piece into a Plan so a failure part-way still destroys what exists.
        let mut plan = Plan { desc, layouts: [std::ptr::null_mut(); 3], algo: unsafe { std::mem::zeroed() } };
        plan.layouts[0] = layout(Dtype::Bf16, first)?;
        plan.layouts[1] = layout(Dtype::Bf16, second)?;
        plan.layouts[2] = layout(c_dtype, out)?;
        for (attr, flag) in [
            (sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA, first.transpose),
            (sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB, second.transpose),
        ] {
            let op: i32 = flag as i32; // CUBLAS_OP_N = 0, CUBLAS_OP_T = 1
            // SAFETY: the attribute is a cublasOperation_t (i32) read from a live local.
            unsafe {
                result::set_matmul_desc_attribute(plan.desc, attr, &op as *const i32 as *const c_void, size_of::<i32>())
            }
            .map_err(cublas("cublasLtMatmulDescSetAttribute"))?;
        }
        let pref = result::create_matmul_pref().map_err(cublas("cublasLtMatmulPreferenceCreate"))?;
        let workspace = WORKSPACE_BYTES as u64;
        // SAFETY: pref is live; the attribute is a u64 read from a live local; the layouts and
        // descriptor were created above.
        let heuristic = unsafe {
            let set = result::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &workspace as *const u64 as *const c_void,
                size_of::<u64>(),
            );
            let heuristic = set.and_then(|()| {
                result::get_matmul_algo_heuristic(
                    self.handle,
                    plan.desc,
                    plan.layouts[0],
                    plan.layouts[1],
                    plan.layouts[2],
                    plan.layouts[2],
                    pref,
                )
            });
            let _ = result::destroy_matmul_pref(pref);
            heuristic
        }
        .map_err(|e| CudaError::Cublas(format!("no cuBLASLt algorithm for m={m} n={n} k={k} C={c_dtype:?}: {e}")))?;
        plan.algo = heuristic.algo;
        Ok(plan)
    }

    /// `C (= or +=) alpha op(A) op(B)` in row-major terms, enqueued on the stream.
    ///
    /// # Safety
    /// `a`, `b`, `c` must be device buffers holding the shape's matrices (A and B bf16, C of
    /// `c_dtype`), alive until the stream has run the call.
    pub unsafe fn matmul(&self, shape: MatmulShape, a: u64, b: u64, c: u64, c_dtype: Dtype) -> Result<(), CudaError> {
        // The calling thread may not be the one that created the context (test threads, a
        // trainer's worker): cuBLASLt uses the current context, so bind ours first.
        self.stream.context().bind_to_thread()?;
        let key = PlanKey { m: shape.m, n: shape.n, k: shape.k, trans_a: shape.trans_a, trans_b: shape.trans_b, c_dtype };
        let mut plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        let plan = match plans.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.plan(key)?),
        };
        let alpha = shape.alpha;
        let beta: f32 = if shape.accumulate { 1.0 } else { 0.0 };
        let (workspace, _record) = self.workspace.device_ptr(&self.stream);
        // SAFETY: the plan's layouts describe the caller's buffers (caller's contract); alpha and
        // beta are f32 as the descriptor's scale type says; D = C in place.
        unsafe {
            result::matmul(
                self.handle,
                plan.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                b as *const c_void,
                plan.layouts[0],
                a as *const c_void,
                plan.layouts[1],
                c as *const c_void,
                plan.layouts[2],
                c as *mut c_void,
                plan.layouts[2],
                &plan.algo,
                workspace as *mut c_void,
                WORKSPACE_BYTES,
                self.stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(cublas("cublasLtMatmul"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::SplitMix64;

    /// What cuBLASLt computes: D = alpha op(X) op(Y) + beta C, all column-major.
    fn column_major_gemm(x: &[f64], y: &[f64], c: &mut [f64], ops: [ColumnMajor; 3], alpha: f64, beta: f64) {
        let [fx, fy, fc] = ops;
        let at = |buf: &[f64], op: ColumnMajor, r: usize, col: usize| {
            let (r, col) = if op.transpose { (col, r) } else { (r, col) };
            buf[col * op.ld + r]
        };
        let inner = if fx.transpose { fx.rows } else { fx.cols };
        for j in 0..fc.cols {
            for i in 0..fc.rows {
                let dot: f64 = (0..inner).map(|p| at(x, fx, i, p) * at(y, fy, p, j)).sum();
                c[j * fc.ld + i] = alpha * dot + beta * c[j * fc.ld + i];
            }
        }
    }

    #[test]
    fn column_major_problem_reproduces_row_major_matmul() {
        let mut rng = SplitMix64::new(3);
        let (m, n, k) = (5, 3, 4);
        for trans_a in [false, true] {
            for trans_b in [false, true] {
                for accumulate in [false, true] {
                    let shape = MatmulShape { m, n, k, trans_a, trans_b, accumulate, alpha: 0.5 };
                    let a: Vec<f64> = rng.vec(m * k, 1.0).into_iter().map(f64::from).collect();
                    let b: Vec<f64> = rng.vec(k * n, 1.0).into_iter().map(f64::from).collect();
                    let c0: Vec<f64> = rng.vec(m * n, 1.0).into_iter().map(f64::from).collect();
                    let mut want = c0.clone();
                    kormo_cpu::matmul::matmul(&a, &b, &mut want, shape);
                    let mut got = c0;
                    let ops = column_major_problem(m, n, k, trans_a, trans_b);
                    column_major_gemm(&b, &a, &mut got, ops, 0.5, if accumulate { 1.0 } else { 0.0 });
                    let err = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0, f64::max);
                    assert!(err < 1e-12, "trans_a {trans_a} trans_b {trans_b} accumulate {accumulate}: max error {err}");
                }
            }
        }
    }
}
