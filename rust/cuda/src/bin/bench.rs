//! Microbenchmarks of every kernel at KORMo-10.8B sizes (hidden 4096, 32 query / 8 kv heads of
//! 128, FFN 16384, vocab 125,184), and attention over a shape matrix (`attention_shapes`: seq 4K,
//! 8K and 32K at 32,768 tokens per launch; heads 32/8 and 12/3 at head dim 128 and 64; causal and
//! documents of 2048 and 512 tokens) that bench/torch_reference.py times with the same shape text.
//!
//! Each row prints the mean time over timed iterations (after one warm-up), and either the
//! bandwidth over the IDEAL traffic (each input read once, each output written once) as a
//! fraction of the device-to-device copy bandwidth measured at the start of the same run, or,
//! for attention, useful TFLOP/s (masked-out work not counted) as a fraction of the dense bf16
//! peak. Output is a markdown table (tools/gpu_check.sh pastes it into the report).
//!
//! The GEMM rows time kormo's cuBLASLt calls (rust/cuda/src/gemm.rs, what `CudaOps::matmul`
//! runs) for every linear layer of one KORMo-10.8B decoder layer and the LM head at one
//! micro-batch (2 x 4096 tokens): forward, input gradient and f32-accumulated weight gradient.
//! Their sum per layer is the measured matmul efficiency that docs/scaling.md's cost model uses.
//!
//! Options: `bench --help`.

use std::cell::Cell;
use std::error::Error;
use std::num::NonZeroUsize;
use std::sync::Arc;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DeviceRepr};
use kormo_cuda::bindings::*;
use kormo_cuda::random::SplitMix64;
use kormo_cuda::gemm::Gemm;
use kormo_cuda::{bf16, kernel_launch, CudaError, Dtype, Kernels};
use kormo_model::{EmbeddingShape, MatmulShape};

const HIDDEN: usize = 4096;
const HEADS_Q: usize = 32;
const HEADS_KV: usize = 8;
const HEAD_DIM: usize = 128;
const FFN: usize = 16384;
const VOCAB: usize = 125_184;
/// Tokens per micro-batch for the token-parallel kernels.
const TOKENS: usize = 8192;
/// Dense bf16 tensor-core peak of the H100/H200 SXM (the anchor table's number).
const PEAK_BF16_FLOPS: f64 = 989e12;

struct Bench {
    k: Kernels,
    st: Arc<CudaStream>,
    iters: usize,
    copy_bytes_per_s: f64,
    /// Rows that printed `failed` instead of a time (the run then exits 1).
    failures: Cell<usize>,
}

impl Bench {
    fn time_us(&self, mut f: impl FnMut() -> Result<(), CudaError>) -> Result<f64, Box<dyn Error>> {
        f()?;
        self.st.synchronize()?;
        let start = self.st.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        for _ in 0..self.iters {
            f()?;
        }
        let end = self.st.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        end.synchronize()?;
        Ok(start.elapsed_ms(&end)? as f64 * 1e3 / self.iters as f64)
    }

    /// Times `f` and prints its row: bandwidth over `bytes` of ideal traffic.
    fn timed_row_bytes(&self, kernel: &str, shape: &str, bytes: f64, f: impl FnMut() -> Result<(), CudaError>) -> Result<(), Box<dyn Error>> {
        let us = self.time_us(f)?;
        self.row_bytes(kernel, shape, us, bytes);
        Ok(())
    }

    /// Times `f` and prints its row (throughput of `flops` useful operations), or a `failed` row
    /// (counted in `failures`) when a launch fails, so one shape's error does not hide the others.
    fn attention_row(&self, kernel: &str, shape: &str, flops: f64, f: impl FnMut() -> Result<(), CudaError>) {
        match self.time_us(f) {
            Ok(us) => self.row_flops(kernel, shape, us, flops),
            Err(e) => {
                self.failures.set(self.failures.get() + 1);
                println!("| {kernel} | {shape} | failed: {} | | | | |", e.to_string().replace('\n', " "));
            }
        }
    }

    fn row_bytes(&self, kernel: &str, shape: &str, us: f64, bytes: f64) {
        let rate = bytes / (us * 1e-6);
        println!(
            "| {kernel} | {shape} | {us:.1} | {:.0} GB/s | {:.0}% of copy | | |",
            rate / 1e9,
            100.0 * rate / self.copy_bytes_per_s
        );
    }

    fn row_flops(&self, kernel: &str, shape: &str, us: f64, flops: f64) {
        let rate = flops / (us * 1e-6);
        println!("| {kernel} | {shape} | {us:.1} | | | {:.1} TFLOP/s | {:.1}% of peak |", rate / 1e12, 100.0 * rate / PEAK_BF16_FLOPS);
    }

    fn ptr<T>(&self, s: &CudaSlice<T>) -> u64 {
        let (p, _sync) = s.device_ptr(&self.st);
        p
    }

    fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>, Box<dyn Error>> {
        Ok(self.st.clone_htod(host)?)
    }

    /// `len` bf16 values: a random block of 1M repeated (host generation stays cheap).
    fn bf16_buf(&self, len: usize, scale: f32) -> Result<CudaSlice<u16>, Box<dyn Error>> {
        let block = bf16::vec_from_f32(&SplitMix64::new(len as u64).vec(len.min(1 << 20), scale));
        let host: Vec<u16> = block.iter().copied().cycle().take(len).collect();
        self.upload(&host)
    }

    fn f32_buf(&self, len: usize, scale: f32) -> Result<CudaSlice<f32>, Box<dyn Error>> {
        let block = SplitMix64::new(len as u64 + 1).vec(len.min(1 << 20), scale);
        let host: Vec<f32> = block.iter().copied().cycle().take(len).collect();
        self.upload(&host)
    }
}

/// Microbenchmarks of every kormo kernel and cuBLASLt GEMM at KORMo-10.8B sizes, and of attention
/// over a shape matrix (seq 4K/8K/32K, heads 32/8 and 12/3, head dim 128 and 64, causal and
/// documents of 2048 and 512), on GPU 0; prints a markdown table (mean time, bandwidth or
/// TFLOP/s against the device's copy bandwidth or bf16 peak). Without a device it prints
/// "skipped: no CUDA device" and exits 0.
#[derive(clap::Parser)]
#[command(name = "bench", disable_version_flag = true, after_help = "\
Examples:
  bench --quick > kernels.md
  bench --quick --attention-only   (24 attention shapes, seq 32K left out; both kernel paths on an H100)
  bench --only 'b4 s8192 h32/8 d128 docs of 2048' --iters 1   (one shape, e.g. under ncu)")]
struct Cli {
    /// 5 timed iterations instead of 20, seq 32K attention shapes skipped
    #[arg(long)]
    quick: bool,
    /// Only the attention rows (forward, backward, deterministic backward at every attention
    /// shape, for the sm90 and the sm80 kernels on compute capability 9.0) after the
    /// copy-bandwidth row
    #[arg(long)]
    attention_only: bool,
    /// Only the attention shapes whose label (e.g. `b4 s8192 h32/8 d128 docs of 2048`) contains
    /// SUBSTRING, and no non-attention rows (implies --attention-only)
    #[arg(long, value_name = "SUBSTRING")]
    only: Option<String>,
    /// Timed iterations per row (after the one warm-up call), instead of 20 (5 with --quick)
    #[arg(long, value_name = "N")]
    iters: Option<NonZeroUsize>,
}

/// The attention shapes to run: `attention_shapes(quick)`, narrowed to the labels containing
/// `only` when given; an error names the filter when no shape is left.
fn selected_shapes(quick: bool, only: Option<&str>) -> Result<Vec<AttnShape>, String> {
    let shapes: Vec<AttnShape> = attention_shapes(quick).into_iter().filter(|s| only.is_none_or(|o| s.label().contains(o))).collect();
    match only {
        Some(o) if shapes.is_empty() => Err(format!(
            "--only {o:?}: no attention shape label contains it (labels look like `b4 s8192 h32/8 d128 docs of 2048`{})",
            if quick { "; --quick leaves out s32768" } else { "" }
        )),
        _ => Ok(shapes),
    }
}

fn main() {
    let cli = <Cli as clap::Parser>::parse();
    let shapes = selected_shapes(cli.quick, cli.only.as_deref()).unwrap_or_else(|e| {
        eprintln!("bench: {e}");
        std::process::exit(2);
    });
    let k = match Kernels::new(0) {
        Ok(k) => k,
        Err(CudaError::NoDevice(why)) => {
            println!("skipped: no CUDA device ({why})");
            return;
        }
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = run(k, &cli, &shapes) {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
}

fn run(k: Kernels, cli: &Cli, shapes: &[AttnShape]) -> Result<(), Box<dyn Error>> {
    let st = k.stream().clone();
    let name = k.context().name()?;
    let iters = cli.iters.map_or(if cli.quick { 5 } else { 20 }, NonZeroUsize::get);
    let mut b = Bench { k, st, iters, copy_bytes_per_s: 0.0, failures: Cell::new(0) };

    // Reference bandwidth: device-to-device copy of 1 GiB, counting bytes read + written.
    let copy_len = 1usize << 30;
    let src = b.st.alloc_zeros::<u8>(copy_len)?;
    let mut dst = b.st.alloc_zeros::<u8>(copy_len)?;
    let st = b.st.clone();
    let copy_us = b.time_us(|| st.memcpy_dtod(&src, &mut dst).map_err(CudaError::from))?;
    b.copy_bytes_per_s = 2.0 * copy_len as f64 / (copy_us * 1e-6);
    drop((src, dst));

    println!("device: {name}");
    println!("copy bandwidth (cuMemcpyDtoD 1 GiB, read+write): {:.0} GB/s", b.copy_bytes_per_s / 1e9);
    println!("dense bf16 peak assumed: {:.0} TFLOP/s\n", PEAK_BF16_FLOPS / 1e12);
    println!("| kernel | shape | time (us) | bandwidth | vs copy | compute | vs peak |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    b.row_bytes("memcpy DtoD", "1 GiB", copy_us, 2.0 * copy_len as f64);

    if !cli.attention_only && cli.only.is_none() {
        bench_rmsnorm(&b)?;
        bench_swiglu(&b)?;
        bench_rope(&b)?;
        bench_embedding(&b)?;
        bench_cross_entropy(&b)?;
        bench_adamw(&b)?;
        bench_gemm(&b)?;
    }
    bench_attention(&b, shapes)?;
    match b.failures.get() {
        0 => Ok(()),
        n => Err(format!("{n} attention rows failed (their rows say why)").into()),
    }
}

fn bench_rmsnorm(b: &Bench) -> Result<(), Box<dyn Error>> {
    let n = TOKENS * HIDDEN;
    let (x, res, w) = (b.bf16_buf(n, 1.0)?, b.bf16_buf(n, 1.0)?, b.bf16_buf(HIDDEN, 1.0)?);
    let (h, y, rstd) = (b.bf16_buf(n, 1.0)?, b.bf16_buf(n, 1.0)?, b.f32_buf(TOKENS, 1.0)?);
    let a = KormoRmsNormFwdArgs {
        x: b.ptr(&x),
        residual: b.ptr(&res),
        residual_out: b.ptr(&h),
        weight: b.ptr(&w),
        y: b.ptr(&y),
        rstd: b.ptr(&rstd),
        rows: TOKENS as i64,
        hidden: HIDDEN as i64,
        x_row_stride: HIDDEN as i64,
        residual_row_stride: HIDDEN as i64,
        y_row_stride: HIDDEN as i64,
        eps: 1e-5,
        _pad0: 0,
    };
    let shape = format!("{TOKENS} x {HIDDEN}, fused residual");
    b.timed_row_bytes("rmsnorm fwd", &shape, (4 * n * 2) as f64, || unsafe { kernel_launch::rmsnorm_fwd(&b.k, &a) })?;

    let partial_rows = kernel_launch::RMSNORM_BWD_MAX_PARTIAL_ROWS;
    let (dh, partial, dw) = (b.bf16_buf(n, 1.0)?, b.f32_buf(partial_rows as usize * HIDDEN, 1.0)?, b.f32_buf(HIDDEN, 1.0)?);
    let bw = KormoRmsNormBwdArgs {
        h: a.residual_out,
        dy: a.y,
        dresidual: a.x,
        weight: a.weight,
        rstd: a.rstd,
        dh: b.ptr(&dh),
        dweight_partial: b.ptr(&partial),
        rows: a.rows,
        hidden: a.hidden,
        h_row_stride: HIDDEN as i64,
        dy_row_stride: HIDDEN as i64,
        dh_row_stride: HIDDEN as i64,
        partial_rows,
    };
    let r = kernel_launch::rmsnorm_dweight_reduce_args(&bw, b.ptr(&dw));
    b.timed_row_bytes("rmsnorm bwd (+dweight reduce)", &shape, (4 * n * 2) as f64, || unsafe { kernel_launch::rmsnorm_bwd(&b.k, &bw, &r) })?;
    Ok(())
}

fn bench_swiglu(b: &Bench) -> Result<(), Box<dyn Error>> {
    let n = TOKENS * FFN;
    let (gate, up, out, dg, du) = (b.bf16_buf(n, 3.0)?, b.bf16_buf(n, 1.0)?, b.bf16_buf(n, 1.0)?, b.bf16_buf(n, 1.0)?, b.bf16_buf(n, 1.0)?);
    let a = KormoSwigluArgs {
        gate: b.ptr(&gate),
        up: b.ptr(&up),
        out: b.ptr(&out),
        dgate: b.ptr(&dg),
        dup: b.ptr(&du),
        rows: TOKENS as i64,
        cols: FFN as i64,
        in_row_stride: FFN as i64,
        out_row_stride: FFN as i64,
    };
    let shape = format!("{TOKENS} x {FFN}");
    b.timed_row_bytes("swiglu fwd", &shape, (3 * n * 2) as f64, || unsafe { kernel_launch::swiglu_fwd(&b.k, &a) })?;
    // The backward reads `out` as dout.
    b.timed_row_bytes("swiglu bwd", &shape, (5 * n * 2) as f64, || unsafe { kernel_launch::swiglu_bwd(&b.k, &a) })?;
    Ok(())
}

fn bench_rope(b: &Bench) -> Result<(), Box<dyn Error>> {
    let n = TOKENS * HEADS_Q * HEAD_DIM;
    let x = b.bf16_buf(n, 1.0)?;
    let positions: Vec<u32> = (0..TOKENS as u32).map(|t| t % 4096).collect();
    let pos = b.upload(&positions)?;
    let a = KormoRopeArgs {
        x: b.ptr(&x),
        y: b.ptr(&x),
        positions: b.ptr(&pos),
        tokens: TOKENS as i64,
        heads: HEADS_Q as i64,
        head_dim: HEAD_DIM as i64,
        token_stride: (HEADS_Q * HEAD_DIM) as i64,
        head_stride: HEAD_DIM as i64,
        theta: 500000.0,
        _pad0: 0,
    };
    b.timed_row_bytes("rope fwd (in place, q)", &format!("{TOKENS} x {HEADS_Q} x {HEAD_DIM}"), (2 * n * 2) as f64, || unsafe { kernel_launch::rope_fwd(&b.k, &a) })?;
    Ok(())
}

fn bench_embedding(b: &Bench) -> Result<(), Box<dyn Error>> {
    let mut rng = SplitMix64::new(3);
    let tokens: Vec<u32> = (0..TOKENS).map(|_| rng.below(VOCAB as u64) as u32).collect();
    let (tok, table, out) = (b.upload(&tokens)?, b.bf16_buf(VOCAB * HIDDEN, 1.0)?, b.bf16_buf(TOKENS * HIDDEN, 1.0)?);
    let dtable = b.st.alloc_zeros::<f32>(VOCAB * HIDDEN)?;
    let mut a = kernel_launch::embedding_args(b.ptr(&tok), b.ptr(&table), b.ptr(&out), EmbeddingShape { tokens: TOKENS, vocab: VOCAB, dim: HIDDEN });
    let shape = format!("{TOKENS} tokens x {HIDDEN}");
    b.timed_row_bytes("embedding fwd", &shape, (2 * TOKENS * HIDDEN * 2) as f64, || unsafe { kernel_launch::embedding_fwd(&b.k, &a) })?;
    a.table = b.ptr(&dtable);
    // dout read (bf16) + f32 read-modify-write of the touched rows.
    let bwd_bytes = (TOKENS * HIDDEN * (2 + 8)) as f64;
    b.timed_row_bytes("embedding bwd (f32 atomics)", &shape, bwd_bytes, || unsafe { kernel_launch::embedding_bwd(&b.k, &a) })?;
    // The deterministic mode's owner-computes backward (no atomics), same tokens; then both on a
    // skewed batch (a quarter of the tokens one id: the owner path's worst case, a hot row summed
    // by one block).
    b.timed_row_bytes("embedding bwd deterministic (owned rows)", &shape, bwd_bytes, || unsafe { kernel_launch::embedding_bwd_deterministic(&b.k, &a) })?;
    let skewed: Vec<u32> = tokens.iter().enumerate().map(|(i, &t)| if i % 4 == 0 { 13 } else { t }).collect();
    let skewed_tok = b.upload(&skewed)?;
    a.tokens = b.ptr(&skewed_tok);
    let shape = format!("{TOKENS} tokens x {HIDDEN}, 1/4 one id");
    b.timed_row_bytes("embedding bwd (f32 atomics)", &shape, bwd_bytes, || unsafe { kernel_launch::embedding_bwd(&b.k, &a) })?;
    b.timed_row_bytes("embedding bwd deterministic (owned rows)", &shape, bwd_bytes, || unsafe { kernel_launch::embedding_bwd_deterministic(&b.k, &a) })?;
    Ok(())
}

fn bench_cross_entropy(b: &Bench) -> Result<(), Box<dyn Error>> {
    let n = TOKENS * VOCAB;
    let logits = b.bf16_buf(n, 4.0)?;
    let mut rng = SplitMix64::new(4);
    let targets: Vec<u32> = (0..TOKENS).map(|_| rng.below(VOCAB as u64) as u32).collect();
    let (t, w, gs) = (b.upload(&targets)?, b.upload(&vec![1.0f32; TOKENS])?, b.upload(&[1.0f32 / TOKENS as f32])?);
    let (loss, lse) = (b.f32_buf(TOKENS, 1.0)?, b.f32_buf(TOKENS, 1.0)?);
    let a = KormoCrossEntropyArgs {
        logits: b.ptr(&logits),
        targets: b.ptr(&t),
        loss_weights: b.ptr(&w),
        grad_scale: b.ptr(&gs),
        loss: b.ptr(&loss),
        lse: b.ptr(&lse),
        dlogits: b.ptr(&logits), // in place, as the trainer runs it
        rows: TOKENS as i64,
        vocab: VOCAB as i64,
        logits_row_stride: VOCAB as i64,
        dlogits_row_stride: VOCAB as i64,
        z_loss: 0.0,
        _pad0: 0,
    };
    b.timed_row_bytes("cross entropy + dlogits (in place)", &format!("{TOKENS} x {VOCAB}"), (2 * n * 2) as f64, || unsafe { kernel_launch::cross_entropy(&b.k, &a) })?;
    Ok(())
}

fn bench_adamw(b: &Bench) -> Result<(), Box<dyn Error>> {
    let n = 3 * HIDDEN * FFN; // one layer's MLP
    let (master, grad, m) = (b.f32_buf(n, 1.0)?, b.f32_buf(n, 1.0)?, b.f32_buf(n, 0.1)?);
    let v = b.upload(&vec![1e-4f32; n])?; // second moments must be non-negative
    let weight = b.bf16_buf(n, 1.0)?;
    let (lr, clip, sumsq) = (b.upload(&[1e-4f32])?, b.upload(&[1.0f32])?, b.upload(&[0.0f32])?);
    let a = KormoAdamwArgs {
        master: b.ptr(&master),
        grad: b.ptr(&grad),
        exp_avg: b.ptr(&m),
        exp_avg_sq: b.ptr(&v),
        weight: b.ptr(&weight),
        lr: b.ptr(&lr),
        clip_scale: b.ptr(&clip),
        n: n as i64,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        bias_correction1: 0.5,
        bias_correction2: 0.5,
        apply_weight_decay: 1,
        _pad0: 0,
    };
    let shape = format!("{n} params");
    // read master, grad, m, v; write master, m, v (f32) and the bf16 weight.
    b.timed_row_bytes("adamw step", &shape, (n * (16 + 12 + 2)) as f64, || unsafe { kernel_launch::adamw_step(&b.k, &a) })?;
    let s = KormoGradSumsqArgs { grad: a.grad, sumsq: b.ptr(&sumsq), n: n as i64 };
    b.timed_row_bytes("grad sum of squares", &shape, (n * 4) as f64, || unsafe { kernel_launch::grad_sumsq(&b.k, &s) })?;
    let partial = b.st.alloc_zeros::<f32>(kernel_launch::GRAD_SUMSQ_MAX_BLOCKS)?;
    b.timed_row_bytes("grad sum of squares deterministic (partials + reduce)", &shape, (n * 4) as f64, || unsafe {
        kernel_launch::grad_sumsq_deterministic(&b.k, &s, b.ptr(&partial))
    })?;
    Ok(())
}

/// Forward, input gradient and weight gradient of each linear layer of a KORMo-10.8B decoder
/// layer (q, k, v, o, gate, up, down) and of the LM head, at TOKENS rows.
fn bench_gemm(b: &Bench) -> Result<(), Box<dyn Error>> {
    let gemm = Gemm::new(b.st.clone())?;
    let kv = HEADS_KV * HEAD_DIM;
    let linears: [(&str, usize, usize); 8] = [
        ("q_proj", HIDDEN, HEADS_Q * HEAD_DIM),
        ("k_proj", HIDDEN, kv),
        ("v_proj", HIDDEN, kv),
        ("o_proj", HEADS_Q * HEAD_DIM, HIDDEN),
        ("gate_proj", HIDDEN, FFN),
        ("up_proj", HIDDEN, FFN),
        ("down_proj", FFN, HIDDEN),
        ("lm_head", HIDDEN, VOCAB),
    ];
    let widest = linears.iter().map(|&(_, i, o)| i.max(o)).max().unwrap_or(0);
    let (x, dy, dx) = (b.bf16_buf(TOKENS * widest, 1.0)?, b.bf16_buf(TOKENS * widest, 1.0)?, b.bf16_buf(TOKENS * widest, 1.0)?);
    let (w, dw) = (b.bf16_buf(HIDDEN * VOCAB, 0.02)?, b.f32_buf(HIDDEN * VOCAB, 0.0)?);
    let (mut layer_us, mut layer_flops) = (0.0, 0.0);
    for (name, in_dim, out_dim) in linears {
        let flops = 2.0 * (TOKENS * in_dim * out_dim) as f64;
        let calls = [
            ("fwd", MatmulShape::linear_fwd(TOKENS, in_dim, out_dim), b.ptr(&x), b.ptr(&w), b.ptr(&dy), Dtype::Bf16),
            ("bwd input", MatmulShape::linear_bwd_input(TOKENS, in_dim, out_dim, false), b.ptr(&dy), b.ptr(&w), b.ptr(&dx), Dtype::Bf16),
            ("bwd weight (f32 +=)", MatmulShape::linear_bwd_weight(TOKENS, in_dim, out_dim), b.ptr(&dy), b.ptr(&x), b.ptr(&dw), Dtype::F32),
        ];
        let mut total_us = 0.0;
        for (pass, shape, a_ptr, b_ptr, c_ptr, c_dtype) in calls {
            // SAFETY: every buffer holds at least the shape's elements (sized for the widest layer).
            let us = b.time_us(|| unsafe { gemm.matmul(shape, a_ptr, b_ptr, c_ptr, c_dtype) })?;
            b.row_flops(&format!("gemm {name} {pass}"), &format!("{TOKENS} x {in_dim} -> {out_dim}"), us, flops);
            total_us += us;
        }
        if name != "lm_head" {
            layer_us += total_us;
            layer_flops += 3.0 * flops;
        }
    }
    b.row_flops("gemm: one decoder layer's linears, fwd+bwd", &format!("{TOKENS} tokens, 7 linears x 3 GEMMs"), layer_us, layer_flops);
    Ok(())
}

/// Mask of an attention benchmark shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mask {
    /// Causal over the whole row.
    Causal,
    /// Packed documents of this many tokens (document id = position in the row / length; the
    /// last one shorter when the length does not divide the row), causal within each.
    Docs(usize),
}

/// One attention benchmark shape: q/o `[batch * seq, heads_q, head_dim]`, k/v with `heads_kv`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct AttnShape {
    batch: usize,
    seq: usize,
    heads_q: usize,
    heads_kv: usize,
    head_dim: usize,
    mask: Mask,
}

impl AttnShape {
    fn tokens(&self) -> usize {
        self.batch * self.seq
    }

    /// The rows' shape text, e.g. `b4 s8192 h32/8 d128 docs of 2048`. bench/torch_reference.py
    /// (shape_label) prints the same text for the same shape, so a report can join the tables.
    fn label(&self) -> String {
        let mask = match self.mask {
            Mask::Causal => "causal".to_string(),
            Mask::Docs(len) => format!("docs of {len}"),
        };
        format!("b{} s{} h{}/{} d{} {mask}", self.batch, self.seq, self.heads_q, self.heads_kv, self.head_dim)
    }
}

/// (batch, seq) of the attention shapes: 32,768 tokens per launch at every sequence length, so
/// the rows differ in the attention span, not in the number of tokens (or buffers) per launch.
const ATTENTION_BATCH_SEQ: [(usize, usize); 3] = [(8, 4096), (4, 8192), (1, 32768)];
/// (q heads, kv heads, head dim): KORMo-10.8B's 32/8 and proxy-1b's 12/3, each at 128 and 64.
const ATTENTION_HEADS: [(usize, usize, usize); 4] = [(32, 8, 128), (32, 8, 64), (12, 3, 128), (12, 3, 64)];
const ATTENTION_MASKS: [Mask; 3] = [Mask::Causal, Mask::Docs(2048), Mask::Docs(512)];

/// The attention shape matrix, in row order: sequence length, then heads, then mask; `quick`
/// drops seq 32K. bench/torch_reference.py (attention_shapes) lists the same shapes in the same order.
fn attention_shapes(quick: bool) -> Vec<AttnShape> {
    let mut shapes = Vec::new();
    for (batch, seq) in ATTENTION_BATCH_SEQ {
        if quick && seq > 8192 {
            continue;
        }
        for (heads_q, heads_kv, head_dim) in ATTENTION_HEADS {
            for mask in ATTENTION_MASKS {
                shapes.push(AttnShape { batch, seq, heads_q, heads_kv, head_dim, mask });
            }
        }
    }
    shapes
}

/// Visible (query, key) pairs in one row of `seq` tokens: L(L+1)/2 per document of L tokens
/// (causal within it), the partial last document counted exactly.
fn visible_pairs_per_row(seq: usize, mask: Mask) -> u64 {
    let len = match mask {
        Mask::Causal => seq,
        Mask::Docs(len) => len,
    }
    .max(1) as u64;
    let (seq, triangle) = (seq as u64, |n: u64| n * (n + 1) / 2);
    (seq / len) * triangle(len) + triangle(seq % len)
}

/// Useful FLOPs of one attention call, the one count every attention row uses: 4 * head_dim per
/// visible (query, key) pair forward (QK^T and PV, masked-out work not counted), 2.5x that for
/// the backward (either mode; the deterministic one's recomputed S and dP are not counted).
/// Must agree with attention_fwd_flops in bench/torch_reference.py.
fn attention_flops(s: &AttnShape, backward: bool) -> f64 {
    let fwd = 4.0 * s.head_dim as f64 * visible_pairs_per_row(s.seq, s.mask) as f64 * (s.batch * s.heads_q) as f64;
    if backward { 2.5 * fwd } else { fwd }
}

/// Attention operands, allocated once for the largest shape and shared by every shape's rows.
struct AttnBuffers {
    bf16: [CudaSlice<u16>; 8], // q, k, v, o, dout, dq, dk, dv
    lse: CudaSlice<f32>,
    delta: CudaSlice<f32>,
    dq_accum: CudaSlice<f32>,
}

impl AttnBuffers {
    fn new(b: &Bench, shapes: &[AttnShape]) -> Result<AttnBuffers, Box<dyn Error>> {
        let most = |f: fn(&AttnShape) -> usize| shapes.iter().map(f).max().unwrap_or(0);
        let qn = most(|s| s.tokens() * s.heads_q * s.head_dim);
        let kvn = most(|s| s.tokens() * s.heads_kv * s.head_dim);
        let rows = most(|s| s.tokens() * s.heads_q);
        let [q, o, dout, dq] = [(); 4].map(|_| b.bf16_buf(qn, 1.0));
        let [k, v, dk, dv] = [(); 4].map(|_| b.bf16_buf(kvn, 1.0));
        Ok(AttnBuffers {
            bf16: [q?, k?, v?, o?, dout?, dq?, dk?, dv?],
            lse: b.f32_buf(rows, 1.0)?,
            delta: b.f32_buf(rows, 1.0)?,
            dq_accum: b.f32_buf(qn, 1.0)?,
        })
    }
}

/// Forward, backward and deterministic backward at every attention shape of `shapes`
/// (selected_shapes).
fn bench_attention(b: &Bench, shapes: &[AttnShape]) -> Result<(), Box<dyn Error>> {
    let bufs = AttnBuffers::new(b, shapes)?;
    for s in shapes {
        bench_attention_shape(b, &bufs, s)?;
    }
    Ok(())
}

fn bench_attention_shape(b: &Bench, bufs: &AttnBuffers, s: &AttnShape) -> Result<(), Box<dyn Error>> {
    let doc = match s.mask {
        Mask::Causal => None,
        Mask::Docs(len) => Some(b.upload(&(0..s.tokens()).map(|i| ((i % s.seq) / len) as u32).collect::<Vec<u32>>())?),
    };
    let doc_ids = doc.as_ref().map_or(0, |d| b.ptr(d));
    let [q, k, v, o, dout, dq, dk, dv] = bufs.bf16.each_ref().map(|x| b.ptr(x));
    let layout = kernel_launch::AttentionLayout::contiguous(s.batch, s.seq, s.heads_q, s.heads_kv, s.head_dim);
    let f = layout.fwd_args([q, k, v], o, b.ptr(&bufs.lse), doc_ids);
    let shape = s.label();
    let buffers = kernel_launch::AttentionBwdBuffers { dout, delta: b.ptr(&bufs.delta), dq_accum: b.ptr(&bufs.dq_accum), dq, dk, dv };
    let bw = kernel_launch::attention_bwd_args(&f, buffers);
    let (fwd_flops, bwd_flops) = (attention_flops(s, false), attention_flops(s, true));
    // On compute capability 9.0 both paths (the launchers pick sm90 there; the wrapper reports
    // 8.0 to them), so the report compares the two in one run.
    let sm80 = kernel_launch::WithCapability(&b.k, (8, 0));
    for (path, on_sm90) in [("sm90", true), ("sm80", false)] {
        if on_sm90 && kernel_launch::AttentionPath::for_capability(b.k.compute_capability()) != kernel_launch::AttentionPath::Sm90 {
            continue;
        }
        macro_rules! rows {
            ($k:expr) => {{
                let k = $k;
                b.attention_row(&format!("attention fwd {path}"), &shape, fwd_flops, || unsafe { kernel_launch::attention_fwd(k, &f) });
                b.attention_row(&format!("attention bwd {path} (prepare+main+finish)"), &shape, bwd_flops, || unsafe {
                    kernel_launch::attention_bwd(k, &bw)
                });
                // The deterministic mode's backward (dK/dV pass + dQ pass, no atomics), at the same
                // useful FLOPs, so the rows' TFLOP/s compare directly.
                b.attention_row(&format!("attention bwd {path} deterministic (prepare+dkdv+dq)"), &shape, bwd_flops, || unsafe {
                    kernel_launch::attention_bwd_deterministic(k, &bw)
                });
            }};
        }
        if on_sm90 {
            rows!(&b.k)
        } else {
            rows!(&sm80)
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_pairs_count_every_document_exactly() {
        assert_eq!(visible_pairs_per_row(4, Mask::Causal), 10);
        assert_eq!(visible_pairs_per_row(4096, Mask::Docs(2048)), 2 * 2048 * 2049 / 2);
        assert_eq!(visible_pairs_per_row(4096, Mask::Docs(4096)), visible_pairs_per_row(4096, Mask::Causal));
        // 10 = 3 + 3 + 3 + 1: three documents of 3 (6 pairs each) and one of 1.
        assert_eq!(visible_pairs_per_row(10, Mask::Docs(3)), 3 * 6 + 1);
        assert_eq!(visible_pairs_per_row(5, Mask::Docs(8)), 15);
    }

    #[test]
    fn shape_matrix_and_labels() {
        let shapes = attention_shapes(false);
        assert_eq!(shapes.len(), 36);
        assert_eq!(attention_shapes(true).len(), 24);
        assert!(shapes.iter().all(|s| s.tokens() == 32768));
        assert_eq!(shapes[1].label(), "b8 s4096 h32/8 d128 docs of 2048");
        assert_eq!(shapes[35].label(), "b1 s32768 h12/3 d64 docs of 512");
        // bench/torch_reference.py's attention_fwd_flops gives the same for the first shape.
        assert_eq!(attention_flops(&shapes[0], false), 1_099_780_063_232.0);
        assert_eq!(attention_flops(&shapes[0], true), 2.5 * 1_099_780_063_232.0);
    }

    #[test]
    fn only_selects_shapes_by_label() {
        assert_eq!(selected_shapes(true, None).unwrap(), attention_shapes(true));
        let one = selected_shapes(true, Some("b4 s8192 h32/8 d128 docs of 2048")).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].label(), "b4 s8192 h32/8 d128 docs of 2048");
        // Every mask of one (batch, seq, heads, head dim), in row order.
        let masks: Vec<Mask> = selected_shapes(false, Some("b1 s32768 h12/3 d64 ")).unwrap().iter().map(|s| s.mask).collect();
        assert_eq!(masks, ATTENTION_MASKS);
        assert!(selected_shapes(true, Some("s32768")).unwrap_err().contains("--quick leaves out s32768"));
        assert!(selected_shapes(false, Some("no such shape")).is_err());
    }
}
