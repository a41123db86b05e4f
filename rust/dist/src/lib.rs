//! kormo-dist: data-parallel training across ranks.
//!
//! * [`comm`] — the [`Collectives`] trait (all-gather, reduce-scatter in f32 or bf16,
//!   all-reduce, broadcast, barrier) over host or device buffers; host communicators implement
//!   one primitive ([`HostTransport::exchange`]) and reduce in rank order; [`SubGroup`] splits a
//!   group (hybrid sharding).
//! * [`nccl`] — the same trait over NCCL on device buffers (compiled everywhere, runs on GPUs);
//!   a strategy's communicators (`connect_groups`: the world, or `hybrid`'s shard and replica
//!   groups) and a watchdog's handle on them (`NcclWatch`).
//! * [`device_fsdp`] — [`DeviceFsdpRank`]: the FSDP engine of [`fsdp`] with its shards,
//!   gathers and reductions on the GPU (`Model<CudaOps>`, NCCL on a second stream);
//!   `DeviceFsdpRank::connect` builds a strategy's communicators for it.
//! * [`local`] — in-process communicator, one thread per rank (tests, `--world-size N` on CPU).
//! * [`shard`], [`fsdp`], [`sampling`] — FSDP units and shards, the per-rank training step with
//!   the `full_shard`, `shard_grad_op` and `hybrid` strategies, and data-parallel row sampling.
//! * [`tcp`] — multi-process rendezvous (rank 0 on MASTER_ADDR:MASTER_PORT hands out a shared
//!   blob such as the NCCL unique id) and a TCP host communicator that names lost ranks.
//! * [`rank_env`] — rank, world size and rendezvous address from torchrun-style or SLURM
//!   variables.
//! * [`single`] — [`SingleRank`], the engine of a world of one (the model and a whole-model
//!   AdamW, host or device), driven by the same [`FsdpEngine`] interface as the sharded ranks.
//! * [`watchdog`] — bounds hangs in collectives without a timeout (NCCL) and names the lost
//!   rank.
//! * [`sharded_checkpoint`] — per-rank checkpoint files, resharding, consolidation.
//!
//! See docs/distributed.md for the design and docs/scaling.md for the cost model.
pub mod comm;
pub mod device_fsdp;
pub mod error;
pub mod fsdp;
pub mod local;
pub mod nccl;
pub mod rank_env;
pub mod sampling;
pub mod shard;
pub mod sharded_checkpoint;
pub mod single;
pub mod tcp;
pub mod watchdog;

pub use comm::{
    lost_peers_message, Collectives, CommError, HostTransport, Op, PeerHealth, PeerState, SubGroup,
};
pub use device_fsdp::DeviceFsdpRank;
pub use error::DistError;
pub use fsdp::{
    FsdpConfig, FsdpEngine, FsdpRank, Gradients, ReduceDtype, Release, Residency, ScheduleEvent,
    StepOutcome, Strategy,
};
pub use local::LocalComm;
pub use single::{SingleOps, SingleRank, WholeAdamW};
pub use watchdog::Watchdog;
