//! Real processes of `dist_selftest` meeting over loopback TCP: a clean run, a killed rank
//! reported by rank number with a non-zero exit, and a rendezvous timeout.

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
