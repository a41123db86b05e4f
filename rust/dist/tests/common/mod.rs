//! Shared fixtures: a tiny model, deterministic global batches, a plain single-process trainer
//! (the reference every distributed run is compared with) and an in-process FSDP run.

#![allow(dead_code)] // each test binary uses a different subset

use std::sync::Arc;
use std::time::Duration;

use kormo_cpu::CpuOps;
use kormo_dist::{sampling, FsdpConfig, FsdpEngine, FsdpRank, LocalComm, ReduceDtype, Strategy};
use kormo_model::{Batch, Model, ModelConfig};
use kormo_optim::{AdamW, AdamWConfig};

pub const SEED: u64 = 11;
pub const GLOBAL_ROWS: usize = 12;
pub const SEQ: usize = 8;
pub const LR: f64 = 3e-3;
pub const CLIP: f64 = 1.0;
pub const TIMEOUT: Duration = Duration::from_secs(60);

pub fn config() -> ModelConfig {
    ModelConfig {
        hidden: 64,
        layers: 2,
        heads: 2,
        kv_heads: 1,
        head_dim: 32,
        ffn: 128,
        vocab: 96,
        ..ModelConfig::tiny()
    }
}

fn splitmix(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Global batch `step`: random tokens, two documents per row, the first token of each row and
/// a few others not trained on (so loss-weight sums differ between ranks).
pub fn global_batch(step: usize) -> Batch {
    let n = GLOBAL_ROWS * SEQ;
    let vocab = config().vocab as u64;
    let tokens: Vec<u32> = (0..n)
        .map(|i| (splitmix((step * n + i) as u64) % vocab) as u32)
        .collect();
    // A learnable rule (next token = 5 * token + 1 mod vocab) over inputs that change per step.
    let targets: Vec<u32> = tokens
        .iter()
        .map(|&t| ((t as u64 * 5 + 1) % vocab) as u32)
        .collect();
    let loss_weights = (0..n)
        .map(|i| {
            if i % SEQ == 0 || splitmix((step * n + i) as u64 + 77).is_multiple_of(5) {
                0.0
            } else {
                1.0
            }
        })
        .collect();
    let doc_ids = (0..n)
        .map(|i| u32::from(i % SEQ >= 3 + (i / SEQ) % 4))
        .collect();
    let positions = (0..n).map(|i| (i % SEQ) as u32).collect();
    Batch {
        tokens,
        targets,
        loss_weights,
        doc_ids,
        positions,
        batch_size: GLOBAL_ROWS,
        seq_len: SEQ,
    }
}

pub fn model() -> Model<CpuOps<f32>> {
    Model::new(config(), CpuOps::with_threads(1), SEED).unwrap()
}

/// Per-step mean losses and final parameters of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub losses: Vec<f64>,
    pub norms: Vec<f64>,
    pub params: Vec<Vec<f32>>,
}

/// Plain single-process training with the same step semantics: micro-batches of `micro_rows`
/// consecutive rows, gradient scale 1 / (global loss-weight sum), global-norm clipping, AdamW.
pub fn reference(steps: usize, micro_rows: usize) -> Run {
    let mut model = model();
    let infos = kormo_cuda::optim::param_infos(model.param_specs());
    let mut adamw = AdamW::new(AdamWConfig::default(), infos)
        .unwrap()
        .with_threads(1);
    let mut params: Vec<Vec<f32>> = model.params().to_vec();
    let (mut losses, mut norms) = (Vec::new(), Vec::new());
    for step in 0..steps {
        let global = global_batch(step);
        let micro = sampling::micro_batches(&global, micro_rows).unwrap();
        let weight: f64 = micro.iter().map(Batch::loss_weight_sum).sum();
        model.zero_grads();
        let mut loss = kormo_model::LossSum::default();
        for batch in &micro {
            loss = loss.add(
                model
                    .forward_backward(batch, (1.0 / weight) as f32)
                    .unwrap(),
            );
        }
        norms.push(kormo_optim::clip_grad_norm(model.grads_mut(), CLIP));
        adamw.step(&mut params, model.grads(), LR).unwrap();
        for (buf, p) in model.params_mut().iter_mut().zip(&params) {
            buf.copy_from_slice(p);
        }
        losses.push(loss.mean());
    }
    Run {
        losses,
        norms,
        params,
    }
}

pub fn fsdp_config(strategy: Strategy, hybrid_group_size: Option<usize>) -> FsdpConfig {
    FsdpConfig {
        strategy,
        hybrid_group_size,
        reduce_dtype: ReduceDtype::F32,
        grad_clip: CLIP,
    }
}

/// Builds this rank's FSDP state on `comm`.
pub fn fsdp_rank(comm: LocalComm, config: &FsdpConfig) -> FsdpRank<CpuOps<f32>> {
    FsdpRank::new(
        Arc::new(comm),
        model(),
        AdamWConfig::default(),
        config.clone(),
    )
    .unwrap()
}

/// Trains steps `first..first + steps` on this rank; returns (losses, norms).
pub fn train(
    rank: &mut FsdpRank<CpuOps<f32>>,
    first: usize,
    steps: usize,
    micro_rows: usize,
) -> (Vec<f64>, Vec<f64>) {
    let (world, me) = (rank.world().world_size(), rank.world().rank());
    let (mut losses, mut norms) = (Vec::new(), Vec::new());
    for step in first..first + steps {
        let mine = sampling::rank_rows(&global_batch(step), me, world).unwrap();
        let micro = sampling::micro_batches(&mine, micro_rows).unwrap();
        let outcome = rank.step(&micro, LR).unwrap();
        assert!(outcome.updated);
        losses.push(outcome.loss.mean());
        norms.push(outcome.grad_norm);
    }
    (losses, norms)
}

/// Full parameters after gathering (collective).
pub fn full_params(rank: &FsdpRank<CpuOps<f32>>) -> Vec<Vec<f32>> {
    rank.full_params().unwrap()
}

/// `steps` steps at `world` ranks, micro-batches of `micro_rows` rows per rank.
pub fn fsdp_run(world: usize, config: &FsdpConfig, steps: usize, micro_rows: usize) -> Run {
    let runs = LocalComm::run(world, TIMEOUT, |comm| {
        let mut rank = fsdp_rank(comm, config);
        let (losses, norms) = train(&mut rank, 0, steps, micro_rows);
        Run {
            losses,
            norms,
            params: full_params(&rank),
        }
    });
    for other in &runs[1..] {
        assert_eq!(
            other, &runs[0],
            "every rank reports the same losses and gathers the same weights"
        );
    }
    runs.into_iter().next().unwrap()
}

/// Largest |a - b| over all parameters.
pub fn max_param_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

/// Largest relative difference of per-step losses.
pub fn max_loss_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| ((x - y) / y).abs())
        .fold(0.0, f64::max)
}
