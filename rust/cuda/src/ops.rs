//! [`CudaOps`]: the CUDA backend of [`kormo_model::Ops`].
//!
//! Buffers: a [`CudaBuf`] holds bf16 or f32 on the device. `Ops` creates buffers without saying
//! what they are for, so a new buffer ([`Ops::zeros`], [`Ops::upload`]) is bf16 and each op gives
//! its outputs the dtype its kernel writes, converting a buffer of the other dtype once (values
//! kept) the first time it is written:
//!
//! | f32 | written by |
//! | --- | --- |
//! | RMSNorm `inv_rms`, attention `lse`, cross-entropy `losses` | the forward kernels (f32 statistics) |
//! | parameter gradients: `dweight`, `dtable`, and `matmul` C with `trans_a && accumulate` (= [`MatmulShape::linear_bwd_weight`]) | accumulated across micro-batches in f32 |
//!
//! Everything else (parameters, activations, activation gradients, logits and their gradient) is
//! bf16; `matmul` writes C in whatever dtype C has (cuBLASLt does either, accumulating in f32), and
//! `fill`/`scale`/`copy`/`add_assign` keep the destination's dtype. An input of the wrong dtype
//! (only the host-written loss weights in the model: bf16, exact for 0, 1 and short fractions) is
//! converted into a scratch buffer. The attention `lse` is laid out `[heads, tokens]` (the
//! kernels'), not `[tokens, heads]`; it is opaque to the model, which only hands it back.
//!
//! No allocation after the first step: buffer dtypes only change on a buffer's first write by
//! an op (a model writes each buffer in one dtype), and the scratch buffers (RMSNorm partial
//! dweights, attention backward's delta and f32 dq accumulator, the grad-scale scalar, dtype
//! casts) are slots of an arena that grow to the largest request and are then reused; GEMM plans
//! and the cuBLASLt workspace are created once. [`CudaOps::memory`] counts allocations, so a test
//! can check that a second step made none.
//!
//! No host synchronisation except in [`Ops::read`] and [`Ops::sum`] (which must return host
//! data) and [`Ops::finish_op_profile`]: every op enqueues on one stream. While a benchmark
//! profiles (`Ops::start_op_profile`), each op also records a start and an end CUDA event
//! around its launches ([`crate::benchmark`]'s event timer). Host-to-device writes of batch inputs are plain
//! stream copies.
//!
//! Deterministic mode ([`CudaOps::set_deterministic`], off by default): the ops whose default
//! kernels sum floats with atomics, so that their rounding depends on block scheduling, switch to
//! variants without (docs/kernels.md, "Deterministic mode"): `embedding_bwd` to the owner-computes
//! scatter, `attention_bwd` to the dK/dV pass plus a dQ pass that owns each query tile, and the
//! gradient sum of squares of [`crate::optim::DeviceAdamW::clip_grad_norm`] (through
//! [`CudaOps::add_grad_sumsq`]) to per-block partials and a fixed-order reduce. Every other op is
//! deterministic in both modes (one writer per output element, fixed reduction order; cuBLASLt
//! GEMMs with a fixed plan on one stream), so with the mode on, a step's results depend only on
//! its inputs and the device: a run stopped and resumed from a checkpoint repeats bitwise the
//! steps an uninterrupted run takes.
//!
//! Errors: `Ops` has no error channel, so a refused launch or a driver error panics with the op's
//! name and the reason; the preconditions a model configuration can break (head dim 64 or 128,
//! hidden <= 12288) are checked up front by [`CudaOps::check_config`]. Kernel faults surface at
//! the next `read`/`sum`. Document ids must be non-decreasing within each row (documents are
//! contiguous spans, as the data loader packs them): the attention kernels skip tiles using that
//! order.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use kormo_model::profile::{matmul_label, OpProfile};
use kormo_model::{
    AttentionShape, CrossEntropyShape, EmbeddingShape, MatmulShape, ModelConfig, Ops, RopeShape, RowsShape,
};

use crate::event_timer::EventTimer;
use crate::bindings::*;
use crate::device::{detect_devices, CudaError, DeviceInfo};
use crate::gemm::Gemm;
use crate::kernel_launch::{self, RMSNORM_BWD_MAX_PARTIAL_ROWS};
use crate::module::Kernels;
use crate::{bf16, kernel_names};

/// Element type of a [`CudaBuf`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    Bf16,
    F32,
}

impl Dtype {
    fn code(self) -> i32 {
        match self {
            Dtype::Bf16 => KormoDtype_KORMO_DTYPE_BF16 as i32,
            Dtype::F32 => KormoDtype_KORMO_DTYPE_F32 as i32,
        }
    }

    fn bytes(self) -> usize {
        match self {
            Dtype::Bf16 => 2,
            Dtype::F32 => 4,
        }
    }
}

enum Storage {
    Bf16(CudaSlice<u16>),
    F32(CudaSlice<f32>),
}

/// Device memory accounting shared by the backend and its buffers.
#[derive(Default)]
struct Counters {
    live_bytes: AtomicUsize,
    peak_bytes: AtomicUsize,
    allocations: AtomicU64,
}

impl Counters {
    fn allocated(&self, bytes: usize) {
        let live = self.live_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak_bytes.fetch_max(live, Ordering::Relaxed);
        self.allocations.fetch_add(1, Ordering::Relaxed);
    }
}

/// A float buffer on the device (bf16 or f32, see the module docs).
pub struct CudaBuf {
    len: usize,
    ptr: u64,
    storage: Storage,
    counters: Arc<Counters>,
}

impl CudaBuf {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn dtype(&self) -> Dtype {
        match self.storage {
            Storage::Bf16(_) => Dtype::Bf16,
            Storage::F32(_) => Dtype::F32,
        }
    }

    fn bytes(&self) -> usize {
        self.len.max(1) * self.dtype().bytes()
    }

    /// The device address, for kernel arguments (and for engines outside this crate that
    /// launch kernels or NCCL collectives on sub-ranges of a buffer, such as kormo-dist's
    /// device FSDP). Valid while the buffer lives; its dtype is [`CudaBuf::dtype`].
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }
}

impl Drop for CudaBuf {
    fn drop(&mut self) {
        self.counters.live_bytes.fetch_sub(self.bytes(), Ordering::Relaxed);
    }
}

/// A u32 id buffer on the device.
pub struct CudaIdxBuf {
    len: usize,
    ptr: u64,
    slice: CudaSlice<u32>,
}

/// Device memory held by a [`CudaOps`] and its buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes held now by float buffers, scratch and the GEMM workspace (id buffers and the CUDA
    /// context itself are not counted).
    pub live_bytes: usize,
    /// Largest `live_bytes` so far.
    pub peak_bytes: usize,
    /// Float-buffer allocations so far (new buffers, dtype changes, scratch growth).
    pub allocations: u64,
}

/// Arena slots: one per distinct scratch use inside a single op, so no two live uses share one.
#[derive(Clone, Copy)]
enum Slot {
    /// Dtype casts of an op's inputs, by argument position.
    Input(usize),
    RmsnormPartial,
    AttentionDelta,
    AttentionDqAccum,
    GradScale,
    /// Per-block partial sums of the deterministic gradient sum of squares.
    SumsqPartial,
}

const INPUT_SLOTS: usize = 6;

impl Slot {
    fn index(self) -> usize {
        match self {
            Slot::Input(i) => {
                assert!(i < INPUT_SLOTS, "scratch input slot {i} out of range");
                i
            }
            Slot::RmsnormPartial => INPUT_SLOTS,
            Slot::AttentionDelta => INPUT_SLOTS + 1,
            Slot::AttentionDqAccum => INPUT_SLOTS + 2,
            Slot::GradScale => INPUT_SLOTS + 3,
            Slot::SumsqPartial => INPUT_SLOTS + 4,
        }
    }
}

const SLOTS: usize = INPUT_SLOTS + 5;

/// The CUDA backend: kernels, cuBLASLt and a scratch arena on one stream of one device.
/// Clones share all of it (a trainer keeps one for [`crate::optim::DeviceAdamW`] while the model
/// owns another); buffers of one work with every clone.
#[derive(Clone)]
pub struct CudaOps {
    kernels: Arc<Kernels>,
    gemm: Arc<Gemm>,
    scratch: Arc<Mutex<Vec<Option<CudaBuf>>>>,
    counters: Arc<Counters>,
    /// Per-op event timer, off unless a benchmark profiles ([`Ops::start_op_profile`]).
    timer: Arc<EventTimer>,
    /// Deterministic mode (module docs), shared by every clone.
    deterministic: Arc<AtomicBool>,
}

fn expect_ok<T>(op: &str, r: Result<T, CudaError>) -> T {
    r.unwrap_or_else(|e| panic!("CudaOps::{op}: {e}"))
}

fn check_len(op: &str, what: &str, got: usize, want: usize) {
    assert_eq!(got, want, "CudaOps::{op}: {what} has {got} elements, the shape needs {want}");
}

impl CudaOps {
    /// Opens device `ordinal`, loads the kernels and cuBLASLt. Without a device this is
    /// [`CudaError::NoDevice`]; the trainer can probe with it on any machine.
    pub fn new(ordinal: usize) -> Result<Self, CudaError> {
        let kernels = Kernels::new(ordinal)?;
        // SAFETY: every launch, copy and GEMM of this backend goes to the one stream, so
        // cudarc's cross-stream event tracking has nothing to order.
        unsafe { kernels.context().disable_event_tracking() };
        let gemm = Gemm::new(kernels.stream().clone())?;
        let counters = Arc::new(Counters::default());
        counters.allocated(gemm.workspace_bytes());
        Ok(CudaOps {
            kernels: Arc::new(kernels),
            gemm: Arc::new(gemm),
            scratch: Arc::new(Mutex::new((0..2 * SLOTS).map(|_| None).collect())),
            counters,
            timer: Arc::default(),
            deterministic: Arc::default(),
        })
    }

    /// Turns deterministic mode on or off (module docs; off after [`CudaOps::new`]) for this
    /// backend and every clone of it, from the next op enqueued on. Costs nothing to switch.
    pub fn set_deterministic(&self, on: bool) {
        self.deterministic.store(on, Ordering::Relaxed);
    }

    /// Whether deterministic mode is on ([`CudaOps::set_deterministic`]).
    pub fn deterministic(&self) -> bool {
        self.deterministic.load(Ordering::Relaxed)
    }

    /// Enqueues `*a.sumsq += sum(a.grad[i]^2)` (f32, `a.n` elements): [`kernel_launch::grad_sumsq`]
    /// (f32 atomics), or in deterministic mode [`kernel_launch::grad_sumsq_deterministic`] with its
    /// partial sums in this backend's scratch. Engines that clip gradients on the device
    /// ([`crate::optim::DeviceAdamW`], kormo-dist's FSDP) call this rather than the launchers so
    /// that the mode reaches them.
    ///
    /// # Safety
    /// `a.grad` must hold `a.n` f32 and `a.sumsq` one f32, both on this backend's device.
    pub unsafe fn add_grad_sumsq(&self, a: &KormoGradSumsqArgs) -> Result<(), CudaError> {
        if self.deterministic() {
            let partial = self.scratch(Slot::SumsqPartial, Dtype::F32, kernel_launch::GRAD_SUMSQ_MAX_BLOCKS);
            // SAFETY: the caller's pointers; the partial slot holds GRAD_SUMSQ_MAX_BLOCKS f32 and
            // its previous use is ordered before this one on the stream.
            unsafe { kernel_launch::grad_sumsq_deterministic(&*self.kernels, a, partial) }
        } else {
            // SAFETY: the caller's pointers.
            unsafe { kernel_launch::grad_sumsq(&*self.kernels, a) }
        }
    }

    /// A backend ready for `config` on device `ordinal`, and that device's facts. Refuses
    /// configurations the kernels do not cover before touching the device.
    pub fn for_model(config: &ModelConfig, ordinal: usize) -> Result<(CudaOps, DeviceInfo), CudaError> {
        CudaOps::check_config(config)?;
        let ops = CudaOps::new(ordinal)?;
        let info = detect_devices()?
            .into_iter()
            .nth(ordinal)
            .ok_or_else(|| CudaError::NoDevice(format!("device {ordinal} vanished")))?;
        Ok((ops, info))
    }

    /// Refuses model shapes the kernels do not cover, naming the setting.
    pub fn check_config(config: &ModelConfig) -> Result<(), CudaError> {
        let refuse = |reason: String| Err(CudaError::InvalidLaunch { kernel: "CudaOps", reason });
        let mut dims: Vec<i32> = kernel_names::ATTENTION_VARIANTS.iter().map(|v| v.head_dim).collect();
        dims.dedup(); // variants are listed per head dim, one per mask
        if !dims.contains(&(config.head_dim as i32)) {
            return refuse(format!("head_dim {} has no compiled attention kernel (compiled: {dims:?})", config.head_dim));
        }
        if config.hidden * 4 > 48 * 1024 {
            return refuse(format!("hidden {} exceeds the RMSNorm backward limit of 12288", config.hidden));
        }
        Ok(())
    }

    pub fn kernels(&self) -> &Kernels {
        &self.kernels
    }

    fn stream(&self) -> &Arc<CudaStream> {
        self.kernels.stream()
    }

    /// Device memory held by this backend and its buffers.
    pub fn memory(&self) -> MemoryStats {
        MemoryStats {
            live_bytes: self.counters.live_bytes.load(Ordering::Relaxed),
            peak_bytes: self.counters.peak_bytes.load(Ordering::Relaxed),
            allocations: self.counters.allocations.load(Ordering::Relaxed),
        }
    }

    /// Bytes in use on the whole device (`total - free` from the driver): this backend's
    /// buffers plus the CUDA context, cuBLASLt's own state and any other process.
    pub fn device_memory_used(&self) -> Result<usize, CudaError> {
        let (free, total) = self.kernels.context().mem_get_info()?;
        Ok(total - free)
    }

    /// A new f32 buffer of `len` zeros (state that must keep full precision, such as optimizer
    /// moments; [`Ops::zeros`] makes bf16 buffers).
    pub fn zeros_f32(&self, len: usize) -> CudaBuf {
        self.alloc(Dtype::F32, len)
    }

    /// A new f32 buffer holding `host` exactly.
    pub fn upload_f32(&self, host: &[f32]) -> CudaBuf {
        let mut buf = self.alloc(Dtype::F32, host.len());
        self.write(&mut buf, host);
        buf
    }

    /// Waits for all enqueued work; a kernel fault shows up here.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        Ok(self.stream().synchronize()?)
    }

    fn alloc(&self, dtype: Dtype, len: usize) -> CudaBuf {
        // Zero-length buffers still get one element, so every buffer has a valid address.
        let n = len.max(1);
        let stream = self.stream();
        let storage = match dtype {
            Dtype::Bf16 => Storage::Bf16(expect_ok("alloc", stream.alloc_zeros::<u16>(n).map_err(CudaError::from))),
            Dtype::F32 => Storage::F32(expect_ok("alloc", stream.alloc_zeros::<f32>(n).map_err(CudaError::from))),
        };
        let ptr = match &storage {
            Storage::Bf16(s) => s.device_ptr(stream).0,
            Storage::F32(s) => s.device_ptr(stream).0,
        };
        self.counters.allocated(n * dtype.bytes());
        CudaBuf { len, ptr, storage, counters: self.counters.clone() }
    }

    fn elementwise(&self, op: &str, code: KormoElementwiseOp, dst: &CudaBuf, src: Option<&CudaBuf>, value: f32) {
        let a = KormoElementwiseArgs {
            dst: dst.ptr,
            src: src.map_or(0, |s| s.ptr),
            n: dst.len as i64,
            op: code as i32,
            dst_dtype: dst.dtype().code(),
            src_dtype: src.map_or(dst.dtype(), |s| s.dtype()).code(),
            value,
        };
        // SAFETY: dst and src are live buffers of n elements of the dtypes named.
        expect_ok(op, unsafe { kernel_launch::elementwise(&*self.kernels, &a) });
    }

    /// Gives `buf` dtype `dtype`, converting its values on the device if it has the other one.
    pub(crate) fn ensure_dtype(&self, buf: &mut CudaBuf, dtype: Dtype) {
        if buf.dtype() != dtype {
            let converted = self.alloc(dtype, buf.len);
            self.elementwise("convert", KormoElementwiseOp_KORMO_ELEMENTWISE_COPY, &converted, Some(buf), 0.0);
            // The old storage is freed stream-ordered (cuMemFreeAsync) after the copy has run.
            *buf = converted;
        }
    }

    /// A scratch buffer of at least `len` elements of `dtype` in `slot`; returns its address,
    /// valid until the same slot is asked for again.
    fn scratch(&self, slot: Slot, dtype: Dtype, len: usize) -> u64 {
        let mut arena = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        // One entry per slot and dtype, so a slot used in both dtypes never reallocates.
        let entry = &mut arena[slot.index() * 2 + (dtype == Dtype::F32) as usize];
        if !matches!(entry, Some(b) if b.len >= len) {
            *entry = None; // free first, so the old and the new never coexist
            *entry = Some(self.alloc(dtype, len));
        }
        entry.as_ref().map(|b| b.ptr).expect("just set")
    }

    /// The address of `buf` as `dtype`: the buffer itself, or a converted copy in scratch.
    fn input(&self, buf: &CudaBuf, dtype: Dtype, position: usize) -> u64 {
        if buf.dtype() == dtype {
            return buf.ptr;
        }
        let ptr = self.scratch(Slot::Input(position), dtype, buf.len);
        let a = KormoElementwiseArgs {
            dst: ptr,
            src: buf.ptr,
            n: buf.len as i64,
            op: KormoElementwiseOp_KORMO_ELEMENTWISE_COPY as i32,
            dst_dtype: dtype.code(),
            src_dtype: buf.dtype().code(),
            value: 0.0,
        };
        // SAFETY: the scratch slot holds at least buf.len elements of dtype.
        expect_ok("convert input", unsafe { kernel_launch::elementwise(&*self.kernels, &a) });
        ptr
    }

    fn host_f32(&self, src: &CudaBuf) -> Vec<f32> {
        expect_ok("read", self.synchronize());
        let stream = self.stream();
        let mut host = match &src.storage {
            Storage::Bf16(s) => bf16::vec_to_f32(&expect_ok("read", stream.clone_dtoh(s).map_err(CudaError::from))),
            Storage::F32(s) => expect_ok("read", stream.clone_dtoh(s).map_err(CudaError::from)),
        };
        host.truncate(src.len);
        host
    }
}

impl Ops for CudaOps {
    type Buf = CudaBuf;
    type IdxBuf = CudaIdxBuf;

    fn zeros(&self, len: usize) -> CudaBuf {
        self.alloc(Dtype::Bf16, len)
    }

    fn upload(&self, host: &[f32]) -> CudaBuf {
        let mut buf = self.alloc(Dtype::Bf16, host.len());
        self.write(&mut buf, host);
        buf
    }

    fn upload_idx(&self, host: &[u32]) -> CudaIdxBuf {
        let stream = self.stream();
        let slice = if host.is_empty() {
            expect_ok("upload_idx", stream.alloc_zeros::<u32>(1).map_err(CudaError::from))
        } else {
            expect_ok("upload_idx", stream.clone_htod(host).map_err(CudaError::from))
        };
        let ptr = slice.device_ptr(stream).0;
        CudaIdxBuf { len: host.len(), ptr, slice }
    }

    fn write(&self, dst: &mut CudaBuf, host: &[f32]) {
        let _timing = self.timer.time(self.stream(), "write", 0.0);
        check_len("write", "dst", dst.len, host.len());
        if host.is_empty() {
            return;
        }
        let stream = self.stream().clone();
        let r = match &mut dst.storage {
            Storage::Bf16(s) => stream.memcpy_htod(&bf16::vec_from_f32(host), &mut s.slice_mut(..host.len())),
            Storage::F32(s) => stream.memcpy_htod(host, &mut s.slice_mut(..host.len())),
        };
        expect_ok("write", r.map_err(CudaError::from));
    }

    fn write_idx(&self, dst: &mut CudaIdxBuf, host: &[u32]) {
        let _timing = self.timer.time(self.stream(), "write_idx", 0.0);
        check_len("write_idx", "dst", dst.len, host.len());
        if host.is_empty() {
            return;
        }
        let stream = self.stream().clone();
        expect_ok("write_idx", stream.memcpy_htod(host, &mut dst.slice.slice_mut(..host.len())).map_err(CudaError::from));
    }

    fn read(&self, src: &CudaBuf, host: &mut [f32]) {
        let _timing = self.timer.time(self.stream(), "read", 0.0);
        check_len("read", "host", host.len(), src.len);
        host.copy_from_slice(&self.host_f32(src));
    }

    fn sum(&self, x: &CudaBuf) -> f64 {
        let _timing = self.timer.time(self.stream(), "sum", 0.0);
        self.host_f32(x).iter().map(|&v| v as f64).sum()
    }

    fn fill(&self, x: &mut CudaBuf, value: f32) {
        let _timing = self.timer.time(self.stream(), "fill", 0.0);
        self.elementwise("fill", KormoElementwiseOp_KORMO_ELEMENTWISE_FILL, x, None, value);
    }

    fn copy(&self, src: &CudaBuf, dst: &mut CudaBuf) {
        let _timing = self.timer.time(self.stream(), "copy", 0.0);
        check_len("copy", "src", src.len, dst.len);
        self.elementwise("copy", KormoElementwiseOp_KORMO_ELEMENTWISE_COPY, dst, Some(src), 0.0);
    }

    fn scale(&self, x: &mut CudaBuf, alpha: f32) {
        let _timing = self.timer.time(self.stream(), "scale", 0.0);
        self.elementwise("scale", KormoElementwiseOp_KORMO_ELEMENTWISE_SCALE, x, None, alpha);
    }

    fn add_assign(&self, dst: &mut CudaBuf, src: &CudaBuf) {
        let _timing = self.timer.time(self.stream(), "add_assign", 0.0);
        check_len("add_assign", "src", src.len, dst.len);
        self.elementwise("add_assign", KormoElementwiseOp_KORMO_ELEMENTWISE_ADD, dst, Some(src), 0.0);
    }

    fn matmul(&self, a: &CudaBuf, b: &CudaBuf, c: &mut CudaBuf, shape: MatmulShape) {
        let _timing = self.timer.time(self.stream(), matmul_label(&shape), shape.flops());
        check_len("matmul", "A", a.len, shape.m * shape.k);
        check_len("matmul", "B", b.len, shape.k * shape.n);
        check_len("matmul", "C", c.len, shape.m * shape.n);
        if shape.trans_a && shape.accumulate {
            self.ensure_dtype(c, Dtype::F32); // a weight gradient: accumulate in f32
        }
        let (a_ptr, b_ptr) = (self.input(a, Dtype::Bf16, 0), self.input(b, Dtype::Bf16, 1));
        // SAFETY: lengths checked above; A and B are bf16 (converted if needed), C has c.dtype().
        expect_ok("matmul", unsafe { self.gemm.matmul(shape, a_ptr, b_ptr, c.ptr, c.dtype()) });
    }

    fn rmsnorm_fwd(&self, x: &CudaBuf, weight: &CudaBuf, y: &mut CudaBuf, inv_rms: &mut CudaBuf, shape: RowsShape, eps: f32) {
        let _timing = self.timer.time(self.stream(), "rmsnorm_fwd", 0.0);
        let n = shape.rows * shape.dim;
        check_len("rmsnorm_fwd", "x", x.len, n);
        check_len("rmsnorm_fwd", "y", y.len, n);
        check_len("rmsnorm_fwd", "weight", weight.len, shape.dim);
        check_len("rmsnorm_fwd", "inv_rms", inv_rms.len, shape.rows);
        self.ensure_dtype(y, Dtype::Bf16);
        self.ensure_dtype(inv_rms, Dtype::F32);
        let a = KormoRmsNormFwdArgs {
            x: self.input(x, Dtype::Bf16, 0),
            residual: 0,
            residual_out: 0,
            weight: self.input(weight, Dtype::Bf16, 1),
            y: y.ptr,
            rstd: inv_rms.ptr,
            rows: shape.rows as i64,
            hidden: shape.dim as i64,
            x_row_stride: shape.dim as i64,
            residual_row_stride: shape.dim as i64,
            y_row_stride: shape.dim as i64,
            eps,
            _pad0: 0,
        };
        // SAFETY: every buffer checked against the shape and given the kernel's dtype.
        expect_ok("rmsnorm_fwd", unsafe { kernel_launch::rmsnorm_fwd(&*self.kernels, &a) });
    }

    fn rmsnorm_bwd(
        &self,
        x: &CudaBuf,
        weight: &CudaBuf,
        inv_rms: &CudaBuf,
        dy: &CudaBuf,
        dx: &mut CudaBuf,
        dweight: &mut CudaBuf,
        shape: RowsShape,
    ) {
        let _timing = self.timer.time(self.stream(), "rmsnorm_bwd", 0.0);
        let n = shape.rows * shape.dim;
        for (what, buf, want) in [("x", x, n), ("dy", dy, n), ("weight", weight, shape.dim), ("inv_rms", inv_rms, shape.rows)] {
            check_len("rmsnorm_bwd", what, buf.len, want);
        }
        check_len("rmsnorm_bwd", "dx", dx.len, n);
        check_len("rmsnorm_bwd", "dweight", dweight.len, shape.dim);
        self.ensure_dtype(dx, Dtype::Bf16);
        self.ensure_dtype(dweight, Dtype::F32);
        let partial_rows = (shape.rows as i64).clamp(1, RMSNORM_BWD_MAX_PARTIAL_ROWS);
        let partial = self.scratch(Slot::RmsnormPartial, Dtype::F32, partial_rows as usize * shape.dim);
        let a = KormoRmsNormBwdArgs {
            h: self.input(x, Dtype::Bf16, 0),
            dy: self.input(dy, Dtype::Bf16, 1),
            // dx += gradient: the kernel adds dresidual, which may alias dh (see the header).
            dresidual: dx.ptr,
            weight: self.input(weight, Dtype::Bf16, 2),
            rstd: self.input(inv_rms, Dtype::F32, 3),
            dh: dx.ptr,
            dweight_partial: partial,
            rows: shape.rows as i64,
            hidden: shape.dim as i64,
            h_row_stride: shape.dim as i64,
            dy_row_stride: shape.dim as i64,
            dh_row_stride: shape.dim as i64,
            partial_rows,
        };
        let reduce = kernel_launch::rmsnorm_dweight_reduce_args(&a, dweight.ptr);
        // SAFETY: as in rmsnorm_fwd; the partial buffer holds partial_rows x dim f32.
        expect_ok("rmsnorm_bwd", unsafe { kernel_launch::rmsnorm_bwd(&*self.kernels, &a, &reduce) });
    }

    fn rope_fwd(&self, x: &mut CudaBuf, positions: &CudaIdxBuf, shape: RopeShape, theta: f32) {
        let _timing = self.timer.time(self.stream(), "rope_fwd", 0.0);
        self.rope("rope_fwd", x, positions, shape, theta, true);
    }

    fn rope_bwd(&self, dx: &mut CudaBuf, positions: &CudaIdxBuf, shape: RopeShape, theta: f32) {
        let _timing = self.timer.time(self.stream(), "rope_bwd", 0.0);
        self.rope("rope_bwd", dx, positions, shape, theta, false);
    }

    fn attention_fwd(
        &self,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        doc_ids: &CudaIdxBuf,
        out: &mut CudaBuf,
        lse: &mut CudaBuf,
        shape: AttentionShape,
    ) {
        let _timing = self.timer.time(self.stream(), "attention_fwd", 0.0);
        check_attention("attention_fwd", &shape, q, k, v, doc_ids);
        check_len("attention_fwd", "out", out.len, q.len);
        check_len("attention_fwd", "lse", lse.len, shape.tokens() * shape.heads);
        self.ensure_dtype(out, Dtype::Bf16);
        self.ensure_dtype(lse, Dtype::F32);
        let a = attention_fwd_args(
            &shape,
            [self.input(q, Dtype::Bf16, 0), self.input(k, Dtype::Bf16, 1), self.input(v, Dtype::Bf16, 2)],
            out.ptr,
            lse.ptr,
            doc_ids.ptr,
        );
        // SAFETY: lengths checked against the shape; contiguous [tokens, heads, head_dim].
        expect_ok("attention_fwd", unsafe { kernel_launch::attention_fwd(&*self.kernels, &a) });
    }

    fn attention_bwd(
        &self,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        doc_ids: &CudaIdxBuf,
        out: &CudaBuf,
        lse: &CudaBuf,
        dout: &CudaBuf,
        dq: &mut CudaBuf,
        dk: &mut CudaBuf,
        dv: &mut CudaBuf,
        shape: AttentionShape,
    ) {
        let _timing = self.timer.time(self.stream(), "attention_bwd", 0.0);
        check_attention("attention_bwd", &shape, q, k, v, doc_ids);
        for (what, buf, want) in [("out", out, q.len), ("dout", dout, q.len), ("lse", lse, shape.tokens() * shape.heads)] {
            check_len("attention_bwd", what, buf.len, want);
        }
        for (what, buf, want) in [("dq", &mut *dq, q.len), ("dk", &mut *dk, k.len), ("dv", &mut *dv, v.len)] {
            check_len("attention_bwd", what, buf.len, want);
            self.ensure_dtype(buf, Dtype::Bf16);
        }
        let qkv = [self.input(q, Dtype::Bf16, 0), self.input(k, Dtype::Bf16, 1), self.input(v, Dtype::Bf16, 2)];
        let o = self.input(out, Dtype::Bf16, 3);
        let dout = self.input(dout, Dtype::Bf16, 4);
        let fwd = attention_fwd_args(&shape, qkv, o, self.input(lse, Dtype::F32, 5), doc_ids.ptr);
        let deterministic = self.deterministic();
        let buffers = kernel_launch::AttentionBwdBuffers {
            dout,
            delta: self.scratch(Slot::AttentionDelta, Dtype::F32, shape.tokens() * shape.heads),
            // The deterministic backward writes dq without the f32 accumulator.
            dq_accum: if deterministic { 0 } else { self.scratch(Slot::AttentionDqAccum, Dtype::F32, q.len) },
            dq: dq.ptr,
            dk: dk.ptr,
            dv: dv.ptr,
        };
        let a = kernel_launch::attention_bwd_args(&fwd, buffers);
        // SAFETY: as in attention_fwd; delta and dq_accum are f32 scratch of the header's sizes.
        let r = unsafe {
            if deterministic {
                kernel_launch::attention_bwd_deterministic(&*self.kernels, &a)
            } else {
                kernel_launch::attention_bwd(&*self.kernels, &a)
            }
        };
        expect_ok("attention_bwd", r);
    }

    fn swiglu_fwd(&self, gate: &CudaBuf, up: &CudaBuf, h: &mut CudaBuf, len: usize) {
        let _timing = self.timer.time(self.stream(), "swiglu_fwd", 0.0);
        for (what, buf) in [("gate", gate), ("up", up)] {
            check_len("swiglu_fwd", what, buf.len, len);
        }
        check_len("swiglu_fwd", "h", h.len, len);
        self.ensure_dtype(h, Dtype::Bf16);
        let a = swiglu_args(self.input(gate, Dtype::Bf16, 0), self.input(up, Dtype::Bf16, 1), h.ptr, 0, 0, len);
        // SAFETY: three buffers of len bf16 elements.
        expect_ok("swiglu_fwd", unsafe { kernel_launch::swiglu_fwd(&*self.kernels, &a) });
    }

    fn swiglu_bwd(&self, gate: &CudaBuf, up: &CudaBuf, dh: &CudaBuf, dgate: &mut CudaBuf, dup: &mut CudaBuf, len: usize) {
        let _timing = self.timer.time(self.stream(), "swiglu_bwd", 0.0);
        for (what, buf) in [("gate", gate), ("up", up), ("dh", dh)] {
            check_len("swiglu_bwd", what, buf.len, len);
        }
        for (what, buf) in [("dgate", &mut *dgate), ("dup", &mut *dup)] {
            check_len("swiglu_bwd", what, buf.len, len);
            self.ensure_dtype(buf, Dtype::Bf16);
        }
        let a = swiglu_args(
            self.input(gate, Dtype::Bf16, 0),
            self.input(up, Dtype::Bf16, 1),
            self.input(dh, Dtype::Bf16, 2),
            dgate.ptr,
            dup.ptr,
            len,
        );
        // SAFETY: five buffers of len bf16 elements.
        expect_ok("swiglu_bwd", unsafe { kernel_launch::swiglu_bwd(&*self.kernels, &a) });
    }

    fn embedding_fwd(&self, table: &CudaBuf, tokens: &CudaIdxBuf, out: &mut CudaBuf, shape: EmbeddingShape) {
        let _timing = self.timer.time(self.stream(), "embedding_fwd", 0.0);
        check_len("embedding_fwd", "table", table.len, shape.vocab * shape.dim);
        check_len("embedding_fwd", "tokens", tokens.len, shape.tokens);
        check_len("embedding_fwd", "out", out.len, shape.tokens * shape.dim);
        self.ensure_dtype(out, Dtype::Bf16);
        let a = kernel_launch::embedding_args(tokens.ptr, self.input(table, Dtype::Bf16, 0), out.ptr, shape);
        // SAFETY: sizes checked; token ids < vocab is the model's validated batch invariant.
        expect_ok("embedding_fwd", unsafe { kernel_launch::embedding_fwd(&*self.kernels, &a) });
    }

    fn embedding_bwd(&self, dout: &CudaBuf, tokens: &CudaIdxBuf, dtable: &mut CudaBuf, shape: EmbeddingShape) {
        let _timing = self.timer.time(self.stream(), "embedding_bwd", 0.0);
        check_len("embedding_bwd", "dtable", dtable.len, shape.vocab * shape.dim);
        check_len("embedding_bwd", "tokens", tokens.len, shape.tokens);
        check_len("embedding_bwd", "dout", dout.len, shape.tokens * shape.dim);
        self.ensure_dtype(dtable, Dtype::F32);
        let a = kernel_launch::embedding_args(tokens.ptr, dtable.ptr, self.input(dout, Dtype::Bf16, 0), shape);
        // SAFETY: as in embedding_fwd, with an f32 table.
        let r = unsafe {
            if self.deterministic() {
                kernel_launch::embedding_bwd_deterministic(&*self.kernels, &a)
            } else {
                kernel_launch::embedding_bwd(&*self.kernels, &a)
            }
        };
        expect_ok("embedding_bwd", r);
    }

    fn cross_entropy(
        &self,
        logits: &mut CudaBuf,
        targets: &CudaIdxBuf,
        weights: &CudaBuf,
        losses: &mut CudaBuf,
        shape: CrossEntropyShape,
        z_loss: f32,
        grad_scale: f32,
    ) {
        let _timing = self.timer.time(self.stream(), "cross_entropy", 0.0);
        check_len("cross_entropy", "logits", logits.len, shape.tokens * shape.vocab);
        check_len("cross_entropy", "targets", targets.len, shape.tokens);
        check_len("cross_entropy", "weights", weights.len, shape.tokens);
        check_len("cross_entropy", "losses", losses.len, shape.tokens);
        self.ensure_dtype(logits, Dtype::Bf16);
        self.ensure_dtype(losses, Dtype::F32);
        // The kernel reads grad_scale from device memory; a fill kernel puts it there without a
        // host copy.
        let scale_ptr = self.scratch(Slot::GradScale, Dtype::F32, 1);
        let fill = KormoElementwiseArgs {
            dst: scale_ptr,
            src: 0,
            n: 1,
            op: KormoElementwiseOp_KORMO_ELEMENTWISE_FILL as i32,
            dst_dtype: Dtype::F32.code(),
            src_dtype: Dtype::F32.code(),
            value: grad_scale,
        };
        // SAFETY: one f32 of scratch.
        expect_ok("cross_entropy", unsafe { kernel_launch::elementwise(&*self.kernels, &fill) });
        let a = KormoCrossEntropyArgs {
            logits: logits.ptr,
            targets: targets.ptr,
            loss_weights: self.input(weights, Dtype::F32, 0),
            grad_scale: scale_ptr,
            loss: losses.ptr,
            lse: 0,
            dlogits: logits.ptr, // in place, as the interface specifies
            rows: shape.tokens as i64,
            vocab: shape.vocab as i64,
            logits_row_stride: shape.vocab as i64,
            dlogits_row_stride: shape.vocab as i64,
            z_loss,
            _pad0: 0,
        };
        // SAFETY: sizes checked; targets with non-zero weight are < vocab (validated batch).
        expect_ok("cross_entropy", unsafe { kernel_launch::cross_entropy(&*self.kernels, &a) });
    }

    fn start_op_profile(&self) -> Result<(), String> {
        self.timer.start(self.kernels.context())
    }

    fn finish_op_profile(&self) -> Result<OpProfile, String> {
        self.timer.finish(self.stream())
    }
}

impl CudaOps {
    fn rope(&self, op: &str, x: &mut CudaBuf, positions: &CudaIdxBuf, shape: RopeShape, theta: f32, forward: bool) {
        check_len(op, "x", x.len, shape.tokens * shape.heads * shape.head_dim);
        check_len(op, "positions", positions.len, shape.tokens);
        self.ensure_dtype(x, Dtype::Bf16);
        let a = KormoRopeArgs {
            x: x.ptr,
            y: x.ptr, // in place
            positions: positions.ptr,
            tokens: shape.tokens as i64,
            heads: shape.heads as i64,
            head_dim: shape.head_dim as i64,
            token_stride: (shape.heads * shape.head_dim) as i64,
            head_stride: shape.head_dim as i64,
            theta,
            _pad0: 0,
        };
        // SAFETY: x holds tokens x heads x head_dim bf16, positions tokens ids.
        let r = unsafe {
            if forward {
                kernel_launch::rope_fwd(&*self.kernels, &a)
            } else {
                kernel_launch::rope_bwd(&*self.kernels, &a)
            }
        };
        expect_ok(op, r);
    }
}

fn check_attention(op: &str, s: &AttentionShape, q: &CudaBuf, k: &CudaBuf, v: &CudaBuf, doc_ids: &CudaIdxBuf) {
    check_len(op, "q", q.len, s.tokens() * s.heads * s.head_dim);
    check_len(op, "k", k.len, s.tokens() * s.kv_heads * s.head_dim);
    check_len(op, "v", v.len, s.tokens() * s.kv_heads * s.head_dim);
    check_len(op, "doc_ids", doc_ids.len, s.tokens());
}

/// Forward arguments over contiguous `[tokens, heads, head_dim]` q/k/v/o of shape `s`
/// (`qkv`: the q, k and v addresses).
fn attention_fwd_args(s: &AttentionShape, qkv: [u64; 3], o: u64, lse: u64, doc_ids: u64) -> KormoAttentionFwdArgs {
    let a = kernel_launch::AttentionLayout::contiguous(s.batch, s.seq, s.heads, s.kv_heads, s.head_dim).fwd_args(qkv, o, lse, doc_ids);
    KormoAttentionFwdArgs { cross_lingual: i32::from(s.cross_lingual), ..a }
}

/// SwiGLU over `len` contiguous elements, as one row.
fn swiglu_args(gate: u64, up: u64, out: u64, dgate: u64, dup: u64, len: usize) -> KormoSwigluArgs {
    KormoSwigluArgs {
        gate,
        up,
        out,
        dgate,
        dup,
        rows: 1,
        cols: len as i64,
        in_row_stride: len as i64,
        out_row_stride: len as i64,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn opening_for_a_model_refuses_uncovered_configs_before_the_device() {
        let err = super::CudaOps::for_model(&kormo_model::ModelConfig::tiny(), 0).err().expect("tiny's head dim 32 is not compiled");
        assert!(err.to_string().contains("head_dim 32"), "{err}");
    }

    use super::*;

    #[test]
    fn construction_without_a_device_is_a_clean_error() {
        match CudaOps::new(0) {
            // A machine with a device (and kernels and cuBLASLt) builds the backend.
            Ok(ops) => assert_eq!(ops.memory().allocations, 1, "only the GEMM workspace at start"),
            Err(CudaError::NoDevice(why)) => assert!(!why.is_empty()),
            Err(CudaError::KernelsNotBuilt) | Err(CudaError::Cublas(_)) => {
                assert!(crate::device::detect_devices().is_ok(), "only a machine with a device gets past detection")
            }
            Err(other) => panic!("unexpected error without a usable device: {other}"),
        }
    }

    #[test]
    fn config_check_names_what_the_kernels_do_not_cover() {
        CudaOps::check_config(&ModelConfig::proxy_1b()).expect("proxy-1b is covered");
        CudaOps::check_config(&ModelConfig::kormo_10_8b()).expect("kormo-10.8b is covered");
        let tiny = CudaOps::check_config(&ModelConfig::tiny()).unwrap_err().to_string();
        assert!(tiny.contains("head_dim 32"), "{tiny}");
        let wide = ModelConfig { hidden: 16384, ..ModelConfig::proxy_1b() };
        assert!(CudaOps::check_config(&wide).unwrap_err().to_string().contains("hidden 16384"));
    }
}
