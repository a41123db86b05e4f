//! `train --benchmark`: the training throughput of a recipe's stage on the selected backend,
//! measured on synthetic tokens of the stage's shape (first phase: sequence length and
//! micro-batch), with the same model, optimizer and step calls as the training loop.
//!
//! A full optimizer step of a real recipe is `grad_accum` micro-batches (128 for proxy-1b's
//! pretraining: minutes per step), so the benchmark times the two parts separately, each after
//! a wait for the backend: one micro-batch's forward + backward, and one optimizer update
//! (clip + AdamW). A recipe step is then `grad_accum * forward_backward + update`, which gives
//! tokens/s, the achieved FLOP rate (`kormo_cuda::benchmark::training_flops_per_token`) and, on
//! a device of known peak, MFU against its dense bf16 rate. Medians over the timed iterations
//! resist one slow outlier. The result goes to stdout and to a JSON file.
//!
//! Then a per-op breakdown of the forward+backward: [`PROFILED_MICRO_BATCHES`] more
//! micro-batches run with the backend's op profiler on (`Ops::start_op_profile`, see
//! `kormo_model::profile`), after and apart from the timed iterations so the profiler's own cost
//! (a clock read or two CUDA event records per op) never touches the headline numbers. Per op
//! label (the `Ops` method name, GEMMs split into forward / input-gradient / weight-gradient) it
//! reports calls and time per micro-batch, the share of the profiled forward+backward wall time,
//! the achieved TFLOP/s of GEMMs (`2 m n k` per call), and the unaccounted remainder (wall time
//! minus the op times: launch gaps and host work). The CPU backend times each call with the
//! wall clock (its ops are synchronous); CUDA with a pair of events on its stream around each
//! call's launches, read after the synchronize (device time).

use crate::backend::{human_bytes, Cpu, MemoryEstimate, Selected, TrainBackend};
use crate::recipe::Recipe;
use crate::trainer::{adamw_config, check_memory, say, RunOptions, TrainError};
use kormo_dist::SingleRank;
use kormo_cuda::benchmark::{mfu, peak_bf16_flops, training_flops_per_token};
use kormo_cuda::random::SplitMix64;
use kormo_model::{Batch, Model, OpBreakdown};
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// What `--benchmark` runs.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchmarkOptions {
    /// Untimed iterations first (allocation, GEMM plans, caches).
    pub warmup: usize,
    /// Timed iterations.
    pub steps: usize,
    /// The JSON result file.
    pub out: PathBuf,
}

/// The JSON result (also returned to tests).
#[derive(Clone, Debug, Serialize)]
pub struct BenchmarkResult {
    pub recipe: String,
    pub stage: String,
    pub phase: String,
    pub backend: String,
    /// The `backend: ...` line (device, driver facts or the CPU's threads).
    pub backend_description: String,
    pub device: Option<String>,
    pub seq_len: usize,
    pub micro_batch: usize,
    pub grad_accum: usize,
    pub activation_checkpointing: bool,
    pub warmup: usize,
    pub steps: usize,
    /// Per timed iteration: one micro-batch's forward + backward, in seconds.
    pub forward_backward_s: Vec<f64>,
    /// Per timed iteration: one optimizer update (clip + AdamW), in seconds.
    pub optimizer_s: Vec<f64>,
    pub forward_backward_median_s: f64,
    pub optimizer_median_s: f64,
    /// `grad_accum * forward_backward_median_s + optimizer_median_s`.
    pub step_s: f64,
    pub tokens_per_step: u64,
    pub tokens_per_s: f64,
    pub flops_per_token: f64,
    pub flops_per_s: f64,
    /// Dense bf16 peak of the device, when known.
    pub peak_flops: Option<f64>,
    pub mfu: Option<f64>,
    pub memory_estimate: MemoryEstimate,
    /// Peak bytes of the backend's buffers, where it counts them (CUDA).
    pub measured_peak_bytes: Option<u64>,
    pub last_loss: f64,
    /// Per-op times of [`PROFILED_MICRO_BATCHES`] profiled forward+backward passes run after the
    /// timed iterations; None when the backend could not profile (`op_breakdown_error` says why).
    pub op_breakdown: Option<OpBreakdown>,
    pub op_breakdown_error: Option<String>,
    /// What the breakdown covers.
    pub note: String,
}

/// Micro-batches the per-op breakdown averages over (run after the timed iterations).
pub const PROFILED_MICRO_BATCHES: usize = 2;

/// Runs the benchmark of `opts.stage` on the backend `opts.backend` selects.
pub fn run(
    recipe: &Recipe,
    opts: &RunOptions,
    bench: &BenchmarkOptions,
    out: &mut dyn Write,
) -> Result<BenchmarkResult, TrainError> {
    let cpu = opts
        .threads
        .map(Cpu::with_threads)
        .unwrap_or_default();
    let threads = cpu.threads();
    let selected = crate::backend::select(opts.backend, &recipe.model, opts.world_size)?;
    let line = selected.describe(threads);
    say(out, &line);
    let result = match selected {
        Selected::Cpu { .. } => {
            let available = crate::trainer::available_host_memory();
            run_on(
                recipe, opts, bench, cpu, threads, None, available, line, out,
            )?
        }
        Selected::Cuda { ops, device } => {
            let available = Some(device.total_memory_bytes as u64);
            // The recipe's mode, so `--benchmark` times what training runs.
            ops.set_deterministic(recipe.file.stability.deterministic);
            run_on(
                recipe,
                opts,
                bench,
                ops,
                threads,
                Some(device.name),
                available,
                line,
                out,
            )?
        }
    };
    let json = serde_json::to_string_pretty(&result).expect("result serialises");
    if let Some(dir) = bench.out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| TrainError(format!("{}: {e}", dir.display())))?;
    }
    std::fs::write(&bench.out, json + "\n")
        .map_err(|e| TrainError(format!("{}: {e}", bench.out.display())))?;
    say(out, format!("wrote {}", bench.out.display()));
    Ok(result)
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

#[allow(clippy::too_many_arguments)]
fn run_on<O: TrainBackend>(
    recipe: &Recipe,
    opts: &RunOptions,
    bench: &BenchmarkOptions,
    ops: O,
    threads: usize,
    device: Option<String>,
    available: Option<u64>,
    backend_description: String,
    out: &mut dyn Write,
) -> Result<BenchmarkResult, TrainError> {
    let stage = recipe.stage(&opts.stage).ok_or_else(|| {
        TrainError(format!(
            "unknown stage `{}` (pretrain1, pretrain2, midtrain or sft)",
            opts.stage
        ))
    })?;
    let phase = stage.phases.first().ok_or_else(|| {
        TrainError(format!(
            "{}: stage {} has no phases",
            recipe.origin, opts.stage
        ))
    })?;
    let config = &recipe.model;
    let checkpointing = stage.activation_checkpointing;
    let micro_tokens = phase.seq_len * phase.micro_batch;
    let memory = MemoryEstimate::new::<O>(config, micro_tokens, checkpointing);
    say(
        out,
        format!(
            "benchmark: recipe `{}`, stage {}, phase {}: micro-batch {} x seq {} ({micro_tokens} tokens), grad accum {}, activation checkpointing {}; {} warm-up + {} timed iterations on synthetic tokens",
            recipe.file.name, opts.stage, phase.name, phase.micro_batch, phase.seq_len, phase.grad_accum,
            if checkpointing { "on" } else { "off" }, bench.warmup, bench.steps
        ),
    );
    say(
        out,
        format!(
            "memory (estimated peak on the {}): {}",
            O::MEMORY,
            memory.describe()
        ),
    );
    check_memory::<O>(&memory, available)?;

    let seed = opts.seed.unwrap_or(recipe.file.seed);
    let mut model = Model::new(config.clone(), ops, seed)?;
    model.set_activation_checkpointing(checkpointing);
    model.set_z_loss(recipe.file.stability.z_loss as f32);
    let grad_clip = recipe.file.optimizer.grad_clip;
    let mut engine = SingleRank::new(model, adamw_config(recipe), grad_clip, threads, None)?;
    let batch = synthetic_batch(config.vocab, phase.micro_batch, phase.seq_len, seed);
    let grad_scale = (1.0 / batch.loss_weight_sum()) as f32;
    let (lr, _) = recipe.phase_schedule(phase);

    let mut forward_backward_s = Vec::with_capacity(bench.steps);
    let mut optimizer_s = Vec::with_capacity(bench.steps);
    let mut last_loss = f64::NAN;
    for iteration in 0..bench.warmup + bench.steps {
        let start = Instant::now();
        let model = engine.model_mut();
        model.zero_grads();
        let loss = model.forward_backward(&batch, grad_scale)?;
        model.ops().synchronize()?;
        let backward_done = Instant::now();
        // As in the training loop: gradient norm and clipping, then the update.
        engine.optimizer_step(lr)?;
        engine.model().ops().synchronize()?;
        let (fb, opt) = (
            (backward_done - start).as_secs_f64(),
            backward_done.elapsed().as_secs_f64(),
        );
        last_loss = loss.mean();
        let timed = iteration >= bench.warmup;
        say(
            out,
            format!(
                "{} {}: forward+backward {:.1} ms, optimizer {:.1} ms, loss {last_loss:.4}",
                if timed { "step" } else { "warm-up" },
                if timed {
                    iteration - bench.warmup + 1
                } else {
                    iteration + 1
                },
                fb * 1e3,
                opt * 1e3
            ),
        );
        if timed {
            forward_backward_s.push(fb);
            optimizer_s.push(opt);
        }
    }
    let timing = if device.is_some() {
        "CUDA events around each op's launches: device time"
    } else {
        "wall clock around each op call"
    };
    let (op_breakdown, op_breakdown_error) =
        match profile_ops(engine.model_mut(), &batch, grad_scale, timing)? {
            Ok(breakdown) => (Some(breakdown), None),
            Err(why) => (None, Some(why)),
        };
    let (fb, opt) = (median(&forward_backward_s), median(&optimizer_s));
    let step_s = phase.grad_accum as f64 * fb + opt;
    let tokens_per_step = phase.tokens_per_step();
    let tokens_per_s = tokens_per_step as f64 / step_s;
    let flops_per_token = training_flops_per_token(config, phase.seq_len);
    let flops_per_s = tokens_per_s * flops_per_token;
    let peak_flops = device.as_deref().and_then(peak_bf16_flops);
    let mfu = peak_flops.map(|peak| mfu(tokens_per_s, flops_per_token, peak));
    let result = BenchmarkResult {
        recipe: recipe.file.name.clone(),
        stage: opts.stage.clone(),
        phase: phase.name.clone(),
        backend: if device.is_some() { "cuda" } else { "cpu" }.into(),
        backend_description,
        device,
        seq_len: phase.seq_len,
        micro_batch: phase.micro_batch,
        grad_accum: phase.grad_accum,
        activation_checkpointing: checkpointing,
        warmup: bench.warmup,
        steps: bench.steps,
        forward_backward_s,
        optimizer_s,
        forward_backward_median_s: fb,
        optimizer_median_s: opt,
        step_s,
        tokens_per_step,
        tokens_per_s,
        flops_per_token,
        flops_per_s,
        peak_flops,
        mfu,
        memory_estimate: memory,
        measured_peak_bytes: engine.model().ops().measured_peak_bytes(),
        last_loss,
        op_breakdown,
        op_breakdown_error,
        note: "forward_backward_s and optimizer_s are one micro-batch's forward+backward and one optimizer update (clip + AdamW), timed without the op profiler; op_breakdown comes from separate profiled micro-batches (forward+backward only)".into(),
    };
    print_result::<O>(&result, out);
    Ok(result)
}

/// The benchmark's summary lines: the step, its rate and MFU, measured memory, the per-op
/// breakdown.
fn print_result<O: TrainBackend>(r: &BenchmarkResult, out: &mut dyn Write) {
    say(
        out,
        format!(
            "result: {:.0} tokens/s: a recipe step ({} micro-batches + update) {:.2} s, forward+backward {:.1} ms per micro-batch, optimizer {:.1} ms; {:.2} TFLOP/s ({:.2} GFLOP per token)",
            r.tokens_per_s, r.grad_accum, r.step_s, r.forward_backward_median_s * 1e3, r.optimizer_median_s * 1e3, r.flops_per_s / 1e12, r.flops_per_token / 1e9
        ),
    );
    say(
        out,
        match (r.mfu, r.peak_flops, &r.device) {
            (Some(mfu), Some(peak), Some(name)) => format!(
                "MFU: {:.1}% of {name}'s dense bf16 peak {:.0} TFLOP/s",
                100.0 * mfu,
                peak / 1e12
            ),
            (_, _, Some(name)) => format!("MFU: n/a (no known bf16 peak for {name})"),
            _ => "MFU: n/a (CPU backend)".into(),
        },
    );
    if let Some(peak) = r.measured_peak_bytes {
        say(
            out,
            format!(
                "memory measured: peak {} of {} buffers (estimate {})",
                human_bytes(peak),
                O::MEMORY,
                human_bytes(r.memory_estimate.total())
            ),
        );
    }
    match (&r.op_breakdown, &r.op_breakdown_error) {
        (Some(breakdown), _) => say(out, breakdown.render()),
        (None, why) => say(
            out,
            format!(
                "per-op breakdown: n/a ({})",
                why.as_deref().unwrap_or("not measured")
            ),
        ),
    }
}

/// Runs [`PROFILED_MICRO_BATCHES`] forward+backward passes (each from `zero_grads` to the
/// backend's synchronize, as timed above) with the op profiler on. The outer error is a failed
/// step; the inner one why there is no breakdown (the profiler could not start or failed).
fn profile_ops<O: TrainBackend>(
    model: &mut Model<O>,
    batch: &Batch,
    grad_scale: f32,
    timing: &str,
) -> Result<Result<OpBreakdown, String>, TrainError> {
    if let Err(why) = model.ops().start_op_profile() {
        return Ok(Err(why));
    }
    let mut wall_s = 0.0;
    for _ in 0..PROFILED_MICRO_BATCHES {
        let start = Instant::now();
        model.zero_grads();
        let pass = model.forward_backward(batch, grad_scale);
        let synced = model.ops().synchronize();
        wall_s += start.elapsed().as_secs_f64();
        if let Err(e) = pass.map_err(TrainError::from).and(synced) {
            let _ = model.ops().finish_op_profile(); // switch the profiler off
            return Err(e);
        }
    }
    Ok(model
        .ops()
        .finish_op_profile()
        .map(|profile| profile.breakdown(wall_s, PROFILED_MICRO_BATCHES, timing)))
}

/// Random tokens of a `vocab`-token vocabulary, `rows` x `seq_len`, packed into documents of
/// 1..=seq_len/2 tokens (ids non-decreasing per row, positions restarting per document, as the
/// loader packs), every token trained.
fn synthetic_batch(vocab: usize, rows: usize, seq_len: usize, seed: u64) -> Batch {
    let mut rng = SplitMix64::new(seed);
    let n = rows * seq_len;
    let longest = (seq_len as u64 / 2).max(1);
    let (mut doc_ids, mut positions) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut doc, mut left, mut position) = (0u32, 0u64, 0u32);
    for t in 0..n {
        if left == 0 || t % seq_len == 0 {
            doc += 1;
            left = 1 + rng.below(longest);
            position = 0;
        }
        doc_ids.push(doc);
        positions.push(position);
        position += 1;
        left -= 1;
    }
    Batch {
        tokens: (0..n).map(|_| rng.below(vocab as u64) as u32).collect(),
        targets: (0..n).map(|_| rng.below(vocab as u64) as u32).collect(),
        loss_weights: vec![1.0; n],
        doc_ids,
        positions,
        batch_size: rows,
        seq_len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_batches_are_packed_like_the_loader() {
        let batch = synthetic_batch(100, 3, 64, 7);
        assert_eq!(batch.tokens.len(), 3 * 64);
        assert!(batch.tokens.iter().chain(&batch.targets).all(|&t| t < 100));
        assert!(batch.tokens.iter().any(|&t| t != batch.tokens[0]));
        for row in 0..3 {
            let ids = &batch.doc_ids[row * 64..(row + 1) * 64];
            let pos = &batch.positions[row * 64..(row + 1) * 64];
            assert_eq!(pos[0], 0, "each row starts a document");
            for t in 1..64 {
                assert!(ids[t] >= ids[t - 1]);
                let expected = if ids[t] == ids[t - 1] {
                    pos[t - 1] + 1
                } else {
                    0
                };
                assert_eq!(pos[t], expected);
            }
        }
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    }
}
