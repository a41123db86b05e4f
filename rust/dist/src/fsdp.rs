//! Fully sharded data parallelism on host buffers (the CPU path).
//!
//! Each rank keeps, for every unit (see [`crate::shard`]), only its shard of the fp32 master
//! parameters, of the gradient and of the AdamW moments. Full parameters exist only inside a
//! unit's *window*: the model's [`UnitHooks`] announce each unit just before its forward and its
//! backward and right after them, and `StepHooks` gathers, releases and reduces there. One
//! `full_shard` micro-batch with units `0..n` (embedding, layers, head):
//!
//! ```text
//! forward,  u = 0..n:      all_gather(u) unless prefetched; prefetch all_gather(u + 1);
//!                          forward(u); release(u)          (the head stays: backward needs it next)
//! backward, u = n-1..=0:   all_gather(u) unless resident or prefetched; prefetch all_gather(u - 1);
//!                          backward(u); reduce_scatter(u) into the gradient shard; release(u)
//! where prefetch(v) issues all_gather(v) into a staging buffer unless v is already held
//! ```
//!
//! So at most two units' full parameters (the one running and the prefetched next one) are held
//! at any time, besides the shards. *Prefetch*: the next unit's all-gather is issued before the
//! current unit's compute. The host communicators are synchronous, so here it simply completes
//! early into a staging buffer that is installed when the unit's window opens. The device FSDP
//! on NCCL ([`crate::device_fsdp`]) runs this same schedule (`UnitSchedule`, `StepHooks`: only
//! the store that moves the data differs), and the call order puts the all-gather on the
//! communicator's stream ahead of the current unit's kernels on the compute stream: that is
//! what overlaps them. *Release*
//! ([`Release`]): the unit's model buffers are replaced by empty ones (memory returned), or, as
//! a check, filled with NaN so that any use outside the window poisons the loss. With tied
//! embeddings the head reads the embedding and adds into its gradient, so the embedding's window
//! spans the whole micro-batch and its gradient is reduced after its own backward, the last.
//!
//! A step over the rank's micro-batches:
//!
//! 1. all-reduce the loss-weight sum of the global batch (the gradient scale `1 / sum`);
//! 2. per micro-batch: forward and backward with the schedule above;
//! 3. `hybrid`: all-reduce the gradient shards across replica groups;
//! 4. global gradient norm: all-reduce of the shards' squared norms; clip;
//! 5. AdamW on the shards only (elementwise, so sharding changes nothing numerically).
//!
//! Steps 1-4 are [`FsdpRank::forward_backward`], which returns the global loss and norm (the
//! same on every rank); step 5 is [`FsdpRank::apply`], so a caller can skip the update on what
//! it measured (the trainer's outlier guard) as the single-process loop does.
//! [`FsdpRank::step`] is both, skipping only a non-finite norm.
//!
//! Strategies ([`Strategy`]):
//! * `full_shard` — the schedule above for every micro-batch.
//! * `shard_grad_op` — units are gathered on first use (with prefetch) and kept through all the
//!   accumulation micro-batches; gradients accumulate unsharded in the model and each unit is
//!   reduce-scattered and released right after its backward in the last micro-batch.
//! * `hybrid` — `full_shard` inside groups of `hybrid_group_size` consecutive ranks (a node),
//!   replicated across groups: gradients are reduce-scattered in the group per micro-batch, then
//!   all-reduced across the groups' corresponding ranks once per step.
//!
//! Gradient buffers in the model follow windows too, as far as the hooks allow: they are
//! visible only after a unit's backward, so unit `u - 1`'s buffers are allocated (zeroed) right
//! after `u`'s backward — the head's after the embedding's, for the next pass — and `u`'s are
//! freed after its reduce-scatter (`shard_grad_op`: in the last micro-batch). So one unit's
//! gradient is held in full at a time (plus the embedding's with tied embeddings, which the head
//! adds into before the embedding's own backward). See docs/distributed.md.

use std::sync::Arc;

use kormo_model::{params, Batch, LossSum, Model, Ops, ParamSpec, UnitHooks};
use kormo_optim::{AdamW, AdamWConfig, ParamInfo};
use serde::{Deserialize, Serialize};

use crate::comm::{Collectives, HostTransport, SubGroup};
use crate::error::DistError;
use crate::shard::{segments, units, Segment, ShardRange, Unit};
use kormo_model::bf16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    FullShard,
    ShardGradOp,
    Hybrid,
}

/// Data type of gradients on the wire in reduce-scatter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ReduceDtype {
    #[default]
    F32,
    /// Half the bytes; each rank's contribution and the sum are rounded to bf16.
    Bf16,
}

/// How to shard; `[dist]` in a recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsdpConfig {
    pub strategy: Strategy,
    /// Ranks per shard group for `hybrid` (GPUs per node); must divide the world size.
    #[serde(default)]
    pub hybrid_group_size: Option<usize>,
    #[serde(default)]
    pub reduce_dtype: ReduceDtype,
    /// Global gradient-norm clipping threshold; 0 disables.
    pub grad_clip: f64,
}

/// What [`FsdpRank::forward_backward`] measured, identical on every rank.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gradients {
    /// Loss summed over the global batch.
    pub loss: LossSum,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// What one step did, identical on every rank.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutcome {
    /// Loss summed over the global batch.
    pub loss: LossSum,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// False when the norm was not finite and the update was skipped on every rank.
    pub updated: bool,
}

/// What happens to a unit's full parameters in the model when its window closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Release {
    /// The buffers are replaced by empty ones: the memory goes back to the allocator.
    #[default]
    Free,
    /// The buffers keep their size and are filled with NaN, so any read of a unit outside its
    /// window turns the loss into NaN. A check for backends and model changes, not for training
    /// (it allocates a unit's worth of NaN on every release instead of freeing).
    PoisonNan,
}

/// One entry of a step's schedule on this rank, in the order it happened. Units are indices
/// into [`FsdpRank::units`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleEvent {
    /// Micro-batch `i` of the step starts.
    MicroBatch(usize),
    /// All-gather of a unit's parameters in the shard group (issued; on NCCL it may still run).
    AllGather(usize),
    /// The unit's forward starts.
    Forward(usize),
    /// The unit's backward starts.
    Backward(usize),
    /// Reduce-scatter of a unit's gradient into the gradient shard.
    ReduceScatter(usize),
    /// The unit's full parameters leave the model.
    Release(usize),
    /// All-reduce of a unit's gradient shard across replica groups (`hybrid`).
    ReplicaAllReduce(usize),
}

/// Elements of full (unsharded) tensors this rank holds besides its shards: parameters
/// installed in the model or prefetched into a staging buffer, or the model's gradient
/// buffers. Padding is not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Residency {
    pub current: usize,
    /// Largest `current` during the last step or evaluation (parameters: from its first
    /// gather on).
    pub peak: usize,
}

impl Residency {
    fn add(&mut self, elements: usize) {
        self.current += elements;
        self.peak = self.peak.max(self.current);
    }
}

/// Where a rank's shards live and how a unit moves between its shards and the model: host
/// vectors here ([`HostStore`]), device buffers and NCCL in [`crate::device_fsdp`]. The
/// schedule ([`UnitSchedule`], [`StepHooks`]) decides *when* a unit is gathered, installed,
/// released and reduced, identically for both; a store only does it.
pub(crate) trait ShardStore {
    /// A unit's gathered flat (padded) parameters, waiting for its window.
    type Gathered;
    /// Issues the all-gather of unit `u` in the shard group (on NCCL it may still run).
    fn all_gather(&mut self, u: usize) -> Result<Self::Gathered, DistError>;
    /// A zero-filled stand-in for unit `u`, without communication (after a failure).
    fn zeros_gathered(&mut self, u: usize) -> Self::Gathered;
    /// Gives up a gathered unit that will not be installed.
    fn drop_gathered(&mut self, gathered: Self::Gathered);
}

/// The model-facing half of a [`ShardStore`], for one backend `O`. An error of any of these
/// becomes the pass's failure (the model finishes the pass, its result is discarded).
pub(crate) trait UnitStore<O: Ops>: ShardStore {
    /// Puts gathered unit `u` into the model's parameter buffers.
    fn install(
        &mut self,
        ops: &O,
        params: &mut [O::Buf],
        u: usize,
        gathered: Self::Gathered,
    ) -> Result<(), DistError>;
    /// Replaces unit `u`'s model parameter buffers as `release` says.
    fn discard(
        &mut self,
        ops: &O,
        params: &mut [O::Buf],
        u: usize,
        release: Release,
    ) -> Result<(), DistError>;
    /// Moves unit `u`'s gradient out of the model (zeroing the model's copy) and, when
    /// `communicate`, reduce-scatters it into (adds it to) the gradient shard.
    fn reduce_scatter(
        &mut self,
        ops: &O,
        grads: &mut [O::Buf],
        u: usize,
        communicate: bool,
    ) -> Result<(), DistError>;
    /// Gives unit `u` zeroed full-size gradient buffers in the model.
    fn hold_grads(&mut self, ops: &O, grads: &mut [O::Buf], u: usize) -> Result<(), DistError>;
    /// Takes unit `u`'s full-size gradient buffers out of the model.
    fn free_grads(&mut self, ops: &O, grads: &mut [O::Buf], u: usize) -> Result<(), DistError>;
}

/// The host store: shards are `Vec<f32>`, collectives go through a [`HostTransport`].
pub(crate) struct HostStore {
    shard_group: Arc<dyn HostTransport>,
    reduce_dtype: ReduceDtype,
    units: Vec<Unit>,
    ranges: Vec<ShardRange>,
    specs: Vec<ParamSpec>,
    /// Master parameters per unit, `ranges[u].len()` elements each.
    params: Vec<Vec<f32>>,
    grads: Vec<Vec<f32>>,
}

impl ShardStore for HostStore {
    type Gathered = Vec<f32>;

    fn all_gather(&mut self, u: usize) -> Result<Vec<f32>, DistError> {
        let range = self.ranges[u];
        let mut full = vec![0.0; range.padded * self.shard_group.world_size()];
        let mut padded = vec![0.0; range.padded];
        padded[..range.len()].copy_from_slice(&self.params[u]);
        self.shard_group.all_gather(&padded, &mut full)?;
        Ok(full)
    }

    fn zeros_gathered(&mut self, u: usize) -> Vec<f32> {
        vec![0.0; self.ranges[u].padded * self.shard_group.world_size()]
    }

    fn drop_gathered(&mut self, _gathered: Vec<f32>) {}
}

impl<O: Ops> UnitStore<O> for HostStore {
    fn install(
        &mut self,
        ops: &O,
        params: &mut [O::Buf],
        u: usize,
        full: Vec<f32>,
    ) -> Result<(), DistError> {
        let unit = &self.units[u];
        for (&tensor, &offset) in unit.tensors.iter().zip(&unit.offsets) {
            params[tensor] = ops.upload(&full[offset..offset + self.specs[tensor].numel()]);
        }
        Ok(())
    }

    fn discard(
        &mut self,
        ops: &O,
        params: &mut [O::Buf],
        u: usize,
        release: Release,
    ) -> Result<(), DistError> {
        for &tensor in &self.units[u].tensors {
            params[tensor] = match release {
                Release::Free => ops.zeros(0),
                Release::PoisonNan => {
                    let mut poison = ops.zeros(self.specs[tensor].numel());
                    ops.fill(&mut poison, f32::NAN);
                    poison
                }
            };
        }
        Ok(())
    }

    fn reduce_scatter(
        &mut self,
        ops: &O,
        grads: &mut [O::Buf],
        u: usize,
        communicate: bool,
    ) -> Result<(), DistError> {
        let range = self.ranges[u];
        let mut full = vec![0.0; range.padded * self.shard_group.world_size()];
        let unit = &self.units[u];
        for (&tensor, &offset) in unit.tensors.iter().zip(&unit.offsets) {
            let n = self.specs[tensor].numel();
            ops.read(&grads[tensor], &mut full[offset..offset + n]);
            ops.fill(&mut grads[tensor], 0.0);
        }
        if !communicate {
            return Ok(());
        }
        let mut mine = vec![0.0; range.padded];
        match self.reduce_dtype {
            ReduceDtype::F32 => self.shard_group.reduce_scatter(&full, &mut mine)?,
            ReduceDtype::Bf16 => {
                let wire = bf16::from_f32_slice(&full);
                let mut out = vec![0u16; range.padded];
                self.shard_group.reduce_scatter_bf16(&wire, &mut out)?;
                mine.iter_mut()
                    .zip(&out)
                    .for_each(|(m, &b)| *m = bf16::to_f32(b));
            }
        }
        self.grads[u]
            .iter_mut()
            .zip(&mine)
            .for_each(|(g, &x)| *g += x);
        Ok(())
    }

    fn hold_grads(&mut self, ops: &O, grads: &mut [O::Buf], u: usize) -> Result<(), DistError> {
        for &tensor in &self.units[u].tensors {
            grads[tensor] = ops.zeros(self.specs[tensor].numel());
        }
        Ok(())
    }

    fn free_grads(&mut self, ops: &O, grads: &mut [O::Buf], u: usize) -> Result<(), DistError> {
        for &tensor in &self.units[u].tensors {
            grads[tensor] = ops.zeros(0);
        }
        Ok(())
    }
}

/// Everything the per-unit schedule touches: the store (all of a rank's shards) and which
/// unit is where, but not the model and the optimizer, so that [`StepHooks`] can borrow it
/// while the model runs. Shared by the host and the device engine.
pub(crate) struct UnitSchedule<S: ShardStore> {
    pub(crate) store: S,
    pub(crate) release: Release,
    /// Tied embeddings: the head reads the embedding unit.
    tied: bool,
    pub(crate) units: Vec<Unit>,
    /// The model holds unit `u`'s current full parameters.
    resident: Vec<bool>,
    /// Unit `u`'s model buffers are to be replaced as [`Release`] says at the next hook: they
    /// hold parameters from before the last update (the initial model, a previous step), or
    /// were released under another [`Release`].
    stale: Vec<bool>,
    /// A gathered unit waiting for its window.
    prefetched: Option<(usize, S::Gathered)>,
    pub(crate) residency: Residency,
    /// The model has a full-size gradient buffer for unit `u`.
    grad_held: Vec<bool>,
    pub(crate) grad_residency: Residency,
    pub(crate) schedule: Vec<ScheduleEvent>,
    /// The first failed collective of the current pass; later ones are skipped and units are
    /// filled with zeros so the model can finish the pass without touching the network.
    pub(crate) failure: Option<DistError>,
}

impl<S: ShardStore> UnitSchedule<S> {
    /// The schedule of a freshly built model, which holds every unit (as initialised, = the
    /// shards) and every gradient buffer (zeroed).
    pub(crate) fn new(store: S, units: Vec<Unit>, tied: bool) -> Self {
        let unit_count = units.len();
        let whole_model = units.iter().map(|u| u.numel).sum();
        let full = Residency {
            current: whole_model,
            peak: whole_model,
        };
        UnitSchedule {
            store,
            release: Release::default(),
            tied,
            units,
            resident: vec![true; unit_count],
            stale: vec![true; unit_count],
            prefetched: None,
            residency: full,
            grad_held: vec![true; unit_count],
            grad_residency: full,
            schedule: Vec::new(),
            failure: None,
        }
    }

    /// Chooses how units leave the model; every unit outside its window is in that state
    /// from the next pass on.
    pub(crate) fn set_release(&mut self, release: Release) {
        self.release = release;
        self.stale.fill(true);
    }

    /// Keeps the first error of a pass.
    fn note(&mut self, result: Result<(), DistError>) {
        if let Err(e) = result {
            self.failure.get_or_insert(e);
        }
    }

    fn index(&self, unit: params::Unit) -> usize {
        self.units
            .iter()
            .position(|u| u.kind == unit)
            .expect("the model announces only its own units")
    }

    /// Gathers unit `u`; zeros once a collective has failed.
    fn all_gather(&mut self, u: usize) -> S::Gathered {
        self.residency.add(self.units[u].numel);
        if self.failure.is_some() {
            return self.store.zeros_gathered(u);
        }
        self.schedule.push(ScheduleEvent::AllGather(u));
        match self.store.all_gather(u) {
            Ok(gathered) => gathered,
            Err(e) => {
                self.failure = Some(e);
                self.store.zeros_gathered(u)
            }
        }
    }

    /// Issues unit `u`'s all-gather ahead of its window, unless it is already held.
    fn prefetch(&mut self, u: usize) {
        if !self.resident[u] && self.prefetched.is_none() {
            let gathered = self.all_gather(u);
            self.prefetched = Some((u, gathered));
        }
    }

    /// Opens unit `u`'s window: its full parameters are in the model when this returns.
    fn fetch<O: Ops>(&mut self, ops: &O, params: &mut [O::Buf], u: usize)
    where
        S: UnitStore<O>,
    {
        if self.resident[u] {
            return;
        }
        let gathered = match self.prefetched.take() {
            Some((p, gathered)) if p == u => gathered,
            other => {
                self.prefetched = other;
                self.all_gather(u)
            }
        };
        let installed = self.store.install(ops, params, u, gathered);
        self.note(installed);
        self.resident[u] = true;
    }

    /// Closes unit `u`'s window.
    fn release<O: Ops>(&mut self, ops: &O, params: &mut [O::Buf], u: usize)
    where
        S: UnitStore<O>,
    {
        if !self.resident[u] {
            return;
        }
        self.schedule.push(ScheduleEvent::Release(u));
        self.discard(ops, params, u);
    }

    /// Replaces unit `u`'s model buffers as [`Release`] says.
    fn discard<O: Ops>(&mut self, ops: &O, params: &mut [O::Buf], u: usize)
    where
        S: UnitStore<O>,
    {
        let discarded = self.store.discard(ops, params, u, self.release);
        self.note(discarded);
        if self.resident[u] {
            self.resident[u] = false;
            self.residency.current -= self.units[u].numel;
        }
    }

    /// Drops parameters that are in the model but out of date (first hook of a pass).
    fn discard_stale<O: Ops>(&mut self, ops: &O, params: &mut [O::Buf])
    where
        S: UnitStore<O>,
    {
        for u in 0..self.units.len() {
            if self.stale[u] {
                self.stale[u] = false;
                self.discard(ops, params, u);
            }
        }
    }

    /// Reduce-scatters unit `u`'s gradient from the model into its gradient shard and zeroes
    /// the model's copy (so the next micro-batch accumulates from zero).
    fn reduce_scatter<O: Ops>(&mut self, ops: &O, grads: &mut [O::Buf], u: usize)
    where
        S: UnitStore<O>,
    {
        let communicate = self.failure.is_none();
        if communicate {
            self.schedule.push(ScheduleEvent::ReduceScatter(u));
        }
        let reduced = self.store.reduce_scatter(ops, grads, u, communicate);
        self.note(reduced);
    }

    /// Gives unit `u` zeroed gradient buffers in the model unless it has them.
    fn hold_grads<O: Ops>(&mut self, ops: &O, grads: &mut [O::Buf], u: usize)
    where
        S: UnitStore<O>,
    {
        if !self.grad_held[u] {
            let held = self.store.hold_grads(ops, grads, u);
            self.note(held);
            self.grad_held[u] = true;
            self.grad_residency.add(self.units[u].numel);
        }
    }

    /// Frees unit `u`'s gradient buffers in the model (after its reduce-scatter), except the
    /// embedding's with tied embeddings: the head adds into it before the embedding's backward.
    fn free_grads<O: Ops>(&mut self, ops: &O, grads: &mut [O::Buf], u: usize)
    where
        S: UnitStore<O>,
    {
        if self.grad_held[u] && !(self.tied && self.units[u].kind == params::Unit::Embedding) {
            let freed = self.store.free_grads(ops, grads, u);
            self.note(freed);
            self.grad_held[u] = false;
            self.grad_residency.current -= self.units[u].numel;
        }
    }

    /// Unit `u` is needed again soon after its forward: with tied embeddings the embedding
    /// (the head reads it), and when a backward follows the last unit (its backward is next).
    fn kept_after_forward(&self, u: usize, backward_follows: bool) -> bool {
        (self.tied && self.units[u].kind == params::Unit::Embedding)
            || (backward_follows && u + 1 == self.units.len())
    }

    /// Starts a step or an evaluation: whatever the model holds was gathered before the last
    /// update and is dropped by the first hook, before anything is gathered, so the peaks
    /// count from there.
    pub(crate) fn begin(&mut self) {
        self.schedule.clear();
        for u in 0..self.units.len() {
            self.stale[u] |= self.resident[u];
        }
        if let Some((u, gathered)) = self.prefetched.take() {
            self.residency.current -= self.units[u].numel;
            self.store.drop_gathered(gathered);
        }
        self.residency.peak = 0;
        self.grad_residency.peak = self.grad_residency.current;
    }
}

/// The per-unit schedule of one micro-batch (see the module docs), as model hooks.
pub(crate) struct StepHooks<'a, S: ShardStore> {
    shards: &'a mut UnitSchedule<S>,
    /// Release each unit after its forward and gather it again for its backward.
    reshard_after_forward: bool,
    /// A backward pass follows the forward (training, not evaluation).
    backward_follows: bool,
    /// Reduce-scatter each unit's gradient and release it after its backward.
    reduce_after_backward: bool,
}

impl<O: Ops, S: UnitStore<O>> UnitHooks<O> for StepHooks<'_, S> {
    fn before_forward(&mut self, ops: &O, unit: params::Unit, params: &mut [O::Buf]) {
        let s = &mut *self.shards;
        s.discard_stale(ops, params);
        let u = s.index(unit);
        s.fetch(ops, params, u);
        if u + 1 < s.units.len() {
            s.prefetch(u + 1);
        }
        s.schedule.push(ScheduleEvent::Forward(u));
    }

    fn after_forward(&mut self, ops: &O, unit: params::Unit, params: &mut [O::Buf]) {
        let u = self.shards.index(unit);
        let s = &mut *self.shards;
        if self.reshard_after_forward && !s.kept_after_forward(u, self.backward_follows) {
            s.release(ops, params, u);
        }
        if !self.backward_follows && u + 1 == s.units.len() {
            // Evaluation is over: close the windows kept open for later use.
            for kept in 0..s.units.len() {
                s.release(ops, params, kept);
            }
        }
    }

    fn before_backward(&mut self, ops: &O, unit: params::Unit, params: &mut [O::Buf]) {
        let s = &mut *self.shards;
        let u = s.index(unit);
        s.fetch(ops, params, u);
        if u > 0 {
            s.prefetch(u - 1);
        }
        s.schedule.push(ScheduleEvent::Backward(u));
    }

    fn after_backward(
        &mut self,
        ops: &O,
        unit: params::Unit,
        params: &mut [O::Buf],
        grads: &mut [O::Buf],
    ) {
        let s = &mut *self.shards;
        let u = s.index(unit);
        if self.reduce_after_backward {
            s.reduce_scatter(ops, grads, u);
            s.release(ops, params, u);
            s.free_grads(ops, grads, u);
        }
        // The hooks see gradient buffers only here, so the next backward unit's are made now:
        // unit u - 1's, or after the embedding the head's, for the next pass.
        let next = if u > 0 { u - 1 } else { s.units.len() - 1 };
        s.hold_grads(ops, grads, next);
    }
}

/// Checks the settings both engines share.
pub(crate) fn check_config(config: &FsdpConfig) -> Result<(), DistError> {
    if !(config.grad_clip.is_finite() && config.grad_clip >= 0.0) {
        return Err(DistError::Config(format!(
            "grad_clip = {} must be finite and >= 0",
            config.grad_clip
        )));
    }
    Ok(())
}

/// Step 1: the gradient scale `1 / sum` of the global batch's loss weights, from this rank's
/// sum summed over the world by `all_reduce_world`.
pub(crate) fn grad_scale(
    micro_batches: &[Batch],
    all_reduce_world: impl FnOnce(&mut [f64]) -> Result<(), DistError>,
) -> Result<f32, DistError> {
    let mut weight = [micro_batches
        .iter()
        .map(Batch::loss_weight_sum)
        .sum::<f64>()];
    all_reduce_world(&mut weight)?;
    Ok(if weight[0] > 0.0 {
        (1.0 / weight[0]) as f32
    } else {
        0.0
    })
}

/// Step 2: forward and backward of every micro-batch with the per-unit schedule of
/// `strategy` (`hybrid` runs `full_shard` in its shard group). Returns this rank's loss.
pub(crate) fn run_micro_batches<O: Ops, S: UnitStore<O>>(
    model: &mut Model<O>,
    shards: &mut UnitSchedule<S>,
    strategy: Strategy,
    micro_batches: &[Batch],
    grad_scale: f32,
) -> Result<LossSum, DistError> {
    shards.begin();
    model.zero_grads();
    let mut loss = LossSum::default();
    let keep_gathered = strategy == Strategy::ShardGradOp;
    for (i, batch) in micro_batches.iter().enumerate() {
        shards.schedule.push(ScheduleEvent::MicroBatch(i));
        let mut hooks = StepHooks {
            shards: &mut *shards,
            reshard_after_forward: !keep_gathered,
            backward_follows: true,
            reduce_after_backward: !keep_gathered || i + 1 == micro_batches.len(),
        };
        let result = model.forward_backward_with_hooks(batch, grad_scale, &mut hooks);
        if let Some(failure) = shards.failure.take() {
            return Err(failure);
        }
        loss = loss.add(result?);
    }
    Ok(loss)
}

/// The loss of `batch` on this rank, each unit gathered (with prefetch) just before its
/// forward and released after it; gradients untouched.
pub(crate) fn run_evaluate<O: Ops, S: UnitStore<O>>(
    model: &mut Model<O>,
    shards: &mut UnitSchedule<S>,
    batch: &Batch,
) -> Result<LossSum, DistError> {
    shards.begin();
    let mut hooks = StepHooks {
        shards: &mut *shards,
        reshard_after_forward: true,
        backward_follows: false,
        reduce_after_backward: false,
    };
    let result = model.evaluate_with_hooks(batch, &mut hooks);
    if let Some(failure) = shards.failure.take() {
        return Err(failure);
    }
    Ok(result?)
}

/// A sharded engine as a training loop drives it: the host [`FsdpRank`] and the device
/// [`crate::DeviceFsdpRank`]. Every method is collective (all ranks call it in the same order).
pub trait FsdpEngine: crate::sharded_checkpoint::ShardedState {
    /// Forward and backward over this rank's micro-batches (its rows of the global batch, see
    /// [`crate::sampling`]), gradients reduced into this rank's shards and clipped; the global
    /// loss and gradient norm, identical on every rank.
    fn forward_backward(&mut self, micro_batches: &[Batch]) -> Result<Gradients, DistError>;
    /// The update with the last `forward_backward`'s gradients (skipping it skips the step).
    fn apply(&mut self, lr: f64) -> Result<(), DistError>;
    /// Loss of this rank's rows, summed over all ranks.
    fn evaluate(&mut self, batch: &Batch) -> Result<LossSum, DistError>;
    /// The full f32 parameters, in parameter order.
    fn full_params(&self) -> Result<Vec<Vec<f32>>, DistError>;

    /// Fresh AdamW state (zero moments, step 0) over the current weights: a new phase.
    fn reset_optimizer(&mut self) -> Result<(), DistError> {
        crate::sharded_checkpoint::load_state(self, None, None)
    }

    /// Restores AdamW's moments and step count from a single-process checkpoint's optimizer
    /// file, keeping the current weights (a resume: the weights were loaded at setup).
    fn load_optimizer(
        &mut self,
        checkpoint: &kormo_checkpoint::Checkpoint,
    ) -> Result<(), DistError> {
        crate::sharded_checkpoint::load_state(self, None, Some(checkpoint))
    }

    /// Replaces the weights by `full` (f32, in parameter order) and the AdamW state by a
    /// single-process checkpoint's when given, by fresh state otherwise.
    fn load_state(
        &mut self,
        full: &[Vec<f32>],
        checkpoint: Option<&kormo_checkpoint::Checkpoint>,
    ) -> Result<(), DistError> {
        crate::sharded_checkpoint::load_state(self, Some(full), checkpoint)
    }

    /// Writes the single-process checkpoint (the format of every world size) at `target`,
    /// its writes drawn from `disk` (the trainer's disk-full fault seam).
    fn save_checkpoint(
        &mut self,
        target: &std::path::Path,
        run: &kormo_checkpoint::RunState,
        disk: &kormo_checkpoint::DiskBudget,
    ) -> Result<(), DistError> {
        crate::sharded_checkpoint::save_consolidated(self, target, run, disk)
    }

    /// One optimizer step at learning rate `lr`: `forward_backward`, then `apply` unless the
    /// gradient norm is not finite.
    fn step(&mut self, micro_batches: &[Batch], lr: f64) -> Result<StepOutcome, DistError> {
        let gradients = self.forward_backward(micro_batches)?;
        let updated = gradients.grad_norm.is_finite();
        if updated {
            self.apply(lr)?;
        }
        Ok(StepOutcome {
            loss: gradients.loss,
            grad_norm: gradients.grad_norm,
            updated,
        })
    }
}

/// [`FsdpEngine`] and [`ShardedState`] of an FSDP rank type, forwarded to its inherent methods
/// of the same names: written once for [`FsdpRank`] and [`crate::DeviceFsdpRank`], which have
/// the same inherent interface over different stores.
///
/// [`ShardedState`]: crate::sharded_checkpoint::ShardedState
macro_rules! sharded_engine {
    (impl<$($param:ident: $bound:path),*> for $rank:ty) => {
        impl<$($param: $bound),*> FsdpEngine for $rank {
            fn forward_backward(&mut self, micro_batches: &[Batch]) -> Result<Gradients, DistError> {
                <$rank>::forward_backward(self, micro_batches)
            }
            fn apply(&mut self, lr: f64) -> Result<(), DistError> {
                <$rank>::apply(self, lr)
            }
            fn evaluate(&mut self, batch: &Batch) -> Result<LossSum, DistError> {
                <$rank>::evaluate(self, batch)
            }
            fn full_params(&self) -> Result<Vec<Vec<f32>>, DistError> {
                <$rank>::full_params(self)
            }
        }

        impl<$($param: $bound),*> crate::sharded_checkpoint::ShardedState for $rank {
            fn world_rank(&self) -> usize {
                <$rank>::world_rank(self)
            }
            fn world_size(&self) -> usize {
                <$rank>::world_size(self)
            }
            fn all_reduce_world(&self, values: &mut [f64]) -> Result<(), DistError> {
                <$rank>::all_reduce_world(self, values)
            }
            fn shard_rank(&self) -> usize {
                <$rank>::shard_rank(self)
            }
            fn shard_count(&self) -> usize {
                <$rank>::shard_count(self)
            }
            fn replica_rank(&self) -> usize {
                <$rank>::replica_rank(self)
            }
            fn units(&self) -> &[Unit] {
                <$rank>::units(self)
            }
            fn param_specs(&self) -> &[ParamSpec] {
                <$rank>::param_specs(self)
            }
            fn ranges(&self) -> &[ShardRange] {
                <$rank>::ranges(self)
            }
            fn host_shards(&self) -> Result<([Vec<Vec<f32>>; 3], u64), DistError> {
                <$rank>::host_shards(self)
            }
            fn load_shards(
                &mut self,
                params: Vec<Vec<f32>>,
                exp_avg: &[Vec<f32>],
                exp_avg_sq: &[Vec<f32>],
                step: u64,
            ) -> Result<(), DistError> {
                <$rank>::load_shards(self, params, exp_avg, exp_avg_sq, step)
            }
        }
    };
}

sharded_engine!(impl<O: Ops> for FsdpRank<O>);
sharded_engine!(impl<> for crate::DeviceFsdpRank);

/// One rank's share of a sharded model and optimizer.
pub struct FsdpRank<O: Ops> {
    config: FsdpConfig,
    world: Arc<dyn HostTransport>,
    replica_group: Option<SubGroup>,
    model: Model<O>,
    shards: UnitSchedule<HostStore>,
    segments: Vec<Segment>,
    adamw: AdamW,
    /// `forward_backward` left gradients in the shards that no update has used yet.
    gradients_ready: bool,
}

impl<O: Ops> FsdpRank<O> {
    /// Shards `model` (built with the same seed on every rank) across `world` as `config`
    /// says, keeping this rank's shards of its initial parameters. The model's full
    /// parameters are dropped at the start of the first step.
    pub fn new(
        world: Arc<dyn HostTransport>,
        model: Model<O>,
        adamw: AdamWConfig,
        config: FsdpConfig,
    ) -> Result<Self, DistError> {
        let world_size = world.world_size();
        check_config(&config)?;
        let (shard_group, replica_group): (Arc<dyn HostTransport>, _) = match config.strategy {
            Strategy::FullShard | Strategy::ShardGradOp => (world.clone(), None),
            Strategy::Hybrid => {
                let size = config.hybrid_group_size.ok_or_else(|| {
                    DistError::Config(
                        "strategy hybrid needs hybrid_group_size (ranks per node)".into(),
                    )
                })?;
                if size == 0 || !world_size.is_multiple_of(size) {
                    return Err(DistError::Config(format!(
                        "hybrid_group_size = {size} must be at least 1 and divide the world size {world_size}"
                    )));
                }
                let nodes = SubGroup::split(world.clone(), |r| r / size);
                let replicas = SubGroup::split(world.clone(), |r| r % size);
                (Arc::new(nodes), Some(replicas))
            }
        };
        let unit_list = units(model.config());
        let shard_rank = shard_group.rank();
        let shard_count = shard_group.world_size();
        let ranges: Vec<ShardRange> = unit_list
            .iter()
            .map(|u| ShardRange::of(u.numel, shard_rank, shard_count))
            .collect();
        let specs = model.param_specs().to_vec();
        let segment_list = segments(&unit_list, &ranges, &specs);
        let shards = initial_shards(&model, &unit_list, &ranges, &segment_list)?;
        let adamw = AdamW::new(adamw, segment_infos(&segment_list, &specs))?.with_threads(1);
        let grads = ranges.iter().map(|r| vec![0.0; r.len()]).collect();
        let tied = model.config().tie_embeddings;
        let store = HostStore {
            shard_group,
            reduce_dtype: config.reduce_dtype,
            units: unit_list.clone(),
            ranges,
            specs,
            params: shards,
            grads,
        };
        Ok(FsdpRank {
            shards: UnitSchedule::new(store, unit_list, tied),
            config,
            world,
            replica_group,
            model,
            segments: segment_list,
            adamw,
            gradients_ready: false,
        })
    }

    /// Chooses how units leave the model when their windows close; from the next step on
    /// every unit outside its window is in that state.
    pub fn set_release(&mut self, release: Release) {
        self.shards.set_release(release);
    }

    pub fn config(&self) -> &FsdpConfig {
        &self.config
    }

    pub fn world(&self) -> &dyn HostTransport {
        self.world.as_ref()
    }

    pub fn world_rank(&self) -> usize {
        self.world.rank()
    }

    pub fn world_size(&self) -> usize {
        self.world.world_size()
    }

    /// Sums host scalars over the world.
    pub fn all_reduce_world(&self, values: &mut [f64]) -> Result<(), DistError> {
        Ok(self.world.all_reduce_scalars(values)?)
    }

    /// This rank in its shard group, and the group's size (the shard count).
    pub fn shard_rank(&self) -> usize {
        self.shard_group().rank()
    }

    pub fn shard_count(&self) -> usize {
        self.shard_group().world_size()
    }

    /// Per unit, this rank's parameter, `exp_avg` and `exp_avg_sq` shards, and AdamW's step.
    #[allow(clippy::type_complexity)]
    pub fn host_shards(&self) -> Result<([Vec<Vec<f32>>; 3], u64), DistError> {
        let (exp_avg, exp_avg_sq) = self.moment_shards();
        Ok(([self.shards().to_vec(), exp_avg, exp_avg_sq], self.adamw.step_count()))
    }

    /// The group parameters are sharded over (the world, or this rank's node for hybrid).
    pub fn shard_group(&self) -> &dyn HostTransport {
        self.shards.store.shard_group.as_ref()
    }

    /// Rank among the replicas of this shard (0 unless hybrid).
    pub fn replica_rank(&self) -> usize {
        self.replica_group.as_ref().map_or(0, HostTransport::rank)
    }

    pub fn units(&self) -> &[Unit] {
        &self.shards.units
    }

    pub fn ranges(&self) -> &[ShardRange] {
        &self.shards.store.ranges
    }

    pub fn shards(&self) -> &[Vec<f32>] {
        &self.shards.store.params
    }

    pub fn adamw(&self) -> &AdamW {
        &self.adamw
    }

    /// The model. Outside a step its units are released ([`Release`]) — except before the
    /// first step, when it still holds its initial parameters.
    pub fn model(&self) -> &Model<O> {
        &self.model
    }

    pub fn param_specs(&self) -> &[ParamSpec] {
        &self.shards.store.specs
    }

    /// What the last step or evaluation did, in order (see [`ScheduleEvent`]).
    pub fn last_step_schedule(&self) -> &[ScheduleEvent] {
        &self.shards.schedule
    }

    /// Full parameter elements held now, and the most held during the last step.
    pub fn residency(&self) -> Residency {
        self.shards.residency
    }

    /// Gradient elements in the model's full-size buffers now, and the most during the last
    /// step. The model is built with every gradient buffer; the first step's backward frees
    /// them unit by unit, so from the second step on the peak is the schedule's.
    pub fn gradient_residency(&self) -> Residency {
        self.shards.grad_residency
    }

    /// The full parameters, tensor by tensor in canonical order, gathered on the host without
    /// touching the model (collective: every rank calls it).
    pub fn full_params(&self) -> Result<Vec<Vec<f32>>, DistError> {
        let s = &self.shards.store;
        let mut out: Vec<Vec<f32>> = s.specs.iter().map(|_| Vec::new()).collect();
        for (u, unit) in self.shards.units.iter().enumerate() {
            let range = s.ranges[u];
            let mut padded = vec![0.0; range.padded];
            padded[..range.len()].copy_from_slice(&s.params[u]);
            let mut full = vec![0.0; range.padded * s.shard_group.world_size()];
            s.shard_group.all_gather(&padded, &mut full)?;
            for (&tensor, &offset) in unit.tensors.iter().zip(&unit.offsets) {
                out[tensor] = full[offset..offset + s.specs[tensor].numel()].to_vec();
            }
        }
        Ok(out)
    }

    /// Forward and backward over this rank's `micro_batches` (its rows of the global batch,
    /// see [`crate::sampling`]), gradients reduced into this rank's shards and clipped to
    /// `grad_clip` (steps 1-4 of the module docs). The loss and the norm are global, identical
    /// on every rank, so every rank takes the same decision on them: [`FsdpRank::apply`] the
    /// update, or not (a skipped update needs nothing else: the next call starts from zeroed
    /// gradients). Collective.
    pub fn forward_backward(&mut self, micro_batches: &[Batch]) -> Result<Gradients, DistError> {
        let grad_scale = grad_scale(micro_batches, |v| {
            Ok(self.world.as_ref().all_reduce_scalars(v)?)
        })?;
        self.shards.store.grads.iter_mut().for_each(|g| g.fill(0.0));
        self.gradients_ready = false;
        let loss = run_micro_batches(
            &mut self.model,
            &mut self.shards,
            self.config.strategy,
            micro_batches,
            grad_scale,
        )?;
        if let Some(replicas) = &self.replica_group {
            let s = &mut self.shards;
            for u in 0..s.store.grads.len() {
                s.schedule.push(ScheduleEvent::ReplicaAllReduce(u));
                replicas.all_reduce(&mut s.store.grads[u])?;
            }
        }

        // Replicas hold identical shards, so the shard group alone covers every element once.
        let mut squares = [kormo_optim::sum_of_squares(&segment_grads(
            &self.shards.store.grads,
            &self.segments,
        ))];
        self.shards
            .store
            .shard_group
            .all_reduce_scalars(&mut squares)?;
        let grad_norm = squares[0].sqrt();
        let max = self.config.grad_clip;
        if grad_norm.is_finite() && max > 0.0 && grad_norm > max {
            // Same factor as kormo_optim::clip_grad_norm.
            let scale = (max / (grad_norm + 1e-6)) as f32;
            self.shards
                .store
                .grads
                .iter_mut()
                .for_each(|g| g.iter_mut().for_each(|x| *x *= scale));
        }
        let mut sums = [loss.weighted_loss, loss.weight, loss.mtp_weighted_loss, loss.mtp_weight];
        self.world.all_reduce_scalars(&mut sums)?;
        self.gradients_ready = true;
        Ok(Gradients {
            loss: LossSum {
                weighted_loss: sums[0],
                weight: sums[1],
                mtp_weighted_loss: sums[2],
                mtp_weight: sums[3],
            },
            grad_norm,
        })
    }

    /// AdamW at learning rate `lr` on this rank's shards with the gradients of the last
    /// [`FsdpRank::forward_backward`] (step 5 of the module docs; elementwise, no
    /// communication). Once per `forward_backward`: a second call is an error.
    pub fn apply(&mut self, lr: f64) -> Result<(), DistError> {
        if !std::mem::take(&mut self.gradients_ready) {
            return Err(DistError::Config(
                "FsdpRank::apply without new gradients (call forward_backward first)".into(),
            ));
        }
        let store = &mut self.shards.store;
        let grads = segment_grads(&store.grads, &self.segments);
        let mut params = split_segments(&mut store.params, &self.segments);
        self.adamw.step(&mut params, &grads, lr)?;
        Ok(())
    }

    /// Loss of `batch` (this rank's rows) summed over all ranks, gradients untouched: each
    /// unit is gathered (with prefetch) just before its forward and released after it.
    /// Collective.
    pub fn evaluate(&mut self, batch: &Batch) -> Result<LossSum, DistError> {
        let loss = run_evaluate(&mut self.model, &mut self.shards, batch)?;
        let mut sums = [loss.weighted_loss, loss.weight, loss.mtp_weighted_loss, loss.mtp_weight];
        self.world.all_reduce_scalars(&mut sums)?;
        Ok(LossSum {
            weighted_loss: sums[0],
            weight: sums[1],
            mtp_weighted_loss: sums[2],
            mtp_weight: sums[3],
        })
    }

    /// Per unit, this rank's shard of `exp_avg` and `exp_avg_sq` (segments concatenated).
    pub fn moment_shards(&self) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
        let mut m: Vec<Vec<f32>> = self
            .shards
            .store
            .ranges
            .iter()
            .map(|r| Vec::with_capacity(r.len()))
            .collect();
        let mut v = m.clone();
        let states = self.adamw.state_tensors();
        for (seg, pair) in self.segments.iter().zip(states.chunks(2)) {
            m[seg.unit].extend_from_slice(pair[0].1);
            v[seg.unit].extend_from_slice(pair[1].1);
        }
        (m, v)
    }

    /// Replaces this rank's shards of parameters and moments and the AdamW step count
    /// (checkpoint restore; the caller has checked the shapes).
    pub fn load_shards(
        &mut self,
        params: Vec<Vec<f32>>,
        exp_avg: &[Vec<f32>],
        exp_avg_sq: &[Vec<f32>],
        step: u64,
    ) -> Result<(), DistError> {
        for (u, p) in params.iter().enumerate() {
            if p.len() != self.shards.store.ranges[u].len()
                || exp_avg[u].len() != p.len()
                || exp_avg_sq[u].len() != p.len()
            {
                return Err(DistError::Config(format!(
                    "restored shard of unit {} has the wrong length",
                    self.shards.units[u].name
                )));
            }
        }
        self.shards.store.params = params;
        self.gradients_ready = false;
        let names: Vec<(String, usize, usize, usize)> = self
            .segments
            .iter()
            .map(|s| {
                (
                    self.shards.store.specs[s.tensor].name.clone(),
                    s.unit,
                    s.shard_offset,
                    s.len,
                )
            })
            .collect();
        for (name, unit, offset, len) in names {
            self.adamw.load_state_tensor(
                &format!("{name}.exp_avg"),
                &exp_avg[unit][offset..offset + len],
            )?;
            self.adamw.load_state_tensor(
                &format!("{name}.exp_avg_sq"),
                &exp_avg_sq[unit][offset..offset + len],
            )?;
        }
        self.adamw.set_step_count(step);
        Ok(())
    }
}

/// This rank's shards of `model`'s current parameters, per unit (unpadded, `ranges[u].len()`
/// elements), read tensor by tensor through the host.
pub(crate) fn initial_shards<O: Ops>(
    model: &Model<O>,
    units: &[Unit],
    ranges: &[ShardRange],
    segments: &[Segment],
) -> Result<Vec<Vec<f32>>, DistError> {
    let specs = model.param_specs();
    let mut shards: Vec<Vec<f32>> = ranges.iter().map(|r| vec![0.0; r.len()]).collect();
    let mut host = Vec::new();
    for seg in segments {
        let spec = &specs[seg.tensor];
        host.resize(spec.numel(), 0.0);
        model.read_param(&spec.name, &mut host)?;
        let in_tensor = ranges[seg.unit].start + seg.shard_offset
            - units[seg.unit].offsets[tensor_slot(&units[seg.unit], seg.tensor)];
        shards[seg.unit][seg.shard_offset..seg.shard_offset + seg.len]
            .copy_from_slice(&host[in_tensor..in_tensor + seg.len]);
    }
    Ok(shards)
}

/// One optimizer tensor per segment: the tensor's name and weight-decay flag, the segment's
/// length (sharding changes nothing numerically, AdamW being elementwise).
pub(crate) fn segment_infos(segments: &[Segment], specs: &[ParamSpec]) -> Vec<ParamInfo> {
    segments
        .iter()
        .map(|seg| ParamInfo {
            name: specs[seg.tensor].name.clone(),
            numel: seg.len,
            weight_decay: specs[seg.tensor].weight_decay(),
        })
        .collect()
}

fn tensor_slot(unit: &Unit, tensor: usize) -> usize {
    unit.tensors
        .iter()
        .position(|&t| t == tensor)
        .expect("segment tensor belongs to its unit")
}

/// Slices of `grads`, one per segment, in segment order.
fn segment_grads<'a>(grads: &'a [Vec<f32>], segments: &[Segment]) -> Vec<&'a [f32]> {
    segments
        .iter()
        .map(|s| &grads[s.unit][s.shard_offset..s.shard_offset + s.len])
        .collect()
}

/// Mutable slices of `shards`, one per segment, in segment order.
fn split_segments<'a>(shards: &'a mut [Vec<f32>], segments: &[Segment]) -> Vec<&'a mut [f32]> {
    let mut out = Vec::with_capacity(segments.len());
    let mut per_unit: Vec<&'a mut [f32]> = shards.iter_mut().map(|s| s.as_mut_slice()).collect();
    let mut consumed = vec![0usize; per_unit.len()];
    for seg in segments {
        let rest = std::mem::take(&mut per_unit[seg.unit]);
        let (_, rest) = rest.split_at_mut(seg.shard_offset - consumed[seg.unit]);
        let (mine, rest) = rest.split_at_mut(seg.len);
        per_unit[seg.unit] = rest;
        consumed[seg.unit] = seg.shard_offset + seg.len;
        out.push(mine);
    }
    out
}
