//! [`Watchdog`]: bounds a hang inside collectives that have no timeout (NCCL, when a peer died
//! in one). The step loop reports progress ([`Watchdog::alive`]) at every step, and a thread
//! ends the process with exit code 2 and a message when none came for the timeout. Every
//! second it also polls the watched NCCL communicators' asynchronous errors
//! ([`Watchdog::watch`]; NCCL sets one when it sees a peer's connection fail inside a
//! collective) and ends the process at once on one, naming the communicator, the rank and the
//! last collective enqueued. Before exiting it asks the host (TCP) group which peers'
//! connections closed, to name the lost rank ("rank 3 was lost (its TCP connection to rank 0
//! closed)"; rank 0 sees every peer, the others only rank 0), and aborts the NCCL
//! communicators (`ncclCommAbort`), so that the exit does not hang behind a collective still
//! spinning on the GPU. Under SLURM `--kill-on-bad-exit` ends the job step as soon as the first
//! rank exits, which may be sooner.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::comm::HostTransport;
use crate::nccl::NcclWatch;

/// One rank's watchdog; its thread runs from [`Watchdog::start`] until the process ends.
pub struct Watchdog {
    state: Arc<State>,
}

struct State {
    epoch: Instant,
    /// Milliseconds since `epoch` of the last progress.
    last_progress_ms: AtomicU64,
    /// The NCCL communicators to poll and abort.
    watched: Mutex<Vec<NcclWatch>>,
}

impl State {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

impl Watchdog {
    /// Starts watching rank `world.rank()`: the process exits when no step finished for
    /// `timeout` or a watched communicator reports an error.
    pub fn start(world: Arc<dyn HostTransport>, timeout: Duration) -> Watchdog {
        let state = Arc::new(State {
            epoch: Instant::now(),
            last_progress_ms: AtomicU64::new(0),
            watched: Mutex::new(Vec::new()),
        });
        let watched_state = state.clone();
        std::thread::spawn(move || watch_loop(&watched_state, world.as_ref(), timeout));
        Watchdog { state }
    }

    /// A step finished: the timeout starts again.
    pub fn alive(&self) {
        let now = self.state.now_ms();
        self.state.last_progress_ms.store(now, Ordering::Relaxed);
    }

    /// The communicators to poll and abort from now on.
    pub fn watch(&self, comms: Vec<NcclWatch>) {
        *self.state.watched.lock().unwrap_or_else(|e| e.into_inner()) = comms;
    }
}

fn watch_loop(state: &State, world: &dyn HostTransport, timeout: Duration) -> ! {
    let (rank, world_size) = (world.rank(), world.world_size());
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let watched = state
            .watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let nccl_error = watched.iter().find_map(|w| w.async_error());
        let last = state.last_progress_ms.load(Ordering::Relaxed);
        let idle = Duration::from_millis(state.now_ms().saturating_sub(last));
        let what = match nccl_error {
            Some(error) => error,
            None if idle > timeout => format!(
                "no training step finished for {}s (--dist-timeout); another rank probably \
                 failed inside an NCCL collective",
                idle.as_secs()
            ),
            None => continue,
        };
        let peers = crate::comm::lost_peers_message(rank, &world.peer_health())
            .unwrap_or_else(|| "the host group cannot tell which rank was lost".into());
        eprintln!("error: rank {rank} of {world_size}: {what}; {peers}");
        for watch in &watched {
            if !watch.abort(Duration::from_secs(5)) {
                eprintln!(
                    "note: did not abort the {} (busy or already released)",
                    watch.describe()
                );
            }
        }
        std::process::exit(2);
    }
}
