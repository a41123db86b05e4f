//! Fully sharded data parallelism on the device: [`DeviceFsdpRank`] trains a
//! `Model<CudaOps>` with its shards, gathers and reductions in GPU memory and NCCL, never
//! through the host.
//!
//! It is [`crate::fsdp`]'s engine with another store: the units ([`crate::shard::units`]),
//! shard ranges, segments, strategies, [`FsdpConfig`], the per-unit schedule (the same
//! `UnitSchedule` and model hooks, so the same [`ScheduleEvent`] log and hook order) and the
//! step structure (loss-weight all-reduce, micro-batches, global norm, clip, AdamW on shards)
//! are shared; only *where* a shard lives and *how* a unit moves differs.
//!
//! Buffers (all [`CudaBuf`]s of the rank's [`CudaOps`], so [`CudaOps::memory`] counts them):
//!
//! | per unit `u` (padded shard, `ShardRange::padded` elements) | |
//! | --- | --- |
//! | f32 master parameters | updated by the AdamW kernel, one launch per segment |
//! | bf16 parameters | written by the same kernel from the master: the all-gather input |
//! | f32 gradient shard | reduce-scatter results are added into it |
//! | f32 `exp_avg`, `exp_avg_sq` | AdamW moments |
//!
//! plus, shared by all units and sized for the largest: two bf16 gather slots (`padded *
//! group` each), one f32 pack buffer (a unit's model gradients, flat and padded; a bf16 copy
//! when `reduce_dtype = bf16`), one reduce-scatter output, and three device scalars (learning
//! rate, sum of squares, clip scale). The model's own parameter and gradient buffers are taken
//! from and returned to per-size pools, so that a unit's window reuses the buffers of the
//! previous unit of the same shapes; the model's initial buffers are freed, not pooled.
//!
//! Two streams. Kernels run on the compute stream (`CudaOps`'), collectives on the NCCL
//! communicator's own stream, ordered by CUDA events and never by host waits:
//! * an all-gather (the next unit's prefetch, issued by the schedule before the current
//!   unit's compute is enqueued) waits for the compute stream's work *so far* (the update that
//!   wrote the bf16 shard, the previous copy out of the slot), then runs while the current
//!   unit computes; the compute stream waits for it only when the unit's window opens, and
//!   then copies the slot into the model's parameter buffers (device to device). Two slots, so
//!   a direct gather can run while a prefetched unit waits in the other.
//! * after a unit's backward its gradients are packed into the flat buffer (and the model's
//!   copy zeroed, so the next micro-batch accumulates from zero); the reduce-scatter waits for
//!   the pack and runs while the next unit's backward computes; the compute stream waits for
//!   it just before packing the next unit (the pack buffer is reused), and adds the result
//!   into the gradient shard then. The last one is added before the gradient norm.
//!
//! Step: all-reduce of the loss-weight sum (host scalar), micro-batches, then the squared
//! norm of the gradient shards per segment on the device (`kormo_grad_sumsq`), read once (the
//! step's host sync, which the trainer's outlier guard needs anyway), all-reduced over the
//! shard group, written back and turned into the clip scale by `kormo_clip_scale`; `apply`
//! runs `kormo_adamw_step` per segment with that device scale, the weight-decay flag of the
//! segment's tensor and the bf16 shard as its weight output. The kernels are
//! `DeviceAdamW`'s, so at world size 1 (where segments are whole tensors) the update is the
//! single-GPU one.
//!
//! Strategies: `full_shard` and `shard_grad_op` over one communicator
//! ([`DeviceFsdpRank::new`]); `hybrid` ([`DeviceFsdpRank::new_hybrid`]) with a second one for
//! the replica groups: `full_shard` inside the shard group, then once per step, after the last
//! reduce-scatter has been added, an all-reduce of every gradient shard across the replicas on
//! that communicator's stream (again between two events, no host wait).
//!
//! Errors: every CUDA or NCCL failure becomes a [`DistError`] naming the rank and the
//! operation; a failure inside a pass ends the pass as on the host path. (`CudaOps` itself
//! panics on driver errors inside model ops, by its own design.)

use std::collections::HashMap;
use std::mem;

use cudarc::driver::{CudaEvent, CudaStream};
use kormo_cuda::bindings::*;
use kormo_cuda::{kernel_launch, CudaBuf, CudaError, CudaOps, Dtype};
use kormo_model::{Batch, LossSum, Model, Ops, ParamSpec};
use kormo_optim::{AdamWConfig, ParamInfo};

use crate::comm::{Collectives, CommError};
use crate::error::DistError;
use crate::fsdp::{
    check_config, grad_scale, initial_shards, run_evaluate, run_micro_batches, segment_infos,
    FsdpConfig, Gradients, ReduceDtype, Release, Residency, ScheduleEvent, ShardStore, Strategy,
    UnitSchedule, UnitStore,
};
use crate::nccl::{NcclComm, WireDtype};
use crate::shard::{segments, units, Segment, ShardRange, Unit};

/// Device scalars: learning rate, sum of squared gradients, clip scale.
const LR: usize = 0;
const SUMSQ: usize = 1;
const CLIP_SCALE: usize = 2;

/// Element counts of the buffers shared by all units, for `ranges` over `group` ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferLayout {
    /// Largest padded shard (the reduce-scatter output).
    pub max_shard: usize,
    /// Largest flat gathered unit, `padded * group` (each gather slot, the pack buffer).
    pub max_full: usize,
    /// All padded shards together (each of master, bf16 parameters, gradient, two moments).
    pub shard_total: usize,
}

impl BufferLayout {
    pub fn of(ranges: &[ShardRange], group: usize) -> BufferLayout {
        let max_shard = ranges.iter().map(|r| r.padded).max().unwrap_or(0);
        BufferLayout {
            max_shard,
            max_full: max_shard * group,
            shard_total: ranges.iter().map(|r| r.padded).sum(),
        }
    }

    /// Device bytes of the shards and the shared buffers (not the model's own buffers): four
    /// f32 shards and one bf16 shard per element; two bf16 gather slots; the f32 pack buffer
    /// and reduce output (plus their bf16 copies for a bf16 wire).
    pub fn bytes(&self, reduce_dtype: ReduceDtype) -> usize {
        let wire = match reduce_dtype {
            ReduceDtype::F32 => 0,
            ReduceDtype::Bf16 => 2 * (self.max_full + self.max_shard),
        };
        self.shard_total * (4 * 4 + 2)
            + 2 * 2 * self.max_full
            + 4 * (self.max_full + self.max_shard)
            + wire
    }
}

/// Byte offset of element `index` of a buffer of `dtype`.
fn at(buf: &CudaBuf, index: usize) -> u64 {
    let bytes = match buf.dtype() {
        Dtype::Bf16 => 2,
        Dtype::F32 => 4,
    };
    buf.device_ptr() + (index * bytes) as u64
}

fn dtype_code(dtype: Dtype) -> i32 {
    match dtype {
        Dtype::Bf16 => KormoDtype_KORMO_DTYPE_BF16 as i32,
        Dtype::F32 => KormoDtype_KORMO_DTYPE_F32 as i32,
    }
}

/// A unit gathered into slot `slot`, waiting for its window.
pub(crate) struct GatherSlot {
    slot: usize,
}

/// The device store: shards and shared buffers, the NCCL shard group, the events between the
/// compute stream and the communicator's stream, and the pools of model buffers.
pub(crate) struct DeviceStore {
    ops: CudaOps,
    /// The shard group (the world unless hybrid).
    comm: NcclComm,
    /// `hybrid`: this rank's replica group (the ranks holding the same shard).
    replica: Option<NcclComm>,
    replica_done: CudaEvent,
    compute: std::sync::Arc<CudaStream>,
    reduce_dtype: ReduceDtype,
    units: Vec<Unit>,
    ranges: Vec<ShardRange>,
    specs: Vec<ParamSpec>,
    master: Vec<CudaBuf>,
    params_bf16: Vec<CudaBuf>,
    grads: Vec<CudaBuf>,
    exp_avg: Vec<CudaBuf>,
    exp_avg_sq: Vec<CudaBuf>,
    gather: [CudaBuf; 2],
    gather_busy: [bool; 2],
    gathered: [CudaEvent; 2],
    pack: CudaBuf,
    /// bf16 copies of `pack` and `reduced` for a bf16 wire (one element otherwise).
    pack_bf16: CudaBuf,
    reduced: CudaBuf,
    reduced_bf16: CudaBuf,
    reduce_done: CudaEvent,
    /// A reduce-scatter of this unit is in flight; its result is still to be added.
    pending_add: Option<usize>,
    compute_ready: CudaEvent,
    /// Model buffers made by this store, free for the next window, by element count.
    param_pool: HashMap<usize, Vec<CudaBuf>>,
    grad_pool: HashMap<usize, Vec<CudaBuf>>,
    /// Device addresses of the model buffers this store made (the ones it pools).
    owned: std::collections::HashSet<u64>,
    /// Empty buffers standing in the model for released tensors.
    placeholders: Vec<CudaBuf>,
}

impl DeviceStore {
    /// A CUDA failure of operation `op` on this rank, as a distributed error.
    fn device_error(&self, op: &str, e: impl std::fmt::Display) -> DistError {
        DistError::Comm(CommError::Device(format!(
            "rank {} of {}: {op}: {e}",
            self.comm.rank(),
            self.comm.world_size()
        )))
    }

    fn elementwise(
        &self,
        what: &str,
        op: KormoElementwiseOp,
        dst: (u64, Dtype),
        src: Option<(u64, Dtype)>,
        n: usize,
        value: f32,
    ) -> Result<(), DistError> {
        let a = KormoElementwiseArgs {
            dst: dst.0,
            src: src.map_or(0, |s| s.0),
            n: n as i64,
            op: op as i32,
            dst_dtype: dtype_code(dst.1),
            src_dtype: dtype_code(src.map_or(dst.1, |s| s.1)),
            value,
        };
        // SAFETY: every caller passes addresses inside live buffers of the named dtypes with
        // at least n elements from there.
        unsafe { kernel_launch::elementwise(self.ops.kernels(), &a) }
            .map_err(|e| self.device_error(what, e))
    }

    fn copy(
        &self,
        what: &str,
        dst: (u64, Dtype),
        src: (u64, Dtype),
        n: usize,
    ) -> Result<(), DistError> {
        self.elementwise(
            what,
            KormoElementwiseOp_KORMO_ELEMENTWISE_COPY,
            dst,
            Some(src),
            n,
            0.0,
        )
    }

    fn fill(&self, what: &str, dst: (u64, Dtype), n: usize, value: f32) -> Result<(), DistError> {
        self.elementwise(
            what,
            KormoElementwiseOp_KORMO_ELEMENTWISE_FILL,
            dst,
            None,
            n,
            value,
        )
    }

    /// The communicator's stream waits for everything enqueued on the compute stream so far.
    fn comm_waits_for_compute(&self, op: &str) -> Result<(), DistError> {
        self.compute_ready
            .record(&self.compute)
            .and_then(|()| self.comm.stream().wait(&self.compute_ready))
            .map_err(|e| self.device_error(&format!("{op}: ordering after the compute stream"), e))
    }

    fn free_slot(&self) -> usize {
        // At most one unit waits in a slot (the prefetched one) when another is gathered.
        if self.gather_busy[0] {
            1
        } else {
            0
        }
    }

    /// Adds the reduce-scatter in flight (if any) into its unit's gradient shard, after the
    /// compute stream has waited for it.
    fn finish_pending(&mut self) -> Result<(), DistError> {
        let Some(w) = self.pending_add.take() else {
            return Ok(());
        };
        self.compute.wait(&self.reduce_done).map_err(|e| {
            self.device_error(
                &format!("reduce_scatter of {}: wait", self.units[w].name),
                e,
            )
        })?;
        let src = match self.reduce_dtype {
            ReduceDtype::F32 => (self.reduced.device_ptr(), Dtype::F32),
            ReduceDtype::Bf16 => (self.reduced_bf16.device_ptr(), Dtype::Bf16),
        };
        let what = format!("adding the reduced gradient of {}", self.units[w].name);
        self.elementwise(
            &what,
            KormoElementwiseOp_KORMO_ELEMENTWISE_ADD,
            (self.grads[w].device_ptr(), Dtype::F32),
            Some(src),
            self.ranges[w].padded,
            0.0,
        )
    }

    /// A buffer of `numel` elements of `dtype` for the model: from the pool, or new.
    fn take_buffer(&mut self, numel: usize, dtype: Dtype) -> CudaBuf {
        let pool = match dtype {
            Dtype::Bf16 => &mut self.param_pool,
            Dtype::F32 => &mut self.grad_pool,
        };
        if let Some(buf) = pool.get_mut(&numel).and_then(Vec::pop) {
            return buf;
        }
        // New buffers are zero (the gradient pool keeps that invariant: see reduce_scatter).
        let buf = match dtype {
            Dtype::Bf16 => self.ops.zeros(numel),
            Dtype::F32 => self.ops.zeros_f32(numel),
        };
        self.owned.insert(buf.device_ptr());
        buf
    }

    /// Takes `buf` out of the model: into its pool when this store made it (and it still has
    /// the size and dtype it was made with), else it is freed.
    fn give_back(&mut self, buf: CudaBuf, numel: usize, dtype: Dtype) {
        if buf.is_empty() {
            self.placeholders.push(buf);
            return;
        }
        if self.owned.contains(&buf.device_ptr()) {
            if buf.len() == numel && buf.dtype() == dtype {
                let pool = match dtype {
                    Dtype::Bf16 => &mut self.param_pool,
                    Dtype::F32 => &mut self.grad_pool,
                };
                pool.entry(numel).or_default().push(buf);
                return;
            }
            self.owned.remove(&buf.device_ptr());
        }
    }

    fn placeholder(&mut self) -> CudaBuf {
        self.placeholders.pop().unwrap_or_else(|| self.ops.zeros(0))
    }

    /// Puts a pooled (or new) buffer of `numel` elements of `dtype` into `slot` unless it
    /// already holds one.
    fn ensure_model_buffer(&mut self, slot: &mut CudaBuf, numel: usize, dtype: Dtype) {
        if slot.len() == numel && slot.dtype() == dtype {
            return;
        }
        let fresh = self.take_buffer(numel, dtype);
        let old = mem::replace(slot, fresh);
        self.give_back(old, numel, dtype);
    }
}

impl Drop for DeviceStore {
    fn drop(&mut self) {
        // Collectives still queued read or write the buffers about to be freed.
        let _ = self.comm.stream().synchronize();
        if let Some(replica) = &self.replica {
            let _ = replica.stream().synchronize();
        }
    }
}

impl ShardStore for DeviceStore {
    type Gathered = GatherSlot;

    fn all_gather(&mut self, u: usize) -> Result<GatherSlot, DistError> {
        let slot = self.free_slot();
        let what = format!("all_gather of {}", self.units[u].name);
        self.comm_waits_for_compute(&what)?;
        let padded = self.ranges[u].padded;
        // SAFETY: the bf16 shard holds `padded` elements and the slot `max_full >= padded *
        // group`; both live as long as the store, whose drop waits for the stream.
        unsafe {
            self.comm.all_gather_ptr(
                self.params_bf16[u].device_ptr(),
                self.gather[slot].device_ptr(),
                padded,
                WireDtype::Bf16,
            )
        }
        .map_err(|e| self.device_error(&what, e))?;
        self.gathered[slot]
            .record(self.comm.stream())
            .map_err(|e| self.device_error(&format!("{what}: event"), e))?;
        self.gather_busy[slot] = true;
        Ok(GatherSlot { slot })
    }

    fn zeros_gathered(&mut self, u: usize) -> GatherSlot {
        let slot = self.free_slot();
        let n = self.ranges[u].padded * self.comm.world_size();
        // Best effort: the pass has already failed; the zeros only keep the model finite.
        let _ = self.fill(
            "zeros after a failure",
            (self.gather[slot].device_ptr(), Dtype::Bf16),
            n,
            0.0,
        );
        self.gather_busy[slot] = true;
        GatherSlot { slot }
    }

    fn drop_gathered(&mut self, gathered: GatherSlot) {
        self.gather_busy[gathered.slot] = false;
    }
}

impl UnitStore<CudaOps> for DeviceStore {
    fn install(
        &mut self,
        _ops: &CudaOps,
        params: &mut [CudaBuf],
        u: usize,
        gathered: GatherSlot,
    ) -> Result<(), DistError> {
        let slot = gathered.slot;
        self.gather_busy[slot] = false;
        let name = self.units[u].name.clone();
        self.compute
            .wait(&self.gathered[slot])
            .map_err(|e| self.device_error(&format!("all_gather of {name}: wait"), e))?;
        for i in 0..self.units[u].tensors.len() {
            let (tensor, offset) = (self.units[u].tensors[i], self.units[u].offsets[i]);
            let numel = self.specs[tensor].numel();
            self.ensure_model_buffer(&mut params[tensor], numel, Dtype::Bf16);
            self.copy(
                &format!("installing {}", self.specs[tensor].name),
                (params[tensor].device_ptr(), Dtype::Bf16),
                (at(&self.gather[slot], offset), Dtype::Bf16),
                numel,
            )?;
        }
        Ok(())
    }

    fn discard(
        &mut self,
        _ops: &CudaOps,
        params: &mut [CudaBuf],
        u: usize,
        release: Release,
    ) -> Result<(), DistError> {
        for i in 0..self.units[u].tensors.len() {
            let tensor = self.units[u].tensors[i];
            let numel = self.specs[tensor].numel();
            match release {
                Release::Free => {
                    if !params[tensor].is_empty() {
                        let empty = self.placeholder();
                        let old = mem::replace(&mut params[tensor], empty);
                        self.give_back(old, numel, Dtype::Bf16);
                    }
                }
                Release::PoisonNan => {
                    self.ensure_model_buffer(&mut params[tensor], numel, Dtype::Bf16);
                    self.fill(
                        "poisoning a released unit",
                        (params[tensor].device_ptr(), Dtype::Bf16),
                        numel,
                        f32::NAN,
                    )?;
                }
            }
        }
        Ok(())
    }

    fn reduce_scatter(
        &mut self,
        _ops: &CudaOps,
        grads: &mut [CudaBuf],
        u: usize,
        communicate: bool,
    ) -> Result<(), DistError> {
        // The pack buffer is reused: the previous reduce-scatter must be done with it.
        self.finish_pending()?;
        let name = self.units[u].name.clone();
        let (numel, padded) = (self.units[u].numel, self.ranges[u].padded);
        let full = padded * self.comm.world_size();
        for i in 0..self.units[u].tensors.len() {
            let (tensor, offset) = (self.units[u].tensors[i], self.units[u].offsets[i]);
            let n = self.specs[tensor].numel();
            let what = format!("packing the gradient of {}", self.specs[tensor].name);
            self.copy(
                &what,
                (at(&self.pack, offset), Dtype::F32),
                (grads[tensor].device_ptr(), grads[tensor].dtype()),
                n,
            )?;
            // Zeroed here, so the next micro-batch accumulates from zero and a buffer that
            // goes back to the pool is zero (take_buffer relies on it).
            self.fill(
                &what,
                (grads[tensor].device_ptr(), grads[tensor].dtype()),
                n,
                0.0,
            )?;
        }
        self.fill(
            "zeroing the pack padding",
            (at(&self.pack, numel), Dtype::F32),
            full - numel,
            0.0,
        )?;
        if !communicate {
            return Ok(());
        }
        let what = format!("reduce_scatter of {name}");
        let (send, recv, wire) = match self.reduce_dtype {
            ReduceDtype::F32 => (
                self.pack.device_ptr(),
                self.reduced.device_ptr(),
                WireDtype::F32,
            ),
            ReduceDtype::Bf16 => {
                self.copy(
                    &what,
                    (self.pack_bf16.device_ptr(), Dtype::Bf16),
                    (self.pack.device_ptr(), Dtype::F32),
                    full,
                )?;
                (
                    self.pack_bf16.device_ptr(),
                    self.reduced_bf16.device_ptr(),
                    WireDtype::Bf16,
                )
            }
        };
        self.comm_waits_for_compute(&what)?;
        // SAFETY: `send` holds `full = padded * group` and `recv` `max_shard >= padded`
        // elements of `wire`; both live as long as the store.
        unsafe { self.comm.reduce_scatter_ptr(send, recv, padded, wire) }
            .map_err(|e| self.device_error(&what, e))?;
        self.reduce_done
            .record(self.comm.stream())
            .map_err(|e| self.device_error(&format!("{what}: event"), e))?;
        self.pending_add = Some(u);
        Ok(())
    }

    fn hold_grads(
        &mut self,
        _ops: &CudaOps,
        grads: &mut [CudaBuf],
        u: usize,
    ) -> Result<(), DistError> {
        for i in 0..self.units[u].tensors.len() {
            let tensor = self.units[u].tensors[i];
            let numel = self.specs[tensor].numel();
            self.ensure_model_buffer(&mut grads[tensor], numel, Dtype::F32);
        }
        Ok(())
    }

    fn free_grads(
        &mut self,
        _ops: &CudaOps,
        grads: &mut [CudaBuf],
        u: usize,
    ) -> Result<(), DistError> {
        for i in 0..self.units[u].tensors.len() {
            let tensor = self.units[u].tensors[i];
            let numel = self.specs[tensor].numel();
            let empty = self.placeholder();
            let old = mem::replace(&mut grads[tensor], empty);
            self.give_back(old, numel, Dtype::F32);
        }
        Ok(())
    }
}

/// Refuses settings the device engine cannot run with the communicators it is given:
/// `shard_group` ranks per shard group, and `replica_group` ranks per replica group when a
/// replica-group communicator was given ([`DeviceFsdpRank::new_hybrid`]).
pub fn check_device_config(
    config: &FsdpConfig,
    shard_group: usize,
    replica_group: Option<usize>,
) -> Result<(), DistError> {
    check_config(config)?;
    match (config.strategy, replica_group) {
        (Strategy::FullShard | Strategy::ShardGradOp, None) => Ok(()),
        (Strategy::FullShard | Strategy::ShardGradOp, Some(_)) => Err(DistError::Config(
            "a replica-group communicator is only for strategy hybrid (DeviceFsdpRank::new_hybrid)"
                .into(),
        )),
        (Strategy::Hybrid, None) => Err(DistError::Config(
            "strategy hybrid on the device needs a second NCCL communicator for the replica \
             groups: use DeviceFsdpRank::new_hybrid"
                .into(),
        )),
        (Strategy::Hybrid, Some(_)) => match config.hybrid_group_size {
            Some(size) if size != shard_group => Err(DistError::Config(format!(
                "hybrid_group_size = {size}, but the shard-group communicator has {shard_group} ranks"
            ))),
            _ => Ok(()),
        },
    }
}

/// One rank's share of a sharded `Model<CudaOps>` and its AdamW state, on the device.
/// The public shape is [`crate::FsdpRank`]'s.
pub struct DeviceFsdpRank {
    config: FsdpConfig,
    model: Model<CudaOps>,
    ops: CudaOps,
    shards: UnitSchedule<DeviceStore>,
    segments: Vec<Segment>,
    /// Optimizer tensors, one per segment (the segment's tensor name and weight-decay flag).
    infos: Vec<ParamInfo>,
    adamw: AdamWConfig,
    step: u64,
    scalars: [CudaBuf; 3],
    gradients_ready: bool,
}

impl DeviceFsdpRank {
    /// Shards `model` (built with the same seed on every rank) over `comm` as `config` says.
    /// `comm` should run on its own stream of the model's device (`CudaContext::new_stream`):
    /// on the compute stream itself everything still works, without overlap.
    pub fn new(
        comm: NcclComm,
        model: Model<CudaOps>,
        adamw: AdamWConfig,
        config: FsdpConfig,
    ) -> Result<Self, DistError> {
        Self::build(comm, None, model, adamw, config)
    }

    /// `hybrid`: parameters sharded over `shard_group` (the ranks of a node, `full_shard`
    /// there) and replicated across `replica_group` (the ranks with the same shard rank in the
    /// other groups), whose gradient shards are all-reduced once per step. The caller makes the
    /// two communicators (e.g. one NCCL unique id per group through the rendezvous); as on the
    /// host path, world rank = replica rank x group size + shard rank.
    pub fn new_hybrid(
        shard_group: NcclComm,
        replica_group: NcclComm,
        model: Model<CudaOps>,
        adamw: AdamWConfig,
        config: FsdpConfig,
    ) -> Result<Self, DistError> {
        Self::build(shard_group, Some(replica_group), model, adamw, config)
    }

    /// The engine of one launched rank of `world` (the host group), communicators included:
    /// one NCCL communicator over the world, or for `hybrid` one per shard group
    /// (`hybrid_group_size` consecutive ranks, a node) and one per replica group (the ranks at
    /// the same place in their nodes), the groups the host path's `SubGroup`s form. Each
    /// group's first rank makes its NCCL unique id and the host group hands them out in one
    /// exchange ([`crate::nccl::connect_groups`]); each communicator runs on its own stream of
    /// the model's device, and `watchdog` polls and aborts them from now on.
    pub fn connect(
        world: &dyn crate::comm::HostTransport,
        model: Model<CudaOps>,
        adamw: AdamWConfig,
        config: FsdpConfig,
        watchdog: Option<&crate::watchdog::Watchdog>,
    ) -> Result<Self, DistError> {
        let rank = world.rank();
        let context = model.ops().kernels().context().clone();
        let groups = match config.strategy {
            Strategy::Hybrid => Some(config.hybrid_group_size.ok_or_else(|| {
                DistError::Config("strategy hybrid needs dist.hybrid_group_size (ranks per node)".into())
            })?),
            Strategy::FullShard | Strategy::ShardGradOp => None,
        };
        let new_stream = || {
            context
                .new_stream()
                .map_err(|e| CommError::Device(format!("rank {rank}: a CUDA stream for NCCL: {e:?}")))
        };
        let comms = crate::nccl::connect_groups(world, groups, new_stream)?;
        if let Some(watchdog) = watchdog {
            watchdog.watch(comms.iter().map(|(place, comm)| comm.watch(place.name)).collect());
        }
        let mut comms = comms.into_iter().map(|(_, comm)| comm);
        let first = comms.next().expect("at least one communicator");
        match comms.next() {
            Some(replica_group) => Self::new_hybrid(first, replica_group, model, adamw, config),
            None => Self::new(first, model, adamw, config),
        }
    }

    fn build(
        comm: NcclComm,
        replica: Option<NcclComm>,
        model: Model<CudaOps>,
        adamw: AdamWConfig,
        config: FsdpConfig,
    ) -> Result<Self, DistError> {
        check_device_config(
            &config,
            comm.world_size(),
            replica.as_ref().map(NcclComm::world_size),
        )?;
        adamw.validate()?;
        let ops = model.ops().clone();
        let compute = ops.kernels().stream().clone();
        for (what, c) in std::iter::once(("shard-group", &comm))
            .chain(replica.iter().map(|r| ("replica-group", r)))
        {
            if c.stream().context() != compute.context() {
                return Err(DistError::Config(format!(
                    "rank {}: the {what} NCCL communicator's stream belongs to another CUDA context than the model's",
                    c.rank()
                )));
            }
        }
        let (rank, group) = (comm.rank(), comm.world_size());
        let unit_list = units(model.config());
        let ranges: Vec<ShardRange> = unit_list
            .iter()
            .map(|u| ShardRange::of(u.numel, rank, group))
            .collect();
        let specs = model.param_specs().to_vec();
        let segment_list = segments(&unit_list, &ranges, &specs);
        let host = initial_shards(&model, &unit_list, &ranges, &segment_list)?;
        let layout = BufferLayout::of(&ranges, group);
        let device_error = |op: &str, e: CudaError| {
            DistError::Comm(CommError::Device(format!(
                "rank {rank} of {group}: {op}: {e}"
            )))
        };
        let event = |what: &str| {
            compute
                .context()
                .new_event(None)
                .map_err(|e| device_error(what, e.into()))
        };
        let mut master = Vec::with_capacity(ranges.len());
        for (range, values) in ranges.iter().zip(&host) {
            let mut padded = values.clone();
            padded.resize(range.padded, 0.0);
            master.push(ops.upload_f32(&padded));
        }
        let zeros_f32 = || {
            ranges
                .iter()
                .map(|r| ops.zeros_f32(r.padded))
                .collect::<Vec<_>>()
        };
        let wire = config.reduce_dtype == ReduceDtype::Bf16;
        let store = DeviceStore {
            ops: ops.clone(),
            compute: compute.clone(),
            reduce_dtype: config.reduce_dtype,
            units: unit_list.clone(),
            params_bf16: ranges.iter().map(|r| ops.zeros(r.padded)).collect(),
            grads: zeros_f32(),
            exp_avg: zeros_f32(),
            exp_avg_sq: zeros_f32(),
            master,
            ranges,
            specs: specs.clone(),
            gather: [ops.zeros(layout.max_full), ops.zeros(layout.max_full)],
            gather_busy: [false; 2],
            gathered: [event("gather event")?, event("gather event")?],
            pack: ops.zeros_f32(layout.max_full),
            pack_bf16: ops.zeros(if wire { layout.max_full } else { 1 }),
            reduced: ops.zeros_f32(layout.max_shard),
            reduced_bf16: ops.zeros(if wire { layout.max_shard } else { 1 }),
            reduce_done: event("reduce event")?,
            pending_add: None,
            compute_ready: event("compute event")?,
            replica_done: event("replica event")?,
            replica,
            param_pool: HashMap::new(),
            grad_pool: HashMap::new(),
            owned: Default::default(),
            placeholders: Vec::new(),
            comm,
        };
        // The bf16 shards (the all-gather inputs) from the masters, rounded on the device as
        // the AdamW kernel rounds its weight output.
        for u in 0..store.units.len() {
            store.copy(
                "initial bf16 shard",
                (store.params_bf16[u].device_ptr(), Dtype::Bf16),
                (store.master[u].device_ptr(), Dtype::F32),
                store.ranges[u].padded,
            )?;
        }
        let tied = model.config().tie_embeddings;
        let infos = segment_infos(&segment_list, &specs);
        Ok(DeviceFsdpRank {
            config,
            model,
            shards: UnitSchedule::new(store, unit_list, tied),
            segments: segment_list,
            infos,
            adamw,
            step: 0,
            scalars: [ops.zeros_f32(1), ops.zeros_f32(1), ops.zeros_f32(1)],
            ops,
            gradients_ready: false,
        })
    }

    fn store(&self) -> &DeviceStore {
        &self.shards.store
    }

    fn device_error(&self, op: &str, e: impl std::fmt::Display) -> DistError {
        self.store().device_error(op, e)
    }

    /// Chooses how units leave the model when their windows close (see [`Release`]; `Free`
    /// returns the buffers to this rank's pools).
    pub fn set_release(&mut self, release: Release) {
        self.shards.set_release(release);
    }

    pub fn config(&self) -> &FsdpConfig {
        &self.config
    }

    /// The communicator parameters are sharded over (the world unless hybrid).
    pub fn shard_group(&self) -> &NcclComm {
        &self.store().comm
    }

    /// `hybrid`: the communicator of this rank's replica group.
    pub fn replica_group(&self) -> Option<&NcclComm> {
        self.store().replica.as_ref()
    }

    /// Rank among the replicas of this shard (0 unless hybrid).
    pub fn replica_rank(&self) -> usize {
        self.replica_group().map_or(0, NcclComm::rank)
    }

    /// This rank in the world: replica rank x shard-group size + shard rank.
    pub fn world_rank(&self) -> usize {
        self.replica_rank() * self.shard_group().world_size() + self.shard_group().rank()
    }

    pub fn world_size(&self) -> usize {
        self.shard_group().world_size() * self.replica_group().map_or(1, NcclComm::world_size)
    }

    /// Sums host scalars over the world: over the shard group, then across replicas.
    pub fn all_reduce_world(&self, values: &mut [f64]) -> Result<(), DistError> {
        self.shard_group().all_reduce_scalars(values)?;
        if let Some(replica) = self.replica_group() {
            replica.all_reduce_scalars(values)?;
        }
        Ok(())
    }

    pub fn units(&self) -> &[Unit] {
        &self.shards.units
    }

    pub fn ranges(&self) -> &[ShardRange] {
        &self.store().ranges
    }

    pub fn param_specs(&self) -> &[ParamSpec] {
        &self.store().specs
    }

    /// Optimizer tensors, one per segment of this rank's shards.
    pub fn param_infos(&self) -> &[ParamInfo] {
        &self.infos
    }

    pub fn model(&self) -> &Model<CudaOps> {
        &self.model
    }

    pub fn ops(&self) -> &CudaOps {
        &self.ops
    }

    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// This rank in its shard group, and the group's size (the shard count).
    pub fn shard_rank(&self) -> usize {
        self.shard_group().rank()
    }

    pub fn shard_count(&self) -> usize {
        self.shard_group().world_size()
    }

    /// Per unit, this rank's parameter, `exp_avg` and `exp_avg_sq` shards (copied to the host),
    /// and AdamW's step.
    #[allow(clippy::type_complexity)]
    pub fn host_shards(&self) -> Result<([Vec<Vec<f32>>; 3], u64), DistError> {
        let (exp_avg, exp_avg_sq) = self.moment_shards()?;
        Ok(([self.shards()?, exp_avg, exp_avg_sq], self.step_count()))
    }

    pub fn last_step_schedule(&self) -> &[ScheduleEvent] {
        &self.shards.schedule
    }

    pub fn residency(&self) -> Residency {
        self.shards.residency
    }

    pub fn gradient_residency(&self) -> Residency {
        self.shards.grad_residency
    }

    /// Forward and backward over this rank's micro-batches, gradients reduced into the
    /// device shards, global norm measured and the clip scale set on the device (as
    /// [`crate::FsdpRank::forward_backward`]). Collective.
    pub fn forward_backward(&mut self, micro_batches: &[Batch]) -> Result<Gradients, DistError> {
        let grad_scale = grad_scale(micro_batches, |v| self.all_reduce_world(v))?;
        self.gradients_ready = false;
        {
            let store = &self.shards.store;
            for (u, g) in store.grads.iter().enumerate() {
                store.fill(
                    "zeroing the gradient shard",
                    (g.device_ptr(), Dtype::F32),
                    store.ranges[u].padded,
                    0.0,
                )?;
            }
        }
        let loss = run_micro_batches(
            &mut self.model,
            &mut self.shards,
            self.config.strategy,
            micro_batches,
            grad_scale,
        )?;
        self.shards.store.finish_pending()?;
        self.replica_all_reduce()?;

        let store = &self.shards.store;
        store.fill(
            "zeroing the norm",
            (self.scalars[SUMSQ].device_ptr(), Dtype::F32),
            1,
            0.0,
        )?;
        for seg in &self.segments {
            let a = KormoGradSumsqArgs {
                grad: at(&store.grads[seg.unit], seg.shard_offset),
                sumsq: self.scalars[SUMSQ].device_ptr(),
                n: seg.len as i64,
            };
            // SAFETY: the segment lies inside its unit's gradient shard; sumsq is one f32. The
            // backend's kernel for its mode (fixed-order partial sums when deterministic).
            unsafe { self.ops.add_grad_sumsq(&a) }
                .map_err(|e| self.device_error("grad_sumsq", e))?;
        }
        self.ops
            .synchronize()
            .map_err(|e| self.device_error("gradient norm (synchronize)", e))?;
        let mut squares = [self.ops.sum(&self.scalars[SUMSQ])];
        self.store()
            .comm
            .all_reduce_scalars(&mut squares)
            .map_err(DistError::from)?;
        let store = &self.shards.store;
        store.fill(
            "global norm",
            (self.scalars[SUMSQ].device_ptr(), Dtype::F32),
            1,
            squares[0] as f32,
        )?;
        let c = KormoClipScaleArgs {
            sumsq: self.scalars[SUMSQ].device_ptr(),
            clip_scale: self.scalars[CLIP_SCALE].device_ptr(),
            max_norm: self.config.grad_clip as f32,
            _pad0: 0,
        };
        // SAFETY: two single f32 device values.
        unsafe { kernel_launch::clip_scale(self.ops.kernels(), &c) }
            .map_err(|e| self.device_error("clip_scale", e))?;
        let grad_norm = squares[0].sqrt();

        let mut sums = [loss.weighted_loss, loss.weight, loss.mtp_weighted_loss, loss.mtp_weight];
        self.all_reduce_world(&mut sums)?;
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

    /// `hybrid`: sums every gradient shard across the replica group, on the replica
    /// communicator's stream between two events (no host wait).
    fn replica_all_reduce(&mut self) -> Result<(), DistError> {
        let s = &mut self.shards;
        let Some(replica) = &s.store.replica else {
            return Ok(());
        };
        let store = &s.store;
        let what = "replica all_reduce of the gradient shards";
        store
            .compute_ready
            .record(&store.compute)
            .and_then(|()| replica.stream().wait(&store.compute_ready))
            .map_err(|e| store.device_error(&format!("{what}: ordering"), e))?;
        for u in 0..store.units.len() {
            s.schedule.push(ScheduleEvent::ReplicaAllReduce(u));
            // SAFETY: the gradient shard holds `padded` f32 and lives as long as the store,
            // whose drop waits for this stream.
            unsafe {
                replica.all_reduce_ptr(
                    store.grads[u].device_ptr(),
                    store.ranges[u].padded,
                    WireDtype::F32,
                )
            }
            .map_err(|e| store.device_error(&format!("{what} ({})", store.units[u].name), e))?;
        }
        store
            .replica_done
            .record(replica.stream())
            .and_then(|()| store.compute.wait(&store.replica_done))
            .map_err(|e| store.device_error(&format!("{what}: wait"), e))
    }

    /// AdamW at `lr` on this rank's device shards with the last `forward_backward`'s
    /// gradients and clip scale; writes the bf16 shards the next all-gathers read. Once per
    /// `forward_backward`.
    pub fn apply(&mut self, lr: f64) -> Result<(), DistError> {
        if !mem::take(&mut self.gradients_ready) {
            return Err(DistError::Config(
                "DeviceFsdpRank::apply without new gradients (call forward_backward first)".into(),
            ));
        }
        self.step += 1;
        let t = self.step as i32;
        let c = &self.adamw;
        let (bias_correction1, bias_correction2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        let store = &self.shards.store;
        store.fill(
            "learning rate",
            (self.scalars[LR].device_ptr(), Dtype::F32),
            1,
            lr as f32,
        )?;
        for (seg, info) in self.segments.iter().zip(&self.infos) {
            let (u, off) = (seg.unit, seg.shard_offset);
            let a = KormoAdamwArgs {
                master: at(&store.master[u], off),
                grad: at(&store.grads[u], off),
                exp_avg: at(&store.exp_avg[u], off),
                exp_avg_sq: at(&store.exp_avg_sq[u], off),
                weight: at(&store.params_bf16[u], off),
                lr: self.scalars[LR].device_ptr(),
                clip_scale: self.scalars[CLIP_SCALE].device_ptr(),
                n: seg.len as i64,
                beta1: c.beta1 as f32,
                beta2: c.beta2 as f32,
                eps: c.eps as f32,
                weight_decay: c.weight_decay as f32,
                bias_correction1: bias_correction1 as f32,
                bias_correction2: bias_correction2 as f32,
                apply_weight_decay: info.weight_decay as i32,
                _pad0: 0,
            };
            // SAFETY: the segment lies inside its unit's shards (f32 master, gradient and
            // moments, bf16 weights); lr and clip_scale are single f32 values.
            unsafe { kernel_launch::adamw_step(self.ops.kernels(), &a) }
                .map_err(|e| self.device_error(&format!("adamw_step of {}", info.name), e))?;
        }
        Ok(())
    }

    /// Loss of `batch` (this rank's rows) summed over all ranks. Collective.
    pub fn evaluate(&mut self, batch: &Batch) -> Result<LossSum, DistError> {
        let loss = run_evaluate(&mut self.model, &mut self.shards, batch)?;
        let mut sums = [loss.weighted_loss, loss.weight, loss.mtp_weighted_loss, loss.mtp_weight];
        self.all_reduce_world(&mut sums)?;
        Ok(LossSum {
            weighted_loss: sums[0],
            weight: sums[1],
            mtp_weighted_loss: sums[2],
            mtp_weight: sums[3],
        })
    }

    /// Downloads `bufs[u][..ranges[u].len()]` for every unit.
    fn download(&self, bufs: &[CudaBuf]) -> Result<Vec<Vec<f32>>, DistError> {
        self.ops
            .synchronize()
            .map_err(|e| self.device_error("download (synchronize)", e))?;
        Ok(bufs
            .iter()
            .zip(self.ranges())
            .map(|(buf, range)| {
                let mut host = vec![0.0; buf.len()];
                self.ops.read(buf, &mut host);
                host.truncate(range.len());
                host
            })
            .collect())
    }

    /// This rank's f32 master shards per unit (unpadded), copied to the host.
    pub fn shards(&self) -> Result<Vec<Vec<f32>>, DistError> {
        self.download(&self.store().master)
    }

    /// This rank's `exp_avg` and `exp_avg_sq` shards per unit, copied to the host.
    #[allow(clippy::type_complexity)]
    pub fn moment_shards(&self) -> Result<(Vec<Vec<f32>>, Vec<Vec<f32>>), DistError> {
        Ok((
            self.download(&self.store().exp_avg)?,
            self.download(&self.store().exp_avg_sq)?,
        ))
    }

    /// The full f32 parameters, tensor by tensor in canonical order, all-gathered on the
    /// device and copied to the host (collective: every rank calls it).
    pub fn full_params(&self) -> Result<Vec<Vec<f32>>, DistError> {
        let store = self.store();
        let group = store.comm.world_size();
        let layout = BufferLayout::of(&store.ranges, group);
        let full = self.ops.zeros_f32(layout.max_full);
        let mut host = vec![0.0; layout.max_full];
        let mut out: Vec<Vec<f32>> = store.specs.iter().map(|_| Vec::new()).collect();
        for (u, unit) in store.units.iter().enumerate() {
            let what = format!("all_gather of {} (full parameters)", unit.name);
            store.comm_waits_for_compute(&what)?;
            // SAFETY: master[u] holds `padded` f32, `full` max_full >= padded * group.
            unsafe {
                store.comm.all_gather_ptr(
                    store.master[u].device_ptr(),
                    full.device_ptr(),
                    store.ranges[u].padded,
                    WireDtype::F32,
                )
            }
            .map_err(|e| store.device_error(&what, e))?;
            store
                .comm
                .stream()
                .synchronize()
                .map_err(|e| store.device_error(&what, e))?;
            self.ops.read(&full, &mut host);
            for (&tensor, &offset) in unit.tensors.iter().zip(&unit.offsets) {
                out[tensor] = host[offset..offset + store.specs[tensor].numel()].to_vec();
            }
        }
        Ok(out)
    }

    /// Replaces this rank's shards of parameters and moments and the step count (checkpoint
    /// restore), uploading them; the bf16 shards follow the masters.
    pub fn load_shards(
        &mut self,
        params: Vec<Vec<f32>>,
        exp_avg: &[Vec<f32>],
        exp_avg_sq: &[Vec<f32>],
        step: u64,
    ) -> Result<(), DistError> {
        let store = &self.shards.store;
        for (u, p) in params.iter().enumerate() {
            let len = store.ranges.get(u).map(ShardRange::len);
            if Some(p.len()) != len
                || exp_avg.get(u).map(Vec::len) != len
                || exp_avg_sq.get(u).map(Vec::len) != len
            {
                return Err(DistError::Config(format!(
                    "restored shard of unit {} has the wrong length",
                    store.units.get(u).map_or("?", |unit| unit.name.as_str())
                )));
            }
        }
        if params.len() != store.units.len()
            || exp_avg.len() != params.len()
            || exp_avg_sq.len() != params.len()
        {
            return Err(DistError::Config(format!(
                "restored shards for {} units, the model has {}",
                params.len(),
                store.units.len()
            )));
        }
        let ops = self.ops.clone();
        let store = &mut self.shards.store;
        for u in 0..params.len() {
            let padded = store.ranges[u].padded;
            for (buf, values) in [
                (&mut store.master[u], &params[u]),
                (&mut store.exp_avg[u], &exp_avg[u]),
                (&mut store.exp_avg_sq[u], &exp_avg_sq[u]),
            ] {
                let mut host = values.clone();
                host.resize(padded, 0.0);
                ops.write(buf, &host);
            }
            store.copy(
                "restored bf16 shard",
                (store.params_bf16[u].device_ptr(), Dtype::Bf16),
                (store.master[u].device_ptr(), Dtype::F32),
                padded,
            )?;
        }
        self.step = step;
        self.gradients_ready = false;
        Ok(())
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use kormo_model::{params, ModelConfig};

    fn ranges_of(config: &ModelConfig, rank: usize, group: usize) -> (Vec<Unit>, Vec<ShardRange>) {
        let unit_list = units(config);
        let ranges = unit_list
            .iter()
            .map(|u| ShardRange::of(u.numel, rank, group))
            .collect();
        (unit_list, ranges)
    }

    #[test]
    fn buffer_layout_holds_the_largest_unit_and_every_shard() {
        let config = ModelConfig::tiny();
        for group in 1..=5 {
            let (unit_list, ranges) = ranges_of(&config, group - 1, group);
            let layout = BufferLayout::of(&ranges, group);
            for (unit, range) in unit_list.iter().zip(&ranges) {
                // The gather slot and the pack buffer hold the unit's flat padded vector, the
                // reduce output its padded shard.
                assert!(range.padded * group <= layout.max_full && unit.numel <= layout.max_full);
                assert!(range.padded <= layout.max_shard);
            }
            assert_eq!(
                layout.shard_total,
                ranges.iter().map(|r| r.padded).sum::<usize>()
            );
            let largest = unit_list.iter().map(|u| u.numel).max().unwrap();
            assert_eq!(layout.max_shard, largest.div_ceil(group));
            assert!(layout.bytes(ReduceDtype::Bf16) > layout.bytes(ReduceDtype::F32));
            // Four f32 and one bf16 shard per element dominate: about 18 bytes / group.
            let params: usize = unit_list.iter().map(|u| u.numel).sum();
            assert!(layout.shard_total * 18 >= params * 18 / group);
        }
    }

    #[test]
    fn at_world_size_one_the_segments_are_the_tensors_of_the_single_gpu_optimizer() {
        // The single-GPU trainer gives DeviceAdamW one ParamInfo per tensor in canonical
        // order; at world size 1 the device FSDP runs the same kernels on the same list.
        let config = ModelConfig {
            tie_embeddings: true,
            ..ModelConfig::tiny()
        };
        let specs = params::layout(&config);
        let (unit_list, ranges) = ranges_of(&config, 0, 1);
        let infos = segment_infos(&segments(&unit_list, &ranges, &specs), &specs);
        let single = kormo_cuda::optim::param_infos(&specs);
        assert_eq!(infos, single);
    }

    #[test]
    fn every_segment_keeps_its_tensors_weight_decay_and_the_shards_cover_each_tensor() {
        let config = ModelConfig::tiny();
        let specs = params::layout(&config);
        for group in 1..=4 {
            let mut covered = vec![0usize; specs.len()];
            for rank in 0..group {
                let (unit_list, ranges) = ranges_of(&config, rank, group);
                let segs = segments(&unit_list, &ranges, &specs);
                let infos = segment_infos(&segs, &specs);
                for (seg, info) in segs.iter().zip(&infos) {
                    assert_eq!(info.name, specs[seg.tensor].name);
                    assert_eq!(info.weight_decay, specs[seg.tensor].weight_decay());
                    assert_eq!(info.numel, seg.len);
                    // Kernel addresses: the segment lies inside the padded shard buffers.
                    assert!(seg.shard_offset + seg.len <= ranges[seg.unit].padded);
                    covered[seg.tensor] += seg.len;
                }
            }
            assert!(
                covered.iter().zip(&specs).all(|(&c, s)| c == s.numel()),
                "group {group}"
            );
        }
    }

    #[test]
    fn settings_that_do_not_fit_the_communicators_are_refused_by_name() {
        let config = |strategy, hybrid_group_size| FsdpConfig {
            strategy,
            hybrid_group_size,
            reduce_dtype: ReduceDtype::F32,
            grad_clip: 1.0,
        };
        let err = |c: &FsdpConfig, shard, replica| {
            check_device_config(c, shard, replica)
                .unwrap_err()
                .to_string()
        };
        check_device_config(&config(Strategy::FullShard, None), 4, None).unwrap();
        check_device_config(&config(Strategy::ShardGradOp, None), 4, None).unwrap();
        check_device_config(&config(Strategy::Hybrid, Some(4)), 4, Some(2)).unwrap();
        check_device_config(&config(Strategy::Hybrid, None), 4, Some(2)).unwrap();
        let no_replicas = err(&config(Strategy::Hybrid, Some(4)), 4, None);
        assert!(no_replicas.contains("new_hybrid"), "{no_replicas}");
        let extra = err(&config(Strategy::FullShard, None), 4, Some(2));
        assert!(extra.contains("only for strategy hybrid"), "{extra}");
        let size = err(&config(Strategy::Hybrid, Some(8)), 4, Some(2));
        assert!(
            size.contains("hybrid_group_size = 8") && size.contains("4 ranks"),
            "{size}"
        );
        let bad_clip = FsdpConfig {
            grad_clip: -1.0,
            ..config(Strategy::FullShard, None)
        };
        assert!(err(&bad_clip, 1, None).contains("grad_clip"));
    }
}
