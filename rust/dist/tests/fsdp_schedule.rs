//! The per-unit FSDP schedule: what is gathered, computed, reduced and released, in which
//! order, and how much of the model is resident at once.
//!
//! Every rank's communicator is wrapped in a recorder, so the schedule an [`FsdpRank`] reports
//! is checked against the collectives that really reached the transport (operation and payload
//! size), and the reported schedule against FSDP's: per micro-batch, gather `u` (or have it
//! prefetched) before `u`'s forward and again before its backward, prefetch the next unit before
//! the current one computes, reduce-scatter `u` right after its backward, backward in reverse
//! unit order, release each unit when its window closes. Released units are poisoned with NaN
//! in one run, which must then train exactly like the normal run: no unit is read outside its
//! window. Also: gradient-buffer residency, sharded evaluation, and a collective failing inside
//! a hook.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use kormo_cpu::CpuOps;
use kormo_dist::comm::Contributions;
use kormo_dist::{
    sampling, CommError, FsdpConfig, FsdpEngine, FsdpRank, HostTransport, LocalComm, Op,
    ScheduleEvent::{self, *},
    Strategy,
};
use kormo_model::{Model, ModelConfig};
use kormo_optim::AdamWConfig;

const LAYERS: usize = 6;

/// Units: embedding, `LAYERS` layers, head.
const UNITS: usize = LAYERS + 2;

fn deep_config(tie_embeddings: bool) -> ModelConfig {
    ModelConfig {
        layers: LAYERS,
        tie_embeddings,
        ..config()
    }
}

/// A communicator that logs every collective (operation, payload bytes) this rank takes part
/// in, and fails all-gather number `fail_all_gather` (counting from 0) without taking part.
struct Recorder {
    inner: LocalComm,
    log: Mutex<Vec<(Op, usize)>>,
    fail_all_gather: Option<usize>,
}

impl HostTransport for Recorder {
    fn rank(&self) -> usize {
        self.inner.rank()
    }

    fn world_size(&self) -> usize {
        self.inner.world_size()
    }

    fn exchange(&self, op: Op, payload: Vec<u8>) -> Result<Contributions, CommError> {
        let mut log = self.log.lock().unwrap();
        let gathers = log.iter().filter(|(o, _)| *o == Op::AllGather).count();
        log.push((op, payload.len()));
        drop(log);
        if op == Op::AllGather && self.fail_all_gather == Some(gathers) {
            return Err(CommError::Device("injected all_gather failure".into()));
        }
        self.inner.exchange(op, payload)
    }
}

/// What one rank saw in one step.
struct Observed {
    schedule: Vec<ScheduleEvent>,
    transport: Vec<(Op, usize)>,
    /// Payload bytes of the unit collectives the schedule claims, in its order.
    claimed: Vec<(Op, usize)>,
    peak: usize,
    resident_after: usize,
    grad_peak: usize,
    grads_after: usize,
    model_buffers_empty: bool,
}

/// Runs `steps` steps at `world` ranks with `micro` micro-batches per rank and returns, per
/// rank, what the last step did.
fn observe(
    world: usize,
    cfg: &ModelConfig,
    config: &FsdpConfig,
    steps: usize,
    micro: usize,
) -> Vec<Observed> {
    LocalComm::run(world, TIMEOUT, |comm| {
        let recorder = Arc::new(Recorder {
            inner: comm,
            log: Mutex::new(Vec::new()),
            fail_all_gather: None,
        });
        let model = Model::new(cfg.clone(), CpuOps::<f32>::with_threads(1), SEED).unwrap();
        let mut rank = FsdpRank::new(
            recorder.clone(),
            model,
            AdamWConfig::default(),
            config.clone(),
        )
        .unwrap();
        for step in 0..steps {
            recorder.log.lock().unwrap().clear();
            let mine =
                sampling::rank_rows(&global_batch(step), rank.world().rank(), world).unwrap();
            let batches = sampling::micro_batches(&mine, mine.batch_size / micro).unwrap();
            assert_eq!(batches.len(), micro);
            assert!(rank.step(&batches, LR).unwrap().updated);
        }
        let shard_size = rank.shard_group().world_size();
        let claimed = rank
            .last_step_schedule()
            .iter()
            .filter_map(|event| match *event {
                AllGather(u) => Some((Op::AllGather, 4 * rank.ranges()[u].padded)),
                ReduceScatter(u) => {
                    Some((Op::ReduceScatter, 4 * rank.ranges()[u].padded * shard_size))
                }
                ReplicaAllReduce(u) => Some((Op::AllReduce, 4 * rank.ranges()[u].len())),
                _ => None,
            })
            .collect();
        let transport = recorder
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|(op, _)| matches!(op, Op::AllGather | Op::ReduceScatter | Op::AllReduce))
            .copied()
            .collect();
        Observed {
            schedule: rank.last_step_schedule().to_vec(),
            transport,
            claimed,
            peak: rank.residency().peak,
            resident_after: rank.residency().current,
            grad_peak: rank.gradient_residency().peak,
            grads_after: rank.gradient_residency().current,
            model_buffers_empty: rank.model().params().iter().all(Vec::is_empty),
        }
    })
}

/// FSDP's `full_shard` schedule for micro-batch `i` over `n` units, unit 0 = embedding and
/// unit `n - 1` = head; `tied`: the head reads the embedding, whose window then spans the pass.
fn full_shard_micro_batch(i: usize, n: usize, tied: bool) -> Vec<ScheduleEvent> {
    let mut want = vec![MicroBatch(i), AllGather(0)];
    for u in 0..n {
        if u + 1 < n {
            want.push(AllGather(u + 1)); // prefetch: issued before u computes
        }
        want.push(Forward(u));
        let used_again = u + 1 == n || (tied && u == 0);
        if !used_again {
            want.push(Release(u));
        }
    }
    for u in (0..n).rev() {
        if u > 1 || (u == 1 && !tied) {
            want.push(AllGather(u - 1)); // prefetch for the next backward
        }
        want.extend([Backward(u), ReduceScatter(u), Release(u)]);
    }
    want
}

/// Replays a schedule and checks FSDP's invariants independently of the exact order: a unit
/// computes only while gathered, at most two units are gathered at once, each unit's gradient
/// is reduce-scattered once, right after its backward, and backward runs in reverse order.
fn check_windows(schedule: &[ScheduleEvent], n: usize, max_held: usize) {
    let mut held = vec![false; n];
    let mut last_backward = n;
    for (at, event) in schedule.iter().enumerate() {
        match *event {
            AllGather(u) => held[u] = true,
            Release(u) => held[u] = false,
            Forward(u) => assert!(held[u], "forward of unit {u} outside its window (#{at})"),
            Backward(u) => {
                assert!(held[u], "backward of unit {u} outside its window (#{at})");
                assert_eq!(u + 1, last_backward, "backward out of order at #{at}");
                last_backward = u;
            }
            ReduceScatter(u) => assert_eq!(schedule[at - 1], Backward(u), "#{at}"),
            MicroBatch(_) => last_backward = n,
            ReplicaAllReduce(_) => {}
        }
        let count = held.iter().filter(|&&h| h).count();
        assert!(count <= max_held, "{count} units gathered at #{at}");
    }
    assert!(
        held.iter().all(|&h| !h),
        "units left gathered after the step"
    );
}

fn unit_sizes(cfg: &ModelConfig) -> Vec<usize> {
    kormo_dist::shard::units(cfg)
        .iter()
        .map(|u| u.numel)
        .collect()
}

#[test]
fn full_shard_gathers_each_unit_just_in_time_and_reduces_right_after_its_backward() {
    for tied in [false, true] {
        let cfg = deep_config(tied);
        let sizes = unit_sizes(&cfg);
        let whole: usize = sizes.iter().sum();
        for observed in observe(2, &cfg, &fsdp_config(Strategy::FullShard, None), 2, 2) {
            let mut want = full_shard_micro_batch(0, UNITS, tied);
            want.extend(full_shard_micro_batch(1, UNITS, tied));
            assert_eq!(observed.schedule, want, "tied = {tied}");
            // With tied embeddings the embedding is a third resident unit.
            check_windows(&observed.schedule, UNITS, if tied { 3 } else { 2 });
            assert_eq!(
                observed.claimed, observed.transport,
                "schedule vs transport"
            );
            assert_eq!(
                observed.claimed.len(),
                2 * (2 * UNITS - 1 - usize::from(tied) + UNITS)
            );

            // Peak: the running unit and the prefetched one (plus the embedding when tied).
            let pair = sizes.windows(2).map(|w| w[0] + w[1]).max().unwrap();
            let want_peak = if tied {
                sizes[1..].windows(2).map(|w| w[0] + w[1]).max().unwrap() + sizes[0]
            } else {
                pair
            };
            eprintln!(
                "full_shard tied={tied}: peak resident {} of {whole} parameters",
                observed.peak
            );
            assert_eq!(observed.peak, want_peak);
            assert!(observed.peak * 2 < whole, "{} of {whole}", observed.peak);
            assert_eq!(observed.resident_after, 0);
            assert!(
                observed.model_buffers_empty,
                "released units hold no memory"
            );

            // Gradient buffers: the unit running backward (the next one's are made after it),
            // plus the embedding's when tied; between steps the head's waits for the next pass.
            let largest = *sizes.iter().max().unwrap();
            let embedding = if tied { sizes[0] } else { 0 };
            assert_eq!(observed.grad_peak, largest + embedding);
            assert_eq!(observed.grads_after, sizes[UNITS - 1] + embedding);
        }
    }
}

#[test]
fn shard_grad_op_keeps_units_through_accumulation_and_reduces_once() {
    let cfg = deep_config(false);
    let whole: usize = unit_sizes(&cfg).iter().sum();
    for observed in observe(2, &cfg, &fsdp_config(Strategy::ShardGradOp, None), 2, 2) {
        let mut want = vec![MicroBatch(0), AllGather(0)];
        for u in 0..UNITS {
            if u + 1 < UNITS {
                want.push(AllGather(u + 1));
            }
            want.push(Forward(u));
        }
        want.extend((0..UNITS).rev().map(Backward));
        want.push(MicroBatch(1));
        want.extend((0..UNITS).map(Forward));
        for u in (0..UNITS).rev() {
            want.extend([Backward(u), ReduceScatter(u), Release(u)]);
        }
        assert_eq!(observed.schedule, want);
        check_windows(&observed.schedule, UNITS, UNITS);
        assert_eq!(observed.claimed, observed.transport);
        assert_eq!(observed.peak, whole, "shard_grad_op holds the whole model");
        assert_eq!(observed.resident_after, 0);
        assert_eq!(observed.grad_peak, whole, "and accumulates full gradients");
        assert_eq!(observed.grads_after, unit_sizes(&cfg)[UNITS - 1]);
    }
}

#[test]
fn hybrid_shards_in_the_node_and_all_reduces_across_nodes_once() {
    let cfg = deep_config(false);
    // 4 ranks have 3 rows each of the 12-row global batch: 3 micro-batches of one row.
    for observed in observe(4, &cfg, &fsdp_config(Strategy::Hybrid, Some(2)), 1, 3) {
        let mut want: Vec<ScheduleEvent> = (0..3)
            .flat_map(|i| full_shard_micro_batch(i, UNITS, false))
            .collect();
        want.extend((0..UNITS).map(ReplicaAllReduce));
        assert_eq!(observed.schedule, want);
        check_windows(&observed.schedule, UNITS, 2);
        assert_eq!(observed.claimed, observed.transport);
    }
}

/// Trains `steps` steps with `release` and returns (losses, final parameters, model buffers).
fn train_with(
    world: usize,
    cfg: &ModelConfig,
    config: &FsdpConfig,
    release: kormo_dist::Release,
    steps: usize,
) -> (Vec<f64>, Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let mut runs = LocalComm::run(world, TIMEOUT, |comm| {
        let model = Model::new(cfg.clone(), CpuOps::<f32>::with_threads(1), SEED).unwrap();
        let mut rank = FsdpRank::new(
            Arc::new(comm),
            model,
            AdamWConfig::default(),
            config.clone(),
        )
        .unwrap();
        rank.set_release(release);
        let (losses, _) = train(&mut rank, 0, steps, 1);
        let buffers = rank.model().params().to_vec();
        (losses, rank.full_params().unwrap(), buffers)
    });
    runs.swap_remove(0)
}

#[test]
fn units_poisoned_outside_their_windows_change_nothing() {
    const STEPS: usize = 5;
    for tied in [false, true] {
        let cfg = deep_config(tied);
        let full_shard = fsdp_config(Strategy::FullShard, None);
        let (losses, params, freed) =
            train_with(2, &cfg, &full_shard, kormo_dist::Release::Free, STEPS);
        let (poisoned_losses, poisoned_params, poisoned) =
            train_with(2, &cfg, &full_shard, kormo_dist::Release::PoisonNan, STEPS);
        // The poison is really there: every model buffer is NaN between steps, so a read of a
        // unit outside its window would have made a loss or a weight NaN.
        assert!(poisoned
            .iter()
            .all(|b| !b.is_empty() && b.iter().all(|x| x.is_nan())));
        assert!(freed.iter().all(Vec::is_empty));
        assert!(poisoned_losses.iter().all(|l| l.is_finite()));
        assert!(poisoned_params.iter().flatten().all(|x| x.is_finite()));
        assert_eq!(poisoned_losses, losses, "tied = {tied}");
        assert_eq!(poisoned_params, params, "tied = {tied}");
        // And it trains like one rank holding the whole model (shard_grad_op at world size 1
        // is the plain trainer bit for bit, see fsdp_equivalence.rs).
        let (one_rank, one_params, _) = train_with(
            1,
            &cfg,
            &fsdp_config(Strategy::ShardGradOp, None),
            kormo_dist::Release::Free,
            STEPS,
        );
        assert!(max_loss_diff(&losses, &one_rank) <= 1e-6, "tied = {tied}");
        assert!(
            max_param_diff(&params, &one_params) <= 1e-5,
            "tied = {tied}"
        );
        assert!(losses[STEPS - 1] < losses[0], "{losses:?}");
    }
}

/// A collective failing inside a unit hook (mid forward) ends the step with that error on the
/// failing rank and a timeout naming it on the other, without a panic; the failed rank holds
/// nothing afterwards and its next step trains normally.
#[test]
fn a_failed_gather_inside_the_pass_is_an_error_not_a_panic() {
    let cfg = deep_config(false);
    let results = LocalComm::run(2, std::time::Duration::from_secs(2), |comm| {
        let me = comm.rank();
        let recorder = Arc::new(Recorder {
            inner: comm,
            log: Mutex::new(Vec::new()),
            // Rank 0 fails its third all-gather: unit 2's prefetch, during unit 1's window.
            fail_all_gather: (me == 0).then_some(2),
        });
        let model = Model::new(cfg.clone(), CpuOps::<f32>::with_threads(1), SEED).unwrap();
        let config = fsdp_config(Strategy::FullShard, None);
        let mut rank = FsdpRank::new(recorder, model, AdamWConfig::default(), config).unwrap();
        let mine = sampling::rank_rows(&global_batch(0), me, 2).unwrap();
        rank.step(&[mine], LR).err().map(|e| e.to_string())
    });
    let messages: Vec<String> = results.into_iter().map(Option::unwrap).collect();
    assert!(
        messages[0].contains("injected all_gather failure"),
        "{}",
        messages[0]
    );
    assert!(
        messages[1].contains("rank 0 did not arrive"),
        "{}",
        messages[1]
    );

    // One rank: the failed step releases everything; the next one trains.
    LocalComm::run(1, TIMEOUT, |comm| {
        let recorder = Arc::new(Recorder {
            inner: comm,
            log: Mutex::new(Vec::new()),
            fail_all_gather: Some(2),
        });
        let model = Model::new(cfg.clone(), CpuOps::<f32>::with_threads(1), SEED).unwrap();
        let config = fsdp_config(Strategy::FullShard, None);
        let mut rank =
            FsdpRank::new(recorder.clone(), model, AdamWConfig::default(), config).unwrap();
        let batch = global_batch(0);
        assert!(rank.step(std::slice::from_ref(&batch), LR).is_err());
        // The pass ran to its end on zeros without communicating and closed every window.
        assert_eq!(rank.residency().current, 0);
        assert!(rank.model().params().iter().all(Vec::is_empty));
        let outcome = rank.step(&[batch], LR).unwrap();
        assert!(outcome.updated && outcome.loss.mean().is_finite());
        assert_eq!(rank.residency().current, 0);
        assert_eq!(
            rank.residency().peak,
            unit_sizes(&cfg)[1..3].iter().sum::<usize>()
        );
    });
}

/// Sharded evaluation gathers each unit for its forward only, releases everything, and gives
/// the loss of the plain model with the same weights on the whole global batch.
#[test]
fn evaluation_gathers_for_the_forward_only_and_matches_the_plain_model() {
    for tied in [false, true] {
        let cfg = deep_config(tied);
        let runs = LocalComm::run(2, TIMEOUT, |comm| {
            let model = Model::new(cfg.clone(), CpuOps::<f32>::with_threads(1), SEED).unwrap();
            let config = fsdp_config(Strategy::FullShard, None);
            let mut rank =
                FsdpRank::new(Arc::new(comm), model, AdamWConfig::default(), config).unwrap();
            train(&mut rank, 0, 2, 3);
            let me = rank.world().rank();
            let mine = sampling::rank_rows(&global_batch(100), me, 2).unwrap();
            let loss = rank.evaluate(&mine).unwrap();
            assert_eq!(rank.residency().current, 0);
            (
                loss,
                rank.last_step_schedule().to_vec(),
                rank.full_params().unwrap(),
            )
        });
        let (loss, schedule, params) = &runs[0];
        assert_eq!(runs[1].0, *loss);
        let mut want = vec![AllGather(0)];
        for u in 0..UNITS {
            if u + 1 < UNITS {
                want.push(AllGather(u + 1));
            }
            want.push(Forward(u));
            if !(tied && u == 0) {
                want.push(Release(u));
            }
        }
        if tied {
            want.push(Release(0));
        }
        assert_eq!(*schedule, want, "tied = {tied}");

        let mut plain = Model::new(cfg.clone(), CpuOps::<f32>::with_threads(1), SEED).unwrap();
        for (buf, p) in plain.params_mut().iter_mut().zip(params) {
            buf.copy_from_slice(p);
        }
        let want_loss = plain.evaluate(&global_batch(100)).unwrap();
        assert_eq!(loss.weight, want_loss.weight);
        let relative =
            (loss.weighted_loss - want_loss.weighted_loss).abs() / want_loss.weighted_loss;
        assert!(relative < 1e-6, "tied = {tied}: {loss:?} vs {want_loss:?}");
    }
}
