//! Multi-process rendezvous and a host communicator over TCP.
//!
//! Rendezvous: rank 0 listens on `MASTER_ADDR:MASTER_PORT`; every other rank connects
//! (retrying until the timeout, since rank 0 may start last) and sends a hello with its rank
//! and world size; rank 0 checks them and answers every rank with a shared blob — for NCCL the
//! 128-byte `ncclUniqueId` that `ncclCommInitRank` needs on every rank. The connections stay
//! open as a star around rank 0 and carry the CPU collectives ([`TcpComm`]): each rank sends its
//! payload to rank 0, which returns all payloads in rank order (see [`crate::comm`]).
//!
//! Failure reporting: a killed process's sockets are closed by its kernel, so rank 0 sees end
//! of file from it, names that rank in a [`CommError::PeerLost`], and forwards the message to
//! every other rank as [`CommError::Aborted`] before giving up; a rank that loses rank 0 reports
//! rank 0. A rank that stays silent past the timeout is named in a [`CommError::Timeout`].
//! [`HostTransport::peer_health`] probes the connections without a collective or a read (poll
//! for a hang-up), so a rank stuck elsewhere (in NCCL) can still name the peers whose sockets
//! closed, even when they died with a frame in flight.
//!
//! Frames (little endian): hello `b"KORMO-RDV1" rank:u32 world:u32`; welcome `0u8 len:u32 blob`
//! or refusal `1u8 len:u32 utf8`; collective `seq:u64 op:u8 len:u64 payload`; reply `0u8` then
//! per rank `len:u64 payload`, or `1u8 len:u64 utf8` (abort).

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::comm::{CommError, Contributions, HostTransport, Op, PeerHealth, PeerState};

const HELLO_MAGIC: &[u8; 10] = b"KORMO-RDV1";
const POLL: Duration = Duration::from_millis(20);

/// Where and how to meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RendezvousConfig {
    pub rank: usize,
    pub world_size: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// Bound on connecting and on every collective.
    pub timeout: Duration,
}

/// One rank's TCP connections: to every other rank on rank 0, to rank 0 elsewhere.
pub struct TcpComm {
    rank: usize,
    world_size: usize,
    /// Indexed by peer rank; `None` for this rank (and for all but rank 0 on non-roots).
    peers: Vec<Option<Mutex<TcpStream>>>,
    blob: Vec<u8>,
    timeout: Duration,
    next_seq: AtomicU64,
}

fn setup(message: String) -> CommError {
    CommError::Setup(message)
}

/// Reads exactly `buf.len()` bytes, classifying failures against `peer`.
fn read_exact(
    stream: &mut TcpStream,
    buf: &mut [u8],
    peer: usize,
    op: &'static str,
    seq: u64,
    timeout: Duration,
) -> Result<(), CommError> {
    stream.read_exact(buf).map_err(|e| match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => CommError::Timeout {
            op,
            seq,
            missing: vec![peer],
            waited: timeout,
        },
        ErrorKind::UnexpectedEof => CommError::PeerLost {
            rank: peer,
            op,
            detail: "connection closed (the process exited or was killed)".into(),
        },
        _ => CommError::PeerLost {
            rank: peer,
            op,
            detail: e.to_string(),
        },
    })
}

fn write_all(
    stream: &mut TcpStream,
    bytes: &[u8],
    peer: usize,
    op: &'static str,
) -> Result<(), CommError> {
    stream.write_all(bytes).map_err(|e| CommError::PeerLost {
        rank: peer,
        op,
        detail: format!("send failed: {e}"),
    })
}

fn read_u64(
    stream: &mut TcpStream,
    peer: usize,
    op: &'static str,
    seq: u64,
    timeout: Duration,
) -> Result<u64, CommError> {
    let mut b = [0u8; 8];
    read_exact(stream, &mut b, peer, op, seq, timeout)?;
    Ok(u64::from_le_bytes(b))
}

/// Meets the other ranks; rank 0 calls `make_blob` and every rank gets its result (or, if it
/// fails, the error's message).
pub fn rendezvous(
    config: &RendezvousConfig,
    make_blob: impl FnOnce() -> Result<Vec<u8>, CommError>,
) -> Result<TcpComm, CommError> {
    let RendezvousConfig {
        rank,
        world_size,
        ref master_addr,
        master_port,
        timeout,
    } = *config;
    if world_size == 0 || rank >= world_size {
        return Err(setup(format!(
            "rank {rank} is not below world size {world_size}"
        )));
    }
    let address = format!("{master_addr}:{master_port}");
    let deadline = Instant::now() + timeout;
    let mut peers: Vec<Option<Mutex<TcpStream>>> = (0..world_size).map(|_| None).collect();
    let blob;
    if rank == 0 {
        let listener = TcpListener::bind(&address)
            .map_err(|e| setup(format!("rank 0 cannot listen on {address}: {e}")))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| setup(e.to_string()))?;
        let mut joined = 1;
        while joined < world_size {
            match listener.accept() {
                Ok((mut stream, from)) => {
                    stream
                        .set_nonblocking(false)
                        .map_err(|e| setup(e.to_string()))?;
                    stream
                        .set_read_timeout(Some(timeout))
                        .map_err(|e| setup(e.to_string()))?;
                    let mut hello = [0u8; 18];
                    stream
                        .read_exact(&mut hello)
                        .map_err(|e| setup(format!("bad hello from {from}: {e}")))?;
                    let peer =
                        u32::from_le_bytes(hello[10..14].try_into().expect("4 bytes")) as usize;
                    let peer_world =
                        u32::from_le_bytes(hello[14..18].try_into().expect("4 bytes")) as usize;
                    let problem = if &hello[..10] != HELLO_MAGIC {
                        Some(format!("{from} is not a kormo rank (bad hello)"))
                    } else if peer_world != world_size {
                        Some(format!("rank {peer} at {from} says world size {peer_world}, rank 0 says {world_size}"))
                    } else if peer == 0 || peer >= world_size {
                        Some(format!(
                            "{from} claims rank {peer}, which is not in 1..{world_size}"
                        ))
                    } else if peers[peer].is_some() {
                        Some(format!(
                            "rank {peer} joined twice (second time from {from})"
                        ))
                    } else {
                        None
                    };
                    if let Some(problem) = problem {
                        let _ = stream.write_all(&refusal(&problem));
                        return Err(setup(problem));
                    }
                    peers[peer] = Some(Mutex::new(stream));
                    joined += 1;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        let missing: Vec<String> = (1..world_size)
                            .filter(|&r| peers[r].is_none())
                            .map(|r| r.to_string())
                            .collect();
                        return Err(setup(format!(
                            "rendezvous timed out after {:.1}s: rank {} did not connect to {address}",
                            timeout.as_secs_f64(),
                            missing.join(", rank ")
                        )));
                    }
                    std::thread::sleep(POLL);
                }
                Err(e) => return Err(setup(format!("accept on {address} failed: {e}"))),
            }
        }
        blob = match make_blob() {
            Ok(blob) => blob,
            Err(e) => {
                let message = format!("rank 0 could not create the shared id: {e}");
                for stream in peers.iter().flatten() {
                    let _ = stream
                        .lock()
                        .expect("stream lock")
                        .write_all(&refusal(&message));
                }
                return Err(setup(message));
            }
        };
        let mut welcome = vec![0u8];
        welcome.extend_from_slice(&(blob.len() as u32).to_le_bytes());
        welcome.extend_from_slice(&blob);
        for (peer, stream) in peers.iter().enumerate().skip(1) {
            let mut stream = stream
                .as_ref()
                .expect("joined")
                .lock()
                .expect("stream lock");
            write_all(&mut stream, &welcome, peer, "rendezvous")?;
        }
    } else {
        let mut stream = loop {
            let attempt = address
                .to_socket_addrs()
                .map_err(|e| {
                    setup(format!(
                        "cannot resolve MASTER_ADDR:MASTER_PORT = {address}: {e}"
                    ))
                })?
                .find_map(|a| {
                    TcpStream::connect_timeout(&a, POLL.max(Duration::from_millis(200))).ok()
                });
            match attempt {
                Some(stream) => break stream,
                None if Instant::now() >= deadline => {
                    return Err(setup(format!(
                        "rank {rank} could not reach rank 0 at {address} within {:.1}s",
                        timeout.as_secs_f64()
                    )))
                }
                None => std::thread::sleep(POLL),
            }
        };
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| setup(e.to_string()))?;
        stream.set_nodelay(true).map_err(|e| setup(e.to_string()))?;
        let mut hello = HELLO_MAGIC.to_vec();
        hello.extend_from_slice(&(rank as u32).to_le_bytes());
        hello.extend_from_slice(&(world_size as u32).to_le_bytes());
        write_all(&mut stream, &hello, 0, "rendezvous")?;
        let mut head = [0u8; 5];
        read_exact(&mut stream, &mut head, 0, "rendezvous", 0, timeout)?;
        let mut body =
            vec![0u8; u32::from_le_bytes(head[1..5].try_into().expect("4 bytes")) as usize];
        read_exact(&mut stream, &mut body, 0, "rendezvous", 0, timeout)?;
        if head[0] != 0 {
            return Err(setup(format!(
                "rank 0 refused rank {rank}: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        blob = body;
        peers[0] = Some(Mutex::new(stream));
    }
    Ok(TcpComm {
        rank,
        world_size,
        peers,
        blob,
        timeout,
        next_seq: AtomicU64::new(0),
    })
}

/// A refusal frame carrying `message`.
fn refusal(message: &str) -> Vec<u8> {
    let mut frame = vec![1u8];
    frame.extend_from_slice(&(message.len() as u32).to_le_bytes());
    frame.extend_from_slice(message.as_bytes());
    frame
}

impl TcpComm {
    /// The blob rank 0 handed out at the rendezvous.
    pub fn shared_blob(&self) -> &[u8] {
        &self.blob
    }

    fn peer(&self, rank: usize) -> std::sync::MutexGuard<'_, TcpStream> {
        self.peers[rank]
            .as_ref()
            .expect("connected peer")
            .lock()
            .expect("stream lock")
    }

    fn root_exchange(
        &self,
        op: Op,
        seq: u64,
        payload: Vec<u8>,
    ) -> Result<Contributions, CommError> {
        let mut all = vec![payload];
        let gathered = (1..self.world_size).try_for_each(|peer| {
            let mut stream = self.peer(peer);
            let (their_seq, their_op) = {
                let s = read_u64(&mut stream, peer, op.name(), seq, self.timeout)?;
                let mut code = [0u8; 1];
                read_exact(&mut stream, &mut code, peer, op.name(), seq, self.timeout)?;
                (s, Op::from_code(code[0]))
            };
            let len = read_u64(&mut stream, peer, op.name(), seq, self.timeout)? as usize;
            let mut bytes = vec![0u8; len];
            read_exact(&mut stream, &mut bytes, peer, op.name(), seq, self.timeout)?;
            if their_seq != seq || their_op != Some(op) {
                return Err(CommError::Mismatch(format!(
                    "rank 0 is at collective #{seq} ({}) but rank {peer} sent #{their_seq} ({})",
                    op.name(),
                    their_op.map_or("unknown", Op::name)
                )));
            }
            all.push(bytes);
            Ok(())
        });
        if let Err(error) = gathered {
            let message = error.to_string();
            let mut abort = vec![1u8];
            abort.extend_from_slice(&(message.len() as u64).to_le_bytes());
            abort.extend_from_slice(message.as_bytes());
            for peer in 1..self.world_size {
                // Best effort: the lost rank cannot be told.
                let _ = self.peer(peer).write_all(&abort);
            }
            return Err(error);
        }
        let mut reply = vec![0u8];
        for payload in &all {
            reply.extend_from_slice(&(payload.len() as u64).to_le_bytes());
            reply.extend_from_slice(payload);
        }
        for peer in 1..self.world_size {
            write_all(&mut self.peer(peer), &reply, peer, op.name())?;
        }
        Ok(Arc::new(all))
    }

    fn member_exchange(
        &self,
        op: Op,
        seq: u64,
        payload: Vec<u8>,
    ) -> Result<Contributions, CommError> {
        let mut stream = self.peer(0);
        let mut frame = seq.to_le_bytes().to_vec();
        frame.push(op.code());
        frame.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        frame.extend_from_slice(&payload);
        write_all(&mut stream, &frame, 0, op.name())?;
        let mut status = [0u8; 1];
        read_exact(&mut stream, &mut status, 0, op.name(), seq, self.timeout)?;
        if status[0] != 0 {
            let len = read_u64(&mut stream, 0, op.name(), seq, self.timeout)? as usize;
            let mut text = vec![0u8; len];
            read_exact(&mut stream, &mut text, 0, op.name(), seq, self.timeout)?;
            return Err(CommError::Aborted {
                by: 0,
                message: String::from_utf8_lossy(&text).into_owned(),
            });
        }
        let mut all = Vec::with_capacity(self.world_size);
        for _ in 0..self.world_size {
            let len = read_u64(&mut stream, 0, op.name(), seq, self.timeout)? as usize;
            let mut bytes = vec![0u8; len];
            read_exact(&mut stream, &mut bytes, 0, op.name(), seq, self.timeout)?;
            all.push(bytes);
        }
        Ok(Arc::new(all))
    }
}

impl HostTransport for TcpComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn exchange(&self, op: Op, payload: Vec<u8>) -> Result<Contributions, CommError> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        if self.rank == 0 {
            self.root_exchange(op, seq, payload)
        } else {
            self.member_exchange(op, seq, payload)
        }
    }

    /// Probes each connection without blocking or consuming data: a connection in use by a
    /// collective of this rank is `Busy`; otherwise a non-blocking peek tells end of file or a
    /// reset (the peer's process is gone: its kernel closed the socket) from an open one.
    fn peer_health(&self) -> Vec<PeerHealth> {
        self.peers
            .iter()
            .enumerate()
            .filter_map(|(rank, peer)| Some((rank, peer.as_ref()?)))
            .map(|(rank, peer)| {
                let state = match peer.try_lock() {
                    Ok(stream) => probe(&stream),
                    // A rank that panicked holding the lock: the stream itself is still fine.
                    Err(std::sync::TryLockError::Poisoned(stream)) => probe(&stream.into_inner()),
                    Err(std::sync::TryLockError::WouldBlock) => PeerState::Busy,
                };
                PeerHealth { rank, state }
            })
            .collect()
    }
}

/// One connection's state, without reading from it. On Linux by `poll` with POLLRDHUP: a peer
/// that died right after sending a frame leaves unread data behind its end of file, which a
/// peek would take for a live peer. Elsewhere by a non-blocking peek (end of file only once the
/// peer's data has been read).
#[cfg(target_os = "linux")]
fn probe(stream: &TcpStream) -> PeerState {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct PollFd {
        fd: i32,
        events: i16,
        revents: i16,
    }
    extern "C" {
        fn poll(fds: *mut PollFd, nfds: u64, timeout_ms: i32) -> i32;
    }
    const POLLIN: i16 = 0x1;
    const POLLERR: i16 = 0x8;
    const POLLHUP: i16 = 0x10;
    const POLLRDHUP: i16 = 0x2000;
    let mut fd = PollFd { fd: stream.as_raw_fd(), events: POLLIN | POLLRDHUP, revents: 0 };
    // SAFETY: one valid pollfd for an open socket this stream owns; timeout 0 never blocks.
    let ready = unsafe { poll(&mut fd, 1, 0) };
    if ready < 0 {
        return PeerState::Closed(format!("cannot be probed: {}", std::io::Error::last_os_error()));
    }
    if fd.revents & POLLERR != 0 {
        PeerState::Closed(format!("broke: {}", stream.take_error().ok().flatten().map_or("socket error".into(), |e| e.to_string())))
    } else if fd.revents & (POLLHUP | POLLRDHUP) != 0 {
        PeerState::Closed("closed".into())
    } else {
        PeerState::Open
    }
}

#[cfg(not(target_os = "linux"))]
fn probe(stream: &TcpStream) -> PeerState {
    if let Err(e) = stream.set_nonblocking(true) {
        return PeerState::Closed(format!("cannot be probed: {e}"));
    }
    let mut byte = [0u8; 1];
    let state = match stream.peek(&mut byte) {
        Ok(0) => PeerState::Closed("closed".into()),
        Ok(_) => PeerState::Open,
        Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
            PeerState::Open
        }
        Err(e) => PeerState::Closed(format!("broke: {e}")),
    };
    if let Err(e) = stream.set_nonblocking(false) {
        return PeerState::Closed(format!("cannot be restored to blocking after a probe: {e}"));
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that died right after sending (its frame still unread) is closed, not open; a
    /// live one with data pending is open, and the probe leaves the data in place.
    #[test]
    fn probe_sees_a_hang_up_behind_unread_data() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let live = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (live_end, _) = listener.accept().unwrap();
        let dying = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (dying_end, _) = listener.accept().unwrap();
        (&live).write_all(b"frame").unwrap();
        (&dying).write_all(b"frame").unwrap();
        drop(dying);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while matches!(probe(&dying_end), PeerState::Open) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(matches!(probe(&dying_end), PeerState::Closed(_)), "{:?}", probe(&dying_end));
        assert_eq!(probe(&live_end), PeerState::Open);
        let mut frame = [0u8; 5];
        (&live_end).read_exact(&mut frame).unwrap();
        assert_eq!(&frame, b"frame");
    }
    use crate::comm::Collectives;

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn config(rank: usize, world_size: usize, port: u16) -> RendezvousConfig {
        RendezvousConfig {
            rank,
            world_size,
            master_addr: "127.0.0.1".into(),
            master_port: port,
            timeout: Duration::from_secs(20),
        }
    }

    #[test]
    fn threads_meet_over_loopback_and_reduce_in_rank_order() {
        let port = free_port();
        let results: Vec<(Vec<u8>, Vec<f32>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..3)
                .map(|rank| {
                    scope.spawn(move || {
                        let comm =
                            rendezvous(&config(rank, 3, port), || Ok(vec![7, 1, 2, 3])).unwrap();
                        let mut values = vec![rank as f32 + 0.25, 1.0];
                        comm.all_reduce(&mut values).unwrap();
                        let mut gathered = vec![0.0; 3];
                        comm.all_gather(&[rank as f32], &mut gathered).unwrap();
                        values.extend(gathered);
                        (comm.shared_blob().to_vec(), values)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (blob, values) in results {
            assert_eq!(blob, vec![7, 1, 2, 3]);
            assert_eq!(values, vec![3.75, 3.0, 0.0, 1.0, 2.0]);
        }
    }

    #[test]
    fn peer_health_names_a_closed_connection_and_leaves_open_ones_usable() {
        let port = free_port();
        let (root, member) = std::thread::scope(|scope| {
            let (gone_tx, gone_rx) = std::sync::mpsc::channel::<()>();
            let (probed_tx, probed_rx) = std::sync::mpsc::channel::<()>();
            let root = scope.spawn(move || {
                let comm = rendezvous(&config(0, 3, port), || Ok(Vec::new())).unwrap();
                // Rank 1 sends its frame of the next collective first: a peek must not eat it.
                std::thread::sleep(Duration::from_millis(100));
                gone_rx.recv().unwrap();
                // Rank 2's socket was closed (as its kernel does when the process dies).
                let health = comm.peer_health();
                let message = crate::comm::lost_peers_message(0, &health).unwrap();
                probed_tx.send(()).unwrap();
                // The open connection still carries a collective: the probe consumed nothing
                // (rank 2 is gone, so it is named as lost by the exchange itself).
                let after = comm.barrier().unwrap_err().to_string();
                (health, message, after)
            });
            let member = scope.spawn(move || {
                let comm = rendezvous(&config(1, 3, port), || Ok(Vec::new())).unwrap();
                let health = comm.peer_health();
                let barrier = std::thread::spawn(move || {
                    let result = comm.barrier().map_err(|e| e.to_string());
                    (comm, result)
                });
                probed_rx.recv().unwrap();
                let (comm, result) = barrier.join().unwrap();
                (health, result.unwrap_err(), comm.peer_health())
            });
            let gone = rendezvous(&config(2, 3, port), || Ok(Vec::new())).unwrap();
            drop(gone);
            gone_tx.send(()).unwrap();
            (root.join().unwrap(), member.join().unwrap())
        });
        let (health, message, after) = root;
        assert_eq!(
            health,
            vec![
                PeerHealth {
                    rank: 1,
                    state: PeerState::Open
                },
                PeerHealth {
                    rank: 2,
                    state: PeerState::Closed("closed".into())
                },
            ]
        );
        assert_eq!(
            message,
            "rank 2 was lost (its TCP connection to rank 0 closed)"
        );
        assert!(after.contains("rank 2 was lost during barrier"), "{after}");
        let (before, aborted, later) = member;
        assert_eq!(
            before,
            vec![PeerHealth {
                rank: 0,
                state: PeerState::Open
            }]
        );
        // Rank 0 read rank 1's barrier frame after the probe and told it about rank 2.
        assert!(
            aborted.contains("rank 2 was lost during barrier"),
            "{aborted}"
        );
        // One connection (to rank 0), whatever its state by now.
        assert_eq!(later.len(), 1);
    }

    #[test]
    fn lost_peer_messages_say_what_is_known() {
        let peer = |rank, state| PeerHealth { rank, state };
        use crate::comm::lost_peers_message as message;
        assert_eq!(message(0, &[]), None);
        let m = message(
            0,
            &[
                peer(1, PeerState::Open),
                peer(2, PeerState::Busy),
                peer(3, PeerState::Open),
            ],
        )
        .unwrap();
        assert_eq!(
            m,
            "no TCP connection to rank 0 closed (connected: rank 1, rank 3); in use by a host \
             collective: rank 2; a rank may be hung (stopped, or stuck on its GPU)"
        );
        let m = message(3, &[peer(0, PeerState::Open)]).unwrap();
        assert!(
            m.ends_with("rank 0's own error names a rank it lost"),
            "{m}"
        );
        let m = message(3, &[peer(0, PeerState::Closed("broke: reset".into()))]).unwrap();
        assert_eq!(
            m,
            "rank 0 was lost (its TCP connection to rank 3 broke: reset)"
        );
    }

    #[test]
    fn wrong_world_size_is_refused_naming_the_rank() {
        let port = free_port();
        let (root, member) = std::thread::scope(|scope| {
            let root = scope.spawn(move || {
                rendezvous(&config(0, 2, port), || Ok(Vec::new()))
                    .err()
                    .unwrap()
                    .to_string()
            });
            let member = scope.spawn(move || {
                rendezvous(&config(1, 3, port), || Ok(Vec::new()))
                    .err()
                    .unwrap()
                    .to_string()
            });
            (root.join().unwrap(), member.join().unwrap())
        });
        assert!(
            root.contains("rank 1") && root.contains("world size 3"),
            "{root}"
        );
        assert!(member.contains("refused rank 1"), "{member}");
    }
}
