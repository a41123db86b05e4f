//! Shared test plumbing: the backends the kernel checks run on (a CUDA device, or the CPU
//! emulator of cuda/emulator), random inputs, poisoning, error measures and layout adapters.
//! The checks themselves are in cases.rs.
//!
//! There are no references here: every kernel is compared with the f64 instantiation of the
//! CPU backend's function for the same op (kormo_cpu::*, whose backward passes are checked
//! against finite differences in rust/cpu/tests/op_gradients.rs) and AdamW/clipping with
//! kormo_optim, so each op has exactly one reference (docs/kernels.md lists them).

#![allow(dead_code)] // each test binary uses a different subset

use std::cell::UnsafeCell;
use std::ffi::{c_char, c_int, c_void, CString};
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use cudarc::driver::{CudaSlice, DevicePtr, DeviceRepr, LaunchConfig};
use kormo_cuda::bindings::KormoTensorMap;
use kormo_cuda::kernel_launch::{Launcher, TensorMapSpec, WithCapability};
use kormo_cuda::{bf16, CudaError, CudaOps, Kernels};

pub use kormo_cuda::random::SplitMix64;

pub mod cases;

// ------------------------------------------------------------------------------------------
// Backends: where the kernels of tests/support/cases.rs run

/// Memory plus launches. Buffers are addressed by u64 device addresses, as in the argument structs.
pub trait Backend: Launcher {
    type Buf<T: DeviceRepr + Copy + Default>;
    fn upload<T: DeviceRepr + Copy + Default>(&self, host: &[T]) -> Self::Buf<T>;
    /// Waits for every launch, then copies the buffer back.
    fn download<T: DeviceRepr + Copy + Default>(&self, buf: &Self::Buf<T>) -> Vec<T>;
    fn ptr<T: DeviceRepr + Copy + Default>(&self, buf: &Self::Buf<T>) -> u64;
}

impl Backend for Kernels {
    type Buf<T: DeviceRepr + Copy + Default> = CudaSlice<T>;

    fn upload<T: DeviceRepr + Copy + Default>(&self, host: &[T]) -> CudaSlice<T> {
        self.stream().clone_htod(host).expect("upload")
    }

    fn download<T: DeviceRepr + Copy + Default>(&self, buf: &CudaSlice<T>) -> Vec<T> {
        self.stream().synchronize().expect("kernel execution failed");
        self.stream().clone_dtoh(buf).expect("download")
    }

    fn ptr<T: DeviceRepr + Copy + Default>(&self, buf: &CudaSlice<T>) -> u64 {
        let (p, _sync) = buf.device_ptr(self.stream());
        p
    }
}

/// The device kernels with the compute capability the launchers see replaced (the sm_80 path
/// on an H100).
impl Backend for WithCapability<'_, Kernels> {
    type Buf<T: DeviceRepr + Copy + Default> = CudaSlice<T>;

    fn upload<T: DeviceRepr + Copy + Default>(&self, host: &[T]) -> CudaSlice<T> {
        self.0.upload(host)
    }

    fn download<T: DeviceRepr + Copy + Default>(&self, buf: &CudaSlice<T>) -> Vec<T> {
        self.0.download(buf)
    }

    fn ptr<T: DeviceRepr + Copy + Default>(&self, buf: &CudaSlice<T>) -> u64 {
        self.0.ptr(buf)
    }
}

/// The kernels on device 0, or None after printing "skipped: no CUDA device". Under Bazel
/// (TEST_SRCDIR set) the process then exits with 77, which //tools/build:rust.bzl's wrapper
/// reports as a skipped test; under cargo the test returns and passes.
pub fn kernels_or_skip() -> Option<Kernels> {
    match Kernels::new(0) {
        Ok(k) => Some(k),
        Err(CudaError::NoDevice(why)) => {
            // Written past libtest's output capture, so the line shows in every test log.
            let mut out = std::io::stdout();
            let _ = writeln!(out, "skipped: no CUDA device");
            let _ = out.flush();
            eprintln!("({why})");
            if std::env::var_os("TEST_SRCDIR").is_some() {
                std::process::exit(77);
            }
            None
        }
        // A device without kernels is a broken build, not a skip.
        Err(e) => panic!("cannot load the kernels: {e}"),
    }
}

/// The CUDA backend on device 0, or None after the same "skipped: no CUDA device" as
/// [`kernels_or_skip`]. Any other failure (no kernels, no libcublasLt) is a test failure.
pub fn cuda_ops_or_skip() -> Option<CudaOps> {
    kernels_or_skip()?;
    Some(CudaOps::new(0).unwrap_or_else(|e| panic!("cannot create the CUDA backend: {e}")))
}

/// The real kernel sources compiled for the CPU against cuda/emulator (see kormo_emulator.h):
/// host memory stands in for device memory, launches run synchronously.
pub struct Emulator {
    entry: EmuEntry,
    /// 0: blocks in grid order; else blocks in an order shuffled by this seed (cuda/emulator).
    block_order_seed: u64,
    /// The compute capability the launchers see: (8, 0) runs the sm_80 kernels, (9, 0) the
    /// sm_90a ones.
    capability: (i32, i32),
    /// Every kernel launched, in order (tests check which path a launcher took).
    launched: std::sync::Mutex<Vec<&'static str>>,
}

type EmuLaunchFn = unsafe extern "C" fn(*const c_char, *const u32, *const u32, u32, *const c_void, usize, u64) -> c_int;
type EmuEncodeFn =
    unsafe extern "C" fn(u64, u32, u32, *const u64, *const u64, *const u32, u32, *mut c_void) -> c_int;

/// The emulator library's two entry points (cuda/emulator/emulator.cpp).
#[derive(Clone, Copy)]
struct EmuEntry {
    launch: EmuLaunchFn,
    encode_tensor_map: EmuEncodeFn,
}

/// Host memory a kernel may write through its u64 address (hence the UnsafeCell).
pub struct HostBuf<T>(Box<[UnsafeCell<T>]>);

extern "C" {
    fn dlopen(filename: *const c_char, flags: c_int) -> *mut c_void;
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
}
const RTLD_NOW: c_int = 2;
const CUDA_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../cuda");

/// Compiles cuda/emulator/emulator.cpp once per test process (host C++ compiler: $CXX or c++),
/// loads it and returns its entry points. The library file is deleted once loaded.
fn emulator_entry() -> EmuEntry {
    static ENTRY: OnceLock<EmuEntry> = OnceLock::new();
    *ENTRY.get_or_init(|| {
        let base = std::env::var_os("TEST_TMPDIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("kormo-emulator-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create emulator build dir");
        let lib = dir.join("libkormo_emulator.so");
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        let out = Command::new(&cxx)
            .args(["-std=c++20", "-O2", "-shared", "-fPIC", "-pthread"])
            .args(["-I", &format!("{CUDA_DIR}/emulator"), "-I", &format!("{CUDA_DIR}/include"), "-I", CUDA_DIR])
            .arg(format!("{CUDA_DIR}/emulator/emulator.cpp"))
            .arg("-o")
            .arg(&lib)
            .output()
            .unwrap_or_else(|e| panic!("cannot run the C++ compiler `{cxx}`: {e}"));
        assert!(out.status.success(), "building the kernel emulator failed:\n{}", String::from_utf8_lossy(&out.stderr));
        let path = CString::new(lib.to_str().expect("utf-8 path")).unwrap();
        // SAFETY: loading our own freshly built library; the symbols have the EmuLaunchFn and
        // EmuEncodeFn signatures (cuda/emulator/emulator.cpp). The handle stays open for the life
        // of the process.
        let entry = unsafe {
            let handle = dlopen(path.as_ptr(), RTLD_NOW);
            assert!(!handle.is_null(), "dlopen of the kernel emulator {} failed", lib.display());
            let launch = dlsym(handle, c"kormo_emu_launch".as_ptr());
            let encode = dlsym(handle, c"kormo_emu_encode_tensor_map".as_ptr());
            assert!(!launch.is_null() && !encode.is_null(), "entry points not found in the emulator");
            EmuEntry {
                launch: std::mem::transmute::<*mut c_void, EmuLaunchFn>(launch),
                encode_tensor_map: std::mem::transmute::<*mut c_void, EmuEncodeFn>(encode),
            }
        };
        let _ = std::fs::remove_dir_all(&dir); // the mapping outlives the file
        entry
    })
}

impl Emulator {
    pub fn new() -> Self {
        Emulator { entry: emulator_entry(), block_order_seed: 0, capability: (8, 0), launched: Default::default() }
    }

    /// Runs every launch's blocks in an order shuffled by `seed` (non-zero), so results that
    /// depend on block scheduling (f32 atomics from several blocks) differ between seeds.
    pub fn with_block_order(seed: u64) -> Self {
        assert_ne!(seed, 0, "seed 0 is grid order");
        Emulator { block_order_seed: seed, ..Emulator::new() }
    }

    /// An emulator the launchers take for an H100/H200 (compute capability 9.0): they pick the
    /// sm_90a kernels.
    pub fn hopper() -> Self {
        Emulator { capability: (9, 0), ..Emulator::new() }
    }

    /// [`Emulator::hopper`] with the blocks in an order shuffled by `seed`.
    pub fn hopper_with_block_order(seed: u64) -> Self {
        Emulator { capability: (9, 0), ..Emulator::with_block_order(seed) }
    }

    /// The kernels launched so far, in order.
    pub fn launched(&self) -> Vec<&'static str> {
        self.launched.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Launcher for Emulator {
    unsafe fn launch_kernel<A: DeviceRepr>(&self, name: &'static str, cfg: LaunchConfig, args: &A) -> Result<(), CudaError> {
        self.launched.lock().unwrap_or_else(|p| p.into_inner()).push(name);
        let c_name = CString::new(name).unwrap();
        let grid = [cfg.grid_dim.0, cfg.grid_dim.1, cfg.grid_dim.2];
        let block = [cfg.block_dim.0, cfg.block_dim.1, cfg.block_dim.2];
        let args_ptr = args as *const A as *const c_void;
        // SAFETY: the emulator copies size_of::<A>() bytes of the struct; pointers inside are host
        // addresses of HostBuf allocations.
        let status = unsafe {
            (self.entry.launch)(c_name.as_ptr(), grid.as_ptr(), block.as_ptr(), cfg.shared_mem_bytes, args_ptr, std::mem::size_of::<A>(), self.block_order_seed)
        };
        match status {
            0 => Ok(()),
            1 => Err(CudaError::InvalidLaunch { kernel: name, reason: "unknown to the emulator".into() }),
            2 => Err(CudaError::InvalidLaunch { kernel: name, reason: "argument struct size differs from the C header".into() }),
            other => Err(CudaError::InvalidLaunch { kernel: name, reason: format!("emulator status {other}") }),
        }
    }

    fn compute_capability(&self) -> (i32, i32) {
        self.capability
    }

    fn encode_tensor_map(&self, spec: &TensorMapSpec) -> Result<KormoTensorMap, CudaError> {
        spec.check().map_err(|reason| CudaError::InvalidLaunch { kernel: "tensor map", reason })?;
        let mut map = KormoTensorMap::default();
        let swizzle = if spec.swizzle_128b { 128 } else { 0 };
        // SAFETY: the arrays have the spec's rank (checked); the emulator writes 128 bytes.
        let status = unsafe {
            (self.entry.encode_tensor_map)(
                spec.address,
                spec.element.bytes(),
                spec.dims.len() as u32,
                spec.dims.as_ptr(),
                spec.strides.as_ptr(),
                spec.box_dims.as_ptr(),
                swizzle,
                &mut map as *mut KormoTensorMap as *mut c_void,
            )
        };
        match status {
            0 => Ok(map),
            other => Err(CudaError::InvalidLaunch { kernel: "tensor map", reason: format!("emulator status {other}") }),
        }
    }
}

impl Backend for Emulator {
    type Buf<T: DeviceRepr + Copy + Default> = HostBuf<T>;

    fn upload<T: DeviceRepr + Copy + Default>(&self, host: &[T]) -> HostBuf<T> {
        HostBuf(host.iter().map(|&x| UnsafeCell::new(x)).collect())
    }

    fn download<T: DeviceRepr + Copy + Default>(&self, buf: &HostBuf<T>) -> Vec<T> {
        // SAFETY: launches are synchronous; no kernel is writing now.
        buf.0.iter().map(|c| unsafe { *c.get() }).collect()
    }

    fn ptr<T: DeviceRepr + Copy + Default>(&self, buf: &HostBuf<T>) -> u64 {
        buf.0.as_ptr() as u64
    }
}

pub fn upload_bf16<B: Backend>(b: &B, host: &[f32]) -> B::Buf<u16> {
    b.upload(&bf16::vec_from_f32(host))
}

/// A bf16 buffer filled with NaN, so elements a kernel fails to write are detected.
pub fn poisoned_bf16<B: Backend>(b: &B, len: usize) -> B::Buf<u16> {
    b.upload(&vec![bf16::POISON; len])
}

pub fn poisoned_f32<B: Backend>(b: &B, len: usize) -> B::Buf<f32> {
    b.upload(&vec![f32::NAN; len])
}

pub fn download_bf16<B: Backend>(b: &B, buf: &B::Buf<u16>) -> Vec<f32> {
    bf16::vec_to_f32(&b.download(buf))
}

// ------------------------------------------------------------------------------------------
// Inputs and comparisons

/// Random values already representable in bf16 (so host f64 references see exactly what the
/// device reads), never zero.
pub fn bf16_values(rng: &mut SplitMix64, len: usize, scale: f32) -> Vec<f32> {
    rng.vec(len, scale)
        .into_iter()
        .map(|x| {
            let r = bf16::to_f32(bf16::from_f32(x));
            if r == 0.0 {
                scale / 64.0
            } else {
                r
            }
        })
        .collect()
}

pub fn to_f64(xs: &[f32]) -> Vec<f64> {
    xs.iter().map(|&x| x as f64).collect()
}

/// ||got - want|| / ||want||, panicking on any non-finite value in `got` (an unwritten,
/// poisoned element or a real NaN).
pub fn rel_l2(what: &str, got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().position(|g| !g.is_finite()) {
        panic!("{what}: element {i} is {} (not written, or NaN/inf)", got[i]);
    }
    let num: f64 = got.iter().zip(want).map(|(&g, &w)| (g as f64 - w).powi(2)).sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    assert!(den > 0.0, "{what}: reference is all zeros; the test would be vacuous");
    (num / den).sqrt()
}

pub const BF16_REL_L2: f64 = 1e-2;

pub fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) -> f64 {
    let err = rel_l2(what, got, want);
    assert!(err <= tol, "{what}: relative L2 error {err:.3e} > {tol:.1e}");
    println!("{what}: relative L2 error {err:.3e}");
    err
}

/// Each value rounded to the nearest bf16, as a kernel's bf16 store rounds it.
pub fn round_to_bf16(xs: &[f32]) -> Vec<f32> {
    bf16::vec_to_f32(&bf16::vec_from_f32(xs))
}

/// Added to the bound of [`assert_within_low_precision_error`] (in relative L2, a tenth of a
/// typical bf16 rounding error) so a low-precision reference that happens to be exact (e.g. a
/// softmax over a single key: out = v) cannot fail a kernel that is off by f32 accumulation noise.
pub const LOW_PRECISION_FLOOR: f64 = 1e-4;

/// The FlashAttention-style rule: `got`'s relative L2 error against the f64 reference `want`
/// must be at most `factor` x the error of `low`, the same reference function run in f32 on the
/// same bf16 inputs with bf16 outputs rounded like the kernel's store, plus
/// [`LOW_PRECISION_FLOOR`]; and within [`BF16_REL_L2`] as well. So the tolerance follows how
/// much precision the problem itself loses in bf16 instead of one fixed number. Prints both
/// errors; returns (error, low-precision reference's error).
pub fn assert_within_low_precision_error(what: &str, got: &[f32], low: &[f32], want: &[f64], factor: f64) -> (f64, f64) {
    let err = rel_l2(what, got, want);
    let low_err = rel_l2(&format!("{what} (low-precision reference)"), low, want);
    let bound = factor * low_err + LOW_PRECISION_FLOOR;
    let report = format!(
        "{what}: relative L2 error {err:.3e}; f32-on-bf16 reference's own error {low_err:.3e}, ratio {:.2} (bound {factor}x + {LOW_PRECISION_FLOOR:.0e} = {bound:.3e})",
        err / low_err
    );
    assert!(err <= BF16_REL_L2, "{report}: above {BF16_REL_L2:.0e}");
    assert!(err <= bound, "{report}: above the low-precision bound");
    println!("{report}");
    (err, low_err)
}

// ------------------------------------------------------------------------------------------
// Adapters between kernel layouts and the references'

/// Threads for the f64 references (kormo_cpu kernels split rows across threads; their results
/// do not depend on the count).
pub fn reference_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// `[tokens, heads]` (kormo_model's lse layout) to `[heads, tokens]` (the attention kernels').
pub fn heads_major(tokens_major: &[f64], tokens: usize, heads: usize) -> Vec<f64> {
    (0..heads).flat_map(|h| (0..tokens).map(move |t| tokens_major[t * heads + h])).collect()
}

// ------------------------------------------------------------------------------------------
// Document layouts for attention tests

/// Doc ids of `batch` rows of `seq_len`, from document lengths laid end to end across rows
/// (a document may straddle a row boundary; ids keep increasing, so each row is non-decreasing).
pub fn doc_ids_from_lengths(lengths: &[usize], batch: usize, seq_len: usize) -> Vec<u32> {
    let mut ids = Vec::with_capacity(batch * seq_len);
    'outer: for (id, &len) in lengths.iter().enumerate() {
        for _ in 0..len {
            if ids.len() == batch * seq_len {
                break 'outer;
            }
            ids.push(id as u32);
        }
    }
    assert_eq!(ids.len(), batch * seq_len, "document lengths must cover every token");
    ids
}

/// Position of each token inside its document (restarting at 0 at document starts; a document
/// continuing from the previous row keeps counting).
pub fn positions_from_doc_ids(doc: &[u32]) -> Vec<u32> {
    let mut pos = Vec::with_capacity(doc.len());
    for i in 0..doc.len() {
        pos.push(if i > 0 && doc[i] == doc[i - 1] { pos[i - 1] + 1 } else { 0 });
    }
    pos
}
