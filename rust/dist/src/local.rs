//! In-process communicator: one thread per rank, shared state behind a mutex and a condvar.
//!
//! Each rank numbers its collectives (0, 1, 2, ...). Collective `seq` collects one payload per
//! rank in a `Round`; the last rank to arrive publishes all payloads, and every rank computes
//! its result from them in rank order (see [`crate::comm`]), so results never depend on which
//! thread came first. A rank that waits longer than the timeout gets an error naming the ranks
//! that never arrived (a hung or crashed rank thread), instead of hanging the whole test.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::comm::{CommError, Contributions, HostTransport, Op};

struct Round {
    ops: Vec<Option<Op>>,
    payloads: Vec<Option<Vec<u8>>>,
    arrived: usize,
    outcome: Option<Result<Contributions, CommError>>,
    readers_left: usize,
}

struct Shared {
    world_size: usize,
    timeout: Duration,
    rounds: Mutex<HashMap<u64, Round>>,
    published: Condvar,
}

/// One rank's handle on an in-process group; move it into that rank's thread.
pub struct LocalComm {
    shared: Arc<Shared>,
    rank: usize,
    next_seq: AtomicU64,
}

impl LocalComm {
    /// Handles for ranks `0..world_size` of a new group; a collective fails after `timeout`.
    pub fn group(world_size: usize, timeout: Duration) -> Vec<LocalComm> {
        assert!(world_size >= 1, "a group needs at least one rank");
        let shared = Arc::new(Shared {
            world_size,
            timeout,
            rounds: Mutex::new(HashMap::new()),
            published: Condvar::new(),
        });
        (0..world_size)
            .map(|rank| LocalComm {
                shared: shared.clone(),
                rank,
                next_seq: AtomicU64::new(0),
            })
            .collect()
    }

    /// Runs `work(rank, comm)` on one thread per rank and returns the results in rank order.
    /// A panicking rank re-raises its panic here once every thread has finished.
    pub fn run<T: Send>(
        world_size: usize,
        timeout: Duration,
        work: impl Fn(LocalComm) -> T + Sync,
    ) -> Vec<T> {
        let work = &work;
        std::thread::scope(|scope| {
            let handles: Vec<_> = LocalComm::group(world_size, timeout)
                .into_iter()
                .map(|comm| scope.spawn(move || work(comm)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        })
    }
}

impl HostTransport for LocalComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world_size
    }

    fn exchange(&self, op: Op, payload: Vec<u8>) -> Result<Contributions, CommError> {
        let world = self.shared.world_size;
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let mut rounds = self
            .shared
            .rounds
            .lock()
            .expect("communicator state poisoned");
        let round = rounds.entry(seq).or_insert_with(|| Round {
            ops: vec![None; world],
            payloads: vec![None; world],
            arrived: 0,
            outcome: None,
            readers_left: world,
        });
        round.ops[self.rank] = Some(op);
        round.payloads[self.rank] = Some(payload);
        round.arrived += 1;
        if round.arrived == world {
            round.outcome = Some(publish(seq, round));
            self.shared.published.notify_all();
        }
        let deadline = Instant::now() + self.shared.timeout;
        loop {
            let round = rounds
                .get_mut(&seq)
                .expect("round stays until every rank has read it");
            if let Some(outcome) = &round.outcome {
                let outcome = outcome.clone();
                round.readers_left -= 1;
                if round.readers_left == 0 {
                    rounds.remove(&seq);
                }
                return outcome;
            }
            let now = Instant::now();
            if now >= deadline {
                let missing = round
                    .payloads
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.is_none())
                    .map(|(r, _)| r)
                    .collect();
                return Err(CommError::Timeout {
                    op: op.name(),
                    seq,
                    missing,
                    waited: self.shared.timeout,
                });
            }
            rounds = self
                .shared
                .published
                .wait_timeout(rounds, deadline - now)
                .expect("communicator state poisoned")
                .0;
        }
    }
}

/// All payloads of a complete round, or the mismatch if ranks called different collectives.
fn publish(seq: u64, round: &mut Round) -> Result<Contributions, CommError> {
    let first = round.ops[0].expect("complete round");
    if let Some((rank, op)) = round
        .ops
        .iter()
        .enumerate()
        .find(|(_, op)| **op != Some(first))
    {
        return Err(CommError::Mismatch(format!(
            "collective #{seq}: rank 0 called {} but rank {rank} called {}",
            first.name(),
            op.expect("complete round").name()
        )));
    }
    Ok(Arc::new(
        round
            .payloads
            .iter_mut()
            .map(|p| p.take().expect("complete round"))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comm::{Collectives, SubGroup};
    use kormo_model::bf16;

    const TIMEOUT: Duration = Duration::from_secs(10);

    /// Distinct, non-trivial values per rank and element.
    fn data(rank: usize, len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((rank * 31 + i * 7) % 13) as f32 * 0.37 - 1.9 + rank as f32 * 1e-3)
            .collect()
    }

    #[test]
    fn collectives_match_sequential_definitions() {
        for world in 1..=4 {
            let n = 5;
            let results = LocalComm::run(world, TIMEOUT, |comm| {
                let rank = HostTransport::rank(&comm);
                let mut gathered = vec![0.0; n * world];
                comm.all_gather(&data(rank, n), &mut gathered).unwrap();
                let mut scattered = vec![0.0; n];
                comm.reduce_scatter(&data(rank, n * world), &mut scattered)
                    .unwrap();
                let mut reduced = data(rank, n);
                comm.all_reduce(&mut reduced).unwrap();
                let mut scalars = [rank as f64 + 0.5, 1.0];
                comm.all_reduce_scalars(&mut scalars).unwrap();
                let mut cast = if rank == world - 1 {
                    data(99, n)
                } else {
                    vec![0.0; n]
                };
                comm.broadcast(&mut cast, world - 1).unwrap();
                comm.barrier().unwrap();
                (gathered, scattered, reduced, scalars, cast)
            });
            let sum_in_rank_order = |len: usize, offset: usize| -> Vec<f32> {
                (0..len)
                    .map(|i| {
                        let mut total = data(0, offset + len)[offset + i];
                        for r in 1..world {
                            total += data(r, offset + len)[offset + i];
                        }
                        total
                    })
                    .collect()
            };
            for (rank, (gathered, scattered, reduced, scalars, cast)) in
                results.into_iter().enumerate()
            {
                let expected: Vec<f32> = (0..world).flat_map(|r| data(r, n)).collect();
                assert_eq!(gathered, expected);
                let full: Vec<Vec<f32>> = (0..world).map(|r| data(r, n * world)).collect();
                let want: Vec<f32> = (0..n)
                    .map(|i| {
                        let mut total = full[0][rank * n + i];
                        for f in &full[1..] {
                            total += f[rank * n + i];
                        }
                        total
                    })
                    .collect();
                assert_eq!(scattered, want);
                assert_eq!(reduced, sum_in_rank_order(n, 0));
                assert_eq!(scalars[0], (0..world).map(|r| r as f64 + 0.5).sum::<f64>());
                assert_eq!(scalars[1], world as f64);
                assert_eq!(cast, data(99, n));
            }
        }
    }

    #[test]
    fn bf16_reduce_scatter_sums_rounded_inputs() {
        let results = LocalComm::run(3, TIMEOUT, |comm| {
            let rank = HostTransport::rank(&comm);
            let input = bf16::from_f32_slice(&data(rank, 6));
            let mut out = vec![0u16; 2];
            comm.reduce_scatter_bf16(&input, &mut out).unwrap();
            out
        });
        for (rank, out) in results.iter().enumerate() {
            for (i, &bits) in out.iter().enumerate() {
                let exact: f32 = (0..3)
                    .map(|r| bf16::to_f32(bf16::from_f32(data(r, 6)[rank * 2 + i])))
                    .sum();
                assert_eq!(bits, bf16::from_f32(exact));
            }
        }
    }

    #[test]
    fn missing_rank_times_out_naming_it() {
        let results = LocalComm::run(3, Duration::from_millis(200), |comm| {
            if HostTransport::rank(&comm) == 2 {
                return None; // rank 2 never joins
            }
            Some(comm.barrier().unwrap_err())
        });
        for err in results.into_iter().flatten() {
            assert!(
                matches!(&err, CommError::Timeout { missing, .. } if missing == &vec![2]),
                "{err}"
            );
            assert!(err.to_string().contains("rank 2 did not arrive"), "{err}");
        }
    }

    #[test]
    fn different_collectives_are_reported() {
        let results = LocalComm::run(2, TIMEOUT, |comm| {
            if HostTransport::rank(&comm) == 0 {
                comm.barrier().unwrap_err()
            } else {
                comm.all_reduce(&mut [1.0]).unwrap_err()
            }
        });
        for err in results {
            assert!(
                err.to_string().contains("rank 1 called all_reduce"),
                "{err}"
            );
        }
    }

    #[test]
    fn sub_groups_reduce_within_their_members() {
        // 4 ranks: colour = rank / 2 gives groups {0, 1} and {2, 3}.
        let results = LocalComm::run(4, TIMEOUT, |comm| {
            let rank = HostTransport::rank(&comm);
            let parent: Arc<dyn HostTransport> = Arc::new(comm);
            let nodes = SubGroup::split(parent.clone(), |r| r / 2);
            let replicas = SubGroup::split(parent, |r| r % 2);
            let mut within = [rank as f32 + 1.0];
            nodes.all_reduce(&mut within).unwrap();
            let mut across = [10.0 * (rank as f32 + 1.0)];
            replicas.all_reduce(&mut across).unwrap();
            (
                within[0],
                across[0],
                Collectives::rank(&nodes),
                nodes.members().to_vec(),
            )
        });
        assert_eq!(results[0], (3.0, 40.0, 0, vec![0, 1]));
        assert_eq!(results[1], (3.0, 60.0, 1, vec![0, 1]));
        assert_eq!(results[2], (7.0, 40.0, 0, vec![2, 3]));
        assert_eq!(results[3], (7.0, 60.0, 1, vec![2, 3]));
    }
}
