//! The communicator interface shared by every data-parallel code path.
//!
//! [`Collectives`] is generic over the buffer types it moves: host `[f32]`/`[u16]` slices for the
//! CPU communicators (in-process threads, TCP between processes) and `CudaSlice` buffers for
//! NCCL, so one trait describes both while the FSDP engine on the CPU path stays plain host
//! code. bf16 buffers are raw bits (`u16`), as everywhere in kormo (no half-float crate).
//!
//! Host communicators implement only [`HostTransport::exchange`] — "every rank contributes a
//! byte payload and receives all payloads in rank order" — and get every collective from it by
//! the blanket impl below. Computing each result locally from the contributions *in rank order*
//! makes every reduction bitwise independent of thread or network timing, and identical on all
//! ranks. It moves `world_size` times more bytes than a ring algorithm, which is irrelevant for
//! the CPU path (tests and small runs); the GPU path uses NCCL's rings.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use kormo_model::bf16;

/// What went wrong in a collective, always naming the rank(s) concerned.
#[derive(Debug, Clone, PartialEq)]
pub enum CommError {
    /// Some ranks did not reach collective number `seq` in time.
    Timeout {
        op: &'static str,
        seq: u64,
        missing: Vec<usize>,
        waited: Duration,
    },
    /// A peer process went away (connection closed or reset).
    PeerLost {
        rank: usize,
        op: &'static str,
        detail: String,
    },
    /// Rank `by` (the TCP root) gave up on a collective for the reason in `message`.
    Aborted { by: usize, message: String },
    /// Ranks called different collectives, or passed inconsistent sizes.
    Mismatch(String),
    /// The caller's buffers do not fit the collective.
    BadBuffer(String),
    /// Setting up the process group failed (rendezvous, environment, NCCL init).
    Setup(String),
    /// An NCCL or CUDA call failed.
    Device(String),
}

impl fmt::Display for CommError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommError::Timeout {
                op,
                seq,
                missing,
                waited,
            } => {
                let ranks: Vec<String> = missing.iter().map(|r| r.to_string()).collect();
                write!(
                    f,
                    "rank {} did not arrive at collective #{seq} ({op}) within {:.1}s",
                    ranks.join(", rank "),
                    waited.as_secs_f64()
                )
            }
            CommError::PeerLost { rank, op, detail } => {
                write!(f, "rank {rank} was lost during {op}: {detail}")
            }
            CommError::Aborted { by, message } => {
                write!(f, "rank {by} aborted the collective: {message}")
            }
            CommError::Mismatch(message) => write!(f, "collective mismatch: {message}"),
            CommError::BadBuffer(message) => write!(f, "bad collective buffer: {message}"),
            CommError::Setup(message) => write!(f, "process group setup failed: {message}"),
            CommError::Device(message) => write!(f, "NCCL/CUDA error: {message}"),
        }
    }
}

impl std::error::Error for CommError {}

/// Collective operations over a group of `world_size` ranks. `F32Buf`/`Bf16Buf` are the buffer
/// types (host slices or device buffers). All reductions are sums.
pub trait Collectives {
    type F32Buf: ?Sized;
    type Bf16Buf: ?Sized;

    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// `out[r * n .. (r + 1) * n] = shard of rank r`, with `n = shard.len()` on every rank.
    fn all_gather(&self, shard: &Self::F32Buf, out: &mut Self::F32Buf) -> Result<(), CommError>;
    /// `out = sum over ranks of input[rank * n .. (rank + 1) * n]`, with `n = out.len()`.
    fn reduce_scatter(&self, input: &Self::F32Buf, out: &mut Self::F32Buf)
        -> Result<(), CommError>;
    /// [`Collectives::reduce_scatter`] with bf16 on the wire (half the bytes of f32).
    fn reduce_scatter_bf16(
        &self,
        input: &Self::Bf16Buf,
        out: &mut Self::Bf16Buf,
    ) -> Result<(), CommError>;
    /// `buf = sum over ranks of buf`.
    fn all_reduce(&self, buf: &mut Self::F32Buf) -> Result<(), CommError>;
    /// Sum of a few host f64 scalars (loss sums, squared gradient norms) over all ranks.
    fn all_reduce_scalars(&self, values: &mut [f64]) -> Result<(), CommError>;
    /// Every rank's `buf` becomes rank `root`'s.
    fn broadcast(&self, buf: &mut Self::F32Buf, root: usize) -> Result<(), CommError>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<(), CommError>;
}

/// Names the collective a payload belongs to, so ranks calling different collectives at the
/// same point are reported instead of producing garbage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    AllGather,
    ReduceScatter,
    ReduceScatterBf16,
    AllReduce,
    AllReduceScalars,
    Broadcast,
    Barrier,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::AllGather => "all_gather",
            Op::ReduceScatter => "reduce_scatter",
            Op::ReduceScatterBf16 => "reduce_scatter_bf16",
            Op::AllReduce => "all_reduce",
            Op::AllReduceScalars => "all_reduce_scalars",
            Op::Broadcast => "broadcast",
            Op::Barrier => "barrier",
        }
    }

    /// Wire code (TCP transport).
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Op> {
        [
            Op::AllGather,
            Op::ReduceScatter,
            Op::ReduceScatterBf16,
            Op::AllReduce,
            Op::AllReduceScalars,
            Op::Broadcast,
            Op::Barrier,
        ]
        .into_iter()
        .find(|op| op.code() == code)
    }
}

/// Every rank's payload of one collective, indexed by rank.
pub type Contributions = Arc<Vec<Vec<u8>>>;

/// The one primitive a host communicator implements.
pub trait HostTransport: Send + Sync {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Every rank calls this with its payload for the same `op`; all receive every payload in
    /// rank order, or an error naming the rank that failed to take part.
    fn exchange(&self, op: Op, payload: Vec<u8>) -> Result<Contributions, CommError>;
    /// The state of this rank's connections to its peers, for naming a lost rank when work
    /// outside this transport hangs (an NCCL collective): returns at once, without taking part
    /// in a collective or consuming data. Empty when the transport cannot tell (in-process
    /// groups, whose ranks cannot be lost alone).
    fn peer_health(&self) -> Vec<PeerHealth> {
        Vec::new()
    }
}

/// One peer connection as [`HostTransport::peer_health`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerHealth {
    pub rank: usize,
    pub state: PeerState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerState {
    /// Connected (the peer may still be hung, e.g. stopped or stuck on its GPU).
    Open,
    /// The connection is closed or broken (the peer's process exited or was killed), with why.
    Closed(String),
    /// In use by a collective of this rank right now, so not probed.
    Busy,
}

/// Names the lost peers in `health` (rank `me`'s view), for a message when a rank gives up
/// waiting: "rank 2 was lost (its TCP connection to rank 0 closed: ...)", or what is known when
/// no connection closed. `None` when the transport cannot tell (no connections).
pub fn lost_peers_message(me: usize, health: &[PeerHealth]) -> Option<String> {
    if health.is_empty() {
        return None;
    }
    let lost: Vec<String> = health
        .iter()
        .filter_map(|p| match &p.state {
            PeerState::Closed(why) => Some(format!(
                "rank {} was lost (its TCP connection to rank {me} {why})",
                p.rank
            )),
            _ => None,
        })
        .collect();
    if !lost.is_empty() {
        return Some(lost.join("; "));
    }
    let list = |state: fn(&PeerState) -> bool| -> Vec<String> {
        health
            .iter()
            .filter(|p| state(&p.state))
            .map(|p| p.rank.to_string())
            .collect()
    };
    let open = list(|s| *s == PeerState::Open);
    let busy = list(|s| *s == PeerState::Busy);
    let mut message = format!(
        "no TCP connection to rank {me} closed (connected: rank {})",
        if open.is_empty() {
            "none".into()
        } else {
            open.join(", rank ")
        }
    );
    if !busy.is_empty() {
        message.push_str(&format!(
            "; in use by a host collective: rank {}",
            busy.join(", rank ")
        ));
    }
    if me != 0 {
        message.push_str("; rank 0's own error names a rank it lost");
    } else {
        message.push_str("; a rank may be hung (stopped, or stuck on its GPU)");
    }
    Some(message)
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn u16_bytes(values: &[u16]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn f64_bytes(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Checks that buffer `what` of `len` elements holds `per_rank` elements for each of `world`
/// ranks (the larger side of an all-gather or reduce-scatter).
pub(crate) fn check_per_rank(
    what: &str,
    len: usize,
    per_rank: usize,
    world: usize,
) -> Result<(), CommError> {
    if len == per_rank * world {
        Ok(())
    } else {
        Err(CommError::BadBuffer(format!(
            "{what} has {len} elements, expected {per_rank} x {world}"
        )))
    }
}

/// Checks that every rank contributed `expected` bytes.
fn check_lengths(all: &[Vec<u8>], expected: usize, op: Op) -> Result<(), CommError> {
    match all.iter().position(|p| p.len() != expected) {
        None => Ok(()),
        Some(rank) => Err(CommError::Mismatch(format!(
            "{}: rank {rank} contributed {} bytes where this rank expected {expected}",
            op.name(),
            all[rank].len()
        ))),
    }
}

fn f32_at(payload: &[u8], index: usize) -> f32 {
    f32::from_le_bytes(
        payload[4 * index..4 * index + 4]
            .try_into()
            .expect("4 bytes"),
    )
}

/// Sums element `index` of every contribution in rank order (starting from rank 0's value, so
/// a single rank's data passes through unchanged).
fn sum_f32_at(all: &[Vec<u8>], index: usize) -> f32 {
    let mut total = f32_at(&all[0], index);
    for payload in &all[1..] {
        total += f32_at(payload, index);
    }
    total
}

impl<T: HostTransport + ?Sized> Collectives for T {
    type F32Buf = [f32];
    type Bf16Buf = [u16];

    fn rank(&self) -> usize {
        HostTransport::rank(self)
    }

    fn world_size(&self) -> usize {
        HostTransport::world_size(self)
    }

    fn all_gather(&self, shard: &[f32], out: &mut [f32]) -> Result<(), CommError> {
        let world = HostTransport::world_size(self);
        check_per_rank("all_gather output", out.len(), shard.len(), world)?;
        let all = self.exchange(Op::AllGather, f32_bytes(shard))?;
        check_lengths(&all, shard.len() * 4, Op::AllGather)?;
        for (chunk, payload) in out.chunks_mut(shard.len().max(1)).zip(all.iter()) {
            for (i, value) in chunk.iter_mut().enumerate() {
                *value = f32_at(payload, i);
            }
        }
        Ok(())
    }

    fn reduce_scatter(&self, input: &[f32], out: &mut [f32]) -> Result<(), CommError> {
        let (world, rank) = (HostTransport::world_size(self), HostTransport::rank(self));
        check_per_rank("reduce_scatter input", input.len(), out.len(), world)?;
        let all = self.exchange(Op::ReduceScatter, f32_bytes(input))?;
        check_lengths(&all, input.len() * 4, Op::ReduceScatter)?;
        let base = rank * out.len();
        for (i, value) in out.iter_mut().enumerate() {
            *value = sum_f32_at(&all, base + i);
        }
        Ok(())
    }

    fn reduce_scatter_bf16(&self, input: &[u16], out: &mut [u16]) -> Result<(), CommError> {
        let (world, rank) = (HostTransport::world_size(self), HostTransport::rank(self));
        check_per_rank("reduce_scatter_bf16 input", input.len(), out.len(), world)?;
        let all = self.exchange(Op::ReduceScatterBf16, u16_bytes(input))?;
        check_lengths(&all, input.len() * 2, Op::ReduceScatterBf16)?;
        let base = rank * out.len();
        for (i, value) in out.iter_mut().enumerate() {
            let at = 2 * (base + i);
            // Accumulate in f32 in rank order and round once (NCCL rounds after every ring hop,
            // so the device result can differ in the last bf16 bit).
            let mut total = 0.0f32;
            for payload in all.iter() {
                total += bf16::to_f32(u16::from_le_bytes([payload[at], payload[at + 1]]));
            }
            *value = bf16::from_f32(total);
        }
        Ok(())
    }

    fn all_reduce(&self, buf: &mut [f32]) -> Result<(), CommError> {
        let all = self.exchange(Op::AllReduce, f32_bytes(buf))?;
        check_lengths(&all, buf.len() * 4, Op::AllReduce)?;
        for (i, value) in buf.iter_mut().enumerate() {
            *value = sum_f32_at(&all, i);
        }
        Ok(())
    }

    fn all_reduce_scalars(&self, values: &mut [f64]) -> Result<(), CommError> {
        let all = self.exchange(Op::AllReduceScalars, f64_bytes(values))?;
        check_lengths(&all, values.len() * 8, Op::AllReduceScalars)?;
        for (i, value) in values.iter_mut().enumerate() {
            let at =
                |p: &Vec<u8>| f64::from_le_bytes(p[8 * i..8 * i + 8].try_into().expect("8 bytes"));
            let mut total = at(&all[0]);
            for payload in &all[1..] {
                total += at(payload);
            }
            *value = total;
        }
        Ok(())
    }

    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<(), CommError> {
        let (world, rank) = (HostTransport::world_size(self), HostTransport::rank(self));
        if root >= world {
            return Err(CommError::BadBuffer(format!(
                "broadcast root {root} is not below world size {world}"
            )));
        }
        let payload = if rank == root {
            f32_bytes(buf)
        } else {
            Vec::new()
        };
        let all = self.exchange(Op::Broadcast, payload)?;
        if all[root].len() != buf.len() * 4 {
            return Err(CommError::Mismatch(format!(
                "broadcast: root {root} sent {} bytes, rank {rank} expected {}",
                all[root].len(),
                buf.len() * 4
            )));
        }
        for (i, value) in buf.iter_mut().enumerate() {
            *value = f32_at(&all[root], i);
        }
        Ok(())
    }

    fn barrier(&self) -> Result<(), CommError> {
        self.exchange(Op::Barrier, Vec::new()).map(|_| ())
    }
}

/// The ranks of `parent` that share a colour, as a communicator of their own (MPI's
/// `comm_split`). Its collectives run as collectives of the parent in which every rank takes
/// part, so all ranks of the parent must call the sub-groups' collectives at the same points —
/// true for the symmetric schedules of FSDP (hybrid sharding calls its shard-group and
/// replica-group collectives in the same order on every rank).
pub struct SubGroup {
    parent: Arc<dyn HostTransport>,
    members: Vec<usize>,
    index: usize,
}

impl SubGroup {
    /// Groups the ranks of `parent` by `color(rank)`; this rank's group keeps rank order.
    pub fn split(parent: Arc<dyn HostTransport>, color: impl Fn(usize) -> usize) -> SubGroup {
        let me = parent.rank();
        let members: Vec<usize> = (0..parent.world_size())
            .filter(|&r| color(r) == color(me))
            .collect();
        let index = members
            .iter()
            .position(|&r| r == me)
            .expect("a rank is in its own group");
        SubGroup {
            parent,
            members,
            index,
        }
    }

    /// Parent ranks of this group's members, in group-rank order.
    pub fn members(&self) -> &[usize] {
        &self.members
    }
}

impl HostTransport for SubGroup {
    fn rank(&self) -> usize {
        self.index
    }

    fn world_size(&self) -> usize {
        self.members.len()
    }

    fn exchange(&self, op: Op, payload: Vec<u8>) -> Result<Contributions, CommError> {
        let all = self.parent.exchange(op, payload)?;
        Ok(Arc::new(
            self.members.iter().map(|&r| all[r].clone()).collect(),
        ))
    }

    /// The parent's connections (parent ranks).
    fn peer_health(&self) -> Vec<PeerHealth> {
        self.parent.peer_health()
    }
}
