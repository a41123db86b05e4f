//! [`Collectives`] over NCCL for device buffers (`CudaSlice<f32>`, bf16 as `CudaSlice<u16>`).
//!
//! Setup: rank 0 creates the 128-byte NCCL unique id ([`unique_id_blob`]), the TCP rendezvous
//! ([`crate::tcp`]) hands it to every rank, and each rank calls [`NcclComm::init`] on its own
//! device stream. Collectives are enqueued on that stream (asynchronous, like every kernel);
//! [`Collectives::barrier`] and [`Collectives::all_reduce_scalars`] synchronise it.
//!
//! cudarc loads libnccl and libcuda lazily and panics on first use when they are missing, so
//! [`nccl_available`] checks for both libraries first and every constructor refuses to start
//! without them. The raw `cudarc::nccl::result` calls are used (rather than the safe `Comm`) so
//! that bf16 buffers, which kormo keeps as `u16` bits, can be reduced as `ncclBfloat16`
//! without a half-float crate.
//!
//! Several communicators per rank ([`connect_groups`]): the world, or for `hybrid` a shard group
//! and a replica group ([`group_places`], the host path's `SubGroup`s), each group's first rank
//! creating its unique id and the host group handing them out in one exchange
//! ([`exchange_group_ids`]). [`NcclWatch`] lets a watchdog thread poll a communicator's
//! asynchronous error and abort it.
//!
//! The group layout and the id exchange are plain host code, tested on the CPU
//! (tests/hybrid_groups.rs, with fake ids); everything that calls NCCL is compiled everywhere but
//! only runs on a machine with GPUs and NCCL (see docs/distributed.md, "What is verified").

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use cudarc::nccl::result::{NcclError, NcclStatus};
use cudarc::nccl::{result, sys};

use crate::comm::{check_per_rank, Collectives, CommError, HostTransport, Op};
use crate::rank_env::LaunchEnv;
use crate::tcp::{rendezvous, TcpComm};

/// True when both the CUDA driver library and libnccl can be loaded.
pub fn nccl_available() -> bool {
    // SAFETY: these only try to dlopen the libraries; no CUDA/NCCL function is called.
    unsafe { cudarc::driver::sys::is_culib_present() && sys::is_culib_present() }
}

fn require_nccl() -> Result<(), CommError> {
    if nccl_available() {
        Ok(())
    } else {
        Err(CommError::Setup(
            "libnccl or the CUDA driver library is not installed on this machine".into(),
        ))
    }
}

fn nccl_error(what: &str, e: NcclError) -> CommError {
    CommError::Device(format!("{what}: {:?}", e.0))
}

/// A fresh NCCL unique id as bytes (rank 0 only), for [`crate::tcp::rendezvous`].
pub fn unique_id_blob() -> Result<Vec<u8>, CommError> {
    require_nccl()?;
    let id = result::get_uniqueid().map_err(|e| nccl_error("ncclGetUniqueId", e))?;
    Ok(id.internal.iter().map(|&c| c as u8).collect())
}

/// Full GPU setup for this process: TCP rendezvous (rank 0 creates the NCCL id, everyone
/// receives it), then the NCCL communicator on `stream` (the device of `env.local_rank`). The
/// TCP group stays useful for host-side agreement (checkpoint status, error reporting).
pub fn connect(
    env: &LaunchEnv,
    stream: Arc<CudaStream>,
    timeout: std::time::Duration,
) -> Result<(TcpComm, NcclComm), CommError> {
    require_nccl()?;
    let tcp = rendezvous(&env.rendezvous_config(timeout), unique_id_blob)?;
    let nccl = NcclComm::init(stream, env.rank, env.world_size, tcp.shared_blob())?;
    Ok((tcp, nccl))
}

/// This rank's place in one NCCL communicator of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPlace {
    /// `"world"`, `"shard-group"` or `"replica-group"` (for messages).
    pub name: &'static str,
    /// World ranks of the members, in group-rank order; the first one creates the group's
    /// NCCL unique id.
    pub members: Vec<usize>,
    /// This rank's position in `members` (its NCCL rank in the group).
    pub rank: usize,
}

impl GroupPlace {
    /// The world rank that creates this group's NCCL unique id.
    pub fn leader(&self) -> usize {
        self.members[0]
    }

    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// The ranks of `0..world_size` with `color(rank)`'s value, as
    /// [`crate::comm::SubGroup::split`] groups them (rank order).
    fn split(
        name: &'static str,
        rank: usize,
        world_size: usize,
        color: impl Fn(usize) -> usize,
    ) -> GroupPlace {
        let members: Vec<usize> = (0..world_size)
            .filter(|&r| color(r) == color(rank))
            .collect();
        let rank = members
            .iter()
            .position(|&r| r == rank)
            .expect("a rank is in its own group");
        GroupPlace {
            name,
            members,
            rank,
        }
    }
}

/// Shard group of `rank` for `hybrid`: `group_size` consecutive ranks (a node), as
/// [`crate::FsdpRank`] splits its host group.
pub fn hybrid_shard_color(group_size: usize) -> impl Fn(usize) -> usize {
    move |r| r / group_size
}

/// Replica group of `rank` for `hybrid`: the ranks at the same position in their shard
/// groups, as [`crate::FsdpRank`] splits its host group.
pub fn hybrid_replica_color(group_size: usize) -> impl Fn(usize) -> usize {
    move |r| r % group_size
}

/// The NCCL communicators rank `rank` of `world_size` needs: the world (`hybrid_group_size`
/// `None`: `full_shard`, `shard_grad_op`), or for `hybrid` its shard group (`group_size`
/// consecutive ranks) then its replica group (the ranks with the same shard rank), so that
/// world rank = replica rank x group size + shard rank, as on the host path. Errors name
/// `hybrid_group_size` when it is 0 or does not divide the world size.
pub fn group_places(
    rank: usize,
    world_size: usize,
    hybrid_group_size: Option<usize>,
) -> Result<Vec<GroupPlace>, CommError> {
    if world_size == 0 || rank >= world_size {
        return Err(CommError::Setup(format!(
            "rank {rank} is not below world size {world_size}"
        )));
    }
    let Some(size) = hybrid_group_size else {
        return Ok(vec![GroupPlace::split("world", rank, world_size, |_| 0)]);
    };
    if size == 0 || !world_size.is_multiple_of(size) {
        return Err(CommError::Setup(format!(
            "hybrid_group_size = {size} must be at least 1 and divide the world size {world_size} \
             (ranks per shard group, usually the GPUs of a node)"
        )));
    }
    Ok(vec![
        GroupPlace::split("shard-group", rank, world_size, hybrid_shard_color(size)),
        GroupPlace::split(
            "replica-group",
            rank,
            world_size,
            hybrid_replica_color(size),
        ),
    ])
}

/// One rank's entry for one group in [`exchange_group_ids`].
struct IdEntry {
    /// 0: `bytes` is the id; 1: `bytes` is the leader's error text; 2: not the leader.
    status: u8,
    bytes: Vec<u8>,
    /// The group's members as this rank sees them.
    members: Vec<usize>,
}

impl IdEntry {
    fn write(&self, out: &mut Vec<u8>) {
        out.push(self.status);
        out.extend_from_slice(&(self.bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.bytes);
        out.extend_from_slice(&(self.members.len() as u32).to_le_bytes());
        for &m in &self.members {
            out.extend_from_slice(&(m as u32).to_le_bytes());
        }
    }

    /// Reads one entry off the front of `rest`.
    fn read(rest: &mut &[u8]) -> Option<IdEntry> {
        fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            let (head, tail) = (rest.get(..n)?, rest.get(n..)?);
            *rest = tail;
            Some(head)
        }
        fn u32_at(rest: &mut &[u8]) -> Option<usize> {
            Some(u32::from_le_bytes(take(rest, 4)?.try_into().ok()?) as usize)
        }
        let status = take(rest, 1)?[0];
        let len = u32_at(rest)?;
        let bytes = take(rest, len)?.to_vec();
        let count = u32_at(rest)?;
        let members = (0..count)
            .map(|_| u32_at(rest))
            .collect::<Option<Vec<_>>>()?;
        Some(IdEntry {
            status,
            bytes,
            members,
        })
    }
}

/// Hands every group in `places` its NCCL unique id in one exchange over the host group
/// `world` (every rank calls it with its own places): the leader of each group creates the id
/// with `make_id` (`unique_id_blob` on a GPU), every rank sends the ids of the groups it leads
/// with its view of each group's members, and takes its groups' ids from their leaders.
/// Returns one id per place. Every rank checks every rank's entries, so all fail alike, with
/// an error naming the rank concerned, when a leader's `make_id` failed (it still takes part
/// rather than leaving the others to time out) or two ranks disagree on a group's members.
pub fn exchange_group_ids(
    world: &dyn HostTransport,
    places: &[GroupPlace],
    mut make_id: impl FnMut() -> Result<Vec<u8>, CommError>,
) -> Result<Vec<Vec<u8>>, CommError> {
    let me = HostTransport::rank(world);
    let mut payload = Vec::new();
    for place in places {
        let (status, bytes) = if place.leader() != me {
            (2u8, Vec::new())
        } else {
            match make_id() {
                Ok(id) => (0, id),
                Err(e) => (1, e.to_string().into_bytes()),
            }
        };
        IdEntry {
            status,
            bytes,
            members: place.members.clone(),
        }
        .write(&mut payload);
    }
    let all = world.exchange(Op::AllGather, payload)?;
    let mut entries: Vec<Vec<IdEntry>> = Vec::with_capacity(all.len());
    for (rank, bytes) in all.iter().enumerate() {
        let mut rest: &[u8] = bytes;
        let mine = places
            .iter()
            .map(|_| IdEntry::read(&mut rest))
            .collect::<Option<Vec<_>>>()
            .filter(|_| rest.is_empty())
            .ok_or_else(|| {
                CommError::Mismatch(format!(
                    "NCCL id exchange: rank {rank}'s payload does not hold {} group entries \
                     (the ranks disagree on the strategy)",
                    places.len()
                ))
            })?;
        entries.push(mine);
    }
    for (rank, theirs) in entries.iter().enumerate() {
        for (index, entry) in theirs.iter().enumerate() {
            let name = places[index].name;
            if entry.status == 1 {
                return Err(CommError::Setup(format!(
                    "rank {rank} could not create the NCCL unique id of its {name}: {}",
                    String::from_utf8_lossy(&entry.bytes)
                )));
            }
            for &member in &entry.members {
                let seen = entries.get(member).map(|e| &e[index].members);
                if seen != Some(&entry.members) {
                    return Err(CommError::Mismatch(format!(
                        "rank {rank} puts rank {member} in its {name} {:?}, but rank {member} \
                         sees {} (the ranks disagree on dist.hybrid_group_size or the world size)",
                        entry.members,
                        seen.map_or("no such rank".into(), |m| format!("{m:?}"))
                    )));
                }
            }
        }
    }
    places
        .iter()
        .enumerate()
        .map(|(index, place)| {
            let leader = place.leader();
            match entries.get(leader).map(|e| &e[index]) {
                Some(entry) if entry.status == 0 => Ok(entry.bytes.clone()),
                _ => Err(CommError::Mismatch(format!(
                    "rank {me}'s {} {:?} expects its NCCL id from rank {leader}, which did not \
                     create one",
                    place.name, place.members
                ))),
            }
        })
        .collect()
}

/// This rank's NCCL communicators for `hybrid_group_size` (see [`group_places`]): the world,
/// or the shard group then the replica group. Ids travel over the host group `world`
/// ([`exchange_group_ids`]); each communicator runs on a fresh stream from `new_stream` (of
/// this rank's device). `ncclCommInitRank` is collective within each group; every rank joins
/// its groups in the same order, so no group waits on another. Returns each communicator with
/// its place, in [`group_places`] order.
pub fn connect_groups(
    world: &dyn HostTransport,
    hybrid_group_size: Option<usize>,
    mut new_stream: impl FnMut() -> Result<Arc<CudaStream>, CommError>,
) -> Result<Vec<(GroupPlace, NcclComm)>, CommError> {
    let places = group_places(
        HostTransport::rank(world),
        HostTransport::world_size(world),
        hybrid_group_size,
    )?;
    let ids = exchange_group_ids(world, &places, unique_id_blob)?;
    places
        .iter()
        .zip(&ids)
        .map(|(place, id)| {
            let comm =
                NcclComm::init(new_stream()?, place.rank, place.size(), id).map_err(|e| {
                    CommError::Setup(format!(
                        "rank {} joining its {} (ranks {:?}): {e}",
                        HostTransport::rank(world),
                        place.name,
                        place.members
                    ))
                })?;
            Ok((place.clone(), comm))
        })
        .collect()
}

/// One rank's NCCL communicator bound to a device stream.
pub struct NcclComm {
    shared: Arc<Shared>,
    stream: Arc<CudaStream>,
    rank: usize,
    world_size: usize,
}

/// The raw communicator; null once aborted.
struct Handle(sys::ncclComm_t);

// SAFETY: the handle is only used under [`Shared::handle`]'s lock: collectives are enqueued
// by the one thread owning the NcclComm (read lock), the asynchronous error is polled by a
// watchdog thread (read lock; NCCL allows `ncclCommGetAsyncError` concurrently with other
// calls), and abort (write lock) happens once, after which the handle is null.
unsafe impl Send for Handle {}
unsafe impl Sync for Handle {}

/// What an [`NcclComm`] shares with its [`NcclWatch`]es.
struct Shared {
    handle: std::sync::RwLock<Handle>,
    rank: usize,
    world_size: usize,
    /// The NCCL call of the last collective enqueued, and how many were.
    last_op: std::sync::Mutex<&'static str>,
    enqueued: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Handle> {
        self.handle.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Aborts the communicator unless it already was; true when this call aborted it.
    fn abort(&self, wait: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now().checked_add(wait);
        let mut handle = loop {
            match self.handle.try_write() {
                Ok(handle) => break handle,
                Err(std::sync::TryLockError::Poisoned(e)) => break e.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {
                    if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                        return false;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
        };
        if handle.0.is_null() {
            return false;
        }
        // SAFETY: a live communicator from ncclCommInitRank, released exactly once (the
        // handle is null afterwards); no enqueue holds the read lock now.
        let _ = unsafe { result::comm_abort(handle.0) };
        handle.0 = std::ptr::null_mut();
        true
    }

    /// "collective #12 (ncclAllGather)": the last one enqueued.
    fn last(&self) -> String {
        let count = self.enqueued.load(std::sync::atomic::Ordering::Relaxed);
        if count == 0 {
            return "no collective enqueued yet".into();
        }
        let op = *self.last_op.lock().unwrap_or_else(|e| e.into_inner());
        format!("collective #{count} ({op}) the last enqueued")
    }
}

/// A live communicator, read-locked for enqueuing one collective.
struct Live<'a>(std::sync::RwLockReadGuard<'a, Handle>);

impl Live<'_> {
    fn comm(&self) -> sys::ncclComm_t {
        self.0 .0
    }
}

/// A handle on an [`NcclComm`] for another thread (a watchdog): polls NCCL's asynchronous
/// error (a peer lost inside a collective, a network failure) and aborts the communicator so
/// that a rank blocked in a collective or stream synchronisation returns and the process can
/// exit instead of hanging in the driver. Cheap to clone; outlives its communicator safely
/// (it then reports nothing and aborts nothing).
#[derive(Clone)]
pub struct NcclWatch {
    shared: Arc<Shared>,
    group: String,
}

impl NcclWatch {
    /// The communicator's asynchronous error with its rank and last collective, if NCCL
    /// reports one (`ncclCommGetAsyncError`); `None` when healthy or already aborted.
    pub fn async_error(&self) -> Option<String> {
        let handle = self.shared.read();
        if handle.0.is_null() {
            return None;
        }
        let mut state = sys::ncclResult_t::ncclSuccess;
        // SAFETY: a live communicator (under the read lock) and a valid out pointer.
        let called = unsafe { sys::ncclCommGetAsyncError(handle.0, &mut state) };
        let problem = match (called, state) {
            (sys::ncclResult_t::ncclSuccess, sys::ncclResult_t::ncclSuccess)
            | (sys::ncclResult_t::ncclSuccess, sys::ncclResult_t::ncclInProgress) => return None,
            (sys::ncclResult_t::ncclSuccess, error) => format!("{error:?}"),
            (failed, _) => format!("ncclCommGetAsyncError itself failed with {failed:?}"),
        };
        Some(format!(
            "NCCL asynchronous error {problem} on the {} communicator (rank {} of {}; {})",
            self.group,
            self.shared.rank,
            self.shared.world_size,
            self.shared.last()
        ))
    }

    /// Aborts the communicator (`ncclCommAbort`) unless it already was, waiting at most
    /// `wait` for a collective being enqueued; true when this call aborted it. Collectives
    /// enqueued afterwards fail; dropping the NcclComm then releases nothing more.
    pub fn abort(&self, wait: std::time::Duration) -> bool {
        self.shared.abort(wait)
    }

    /// Which communicator: the group name given to [`NcclComm::watch`], rank and size.
    pub fn describe(&self) -> String {
        format!(
            "{} communicator (rank {} of {}; {})",
            self.group,
            self.shared.rank,
            self.shared.world_size,
            self.shared.last()
        )
    }
}

impl NcclComm {
    /// Joins the communicator identified by `unique_id` (rank 0's [`unique_id_blob`]).
    pub fn init(
        stream: Arc<CudaStream>,
        rank: usize,
        world_size: usize,
        unique_id: &[u8],
    ) -> Result<NcclComm, CommError> {
        require_nccl()?;
        if unique_id.len() != 128 {
            return Err(CommError::Setup(format!(
                "the NCCL unique id has {} bytes, expected 128",
                unique_id.len()
            )));
        }
        if rank >= world_size {
            return Err(CommError::Setup(format!(
                "rank {rank} is not below world size {world_size}"
            )));
        }
        let mut internal = [0 as std::ffi::c_char; 128];
        internal
            .iter_mut()
            .zip(unique_id)
            .for_each(|(dst, &b)| *dst = b as std::ffi::c_char);
        let id = sys::ncclUniqueId { internal };
        let mut comm = std::mem::MaybeUninit::uninit();
        // SAFETY: `comm` is a valid out pointer; NCCL writes the communicator handle into it.
        let comm = unsafe {
            result::comm_init_rank(comm.as_mut_ptr(), world_size as i32, id, rank as i32).map_err(
                |e| {
                    nccl_error(
                        &format!("ncclCommInitRank (rank {rank} of {world_size})"),
                        e,
                    )
                },
            )?;
            comm.assume_init()
        };
        Ok(NcclComm {
            shared: Arc::new(Shared {
                handle: std::sync::RwLock::new(Handle(comm)),
                rank,
                world_size,
                last_op: std::sync::Mutex::new(""),
                enqueued: std::sync::atomic::AtomicU64::new(0),
            }),
            stream,
            rank,
            world_size,
        })
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// A handle for a watchdog thread ([`NcclWatch`]); `group` names this communicator in its
    /// messages ("world", "shard-group", "replica-group").
    pub fn watch(&self, group: &str) -> NcclWatch {
        NcclWatch {
            shared: self.shared.clone(),
            group: group.into(),
        }
    }

    /// The live communicator, read-locked while collective `op` is enqueued (so a watchdog's
    /// abort cannot free it meanwhile); an error once it was aborted.
    fn live(&self, op: &'static str) -> Result<Live<'_>, CommError> {
        let handle = self.shared.read();
        if handle.0.is_null() {
            return Err(CommError::Device(format!(
                "rank {} of {}: {op}: the NCCL communicator was aborted",
                self.rank, self.world_size
            )));
        }
        *self
            .shared
            .last_op
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = op;
        self.shared
            .enqueued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Live(handle))
    }

    fn raw_stream(&self) -> sys::cudaStream_t {
        self.stream.cu_stream() as sys::cudaStream_t
    }

    /// Enqueues the collective `name` reading `input` and writing `out`: `call` gets their
    /// device pointers, valid while it runs (the guards order the buffers' use on the stream).
    fn out_of_place<T>(
        &self,
        name: &str,
        input: &CudaSlice<T>,
        out: &mut CudaSlice<T>,
        call: impl FnOnce(*const c_void, *mut c_void) -> Result<NcclStatus, NcclError>,
    ) -> Result<(), CommError> {
        let (src, _src_guard) = input.device_ptr(&self.stream);
        let (dst, _dst_guard) = out.device_ptr_mut(&self.stream);
        call(src as *const c_void, dst as *mut c_void)
            .map(|_| ())
            .map_err(|e| nccl_error(name, e))
    }

    /// [`Self::out_of_place`] for a collective that reads and writes `buf`.
    fn in_place<T>(
        &self,
        name: &str,
        buf: &mut CudaSlice<T>,
        call: impl FnOnce(*mut c_void) -> Result<NcclStatus, NcclError>,
    ) -> Result<(), CommError> {
        let (ptr, _guard) = buf.device_ptr_mut(&self.stream);
        call(ptr as *mut c_void)
            .map(|_| ())
            .map_err(|e| nccl_error(name, e))
    }

    fn reduce_scatter_raw<T>(
        &self,
        input: &CudaSlice<T>,
        out: &mut CudaSlice<T>,
        dtype: sys::ncclDataType_t,
    ) -> Result<(), CommError> {
        check_per_rank(
            "reduce_scatter input",
            input.len(),
            out.len(),
            self.world_size,
        )?;
        let count = out.len();
        let live = self.live("ncclReduceScatter")?;
        self.out_of_place("ncclReduceScatter", input, out, |src, dst| {
            // SAFETY: both pointers are live device allocations of the checked lengths on this
            // communicator's stream.
            unsafe {
                result::reduce_scatter(
                    src,
                    dst,
                    count,
                    dtype,
                    sys::ncclRedOp_t::ncclSum,
                    live.comm(),
                    self.raw_stream(),
                )
            }
        })
    }

    fn all_reduce_raw<T>(
        &self,
        buf: &mut CudaSlice<T>,
        dtype: sys::ncclDataType_t,
    ) -> Result<(), CommError> {
        let count = buf.len();
        let live = self.live("ncclAllReduce")?;
        self.in_place("ncclAllReduce", buf, |ptr| {
            // SAFETY: in-place all-reduce of a live device allocation of `count` elements.
            unsafe {
                result::all_reduce(
                    ptr,
                    ptr,
                    count,
                    dtype,
                    sys::ncclRedOp_t::ncclSum,
                    live.comm(),
                    self.raw_stream(),
                )
            }
        })
    }

    fn sync(&self) -> Result<(), CommError> {
        self.stream
            .synchronize()
            .map_err(|e| CommError::Device(format!("stream synchronize: {e}")))
    }
}

/// Element type of a raw-pointer collective ([`NcclComm::all_gather_ptr`] and friends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireDtype {
    F32,
    /// bf16 as raw `u16` bits (`ncclBfloat16`).
    Bf16,
}

impl WireDtype {
    fn nccl(self) -> sys::ncclDataType_t {
        match self {
            WireDtype::F32 => sys::ncclDataType_t::ncclFloat32,
            WireDtype::Bf16 => sys::ncclDataType_t::ncclBfloat16,
        }
    }

    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            WireDtype::F32 => 4,
            WireDtype::Bf16 => 2,
        }
    }
}

/// Collectives on raw device addresses, for engines that keep their buffers in another
/// container (the device FSDP's `CudaBuf`s, sub-ranges of one allocation). Each enqueues on
/// [`NcclComm::stream`]; ordering against other streams is the caller's (CUDA events).
impl NcclComm {
    fn failed(&self, name: &str, e: NcclError) -> CommError {
        nccl_error(
            &format!("rank {} of {}: {name}", self.rank, self.world_size),
            e,
        )
    }

    /// `recv[r * count .. (r + 1) * count] = send of rank r`.
    ///
    /// # Safety
    /// `send` must address `count` and `recv` `count * world_size` elements of `dtype` on this
    /// communicator's device, both valid (and `recv` not used by other work) until the
    /// collective has completed on [`NcclComm::stream`].
    pub unsafe fn all_gather_ptr(
        &self,
        send: u64,
        recv: u64,
        count: usize,
        dtype: WireDtype,
    ) -> Result<(), CommError> {
        let live = self.live("ncclAllGather")?;
        // SAFETY: the caller's contract.
        unsafe {
            result::all_gather(
                send as *const c_void,
                recv as *mut c_void,
                count,
                dtype.nccl(),
                live.comm(),
                self.raw_stream(),
            )
        }
        .map(|_| ())
        .map_err(|e| self.failed("ncclAllGather", e))
    }

    /// `recv = sum over ranks of send[rank * count .. (rank + 1) * count]`.
    ///
    /// # Safety
    /// `send` must address `count * world_size` and `recv` `count` elements of `dtype`, valid
    /// until the collective has completed on [`NcclComm::stream`].
    pub unsafe fn reduce_scatter_ptr(
        &self,
        send: u64,
        recv: u64,
        count: usize,
        dtype: WireDtype,
    ) -> Result<(), CommError> {
        let live = self.live("ncclReduceScatter")?;
        // SAFETY: the caller's contract.
        unsafe {
            result::reduce_scatter(
                send as *const c_void,
                recv as *mut c_void,
                count,
                dtype.nccl(),
                sys::ncclRedOp_t::ncclSum,
                live.comm(),
                self.raw_stream(),
            )
        }
        .map(|_| ())
        .map_err(|e| self.failed("ncclReduceScatter", e))
    }

    /// In-place sum of `count` elements at `buf` over all ranks.
    ///
    /// # Safety
    /// `buf` must address `count` elements of `dtype`, valid until the collective has
    /// completed on [`NcclComm::stream`].
    pub unsafe fn all_reduce_ptr(
        &self,
        buf: u64,
        count: usize,
        dtype: WireDtype,
    ) -> Result<(), CommError> {
        let live = self.live("ncclAllReduce")?;
        // SAFETY: the caller's contract.
        unsafe {
            result::all_reduce(
                buf as *const c_void,
                buf as *mut c_void,
                count,
                dtype.nccl(),
                sys::ncclRedOp_t::ncclSum,
                live.comm(),
                self.raw_stream(),
            )
        }
        .map(|_| ())
        .map_err(|e| self.failed("ncclAllReduce", e))
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        // Abort rather than destroy: it also works when a peer has died mid-collective. A
        // failure here cannot be reported from drop; nothing to do when a watchdog aborted it.
        self.shared.abort(std::time::Duration::MAX);
    }
}

impl Collectives for NcclComm {
    type F32Buf = CudaSlice<f32>;
    type Bf16Buf = CudaSlice<u16>;

    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_gather(
        &self,
        shard: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), CommError> {
        check_per_rank("all_gather output", out.len(), shard.len(), self.world_size)?;
        let count = shard.len();
        let live = self.live("ncclAllGather")?;
        self.out_of_place("ncclAllGather", shard, out, |src, dst| {
            // SAFETY: live device allocations of the checked lengths.
            unsafe {
                result::all_gather(
                    src,
                    dst,
                    count,
                    sys::ncclDataType_t::ncclFloat32,
                    live.comm(),
                    self.raw_stream(),
                )
            }
        })
    }

    fn reduce_scatter(
        &self,
        input: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), CommError> {
        self.reduce_scatter_raw(input, out, sys::ncclDataType_t::ncclFloat32)
    }

    fn reduce_scatter_bf16(
        &self,
        input: &CudaSlice<u16>,
        out: &mut CudaSlice<u16>,
    ) -> Result<(), CommError> {
        self.reduce_scatter_raw(input, out, sys::ncclDataType_t::ncclBfloat16)
    }

    fn all_reduce(&self, buf: &mut CudaSlice<f32>) -> Result<(), CommError> {
        self.all_reduce_raw(buf, sys::ncclDataType_t::ncclFloat32)
    }

    fn all_reduce_scalars(&self, values: &mut [f64]) -> Result<(), CommError> {
        let device = |e: cudarc::driver::DriverError| {
            CommError::Device(format!("scalar all-reduce copy: {e}"))
        };
        let mut buf = self.stream.clone_htod(values).map_err(device)?;
        self.all_reduce_raw(&mut buf, sys::ncclDataType_t::ncclFloat64)?;
        self.stream.memcpy_dtoh(&buf, values).map_err(device)?;
        self.sync()
    }

    fn broadcast(&self, buf: &mut CudaSlice<f32>, root: usize) -> Result<(), CommError> {
        if root >= self.world_size {
            return Err(CommError::BadBuffer(format!(
                "broadcast root {root} is not below world size {}",
                self.world_size
            )));
        }
        let count = buf.len();
        let live = self.live("ncclBroadcast")?;
        self.in_place("ncclBroadcast", buf, |ptr| {
            // SAFETY: in-place broadcast of a live device allocation.
            unsafe {
                result::broadcast(
                    ptr,
                    ptr,
                    count,
                    sys::ncclDataType_t::ncclFloat32,
                    root as i32,
                    live.comm(),
                    self.raw_stream(),
                )
            }
        })
    }

    fn barrier(&self) -> Result<(), CommError> {
        let mut token = self
            .stream
            .clone_htod(&[0.0f32])
            .map_err(|e| CommError::Device(format!("barrier alloc: {e}")))?;
        self.all_reduce(&mut token)?;
        self.sync()
    }
}
