//! `train` as one rank per process (`--launcher`, RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT),
//! real processes over loopback TCP on the CPU:
//! * 2 processes train the test recipe exactly as `--world-size 2` threads do (the same FSDP
//!   engine, and both transports sum contributions in rank order: losses and final weights
//!   bitwise equal), and as world size 1 within tests/distributed.rs's tolerances (losses 1e-6
//!   relative; weights at most 1e-4 apart, at most 1% of a tensor's elements by over 1e-5);
//!   a run stopped with --stop-after and resumed by 2 processes ends bitwise where the
//!   straight run does, and resumed by one plain process within the world-size-1 tolerance;
//!   only consolidated checkpoints remain; `shard_grad_op` and `hybrid` (2 = 2 x 1) over
//!   processes equal their thread runs bitwise too;
//! * a killed rank makes the other exit non-zero naming it, well within the timeout, and a
//!   hung (stopped) rank is named once `--dist-timeout` has passed;
//! * SIGTERM to every rank (SLURM preemption) stops all at the same step with one checkpoint,
//!   and `--resume` by 2 processes finishes the stage, every step logged once;
//! * a bad launch environment is an error naming the variable, exit code 2, no panic.
//!
//! The binary comes from CARGO_BIN_EXE_train (cargo; Bazel sets it runfiles-relative, see
//! tests/preempt.rs). Ports: a fresh free port per launch.

mod common;

use common::{repo, scratch};
use kormo_checkpoint::Checkpoint;
use kormo_train::metrics::{read_metrics, StepMetrics};
use kormo_train::trainer::MODEL_FILE;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const STEPS: u64 = 10;
const LOSS_TOLERANCE: f64 = 1e-6;
const WEIGHT_TOLERANCE: f32 = 1e-4;
const NOISY_FRACTION: f64 = 0.01;

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}
const SIGKILL: i32 = 9;
const SIGSTOP: i32 = 19;
const SIGTERM: i32 = 15;

const LAUNCH_VARS: [&str; 8] = [
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_LOCALID",
];

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `train` command with no launch variables inherited.
fn train(args: &[String]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_train"));
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in LAUNCH_VARS {
        command.env_remove(var);
    }
    command
}

fn args(dir: &Path, extra: &[&str]) -> Vec<String> {
    let recipe = repo().join("tests/recipes/test-small.toml");
    [
        "--stage=pretrain1".to_string(),
        format!("--config={}", recipe.display()),
        format!("--run-dir={}", dir.display()),
        "--backend=cpu".into(),
        "--log-every=1".into(),
    ]
    .into_iter()
    .chain(extra.iter().map(|s| s.to_string()))
    .collect()
}

/// Starts rank `rank` of `world` meeting on 127.0.0.1:`port`.
fn spawn_rank(rank: usize, world: usize, port: u16, args: &[String]) -> Child {
    train(args)
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .spawn()
        .expect("start the train binary")
}

/// Waits up to `limit` for the child (killing it and failing the test if it hangs).
fn finish(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let pid = child.id();
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "train (pid {pid}) did not exit within {limit:?}:\n{}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `world` ranks as processes on `dir`; every one must succeed. Rank 0's stdout.
fn run_processes(world: usize, dir: &Path, extra: &[&str]) -> String {
    let port = free_port();
    let mut list = vec!["--threads=1", "--dist-timeout=60"];
    list.extend_from_slice(extra);
    let children: Vec<Child> = (0..world)
        .map(|rank| spawn_rank(rank, world, port, &args(dir, &list)))
        .collect();
    let outputs: Vec<Output> = children
        .into_iter()
        .map(|c| finish(c, Duration::from_secs(300)))
        .collect();
    for (rank, output) in outputs.iter().enumerate() {
        assert!(
            output.status.success(),
            "rank {rank}: {}\n{}\n{}",
            output.status,
            text(&output.stdout),
            text(&output.stderr)
        );
        let stdout = text(&output.stdout);
        assert!(
            stdout.starts_with(&format!(
                "launch: rank {rank} of {world} (local rank {rank}, from RANK/WORLD_SIZE/LOCAL_RANK), rendezvous at 127.0.0.1:{port}"
            )),
            "{stdout}"
        );
        if rank > 0 {
            // Quiet after saying who it is: rank 0 reports.
            assert!(!stdout.contains("step "), "rank {rank}: {stdout}");
        }
    }
    text(&outputs[0].stdout)
}

/// `--world-size N` threads in one process (no launch variables).
fn run_threads(world: usize, dir: &Path, extra: &[&str]) {
    let threads = format!("--threads={world}");
    let world_size = format!("--world-size={world}");
    let mut list = vec![threads.as_str(), world_size.as_str()];
    list.extend_from_slice(extra);
    let output = finish(
        train(&args(dir, &list)).spawn().unwrap(),
        Duration::from_secs(300),
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
}

fn metrics(dir: &Path) -> Vec<StepMetrics> {
    read_metrics(&dir.join("pretrain1/metrics.jsonl")).unwrap()
}

fn weights(checkpoint: &Path) -> Vec<(String, Vec<f32>)> {
    let checkpoint = Checkpoint::load(checkpoint).unwrap();
    let file = checkpoint.file(MODEL_FILE).unwrap();
    file.tensors()
        .keys()
        .map(|name| (name.clone(), file.f32(name, None).unwrap()))
        .collect()
}

fn final_dir(dir: &Path) -> PathBuf {
    dir.join("pretrain1/final")
}

#[test]
fn two_processes_train_like_two_threads_and_like_one_rank() {
    let max = format!("--max-steps={STEPS}");
    let processes = scratch("mp-processes");
    let stdout = run_processes(2, &processes, &[&max]);
    assert!(
        stdout.contains(
            "distributed: world size 2, one rank per process (this is rank 0), strategy full_shard"
        ),
        "{stdout}"
    );
    let threads = scratch("mp-threads");
    run_threads(2, &threads, &[&max]);
    let single = scratch("mp-single");
    run_threads(1, &single, &[&max]);

    let (p, t, s) = (metrics(&processes), metrics(&threads), metrics(&single));
    assert_eq!(p.len(), STEPS as usize);
    println!("step | 2 processes | 2 threads | 1 rank");
    for ((a, b), c) in p.iter().zip(&t).zip(&s) {
        println!("{} | {} | {} | {}", a.step, a.loss, b.loss, c.loss);
    }
    // Threads and processes: the same engine and the same order of additions.
    assert_eq!(
        p.iter()
            .map(|m| (m.step, m.loss, m.grad_norm))
            .collect::<Vec<_>>(),
        t.iter()
            .map(|m| (m.step, m.loss, m.grad_norm))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        weights(&final_dir(&processes)),
        weights(&final_dir(&threads))
    );
    // World size 1: float reassociation only.
    assert_eq!(p.len(), s.len());
    for (a, b) in p.iter().zip(&s) {
        assert_eq!((a.step, a.tokens), (b.step, b.tokens));
        let relative = (a.loss - b.loss).abs() / b.loss.abs();
        assert!(
            relative <= LOSS_TOLERANCE,
            "step {}: {} vs {}",
            a.step,
            a.loss,
            b.loss
        );
    }
    for ((name, wa), (_, wb)) in weights(&final_dir(&processes))
        .iter()
        .zip(&weights(&final_dir(&single)))
    {
        let worst = wa
            .iter()
            .zip(wb)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        let noisy = wa
            .iter()
            .zip(wb)
            .filter(|(x, y)| (*x - *y).abs() > 1e-5)
            .count();
        assert!(worst <= WEIGHT_TOLERANCE, "{name} differs by {worst}");
        assert!(
            noisy as f64 <= NOISY_FRACTION * wa.len() as f64,
            "{noisy} of {} elements of {name} differ by more than 1e-5",
            wa.len()
        );
    }
    // The checkpoints are the consolidated single-process ones; no shard directory is left.
    let leftovers: Vec<_> = std::fs::read_dir(processes.join("pretrain1/checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".sharded"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Stopped after 5 steps, resumed by 2 processes: the straight run's result.
    let resumed = scratch("mp-resumed");
    let stdout = run_processes(2, &resumed, &[&max, "--stop-after=5"]);
    assert!(stdout.contains("stopped after 5 steps"), "{stdout}");
    assert!(!final_dir(&resumed).exists());
    run_processes(2, &resumed, &[&max, "--resume"]);
    assert_eq!(
        metrics(&resumed)
            .iter()
            .map(|m| (m.step, m.loss))
            .collect::<Vec<_>>(),
        p.iter().map(|m| (m.step, m.loss)).collect::<Vec<_>>()
    );
    assert_eq!(
        weights(&final_dir(&resumed)),
        weights(&final_dir(&processes))
    );
    // ... and resumed by one plain process (world size 1): the checkpoint is the single-process
    // format; the rest matches the straight run up to reassociation.
    let elsewhere = scratch("mp-resumed-single");
    run_processes(2, &elsewhere, &[&max, "--stop-after=5"]);
    run_threads(1, &elsewhere, &[&max, "--resume"]);
    let continued = metrics(&elsewhere);
    assert_eq!(continued.len(), STEPS as usize);
    for (a, b) in continued.iter().zip(&p) {
        assert_eq!(a.step, b.step);
        assert!(
            (a.loss - b.loss).abs() <= LOSS_TOLERANCE * b.loss.abs(),
            "step {}: {} vs {}",
            a.step,
            a.loss,
            b.loss
        );
    }
    for dir in [processes, threads, single, resumed, elsewhere] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Starts 2 ranks on a long run and returns them once rank 0 has logged step 2 (so both are
/// inside the step loop), with the lines seen so far.
fn two_ranks_mid_run(dir: &Path, timeout: &str) -> (Child, Child, String) {
    let port = free_port();
    let list = ["--threads=1", "--max-steps=150", timeout];
    let mut rank0 = spawn_rank(0, 2, port, &args(dir, &list));
    let rank1 = spawn_rank(1, 2, port, &args(dir, &list));
    let mut stdout = BufReader::new(rank0.stdout.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while !seen.contains("step   2/150") {
        line.clear();
        if stdout.read_line(&mut line).unwrap() == 0 {
            let mut err = String::new();
            rank0
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("rank 0 ended before step 2: {seen}\n{err}");
        }
        seen.push_str(&line);
    }
    // Keep draining rank 0's output so it never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    (rank0, rank1, seen)
}

fn stderr_of(child: Child, limit: Duration) -> (Option<i32>, String) {
    let output = finish(child, limit);
    (output.status.code(), text(&output.stderr))
}

#[test]
fn a_killed_or_hung_rank_is_named_by_the_other() {
    // Rank 1 killed: rank 0 sees its connection close at the next collective.
    let dir = scratch("mp-kill1");
    let (rank0, mut rank1, _) = two_ranks_mid_run(&dir, "--dist-timeout=60");
    let killed = Instant::now();
    rank1.kill().unwrap();
    rank1.wait().unwrap();
    let (code, err) = stderr_of(rank0, Duration::from_secs(30));
    println!(
        "rank 0 after rank 1 was killed ({:?}): {err}",
        killed.elapsed()
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.starts_with("error: rank 0 of 2: ") && err.contains("rank 1 was lost"),
        "{err}"
    );
    assert!(killed.elapsed() < Duration::from_secs(30));

    // Rank 0 killed: rank 1 names it.
    let dir = scratch("mp-kill0");
    let (mut rank0, rank1, _) = two_ranks_mid_run(&dir, "--dist-timeout=60");
    // SAFETY: signals a child this test started.
    assert_eq!(unsafe { kill(rank0.id() as i32, SIGKILL) }, 0);
    rank0.wait().unwrap();
    let (code, err) = stderr_of(rank1, Duration::from_secs(30));
    println!("rank 1 after rank 0 was killed: {err}");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.starts_with("error: rank 1 of 2: ") && err.contains("rank 0 was lost"),
        "{err}"
    );

    // Rank 1 hung (SIGSTOP): rank 0 gives up after --dist-timeout and names it.
    let dir = scratch("mp-hang");
    let (rank0, mut rank1, _) = two_ranks_mid_run(&dir, "--dist-timeout=3");
    let stopped = Instant::now();
    // SAFETY: signals a child this test started.
    assert_eq!(unsafe { kill(rank1.id() as i32, SIGSTOP) }, 0);
    let (code, err) = stderr_of(rank0, Duration::from_secs(60));
    println!("rank 0 after rank 1 hung ({:?}): {err}", stopped.elapsed());
    rank1.kill().unwrap();
    rank1.wait().unwrap();
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("rank 1 did not arrive") && err.contains("within 3.0s"),
        "{err}"
    );
    for name in ["mp-kill1", "mp-kill0", "mp-hang"] {
        let _ = std::fs::remove_dir_all(scratch(name));
    }
}

#[test]
fn bad_launch_environments_exit_2_with_a_message() {
    let dir = scratch("mp-bad-env");
    // (launch variables, extra flags, expected message)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], &'a str);
    let cases: [Case; 7] = [
        (
            &[("RANK", "0"), ("WORLD_SIZE", "2")],
            &[],
            "WORLD_SIZE = 2 but MASTER_ADDR is not set",
        ),
        (
            &[
                ("RANK", "2"),
                ("WORLD_SIZE", "2"),
                ("MASTER_ADDR", "127.0.0.1"),
            ],
            &[],
            "rank 2 is not below world size 2",
        ),
        (
            &[
                ("RANK", "zero"),
                ("WORLD_SIZE", "2"),
                ("MASTER_ADDR", "127.0.0.1"),
            ],
            &[],
            "RANK = `zero` is not a non-negative integer",
        ),
        (
            &[
                ("RANK", "0"),
                ("WORLD_SIZE", "two"),
                ("MASTER_ADDR", "127.0.0.1"),
            ],
            &[],
            "WORLD_SIZE = `two` is not a non-negative integer",
        ),
        (
            &[("WORLD_SIZE", "2")],
            &[],
            "WORLD_SIZE = `2` is set but RANK is not",
        ),
        (
            &[],
            &["--launcher=slurm"],
            "SLURM_PROCID and SLURM_NTASKS are not set",
        ),
        (
            &[
                ("RANK", "0"),
                ("WORLD_SIZE", "2"),
                ("MASTER_ADDR", "127.0.0.1"),
            ],
            &["--world-size=2"],
            "drop --world-size",
        ),
    ];
    for (vars, extra, needle) in cases {
        let mut command = train(&args(&dir, extra));
        for (k, v) in vars {
            command.env(k, v);
        }
        let output = finish(command.spawn().unwrap(), Duration::from_secs(60));
        let err = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{vars:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(needle) && !err.contains("panicked"),
            "{vars:?} {extra:?}: {err}"
        );
    }
    // Nothing started: no run directory was prepared.
    assert!(!dir.join("pretrain1").exists());
    // A lone rank whose peer never comes: named after the timeout.
    let output = finish(
        train(&args(&dir, &["--dist-timeout=1"]))
            .env("RANK", "0")
            .env("WORLD_SIZE", "2")
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", free_port().to_string())
            .spawn()
            .unwrap(),
        Duration::from_secs(60),
    );
    let err = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(err.contains("rank 1 did not connect"), "{err}");
    // --launcher=none ignores the variables.
    let output = finish(
        train(&args(
            &dir,
            &["--launcher=none", "--max-steps=1", "--threads=1"],
        ))
        .env("RANK", "0")
        .env("WORLD_SIZE", "2")
        .spawn()
        .unwrap(),
        Duration::from_secs(120),
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(!text(&output.stdout).contains("launch:"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sigterm_to_every_rank_stops_all_at_one_step_and_resume_finishes() {
    // As under SLURM preemption: every task gets SIGTERM; rank 0's view decides the step.
    let dir = scratch("mp-preempt");
    let (rank0, rank1, _) = two_ranks_mid_run(&dir, "--dist-timeout=60");
    for child in [&rank0, &rank1] {
        // SAFETY: signals a child this test started.
        assert_eq!(unsafe { kill(child.id() as i32, SIGTERM) }, 0);
    }
    for (rank, child) in [(0, rank0), (1, rank1)] {
        let output = finish(child, Duration::from_secs(60));
        assert!(
            output.status.success(),
            "rank {rank}: {}",
            text(&output.stderr)
        );
    }
    let events: Vec<kormo_train::metrics::EventRecord> =
        kormo_train::metrics::read_records(&dir.join("pretrain1/metrics.jsonl"), "event").unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].event, "preempted");
    let stopped_at = events[0].step;
    assert!((2..150).contains(&stopped_at), "{stopped_at}");
    let saved = dir
        .join("pretrain1/checkpoints")
        .join(kormo_checkpoint::step_dir_name(stopped_at));
    assert!(saved.join("manifest.json").is_file(), "{}", saved.display());
    // The same command with --resume, by 2 processes, finishes the stage; every step logged once.
    run_processes(2, &dir, &["--max-steps=150", "--resume"]);
    let steps: Vec<u64> = metrics(&dir).iter().map(|m| m.step).collect();
    assert_eq!(steps, (1..=150).collect::<Vec<_>>());
    assert!(final_dir(&dir).join("manifest.json").is_file());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn every_strategy_over_processes_equals_threads() {
    // The recipe's [dist] table reaches the process ranks: shard_grad_op, and hybrid 2 = 2 x 1
    // (two replica groups of one rank) over the TCP group's sub-groups.
    let base = std::fs::read_to_string(repo().join("tests/recipes/test-small.toml")).unwrap();
    for (name, table) in [
        ("shard_grad_op", "strategy = \"shard_grad_op\"\n"),
        ("hybrid", "strategy = \"hybrid\"\nhybrid_group_size = 1\n"),
    ] {
        let recipes = scratch(&format!("mp-recipe-{name}"));
        std::fs::create_dir_all(&recipes).unwrap();
        let recipe = recipes.join("recipe.toml");
        std::fs::write(&recipe, format!("{base}\n[dist]\n{table}")).unwrap();
        let config = format!("--config={}", recipe.display());
        let processes = scratch(&format!("mp-{name}-processes"));
        let stdout = run_processes(2, &processes, &[&config, "--max-steps=6"]);
        assert!(stdout.contains(&format!("strategy {name}")), "{stdout}");
        let threads = scratch(&format!("mp-{name}-threads"));
        run_threads(2, &threads, &[&config, "--max-steps=6"]);
        let losses = |dir: &Path| -> Vec<(u64, f64)> {
            metrics(dir).iter().map(|m| (m.step, m.loss)).collect()
        };
        assert_eq!(losses(&processes), losses(&threads), "{name}");
        assert_eq!(losses(&processes).len(), 6);
        assert_eq!(
            weights(&final_dir(&processes)),
            weights(&final_dir(&threads)),
            "{name}"
        );
        for dir in [recipes, processes, threads] {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[test]
fn a_hybrid_group_size_that_does_not_divide_the_world_exits_2_on_every_rank() {
    // Refused by every rank before any step, naming the recipe key (the same check runs
    // before the CUDA path builds its shard- and replica-group NCCL communicators).
    let base = std::fs::read_to_string(repo().join("tests/recipes/test-small.toml")).unwrap();
    let dir = scratch("mp-hybrid-bad-group");
    std::fs::create_dir_all(&dir).unwrap();
    let recipe = dir.join("recipe.toml");
    std::fs::write(
        &recipe,
        format!("{base}\n[dist]\nstrategy = \"hybrid\"\nhybrid_group_size = 4\n"),
    )
    .unwrap();
    let config = format!("--config={}", recipe.display());
    let port = free_port();
    let run = dir.join("run");
    let children: Vec<Child> = (0..2)
        .map(|rank| {
            spawn_rank(
                rank,
                2,
                port,
                &args(&run, &[&config, "--threads=1", "--dist-timeout=60"]),
            )
        })
        .collect();
    for (rank, child) in children.into_iter().enumerate() {
        let (code, err) = stderr_of(child, Duration::from_secs(120));
        assert_eq!(code, Some(2), "rank {rank}: {err}");
        assert!(
            err.starts_with("error: ")
                && err.contains(
                    "key `dist.hybrid_group_size`: 4 ranks per shard group do not divide WORLD_SIZE 2"
                )
                && !err.contains("panicked"),
            "rank {rank}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}
