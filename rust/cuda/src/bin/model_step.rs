//! End-to-end training-step benchmark on one device: the real model on [`CudaOps`] with
//! [`DeviceAdamW`] (clipping on), one packed micro-batch of random tokens in documents of random
//! lengths, as `train --benchmark` would run it (docs/gpu.md, section 4). Prints a markdown table:
//! tokens/s, tokens per step, median step time, achieved TFLOP/s, MFU against the device's dense
//! bf16 peak (FLOPs per token from `kormo_cuda::benchmark`), device memory, and the allocation
//! count before and after the timed steps (equal when the step allocates nothing). Then, as in
//! `train --benchmark`, a per-op breakdown of two more forward+backward passes run with the op
//! profiler on (CUDA events around each op; `kormo_model::profile`), apart from the timed steps.
//!
//! Options: `model_step --help` (two untimed warm-up steps come first). Without a device it
//! prints "skipped: no CUDA device" and exits 0. Host-side initialisation of proxy-1b takes ~30 s.

use std::error::Error;
use std::time::Instant;

use kormo_cuda::benchmark::{matmul_params, mfu, peak_bf16_flops, training_flops_per_token};
use kormo_cuda::optim::DeviceAdamW;
use kormo_cuda::random::SplitMix64;
use kormo_cuda::{CudaError, CudaOps};
use kormo_model::{Batch, Model, ModelConfig, Ops};
use kormo_optim::AdamWConfig;

/// Times full training steps (forward, backward, AdamW) of a kormo model on GPU 0 and prints
/// tokens/s, TFLOP/s, MFU, memory and a per-op breakdown as markdown.
#[derive(clap::Parser)]
#[command(name = "model_step", disable_version_flag = true, after_help = "\
Example:
  model_step --model proxy-1b --seq 4096 --batch 2 --steps 10")]
struct Options {
    /// Model preset: proxy-1b | kormo-10.8b
    #[arg(long, value_name = "NAME", default_value = "proxy-1b")]
    model: String,
    /// Tokens per sequence
    #[arg(long, value_name = "N", default_value_t = 4096, value_parser = positive())]
    seq: usize,
    /// Sequences per micro-batch
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = positive())]
    batch: usize,
    /// Timed steps
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = positive())]
    steps: usize,
    /// Run CudaOps in deterministic mode (no order-dependent float accumulation; docs/kernels.md),
    /// to measure its cost against a run without
    #[arg(long)]
    deterministic: bool,
    /// Print the FLOP accounting of --model at --seq as one JSON line (`flops_per_token` from
    /// kormo_cuda::benchmark, `params`, `matmul_params`) and exit, without a device: how the
    /// PyTorch reference (bench/torch_model_reference.py --flops-per-token) uses kormo's formula
    #[arg(long)]
    flops_per_token: bool,
}

fn positive() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

/// Random tokens packed into documents of 1..=2048 tokens (ids non-decreasing within each row,
/// positions restarting per document), every token trained.
fn packed_batch(config: &ModelConfig, batch_size: usize, seq_len: usize) -> Batch {
    let mut rng = SplitMix64::new(1);
    let n = batch_size * seq_len;
    let (mut doc_ids, mut positions) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut doc, mut left) = (0u32, 0u64);
    for t in 0..n {
        if left == 0 || t % seq_len == 0 {
            doc += 1;
            left = 1 + rng.below(2048);
        }
        positions.push(if doc_ids.last() == Some(&doc) { positions.last().map_or(0, |p| p + 1) } else { 0 });
        doc_ids.push(doc);
        left -= 1;
    }
    let vocab = config.vocab as u64;
    Batch {
        tokens: (0..n).map(|_| rng.below(vocab) as u32).collect(),
        targets: (0..n).map(|_| rng.below(vocab) as u32).collect(),
        loss_weights: vec![1.0; n],
        doc_ids,
        positions,
        batch_size,
        seq_len,
    }
}

fn run(o: &Options) -> Result<(), Box<dyn Error>> {
    let config = ModelConfig::preset(&o.model).ok_or_else(|| format!("--model {}: unknown preset", o.model))?;
    if o.flops_per_token {
        println!(
            "{{\"model\": \"{}\", \"seq\": {}, \"flops_per_token\": {}, \"params\": {}, \"matmul_params\": {}}}",
            o.model,
            o.seq,
            training_flops_per_token(&config, o.seq),
            config.param_count(),
            matmul_params(&config)
        );
        return Ok(());
    }
    let (ops, device) = kormo_cuda::CudaOps::for_model(&config, 0)?;
    ops.set_deterministic(o.deterministic);
    let setup = Instant::now();
    let mut model = Model::new(config.clone(), ops.clone(), 0)?;
    let specs = model.param_specs().to_vec();
    let infos = kormo_cuda::optim::param_infos(&specs);
    // Masters start from the model's (bf16) parameters: exact enough for timing.
    let masters: Vec<Vec<f32>> = specs
        .iter()
        .map(|s| {
            let mut v = vec![0.0; s.numel()];
            model.read_param(&s.name, &mut v).map(|()| v)
        })
        .collect::<Result<_, _>>()?;
    let master_slices: Vec<&[f32]> = masters.iter().map(|v| v.as_slice()).collect();
    let mut adamw = DeviceAdamW::new(&ops, AdamWConfig::default(), infos, &master_slices)?;
    drop(masters);
    let batch = packed_batch(&config, o.batch, o.seq);
    let grad_scale = 1.0 / batch.loss_weight_sum() as f32;
    let setup_s = setup.elapsed().as_secs_f64();

    let mut step = |model: &mut Model<_>| -> Result<f64, Box<dyn Error>> {
        model.zero_grads();
        let loss = model.forward_backward(&batch, grad_scale)?;
        let (params, grads) = model.params_and_grads_mut();
        adamw.clip_grad_norm(&ops, grads, Some(1.0))?;
        adamw.apply(&ops, params, grads, 1e-4)?;
        Ok(loss.mean())
    };
    for _ in 0..2 {
        step(&mut model)?;
    }
    ops.synchronize()?;
    let allocations_before = ops.memory().allocations;
    let mut times = Vec::with_capacity(o.steps);
    let mut last_loss = 0.0;
    for _ in 0..o.steps {
        let start = Instant::now();
        last_loss = step(&mut model)?;
        ops.synchronize()?;
        times.push(start.elapsed().as_secs_f64());
    }
    let allocations_after = ops.memory().allocations;
    let breakdown = profile_ops(&mut model, &ops, &batch, grad_scale)?;
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let tokens = (o.batch * o.seq) as f64;
    let flops_per_token = training_flops_per_token(&config, o.seq);
    let tokens_per_s = tokens / median;
    let memory = ops.memory();
    println!("device: {} ({} GiB)", device.name, device.total_memory_bytes >> 30);
    let mode = if o.deterministic { ", deterministic mode" } else { "" };
    println!("model {} ({} parameters), batch {} x seq {}{mode}, setup {setup_s:.1} s, last loss {last_loss:.4}\n", o.model, config.param_count(), o.batch, o.seq);
    println!("| tokens/s | tokens/step | median step (ms) | TFLOP/s | MFU | peak MiB (kormo) | used MiB (device) | allocations (before, after) |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    let mfu_text = peak_bf16_flops(&device.name).map_or("n/a (unknown peak)".to_string(), |peak| {
        format!("{:.1}%", 100.0 * mfu(tokens_per_s, flops_per_token, peak))
    });
    println!(
        "| {tokens_per_s:.0} | {tokens} | {:.1} | {:.1} | {mfu_text} | {} | {} | {allocations_before}, {} |",
        median * 1e3,
        tokens_per_s * flops_per_token / 1e12,
        memory.peak_bytes >> 20,
        ops.device_memory_used()? >> 20,
        allocations_after
    );
    match breakdown {
        Ok(breakdown) => println!("\n```text\n{}\n```", breakdown.render()),
        Err(why) => println!("\nper-op breakdown: n/a ({why})"),
    }
    Ok(())
}

/// Forward+backward passes with the op profiler on, as `train --benchmark` runs them (each from
/// `zero_grads` to the synchronize). The outer error is a failed step, the inner one why there
/// is no breakdown.
fn profile_ops(
    model: &mut Model<CudaOps>,
    ops: &CudaOps,
    batch: &Batch,
    grad_scale: f32,
) -> Result<Result<kormo_model::OpBreakdown, String>, Box<dyn Error>> {
    const MICRO_BATCHES: usize = 2;
    if let Err(why) = ops.start_op_profile() {
        return Ok(Err(why));
    }
    let mut wall_s = 0.0;
    for _ in 0..MICRO_BATCHES {
        let start = Instant::now();
        model.zero_grads();
        let pass = model.forward_backward(batch, grad_scale).map(|_| ());
        let synced = ops.synchronize();
        wall_s += start.elapsed().as_secs_f64();
        if let Err(e) = pass.map_err(Box::<dyn Error>::from).and(synced.map_err(Box::<dyn Error>::from)) {
            let _ = ops.finish_op_profile(); // switch the profiler off
            return Err(e);
        }
    }
    let timing = "CUDA events around each op's launches: device time";
    Ok(ops.finish_op_profile().map(|profile| profile.breakdown(wall_s, MICRO_BATCHES, timing)))
}

fn main() {
    let options = <Options as clap::Parser>::parse();
    match run(&options) {
        Ok(()) => {}
        Err(e) if matches!(e.downcast_ref::<CudaError>(), Some(CudaError::NoDevice(_))) => {
            println!("skipped: no CUDA device ({e})");
        }
        Err(e) => {
            eprintln!("model_step: {e}");
            std::process::exit(1);
        }
    }
}
