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
//! This file is compiled everywhere but only runs on a machine with GPUs and NCCL; it is not
//! exercised by the CPU test suite (see docs/distributed.md, "What is verified").

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use cudarc::nccl::result::{NcclError, NcclStatus};
use cudarc::nccl::{result, sys};

use crate::comm::{check_per_rank, Collectives, CommError};
use crate::launch::LaunchEnv;
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

/// One rank's NCCL communicator bound to a device stream.
pub struct NcclComm {
    comm: sys::ncclComm_t,
    stream: Arc<CudaStream>,
    rank: usize,
    world_size: usize,
}

// SAFETY: an NCCL communicator may be used from any one thread at a time; NcclComm is not Sync.
unsafe impl Send for NcclComm {}

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
            comm,
            stream,
            rank,
            world_size,
        })
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
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
                    self.comm,
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
        self.in_place("ncclAllReduce", buf, |ptr| {
            // SAFETY: in-place all-reduce of a live device allocation of `count` elements.
            unsafe {
                result::all_reduce(
                    ptr,
                    ptr,
                    count,
                    dtype,
                    sys::ncclRedOp_t::ncclSum,
                    self.comm,
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
        // SAFETY: the caller's contract.
        unsafe {
            result::all_gather(
                send as *const c_void,
                recv as *mut c_void,
                count,
                dtype.nccl(),
                self.comm,
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
        // SAFETY: the caller's contract.
        unsafe {
            result::reduce_scatter(
                send as *const c_void,
                recv as *mut c_void,
                count,
                dtype.nccl(),
                sys::ncclRedOp_t::ncclSum,
                self.comm,
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
        // SAFETY: the caller's contract.
        unsafe {
            result::all_reduce(
                buf as *const c_void,
                buf as *mut c_void,
                count,
                dtype.nccl(),
                sys::ncclRedOp_t::ncclSum,
                self.comm,
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
        // failure here cannot be reported from drop.
        // SAFETY: `comm` came from ncclCommInitRank and is released exactly once.
        let _ = unsafe { result::comm_abort(self.comm) };
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
        self.out_of_place("ncclAllGather", shard, out, |src, dst| {
            // SAFETY: live device allocations of the checked lengths.
            unsafe {
                result::all_gather(
                    src,
                    dst,
                    count,
                    sys::ncclDataType_t::ncclFloat32,
                    self.comm,
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
        self.in_place("ncclBroadcast", buf, |ptr| {
            // SAFETY: in-place broadcast of a live device allocation.
            unsafe {
                result::broadcast(
                    ptr,
                    ptr,
                    count,
                    sys::ncclDataType_t::ncclFloat32,
                    root as i32,
                    self.comm,
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
