//! Real processes of `dist_selftest` meeting over loopback TCP: a clean run, a killed rank
//! reported by rank number with a non-zero exit, a rendezvous timeout, and `peer_health`
//! naming a SIGKILLed rank (this test as rank 0) without consuming a pending frame.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SELFTEST: &str = env!("CARGO_BIN_EXE_dist_selftest");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(rank: usize, world: usize, port: u16, args: &[&str]) -> Child {
    Command::new(SELFTEST)
        .args(args)
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env_remove("SLURM_PROCID")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dist_selftest")
}

/// Waits up to `limit` for the child; kills it (and fails) if it hangs. Returns (success, stdout, stderr).
fn finish(mut child: Child, limit: Duration) -> (bool, String, String) {
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("dist_selftest (pid {}) hung", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.success(), out, err)
}

#[test]
fn two_processes_meet_and_share_the_blob() {
    let port = free_port();
    let children: Vec<Child> = (0..2)
        .map(|rank| {
            spawn(
                rank,
                2,
                port,
                &["--iterations", "20", "--timeout-secs", "30"],
            )
        })
        .collect();
    let results: Vec<_> = children
        .into_iter()
        .map(|c| finish(c, Duration::from_secs(60)))
        .collect();
    let blob = |out: &str| {
        out.lines()
            .find(|l| l.contains(" blob "))
            .map(|l| l.split(" blob ").nth(1).unwrap().to_string())
    };
    for (rank, (ok, out, err)) in results.iter().enumerate() {
        assert!(ok, "rank {rank} failed: {err}");
        assert!(
            out.contains(&format!("rank {rank} ok: 20 all-reduces checked")),
            "{out}"
        );
    }
    let b0 = blob(&results[0].1).unwrap();
    assert_eq!(b0.len(), 256, "128-byte blob in hex");
    assert_eq!(
        Some(b0),
        blob(&results[1].1),
        "every rank received rank 0's blob"
    );
}

#[test]
fn killed_rank_is_named_by_the_survivors() {
    let port = free_port();
    let args = [
        "--iterations",
        "100000",
        "--interval-ms",
        "5",
        "--timeout-secs",
        "30",
    ];
    let mut children: Vec<Child> = (0..3).map(|rank| spawn(rank, 3, port, &args)).collect();
    // Wait until rank 1 is past the rendezvous, then kill it (SIGKILL: no chance to say goodbye).
    let mut lines = BufReader::new(children[1].stdout.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.unwrap() == "ready"),
        "rank 1 never became ready"
    );
    let mut victim = children.remove(1);
    victim.kill().unwrap();
    victim.wait().unwrap();
    for (rank, child) in [0, 2].into_iter().zip(children) {
        let (ok, _, err) = finish(child, Duration::from_secs(60));
        assert!(!ok, "rank {rank} must exit non-zero");
        assert!(err.contains("rank 1 was lost"), "rank {rank} stderr: {err}");
    }
}

#[test]
fn missing_rank_times_out_at_rendezvous() {
    let child = spawn(0, 2, free_port(), &["--timeout-secs", "1"]);
    let (ok, _, err) = finish(child, Duration::from_secs(30));
    assert!(!ok);
    assert!(err.contains("rank 1 did not connect"), "{err}");
}

#[test]
fn peer_health_names_a_killed_process_without_taking_part_in_a_collective() {
    // This test is rank 0 (as a watchdog would ask it while its NCCL collective hangs); ranks
    // 1 and 2 are dist_selftest processes, which send their first all-reduce and wait for it.
    use kormo_dist::tcp::{rendezvous, RendezvousConfig};
    use kormo_dist::{lost_peers_message, HostTransport, PeerHealth, PeerState};
    let port = free_port();
    let args = ["--iterations", "1", "--timeout-secs", "60"];
    let mut children: Vec<Child> = (1..3).map(|rank| spawn(rank, 3, port, &args)).collect();
    let config = RendezvousConfig {
        rank: 0,
        world_size: 3,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        timeout: Duration::from_secs(30),
    };
    let comm = rendezvous(&config, || Ok(vec![0; 128])).unwrap();
    // Both are alive: connections open (their collective frames wait unread).
    let deadline = Instant::now() + Duration::from_secs(30);
    let open = |rank| PeerHealth {
        rank,
        state: PeerState::Open,
    };
    assert_eq!(comm.peer_health(), vec![open(1), open(2)]);
    // SIGKILL rank 2: its kernel closes the socket.
    let mut victim = children.remove(1);
    victim.kill().unwrap();
    victim.wait().unwrap();
    let health = loop {
        let health = comm.peer_health();
        if health[1].state != PeerState::Open || Instant::now() > deadline {
            break health;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(health[0], open(1));
    assert!(
        matches!(
            &health[1],
            PeerHealth {
                rank: 2,
                state: PeerState::Closed(_)
            }
        ),
        "{health:?}"
    );
    let message = lost_peers_message(0, &health).unwrap();
    assert!(
        message.starts_with("rank 2 was lost (its TCP connection to rank 0 "),
        "{message}"
    );
    // The probes consumed nothing: rank 1's pending frame (its first all-reduce) is read
    // whole by the next collective, which names it.
    let e = kormo_dist::Collectives::barrier(&comm)
        .unwrap_err()
        .to_string();
    assert!(e.contains("rank 1 sent #0 (all_reduce)"), "{e}");
    drop(comm);
    let (ok, _, err) = finish(children.remove(0), Duration::from_secs(60));
    assert!(!ok, "rank 1 must exit non-zero: {err}");
}
