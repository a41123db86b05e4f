//! One launcher per kernel family.
//!
//! Each launcher takes the argument struct of cuda/include/kormo_kernels.h (device pointers as
//! u64), checks the preconditions the kernel relies on but cannot report (sizes, divisibility,
//! alignment of vector loads, grid limits), picks the grid, and enqueues on the [`Kernels`]
//! stream (or hand it to another [`Launcher`], such as the tests' CPU emulator). They are `unsafe`: the pointers are raw device addresses that must cover the sizes and
//! strides described in the struct. Nothing here synchronises with the host.
//!
//! Deterministic variants (CudaOps' deterministic mode, docs/kernels.md): the launchers whose
//! default kernels add floats with atomics, so that the rounding depends on block scheduling,
//! have a `_deterministic` twin that gives bitwise the same result for any schedule:
//! [`embedding_bwd_deterministic`], [`grad_sumsq_deterministic`], [`attention_bwd_deterministic`].
//! Every other kernel is deterministic as it is (each output element has one writer, which sums
//! in a fixed order; the RMSNorm dweight goes through fixed partial rows and a fixed reduce).

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use kormo_model::EmbeddingShape;

use crate::bindings::*;
use crate::device::CudaError;
use crate::kernel_names::{
    AttentionVariant, ATTENTION_BWD_BLOCK_KEYS, ATTENTION_DQ_BLOCK_QUERIES, ATTENTION_FWD_BLOCK_QUERIES,
    ATTENTION_SM90_BLOCK_KEYS, ATTENTION_SM90_BLOCK_QUERIES, ATTENTION_SM90_BWD_BLOCK_KEYS, ATTENTION_SM90_BWD_BLOCK_QUERIES,
    ATTENTION_SM90_THREADS, ATTENTION_THREADS, ATTENTION_VARIANTS,
};
use crate::module::Kernels;

// SAFETY: plain C structs of integers and floats with the C layout (bindgen, repr(C)); the kernels
// take them by value.
unsafe impl DeviceRepr for KormoRmsNormFwdArgs {}
unsafe impl DeviceRepr for KormoRmsNormBwdArgs {}
unsafe impl DeviceRepr for KormoRmsNormDweightReduceArgs {}
unsafe impl DeviceRepr for KormoSwigluArgs {}
unsafe impl DeviceRepr for KormoRopeArgs {}
unsafe impl DeviceRepr for KormoAttentionFwdArgs {}
unsafe impl DeviceRepr for KormoAttentionBwdArgs {}
unsafe impl DeviceRepr for KormoAttentionFwdSm90Args {}
unsafe impl DeviceRepr for KormoAttentionBwdSm90Args {}
unsafe impl DeviceRepr for KormoCrossEntropyArgs {}
unsafe impl DeviceRepr for KormoEmbeddingArgs {}
unsafe impl DeviceRepr for KormoAdamwArgs {}
unsafe impl DeviceRepr for KormoGradSumsqArgs {}
unsafe impl DeviceRepr for KormoGradSumsqPartialArgs {}
unsafe impl DeviceRepr for KormoClipScaleArgs {}
unsafe impl DeviceRepr for KormoElementwiseArgs {}

const ELEMENTWISE_THREADS: u32 = 256;
/// Grid-stride kernels never need more blocks than this to saturate an H100/H200.
const MAX_STRIDE_BLOCKS: i64 = 1 << 16;
/// Threads per row for the row-per-block kernels (RMSNorm, cross entropy).
const ROW_THREADS: u32 = 256;
const CROSS_ENTROPY_THREADS: u32 = 512;
/// Default number of partial dweight rows of the RMSNorm backward: enough blocks to fill the
/// GPU, few enough that the reduce pass stays negligible.
pub const RMSNORM_BWD_MAX_PARTIAL_ROWS: i64 = 512;
/// Shared memory a kernel may use without an opt-in.
const DEFAULT_SMEM_LIMIT: i64 = 48 * 1024;

fn invalid(kernel: &'static str, reason: impl Into<String>) -> CudaError {
    CudaError::InvalidLaunch { kernel, reason: reason.into() }
}

fn require(ok: bool, kernel: &'static str, reason: impl FnOnce() -> String) -> Result<(), CudaError> {
    if ok {
        Ok(())
    } else {
        Err(invalid(kernel, reason()))
    }
}

fn grid_dim(kernel: &'static str, what: &str, n: i64, limit: i64) -> Result<u32, CudaError> {
    require(n >= 1 && n <= limit, kernel, || format!("{what} = {n} outside 1..={limit}"))?;
    Ok(n as u32)
}

fn stride_blocks(n: i64) -> u32 {
    ((n + ELEMENTWISE_THREADS as i64 - 1) / ELEMENTWISE_THREADS as i64).clamp(1, MAX_STRIDE_BLOCKS) as u32
}

fn elementwise_cfg(n: i64) -> LaunchConfig {
    LaunchConfig { grid_dim: (stride_blocks(n), 1, 1), block_dim: (ELEMENTWISE_THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// Where launches go: the device ([`Kernels`]), or the CPU emulator of cuda/emulator in tests.
pub trait Launcher {
    /// Enqueues kernel `name` with its single by-value argument.
    ///
    /// # Safety
    /// `args` must be the argument struct of kernel `name`, its pointers valid for the sizes in it.
    unsafe fn launch_kernel<A: DeviceRepr>(&self, name: &'static str, cfg: LaunchConfig, args: &A) -> Result<(), CudaError>;

    /// Compute capability (major, minor) of the device the launches run on: the launchers pick
    /// the sm_90a kernels on (9, 0).
    fn compute_capability(&self) -> (i32, i32);

    /// The TMA tensor map of `spec` in the form this launcher's kernels read.
    fn encode_tensor_map(&self, spec: &TensorMapSpec) -> Result<KormoTensorMap, CudaError>;
}

/// `L` reporting another compute capability: e.g. (8, 0) makes the launchers take the sm_80
/// kernels on an H100 (the bench times both paths; the GPU tests check both).
pub struct WithCapability<'a, L: Launcher>(pub &'a L, pub (i32, i32));

impl<L: Launcher> Launcher for WithCapability<'_, L> {
    unsafe fn launch_kernel<A: DeviceRepr>(&self, name: &'static str, cfg: LaunchConfig, args: &A) -> Result<(), CudaError> {
        unsafe { self.0.launch_kernel(name, cfg, args) }
    }

    fn compute_capability(&self) -> (i32, i32) {
        self.1
    }

    fn encode_tensor_map(&self, spec: &TensorMapSpec) -> Result<KormoTensorMap, CudaError> {
        self.0.encode_tensor_map(spec)
    }
}

/// Element type of a tensor map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorElement {
    Bf16,
    F32,
    U32,
}

impl TensorElement {
    pub fn bytes(self) -> u32 {
        match self {
            TensorElement::Bf16 => 2,
            TensorElement::F32 | TensorElement::U32 => 4,
        }
    }
}

/// A tiled TMA tensor map: a tensor of `dims` (innermost first) at `address`, `strides[i]` bytes
/// between consecutive indices of dim i + 1 (dim 0 is contiguous), read in boxes of `box_dims`
/// elements; with `swizzle_128b` the box's 128-byte rows land in shared memory with the
/// 128-byte swizzle (the box's inner dim must then be 128 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorMapSpec {
    pub address: u64,
    pub element: TensorElement,
    pub dims: Vec<u64>,
    pub strides: Vec<u64>,
    pub box_dims: Vec<u32>,
    pub swizzle_128b: bool,
}

impl TensorMapSpec {
    /// The rules cuTensorMapEncodeTiled enforces, as kormo's own error (the emulator checks the
    /// same): rank 1..=5, 16-byte aligned address and strides, boxes of 1..=256 elements per
    /// dim, 128-byte inner box rows with the swizzle.
    pub fn check(&self) -> Result<(), String> {
        let rank = self.dims.len();
        let bad = if !(1..=5).contains(&rank) || self.strides.len() + 1 != rank || self.box_dims.len() != rank {
            Some(format!("rank {rank} with {} strides and {} box dims", self.strides.len(), self.box_dims.len()))
        } else if !self.address.is_multiple_of(16) {
            Some(format!("address {:#x} not 16-byte aligned", self.address))
        } else if let Some(s) = self.strides.iter().find(|&&s| s % 16 != 0 || s >= 1 << 40) {
            Some(format!("stride {s} bytes not a multiple of 16 below 2^40"))
        } else if let Some(d) = self.dims.iter().find(|&&d| d == 0 || d > 1 << 32) {
            Some(format!("dim {d} outside 1..=2^32"))
        } else if let Some(b) = self.box_dims.iter().find(|&&b| b == 0 || b > 256) {
            Some(format!("box dim {b} outside 1..=256"))
        } else if self.swizzle_128b && self.box_dims[0] * self.element.bytes() != 128 {
            Some(format!("the 128-byte swizzle needs 128-byte box rows, not {}", self.box_dims[0] * self.element.bytes()))
        } else {
            None
        };
        bad.map_or(Ok(()), Err)
    }
}

impl Launcher for Kernels {
    unsafe fn launch_kernel<A: DeviceRepr>(&self, name: &'static str, cfg: LaunchConfig, args: &A) -> Result<(), CudaError> {
        let f = self.function(name)?;
        let mut builder = self.stream().launch_builder(&f);
        builder.arg(args);
        // SAFETY: the kernel takes exactly one argument of type A (the header's signature); the
        // caller guarantees the device pointers inside are valid for the described sizes.
        unsafe { builder.launch(cfg) }?;
        Ok(())
    }

    fn compute_capability(&self) -> (i32, i32) {
        Kernels::compute_capability(self)
    }

    fn encode_tensor_map(&self, spec: &TensorMapSpec) -> Result<KormoTensorMap, CudaError> {
        use cudarc::driver::sys;
        spec.check().map_err(|reason| invalid("tensor map", reason))?;
        let element_strides = vec![1u32; spec.dims.len()];
        let mut map = sys::CUtensorMap { opaque: [0; 16] };
        let dtype = match spec.element {
            TensorElement::Bf16 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            TensorElement::F32 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT32,
            TensorElement::U32 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT32,
        };
        let swizzle = if spec.swizzle_128b {
            sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B
        } else {
            sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_NONE
        };
        // SAFETY: a host-side encoding call; every array has the rank's length (checked above);
        // the address is only recorded in the map.
        unsafe {
            sys::cuTensorMapEncodeTiled(
                &mut map,
                dtype,
                spec.dims.len() as u32,
                spec.address as *mut std::ffi::c_void,
                spec.dims.as_ptr(),
                spec.strides.as_ptr(),
                spec.box_dims.as_ptr(),
                element_strides.as_ptr(),
                sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
                swizzle,
                sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
            )
            .result()?;
        }
        Ok(KormoTensorMap { opaque: map.opaque })
    }
}

unsafe fn launch<A: DeviceRepr>(k: &impl Launcher, name: &'static str, args: &A, cfg: LaunchConfig) -> Result<(), CudaError> {
    unsafe { k.launch_kernel(name, cfg, args) }
}

/// # Safety
/// Pointers must be valid device buffers of the sizes/strides in `a`.
pub unsafe fn rmsnorm_fwd(k: &impl Launcher, a: &KormoRmsNormFwdArgs) -> Result<(), CudaError> {
    const NAME: &str = "kormo_rmsnorm_fwd";
    require(a.hidden >= 1, NAME, || format!("hidden = {}", a.hidden))?;
    let rows = grid_dim(NAME, "rows", a.rows, i32::MAX as i64)?;
    let cfg = LaunchConfig { grid_dim: (rows, 1, 1), block_dim: (ROW_THREADS, 1, 1), shared_mem_bytes: 0 };
    unsafe { launch(k, NAME, a, cfg) }
}

/// Backward and the dweight reduction. `a.partial_rows` picks the number of blocks (see
/// [`RMSNORM_BWD_MAX_PARTIAL_ROWS`]); `a.dweight_partial` must hold partial_rows x hidden f32.
///
/// # Safety
/// Pointers must be valid device buffers of the sizes/strides in `a` and `reduce`.
pub unsafe fn rmsnorm_bwd(
    k: &impl Launcher,
    a: &KormoRmsNormBwdArgs,
    reduce: &KormoRmsNormDweightReduceArgs,
) -> Result<(), CudaError> {
    const NAME: &str = "kormo_rmsnorm_bwd";
    require(a.hidden >= 1 && a.rows >= 1, NAME, || format!("rows = {}, hidden = {}", a.rows, a.hidden))?;
    let smem = a.hidden * 4;
    require(smem <= DEFAULT_SMEM_LIMIT, NAME, || format!("hidden {} needs {smem} B of shared memory", a.hidden))?;
    let blocks = grid_dim(NAME, "partial_rows", a.partial_rows, i32::MAX as i64)?;
    require(
        reduce.partial_rows == a.partial_rows && reduce.hidden == a.hidden && reduce.dweight_partial == a.dweight_partial,
        NAME,
        || "reduce args must describe the same partial buffer".into(),
    )?;
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (ROW_THREADS, 1, 1), shared_mem_bytes: smem as u32 };
    unsafe { launch(k, NAME, a, cfg) }?;
    unsafe { launch(k, "kormo_rmsnorm_dweight_reduce", reduce, elementwise_cfg(a.hidden)) }
}

/// # Safety
/// Pointers must be valid device buffers of the sizes/strides in `a`.
pub unsafe fn swiglu_fwd(k: &impl Launcher, a: &KormoSwigluArgs) -> Result<(), CudaError> {
    unsafe { launch(k, "kormo_swiglu_fwd", a, elementwise_cfg(a.rows * a.cols)) }
}

/// # Safety
/// Pointers must be valid device buffers of the sizes/strides in `a` (`out` holds dout).
pub unsafe fn swiglu_bwd(k: &impl Launcher, a: &KormoSwigluArgs) -> Result<(), CudaError> {
    unsafe { launch(k, "kormo_swiglu_bwd", a, elementwise_cfg(a.rows * a.cols)) }
}

fn check_rope(name: &'static str, a: &KormoRopeArgs) -> Result<(), CudaError> {
    require(a.head_dim >= 2 && a.head_dim % 2 == 0, name, || format!("head_dim {} must be even", a.head_dim))?;
    require(a.theta > 0.0, name, || format!("theta {} must be positive", a.theta))
}

/// Threads the RoPE kernels want: one per (token, run of pairs), a run being 8 pairs on the
/// kernel's 16-byte path (same test as `rope_vec8_ok` in cuda/rope.cu) and 1 pair otherwise. Only
/// the grid size depends on it: the kernels loop (grid stride) over whatever they are given.
fn rope_threads(a: &KormoRopeArgs) -> i64 {
    let half = a.head_dim / 2;
    let vec8 = a.x.is_multiple_of(16) && a.y.is_multiple_of(16) && a.token_stride % 8 == 0 && a.head_stride % 8 == 0 && half % 8 == 0;
    a.tokens * if vec8 { half / 8 } else { half }
}

/// # Safety
/// Pointers must be valid device buffers of the sizes/strides in `a`.
pub unsafe fn rope_fwd(k: &impl Launcher, a: &KormoRopeArgs) -> Result<(), CudaError> {
    check_rope("kormo_rope_fwd", a)?;
    unsafe { launch(k, "kormo_rope_fwd", a, elementwise_cfg(rope_threads(a))) }
}

/// # Safety
/// Pointers must be valid device buffers of the sizes/strides in `a`.
pub unsafe fn rope_bwd(k: &impl Launcher, a: &KormoRopeArgs) -> Result<(), CudaError> {
    check_rope("kormo_rope_bwd", a)?;
    unsafe { launch(k, "kormo_rope_bwd", a, elementwise_cfg(rope_threads(a))) }
}

/// The compiled variant for a head dim and mask kind (document mask when doc_ids != 0).
pub fn attention_variant(head_dim: i32, doc_mask: bool) -> Result<&'static AttentionVariant, CudaError> {
    ATTENTION_VARIANTS.iter().find(|v| v.head_dim == head_dim && v.doc_mask == doc_mask).ok_or_else(|| {
        let dims: Vec<i32> = ATTENTION_VARIANTS.iter().map(|v| v.head_dim).collect();
        invalid("kormo_attention", format!("no compiled variant for head_dim {head_dim} (compiled: {dims:?})"))
    })
}

/// The eight token/head strides of an attention argument struct (the forward and backward
/// structs name them alike), in the order `check_attention` reports them.
macro_rules! attention_strides {
    ($a:expr) => {
        [$a.q_token_stride, $a.q_head_stride, $a.k_token_stride, $a.k_head_stride, $a.v_token_stride, $a.v_head_stride, $a.o_token_stride, $a.o_head_stride]
    };
}

/// Device buffers the attention backward adds to its forward's inputs.
#[derive(Debug, Clone, Copy)]
pub struct AttentionBwdBuffers {
    pub dout: u64,
    /// f32 scratch, `heads_q * tokens`.
    pub delta: u64,
    /// f32 scratch, as many elements as q.
    pub dq_accum: u64,
    pub dq: u64,
    pub dk: u64,
    pub dv: u64,
}

/// Where attention's operands live: q and o are `[batch * seq, heads_q, head_dim]` with
/// `q_token_stride` elements from one token to the next, k and v `[batch * seq, heads_kv,
/// head_dim]` with `kv_token_stride`; heads are `head_dim` apart. Contiguous tensors have
/// strides `heads * head_dim` ([`AttentionLayout::contiguous`]); padded ones (the tests' checks
/// that a kernel never reads past a row) more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionLayout {
    pub batch: usize,
    pub seq: usize,
    pub heads_q: usize,
    pub heads_kv: usize,
    pub head_dim: usize,
    pub q_token_stride: usize,
    pub kv_token_stride: usize,
}

impl AttentionLayout {
    pub fn contiguous(batch: usize, seq: usize, heads_q: usize, heads_kv: usize, head_dim: usize) -> AttentionLayout {
        AttentionLayout { batch, seq, heads_q, heads_kv, head_dim, q_token_stride: heads_q * head_dim, kv_token_stride: heads_kv * head_dim }
    }

    /// Forward arguments over the q, k, v addresses `qkv`, output `o`, f32 `lse` (`heads_q *
    /// tokens`) and `doc_ids` (u32 per token; 0: causal over the whole row); softmax scale
    /// `1 / sqrt(head_dim)`.
    pub fn fwd_args(&self, qkv: [u64; 3], o: u64, lse: u64, doc_ids: u64) -> KormoAttentionFwdArgs {
        let (q_tok, kv_tok, hd) = (self.q_token_stride as i64, self.kv_token_stride as i64, self.head_dim as i64);
        KormoAttentionFwdArgs {
            q: qkv[0],
            k: qkv[1],
            v: qkv[2],
            o,
            lse,
            doc_ids,
            batch: self.batch as i64,
            seq_len: self.seq as i64,
            heads_q: self.heads_q as i64,
            heads_kv: self.heads_kv as i64,
            q_token_stride: q_tok,
            q_head_stride: hd,
            k_token_stride: kv_tok,
            k_head_stride: hd,
            v_token_stride: kv_tok,
            v_head_stride: hd,
            o_token_stride: q_tok,
            o_head_stride: hd,
            softmax_scale: 1.0 / (self.head_dim as f32).sqrt(),
            head_dim: self.head_dim as i32,
            cross_lingual: 0,
            _pad0: 0,
        }
    }
}

/// Backward arguments of the attention that ran forward with `f`: the same q/k/v/o/lse, mask,
/// shape and strides (dout and dq share q's strides, dk/dv those of k/v) plus `g`'s buffers.
pub fn attention_bwd_args(f: &KormoAttentionFwdArgs, g: AttentionBwdBuffers) -> KormoAttentionBwdArgs {
    KormoAttentionBwdArgs {
        q: f.q,
        k: f.k,
        v: f.v,
        o: f.o,
        dout: g.dout,
        lse: f.lse,
        delta: g.delta,
        dq_accum: g.dq_accum,
        dq: g.dq,
        dk: g.dk,
        dv: g.dv,
        doc_ids: f.doc_ids,
        batch: f.batch,
        seq_len: f.seq_len,
        heads_q: f.heads_q,
        heads_kv: f.heads_kv,
        q_token_stride: f.q_token_stride,
        q_head_stride: f.q_head_stride,
        k_token_stride: f.k_token_stride,
        k_head_stride: f.k_head_stride,
        v_token_stride: f.v_token_stride,
        v_head_stride: f.v_head_stride,
        o_token_stride: f.o_token_stride,
        o_head_stride: f.o_head_stride,
        softmax_scale: f.softmax_scale,
        head_dim: f.head_dim,
        cross_lingual: f.cross_lingual,
        _pad0: 0,
    }
}

/// The dweight reduce that follows the backward `bwd`: sums its `partial_rows` partial rows and
/// adds them to `dweight` (f32, `hidden`), which accumulates across micro-batches.
pub fn rmsnorm_dweight_reduce_args(bwd: &KormoRmsNormBwdArgs, dweight: u64) -> KormoRmsNormDweightReduceArgs {
    KormoRmsNormDweightReduceArgs {
        dweight_partial: bwd.dweight_partial,
        dweight,
        partial_rows: bwd.partial_rows,
        hidden: bwd.hidden,
        accumulate: 1,
        _pad0: 0,
    }
}

/// Embedding arguments over a contiguous `[vocab, dim]` table and `[tokens, dim]` rows.
pub fn embedding_args(tokens: u64, table: u64, rows: u64, s: EmbeddingShape) -> KormoEmbeddingArgs {
    KormoEmbeddingArgs {
        tokens,
        table,
        rows,
        num_tokens: s.tokens as i64,
        vocab: s.vocab as i64,
        dim: s.dim as i64,
        table_row_stride: s.dim as i64,
        rows_row_stride: s.dim as i64,
    }
}

/// Shared checks of the forward and backward: GQA ratio, grid limits, 16-byte vector loads.
#[allow(clippy::too_many_arguments)]
fn check_attention(
    name: &'static str,
    batch: i64,
    seq_len: i64,
    heads_q: i64,
    heads_kv: i64,
    strides: [i64; 8],
    pointers: &[u64],
) -> Result<(), CudaError> {
    require(heads_kv >= 1 && heads_q % heads_kv == 0, name, || {
        format!("heads_q {heads_q} must be a multiple of heads_kv {heads_kv}")
    })?;
    grid_dim(name, "batch", batch, 65535)?;
    grid_dim(name, "heads_q", heads_q, 65535)?;
    // The kernels keep positions inside a row in 32 bits.
    require(seq_len >= 1 && seq_len <= i32::MAX as i64, name, || format!("seq_len {seq_len} out of range"))?;
    require(strides.iter().all(|s| s % 8 == 0), name, || {
        format!("token/head strides {strides:?} must be multiples of 8 elements (16-byte loads)")
    })?;
    require(pointers.iter().all(|p| p % 16 == 0), name, || "q/k/v/o/dout pointers must be 16-byte aligned".into())
}

/// Which attention forward kernel family runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionPath {
    /// FlashAttention-2 layout on mma.sync (sm_80 and newer).
    Sm80,
    /// wgmma + TMA with producer/consumer warpgroups (compute capability 9.0).
    Sm90,
}

impl AttentionPath {
    /// The path a launcher on compute capability `cc` takes for well-formed arguments.
    pub fn for_capability(cc: (i32, i32)) -> AttentionPath {
        if cc == (9, 0) {
            AttentionPath::Sm90
        } else {
            AttentionPath::Sm80
        }
    }

    /// How `train`'s backend line names it.
    pub fn describe(self) -> &'static str {
        match self {
            AttentionPath::Sm80 => "attention: sm_80 FlashAttention-2 kernels (mma.sync)",
            AttentionPath::Sm90 => "attention: sm_90a kernels (wgmma + TMA, warp-specialized)",
        }
    }
}

/// The TMA preconditions of the sm_90a kernels beyond [`check_attention`]'s: doc ids and the
/// f32 scratch 16-byte aligned, and the 1-D maps' coordinates (token, head x token) in 32 bits.
/// Arguments that miss them run the sm_80 kernels.
fn sm90_supported(doc_ids: u64, batch: i64, seq_len: i64, heads_q: i64, f32_scratch: &[u64]) -> bool {
    let indices = batch.checked_mul(seq_len).and_then(|t| t.checked_mul(heads_q)).is_some_and(|n| n <= i32::MAX as i64);
    doc_ids.is_multiple_of(16) && f32_scratch.iter().all(|p| p.is_multiple_of(16)) && indices
}

/// The 4-D map {head_dim, heads, seq_len, batch} of one attention operand (bf16, `token_stride`
/// and `head_stride` in elements), boxes of 64 x 1 x `rows` x 1 with the 128-byte swizzle.
fn operand_map(address: u64, shape: [i64; 4], token_stride: i64, head_stride: i64, rows: u32) -> TensorMapSpec {
    let [head_dim, heads, seq_len, batch] = shape.map(|d| d as u64);
    let (tok, head) = (token_stride as u64 * 2, head_stride as u64 * 2);
    TensorMapSpec {
        address,
        element: TensorElement::Bf16,
        dims: vec![head_dim, heads, seq_len, batch],
        strides: vec![head, tok, tok * seq_len],
        box_dims: vec![64, 1, rows, 1],
        swizzle_128b: true,
    }
}

/// A 1-D map of `len` 4-byte values, boxes of `rows`; the zero map when `address` is 0 (the
/// causal variants never read their doc-id maps).
fn row_values_map(k: &impl Launcher, address: u64, element: TensorElement, len: i64, rows: u32) -> Result<KormoTensorMap, CudaError> {
    if address == 0 {
        return Ok(KormoTensorMap::default());
    }
    k.encode_tensor_map(&TensorMapSpec { address, element, dims: vec![len as u64], strides: vec![], box_dims: vec![rows], swizzle_128b: false })
}

/// Query heads per sm_90a forward block: the whole GQA group when it divides the block's 128
/// rows (the group's heads then share each K and V tile the block loads), else 1.
pub fn sm90_heads_per_block(heads_q: i64, heads_kv: i64) -> i64 {
    let group = heads_q / heads_kv.max(1);
    if group >= 1 && ATTENTION_SM90_BLOCK_QUERIES % group == 0 {
        group
    } else {
        1
    }
}

/// The sm_90a forward's arguments: `a` plus the tensor maps of q, k, v and the doc ids.
pub fn attention_fwd_sm90_args(k: &impl Launcher, a: &KormoAttentionFwdArgs) -> Result<KormoAttentionFwdSm90Args, CudaError> {
    let (q_shape, kv_shape) = ([a.head_dim as i64, a.heads_q, a.seq_len, a.batch], [a.head_dim as i64, a.heads_kv, a.seq_len, a.batch]);
    let rows = ATTENTION_SM90_BLOCK_KEYS;
    let pack = sm90_heads_per_block(a.heads_q, a.heads_kv);
    let mut q_map = operand_map(a.q, q_shape, a.q_token_stride, a.q_head_stride, (ATTENTION_SM90_BLOCK_QUERIES / pack) as u32);
    q_map.box_dims[1] = pack as u32;
    Ok(KormoAttentionFwdSm90Args {
        q_map: k.encode_tensor_map(&q_map)?,
        k_map: k.encode_tensor_map(&operand_map(a.k, kv_shape, a.k_token_stride, a.k_head_stride, rows))?,
        v_map: k.encode_tensor_map(&operand_map(a.v, kv_shape, a.v_token_stride, a.v_head_stride, rows))?,
        doc_map: row_values_map(k, a.doc_ids, TensorElement::U32, a.batch * a.seq_len, rows)?,
        a: *a,
        heads_per_block: pack as i32,
        _pad0: 0,
    })
}

/// The sm_90a backward's arguments: `a` plus the maps of q, k, v, dout, lse, delta and doc ids.
pub fn attention_bwd_sm90_args(k: &impl Launcher, a: &KormoAttentionBwdArgs) -> Result<KormoAttentionBwdSm90Args, CudaError> {
    let (q_shape, kv_shape) = ([a.head_dim as i64, a.heads_q, a.seq_len, a.batch], [a.head_dim as i64, a.heads_kv, a.seq_len, a.batch]);
    let (q_rows, k_rows) = (ATTENTION_SM90_BWD_BLOCK_QUERIES, ATTENTION_SM90_BLOCK_KEYS);
    let tokens = a.batch * a.seq_len;
    Ok(KormoAttentionBwdSm90Args {
        q_map: k.encode_tensor_map(&operand_map(a.q, q_shape, a.q_token_stride, a.q_head_stride, q_rows))?,
        k_map: k.encode_tensor_map(&operand_map(a.k, kv_shape, a.k_token_stride, a.k_head_stride, k_rows))?,
        v_map: k.encode_tensor_map(&operand_map(a.v, kv_shape, a.v_token_stride, a.v_head_stride, k_rows))?,
        dout_map: k.encode_tensor_map(&operand_map(a.dout, q_shape, a.o_token_stride, a.o_head_stride, q_rows))?,
        lse_map: row_values_map(k, a.lse, TensorElement::F32, a.heads_q * tokens, q_rows)?,
        delta_map: row_values_map(k, a.delta, TensorElement::F32, a.heads_q * tokens, q_rows)?,
        q_doc_map: row_values_map(k, a.doc_ids, TensorElement::U32, tokens, q_rows)?,
        k_doc_map: row_values_map(k, a.doc_ids, TensorElement::U32, tokens, k_rows)?,
        a: *a,
    })
}

/// The attention forward: the sm_90a kernels on compute capability 9.0 (when the arguments meet
/// their TMA preconditions), else the sm_80 ones. Same outputs either way.
///
/// # Safety
/// Pointers must be valid device buffers of the sizes/strides in `a`.
pub unsafe fn attention_fwd(k: &impl Launcher, a: &KormoAttentionFwdArgs) -> Result<(), CudaError> {
    if AttentionPath::for_capability(k.compute_capability()) == AttentionPath::Sm90
        && sm90_supported(a.doc_ids, a.batch, a.seq_len, a.heads_q, &[a.lse])
    {
        unsafe { attention_fwd_sm90(k, a) }
    } else {
        unsafe { attention_fwd_sm80(k, a) }
    }
}

/// The Hopper forward, whatever the device (the emulator runs it anywhere; a device other than
/// compute capability 9.0 traps).
///
/// # Safety
/// Pointers must be valid device buffers of the sizes/strides in `a`.
pub unsafe fn attention_fwd_sm90(k: &impl Launcher, a: &KormoAttentionFwdArgs) -> Result<(), CudaError> {
    let v = attention_variant(a.head_dim, a.doc_ids != 0)?;
    check_attention(v.fwd_sm90, a.batch, a.seq_len, a.heads_q, a.heads_kv, attention_strides!(a), &[a.q, a.k, a.v, a.o])?;
    require(sm90_supported(a.doc_ids, a.batch, a.seq_len, a.heads_q, &[a.lse]), v.fwd_sm90, || SM90_LIMITS.into())?;
    let pack = sm90_heads_per_block(a.heads_q, a.heads_kv);
    let positions = ATTENTION_SM90_BLOCK_QUERIES / pack;
    let blocks = grid_dim(v.fwd_sm90, "query tiles", (a.seq_len + positions - 1) / positions, i32::MAX as i64)?;
    let args = attention_fwd_sm90_args(k, a)?;
    let cfg = LaunchConfig {
        grid_dim: (blocks, (a.heads_q / pack) as u32, a.batch as u32),
        block_dim: (ATTENTION_SM90_THREADS, 1, 1),
        shared_mem_bytes: v.fwd_sm90_smem_bytes,
    };
    unsafe { launch(k, v.fwd_sm90, &args, cfg) }
}

const SM90_LIMITS: &str = "doc_ids, lse, delta and dq_accum must be 16-byte aligned and batch * seq_len * heads_q < 2^31";

/// The FlashAttention-2-layout forward (any device of compute capability 8.0 or newer).
///
/// # Safety
/// Pointers must be valid device buffers of the sizes/strides in `a`.
pub unsafe fn attention_fwd_sm80(k: &impl Launcher, a: &KormoAttentionFwdArgs) -> Result<(), CudaError> {
    let v = attention_variant(a.head_dim, a.doc_ids != 0)?;
    let strides = attention_strides!(a);
    check_attention(v.fwd, a.batch, a.seq_len, a.heads_q, a.heads_kv, strides, &[a.q, a.k, a.v, a.o])?;
    let tiles = (a.seq_len + ATTENTION_FWD_BLOCK_QUERIES - 1) / ATTENTION_FWD_BLOCK_QUERIES;
    let blocks = grid_dim(v.fwd, "query tiles", tiles, i32::MAX as i64)?;
    let cfg = LaunchConfig {
        grid_dim: (blocks, a.heads_q as u32, a.batch as u32),
        block_dim: (ATTENTION_THREADS, 1, 1),
        shared_mem_bytes: v.fwd_smem_bytes,
    };
    unsafe { launch(k, v.fwd, a, cfg) }
}

/// Runs the three backward launches (prepare, variant, finish); see the header. dQ is summed
/// with f32 atomics: its rounding depends on block scheduling ([`attention_bwd_deterministic`]
/// does not).
///
/// # Safety
/// Pointers must be valid device buffers of the sizes/strides in `a`.
pub unsafe fn attention_bwd(k: &impl Launcher, a: &KormoAttentionBwdArgs) -> Result<(), CudaError> {
    let v = attention_variant(a.head_dim, a.doc_ids != 0)?;
    let strides = attention_strides!(a);
    check_attention(v.bwd, a.batch, a.seq_len, a.heads_q, a.heads_kv, strides, &[a.q, a.k, a.v, a.o, a.dout])?;
    require(a.dq_accum != 0, v.bwd, || "dq_accum scratch is required".into())?;
    let warps = a.batch * a.seq_len * a.heads_q;
    unsafe { launch(k, "kormo_attention_bwd_prepare", a, elementwise_cfg(warps * 32)) }?;
    if bwd_on_sm90(k, a) {
        unsafe { launch_bwd_sm90(k, v.bwd_sm90, v, a) }?;
    } else {
        unsafe { launch_bwd_sm80(k, v.bwd, v, a) }?;
    }
    unsafe { launch(k, "kormo_attention_bwd_finish", a, elementwise_cfg(warps * a.head_dim as i64)) }
}

/// Whether the backward of `a` runs the sm_90a kernels on this launcher.
fn bwd_on_sm90(k: &impl Launcher, a: &KormoAttentionBwdArgs) -> bool {
    AttentionPath::for_capability(k.compute_capability()) == AttentionPath::Sm90
        && sm90_supported(a.doc_ids, a.batch, a.seq_len, a.heads_q, &[a.lse, a.delta, a.dq_accum])
}

/// The sm_80 backward main kernel `name` (`bwd` or `bwd_dkdv`): one block per 64-key tile.
unsafe fn launch_bwd_sm80(k: &impl Launcher, name: &'static str, v: &AttentionVariant, a: &KormoAttentionBwdArgs) -> Result<(), CudaError> {
    let tiles = (a.seq_len + ATTENTION_BWD_BLOCK_KEYS - 1) / ATTENTION_BWD_BLOCK_KEYS;
    let cfg = LaunchConfig {
        grid_dim: (grid_dim(name, "key tiles", tiles, i32::MAX as i64)?, a.heads_kv as u32, a.batch as u32),
        block_dim: (ATTENTION_THREADS, 1, 1),
        shared_mem_bytes: v.bwd_smem_bytes,
    };
    unsafe { launch(k, name, a, cfg) }
}

/// The sm_90a backward main kernel `name` (`bwd_sm90` or `bwd_dkdv_sm90`): one block per
/// 128-key tile.
unsafe fn launch_bwd_sm90(k: &impl Launcher, name: &'static str, v: &AttentionVariant, a: &KormoAttentionBwdArgs) -> Result<(), CudaError> {
    require(sm90_supported(a.doc_ids, a.batch, a.seq_len, a.heads_q, &[a.lse, a.delta, a.dq_accum]), name, || SM90_LIMITS.into())?;
    let tiles = (a.seq_len + ATTENTION_SM90_BWD_BLOCK_KEYS - 1) / ATTENTION_SM90_BWD_BLOCK_KEYS;
    let cfg = LaunchConfig {
        grid_dim: (grid_dim(name, "key tiles", tiles, i32::MAX as i64)?, a.heads_kv as u32, a.batch as u32),
        block_dim: (ATTENTION_SM90_THREADS, 1, 1),
        shared_mem_bytes: v.bwd_sm90_smem_bytes,
    };
    let args = attention_bwd_sm90_args(k, a)?;
    unsafe { launch(k, name, &args, cfg) }
}

/// The deterministic backward (see the header): prepare (delta only), the variant's dK/dV pass
/// (the sm_90a one on compute capability 9.0), then its dQ pass, which owns each query tile's dQ and sums it over the key tiles in a fixed
/// order. dq, dk and dv are bitwise the same for any block schedule. `a.dq_accum` is not used
/// (it may be 0).
///
/// # Safety
/// Pointers must be valid device buffers of the sizes/strides in `a`.
pub unsafe fn attention_bwd_deterministic(k: &impl Launcher, a: &KormoAttentionBwdArgs) -> Result<(), CudaError> {
    let v = attention_variant(a.head_dim, a.doc_ids != 0)?;
    let strides = attention_strides!(a);
    check_attention(v.bwd_dkdv, a.batch, a.seq_len, a.heads_q, a.heads_kv, strides, &[a.q, a.k, a.v, a.o, a.dout])?;
    let query_tiles = (a.seq_len + ATTENTION_DQ_BLOCK_QUERIES - 1) / ATTENTION_DQ_BLOCK_QUERIES;
    let query_blocks = grid_dim(v.bwd_dq, "query tiles", query_tiles, i32::MAX as i64)?;
    let warps = a.batch * a.seq_len * a.heads_q;
    let prepare = KormoAttentionBwdArgs { dq_accum: 0, ..*a };
    unsafe { launch(k, "kormo_attention_bwd_prepare", &prepare, elementwise_cfg(warps * 32)) }?;
    if bwd_on_sm90(k, &prepare) {
        unsafe { launch_bwd_sm90(k, v.bwd_dkdv_sm90, v, &prepare) }?;
    } else {
        unsafe { launch_bwd_sm80(k, v.bwd_dkdv, v, &prepare) }?;
    }
    let dq = LaunchConfig {
        grid_dim: (query_blocks, a.heads_q as u32, a.batch as u32),
        block_dim: (ATTENTION_THREADS, 1, 1),
        shared_mem_bytes: v.dq_smem_bytes,
    };
    unsafe { launch(k, v.bwd_dq, a, dq) }
}

/// # Safety
/// Pointers must be valid device buffers of the sizes/strides in `a`.
pub unsafe fn cross_entropy(k: &impl Launcher, a: &KormoCrossEntropyArgs) -> Result<(), CudaError> {
    const NAME: &str = "kormo_cross_entropy";
    require(a.vocab >= 1, NAME, || format!("vocab = {}", a.vocab))?;
    let rows = grid_dim(NAME, "rows", a.rows, i32::MAX as i64)?;
    let cfg = LaunchConfig { grid_dim: (rows, 1, 1), block_dim: (CROSS_ENTROPY_THREADS, 1, 1), shared_mem_bytes: 0 };
    unsafe { launch(k, NAME, a, cfg) }
}

/// # Safety
/// Pointers must be valid device buffers of the sizes/strides in `a`; tokens must be < vocab.
pub unsafe fn embedding_fwd(k: &impl Launcher, a: &KormoEmbeddingArgs) -> Result<(), CudaError> {
    // One thread per 16-byte copy on the kernel's vector path (same test as in cuda/embedding.cu),
    // per element otherwise; the kernel loops (grid stride) over whatever it is given.
    let vec8 = a.table.is_multiple_of(16) && a.rows.is_multiple_of(16) && a.dim % 8 == 0 && a.table_row_stride % 8 == 0 && a.rows_row_stride % 8 == 0;
    let n = if vec8 { a.num_tokens * (a.dim / 8) } else { a.num_tokens * a.dim };
    unsafe { launch(k, "kormo_embedding_fwd", a, elementwise_cfg(n)) }
}

/// dtable += the scatter of dout, with f32 atomics (the summation order of a repeated token's
/// rows depends on scheduling; [`embedding_bwd_deterministic`] fixes it).
///
/// # Safety
/// As [`embedding_fwd`], with `table` an f32 gradient table.
pub unsafe fn embedding_bwd(k: &impl Launcher, a: &KormoEmbeddingArgs) -> Result<(), CudaError> {
    unsafe { launch(k, "kormo_embedding_bwd", a, elementwise_cfg(a.num_tokens * a.dim)) }
}

/// Threads per block of the owner-computes embedding backward (the kernel's id chunk holds up to
/// 1024).
const EMBEDDING_OWNED_THREADS: u32 = 256;
/// Row owners (grid x) of the owner-computes embedding backward: every block reads all token ids,
/// so more owners cost id traffic; fewer leave SMs idle.
const EMBEDDING_OWNED_ROW_OWNERS: i64 = 128;
/// Columns one thread of the owner-computes embedding backward handles per token (grid y =
/// ceil(dim / (threads x this))).
const EMBEDDING_OWNED_COLUMNS_PER_THREAD: i64 = 4;

/// The deterministic embedding backward (`kormo_embedding_bwd_owned`): the same result as
/// [`embedding_bwd`] up to rounding, with every dtable element summed by one thread in token
/// order, so bitwise the same for any block schedule (see cuda/embedding.cu for the cost).
///
/// # Safety
/// As [`embedding_bwd`].
pub unsafe fn embedding_bwd_deterministic(k: &impl Launcher, a: &KormoEmbeddingArgs) -> Result<(), CudaError> {
    const NAME: &str = "kormo_embedding_bwd_owned";
    require(a.vocab >= 1 && a.dim >= 1, NAME, || format!("vocab = {}, dim = {}", a.vocab, a.dim))?;
    if a.num_tokens == 0 {
        return Ok(());
    }
    let owners = a.vocab.min(EMBEDDING_OWNED_ROW_OWNERS);
    let per_block = EMBEDDING_OWNED_THREADS as i64 * EMBEDDING_OWNED_COLUMNS_PER_THREAD;
    let column_groups = grid_dim(NAME, "column groups", (a.dim + per_block - 1) / per_block, 65535)?;
    let cfg = LaunchConfig {
        grid_dim: (owners as u32, column_groups, 1),
        block_dim: (EMBEDDING_OWNED_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    unsafe { launch(k, NAME, a, cfg) }
}

/// # Safety
/// Pointers must be valid device buffers of `a.n` elements (lr and clip_scale: one f32).
pub unsafe fn adamw_step(k: &impl Launcher, a: &KormoAdamwArgs) -> Result<(), CudaError> {
    const NAME: &str = "kormo_adamw_step";
    require(a.bias_correction1 > 0.0 && a.bias_correction2 > 0.0, NAME, || {
        format!("bias corrections {} / {} must be positive (step >= 1)", a.bias_correction1, a.bias_correction2)
    })?;
    unsafe { launch(k, NAME, a, elementwise_cfg(a.n)) }
}

/// Most blocks of the sum-of-squares kernels, and so the f32 partial sums
/// [`grad_sumsq_deterministic`] needs at most.
pub const GRAD_SUMSQ_MAX_BLOCKS: usize = 1024;
const GRAD_SUMSQ_THREADS: u32 = 256;

/// Blocks of the sum-of-squares kernels for `n` elements (a function of n only).
fn grad_sumsq_blocks(n: i64) -> u32 {
    stride_blocks(n).min(GRAD_SUMSQ_MAX_BLOCKS as u32)
}

/// Adds sum(grad^2) into `a.sumsq`: each block's sum with an f32 atomic, so the rounding
/// depends on the order the blocks finish in ([`grad_sumsq_deterministic`] does not).
///
/// # Safety
/// Pointers must be valid device buffers of `a.n` elements / one f32.
pub unsafe fn grad_sumsq(k: &impl Launcher, a: &KormoGradSumsqArgs) -> Result<(), CudaError> {
    let cfg = LaunchConfig { grid_dim: (grad_sumsq_blocks(a.n), 1, 1), block_dim: (GRAD_SUMSQ_THREADS, 1, 1), shared_mem_bytes: 0 };
    unsafe { launch(k, "kormo_grad_sumsq", a, cfg) }
}

/// Adds sum(grad^2) into `a.sumsq` without atomics, bitwise the same for any block schedule:
/// per-block sums into `partial` (f32 scratch of [`GRAD_SUMSQ_MAX_BLOCKS`] elements, or at least
/// the grid this picks for `a.n`), then one block adds them in a fixed order.
///
/// # Safety
/// As [`grad_sumsq`]; `partial` must hold [`GRAD_SUMSQ_MAX_BLOCKS`] f32, and must not be in use
/// by another launch in flight (launches on one stream are ordered).
pub unsafe fn grad_sumsq_deterministic(k: &impl Launcher, a: &KormoGradSumsqArgs, partial: u64) -> Result<(), CudaError> {
    let blocks = grad_sumsq_blocks(a.n);
    let args = KormoGradSumsqPartialArgs { grad: a.grad, partial, sumsq: a.sumsq, n: a.n, blocks: blocks as i64 };
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (GRAD_SUMSQ_THREADS, 1, 1), shared_mem_bytes: 0 };
    unsafe { launch(k, "kormo_grad_sumsq_partial", &args, cfg) }?;
    let one = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (GRAD_SUMSQ_THREADS, 1, 1), shared_mem_bytes: 0 };
    unsafe { launch(k, "kormo_grad_sumsq_reduce", &args, one) }
}

/// # Safety
/// Both pointers must be valid single f32 device values.
pub unsafe fn clip_scale(k: &impl Launcher, a: &KormoClipScaleArgs) -> Result<(), CudaError> {
    let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (32, 1, 1), shared_mem_bytes: 0 };
    unsafe { launch(k, "kormo_clip_scale", a, cfg) }
}

/// Fill / scale / copy / add over `a.n` elements of bf16 or f32 buffers (see the header).
///
/// # Safety
/// `a.dst` (and `a.src` for COPY and ADD) must be valid device buffers of `a.n` elements of the
/// dtypes named in `a`.
pub unsafe fn elementwise(k: &impl Launcher, a: &KormoElementwiseArgs) -> Result<(), CudaError> {
    const NAME: &str = "kormo_elementwise";
    let dtype_ok = |d: i32| d == KormoDtype_KORMO_DTYPE_BF16 as i32 || d == KormoDtype_KORMO_DTYPE_F32 as i32;
    require(a.op >= 0 && a.op <= KormoElementwiseOp_KORMO_ELEMENTWISE_ADD as i32, NAME, || format!("unknown op {}", a.op))?;
    require(dtype_ok(a.dst_dtype) && dtype_ok(a.src_dtype), NAME, || {
        format!("unknown dtype (dst {}, src {})", a.dst_dtype, a.src_dtype)
    })?;
    if a.n == 0 {
        return Ok(());
    }
    unsafe { launch(k, NAME, a, elementwise_cfg(a.n)) }
}
