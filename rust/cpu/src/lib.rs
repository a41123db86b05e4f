//! kormo-cpu: the CPU reference backend, the single source of truth every GPU kernel is tested
//! against.
//!
//! [`CpuOps<T>`] implements [`kormo_model::Ops`] with plain `Vec<T>` buffers for `T = f32`
//! (training) and `T = f64` (finite-difference gradient checks); both run the same generic
//! kernels, one file per op family. Matmuls go to matrixmultiply's sgemm/dgemm; the other
//! kernels split rows, tokens or elements across `std::thread::scope` threads. Results do not
//! depend on the thread count (see [`parallel`]).
//!
//! ```
//! use kormo_cpu::CpuOps;
//! use kormo_model::{Batch, Model, ModelConfig};
//! let mut cfg = ModelConfig::tiny();
//! cfg.layers = 1;
//! let mut model = Model::new(cfg, CpuOps::<f32>::new(), 0).unwrap();
//! let n = 8;
//! let batch = Batch {
//!     tokens: (0..n as u32).collect(),
//!     targets: (1..=n as u32).collect(),
//!     loss_weights: vec![1.0; n],
//!     doc_ids: vec![0; n],
//!     positions: (0..n as u32).collect(),
//!     batch_size: 1,
//!     seq_len: n,
//! };
//! model.zero_grads();
//! let loss = model.forward_backward(&batch, 1.0 / batch.loss_weight_sum() as f32).unwrap();
//! assert!((loss.mean() - (384f64).ln()).abs() < 0.1); // ~uniform predictions at init
//! ```

pub mod attention;
pub mod cross_entropy;
pub mod embedding;
pub mod float;
pub mod matmul;
pub mod parallel;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;

use std::marker::PhantomData;
use std::sync::Arc;

use kormo_model::profile::{matmul_label, OpProfile, OpTimer};
use kormo_model::{AttentionShape, CrossEntropyShape, EmbeddingShape, MatmulShape, Ops, RopeShape, RowsShape};

pub use float::Float;

/// CPU backend in precision `T`.
#[derive(Debug, Clone)]
pub struct CpuOps<T> {
    threads: usize,
    precision: PhantomData<T>,
    /// Wall-clock op timer, off unless a benchmark profiles ([`Ops::start_op_profile`]);
    /// shared by clones.
    timer: Arc<OpTimer>,
}

impl<T: Float> Default for CpuOps<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Float> CpuOps<T> {
    /// Uses all available cores (`std::thread::available_parallelism`). Matmuls follow
    /// matrixmultiply's own `MATMUL_NUM_THREADS` (at most 4).
    pub fn new() -> Self {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Self::with_threads(threads)
    }

    /// Uses `threads` threads (at least 1) for the non-matmul kernels.
    pub fn with_threads(threads: usize) -> Self {
        CpuOps { threads: threads.max(1), precision: PhantomData, timer: Arc::default() }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }
}

const ELEMENTS_PER_ITEM: usize = 1 << 14;

impl<T: Float> CpuOps<T> {
    /// Applies `f` to matching chunks of `dst` and `src` in parallel.
    fn zip_map(&self, dst: &mut [T], src: &[T], f: impl Fn(&mut T, T) + Sync) {
        assert_eq!(dst.len(), src.len(), "elementwise op: lengths differ");
        let workers = parallel::threads_for(self.threads, dst.len());
        let items = dst.chunks_mut(ELEMENTS_PER_ITEM).zip(src.chunks(ELEMENTS_PER_ITEM));
        parallel::for_each(workers, items, |(dst, src)| {
            dst.iter_mut().zip(src).for_each(|(d, &s)| f(d, s));
        });
    }

    fn map(&self, x: &mut [T], f: impl Fn(&mut T) + Sync) {
        let threads = parallel::threads_for(self.threads, x.len());
        parallel::for_each(threads, x.chunks_mut(ELEMENTS_PER_ITEM), |x| x.iter_mut().for_each(&f));
    }
}

impl<T: Float> Ops for CpuOps<T> {
    type Buf = Vec<T>;
    type IdxBuf = Vec<u32>;

    fn zeros(&self, len: usize) -> Vec<T> {
        vec![T::ZERO; len]
    }

    fn upload(&self, host: &[f32]) -> Vec<T> {
        host.iter().map(|&x| T::from_f32(x)).collect()
    }

    fn upload_idx(&self, host: &[u32]) -> Vec<u32> {
        host.to_vec()
    }

    fn write(&self, dst: &mut Vec<T>, host: &[f32]) {
        let _timing = self.timer.time("write", 0.0);
        assert_eq!(dst.len(), host.len(), "write: lengths differ");
        dst.iter_mut().zip(host).for_each(|(d, &h)| *d = T::from_f32(h));
    }

    fn write_idx(&self, dst: &mut Vec<u32>, host: &[u32]) {
        let _timing = self.timer.time("write_idx", 0.0);
        dst.copy_from_slice(host);
    }

    fn read(&self, src: &Vec<T>, host: &mut [f32]) {
        let _timing = self.timer.time("read", 0.0);
        assert_eq!(src.len(), host.len(), "read: lengths differ");
        host.iter_mut().zip(src).for_each(|(h, &s)| *h = s.to_f32());
    }

    fn sum(&self, x: &Vec<T>) -> f64 {
        let _timing = self.timer.time("sum", 0.0);
        x.iter().map(|&e| e.to_f64()).sum()
    }

    fn fill(&self, x: &mut Vec<T>, value: f32) {
        let _timing = self.timer.time("fill", 0.0);
        let value = T::from_f32(value);
        self.map(x, |e| *e = value);
    }

    fn copy(&self, src: &Vec<T>, dst: &mut Vec<T>) {
        let _timing = self.timer.time("copy", 0.0);
        self.zip_map(dst, src, |d, s| *d = s);
    }

    fn scale(&self, x: &mut Vec<T>, alpha: f32) {
        let _timing = self.timer.time("scale", 0.0);
        let alpha = T::from_f32(alpha);
        self.map(x, |e| *e *= alpha);
    }

    fn add_assign(&self, dst: &mut Vec<T>, src: &Vec<T>) {
        let _timing = self.timer.time("add_assign", 0.0);
        self.zip_map(dst, src, |d, s| *d += s);
    }

    fn matmul(&self, a: &Vec<T>, b: &Vec<T>, c: &mut Vec<T>, shape: MatmulShape) {
        let _timing = self.timer.time(matmul_label(&shape), shape.flops());
        matmul::matmul(a, b, c, shape);
    }

    fn rmsnorm_fwd(&self, x: &Vec<T>, weight: &Vec<T>, y: &mut Vec<T>, inv_rms: &mut Vec<T>, shape: RowsShape, eps: f32) {
        let _timing = self.timer.time("rmsnorm_fwd", 0.0);
        rmsnorm::rmsnorm_fwd(self.threads, x, weight, y, inv_rms, shape, eps);
    }

    fn rmsnorm_bwd(
        &self,
        x: &Vec<T>,
        weight: &Vec<T>,
        inv_rms: &Vec<T>,
        dy: &Vec<T>,
        dx: &mut Vec<T>,
        dweight: &mut Vec<T>,
        shape: RowsShape,
    ) {
        let _timing = self.timer.time("rmsnorm_bwd", 0.0);
        rmsnorm::rmsnorm_bwd(self.threads, x, weight, inv_rms, dy, dx, dweight, shape);
    }

    fn rope_fwd(&self, x: &mut Vec<T>, positions: &Vec<u32>, shape: RopeShape, theta: f32) {
        let _timing = self.timer.time("rope_fwd", 0.0);
        rope::rope_rotate(self.threads, x, positions, shape, theta, 1.0);
    }

    fn rope_bwd(&self, dx: &mut Vec<T>, positions: &Vec<u32>, shape: RopeShape, theta: f32) {
        let _timing = self.timer.time("rope_bwd", 0.0);
        rope::rope_rotate(self.threads, dx, positions, shape, theta, -1.0);
    }

    fn attention_fwd(
        &self,
        q: &Vec<T>,
        k: &Vec<T>,
        v: &Vec<T>,
        doc_ids: &Vec<u32>,
        out: &mut Vec<T>,
        lse: &mut Vec<T>,
        shape: AttentionShape,
    ) {
        let _timing = self.timer.time("attention_fwd", 0.0);
        attention::attention_fwd(self.threads, q, k, v, doc_ids, out, lse, shape);
    }

    fn attention_bwd(
        &self,
        q: &Vec<T>,
        k: &Vec<T>,
        v: &Vec<T>,
        doc_ids: &Vec<u32>,
        out: &Vec<T>,
        lse: &Vec<T>,
        dout: &Vec<T>,
        dq: &mut Vec<T>,
        dk: &mut Vec<T>,
        dv: &mut Vec<T>,
        shape: AttentionShape,
    ) {
        let _timing = self.timer.time("attention_bwd", 0.0);
        attention::attention_bwd(self.threads, q, k, v, doc_ids, out, lse, dout, dq, dk, dv, shape);
    }

    fn swiglu_fwd(&self, gate: &Vec<T>, up: &Vec<T>, h: &mut Vec<T>, len: usize) {
        let _timing = self.timer.time("swiglu_fwd", 0.0);
        assert_eq!(h.len(), len, "swiglu: length");
        swiglu::swiglu_fwd(self.threads, gate, up, h);
    }

    fn swiglu_bwd(&self, gate: &Vec<T>, up: &Vec<T>, dh: &Vec<T>, dgate: &mut Vec<T>, dup: &mut Vec<T>, len: usize) {
        let _timing = self.timer.time("swiglu_bwd", 0.0);
        assert_eq!(dh.len(), len, "swiglu: length");
        swiglu::swiglu_bwd(self.threads, gate, up, dh, dgate, dup);
    }

    fn embedding_fwd(&self, table: &Vec<T>, tokens: &Vec<u32>, out: &mut Vec<T>, shape: EmbeddingShape) {
        let _timing = self.timer.time("embedding_fwd", 0.0);
        embedding::embedding_fwd(self.threads, table, tokens, out, shape);
    }

    fn embedding_bwd(&self, dout: &Vec<T>, tokens: &Vec<u32>, dtable: &mut Vec<T>, shape: EmbeddingShape) {
        let _timing = self.timer.time("embedding_bwd", 0.0);
        embedding::embedding_bwd(dout, tokens, dtable, shape);
    }

    fn cross_entropy(
        &self,
        logits: &mut Vec<T>,
        targets: &Vec<u32>,
        weights: &Vec<T>,
        losses: &mut Vec<T>,
        shape: CrossEntropyShape,
        z_loss: f32,
        grad_scale: f32,
    ) {
        let _timing = self.timer.time("cross_entropy", 0.0);
        cross_entropy::cross_entropy(self.threads, logits, targets, weights, losses, shape, z_loss, grad_scale);
    }

    fn start_op_profile(&self) -> Result<(), String> {
        self.timer.start();
        Ok(())
    }

    fn finish_op_profile(&self) -> Result<OpProfile, String> {
        Ok(self.timer.finish())
    }
}
