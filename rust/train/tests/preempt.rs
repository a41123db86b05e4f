//! Preemption: the `train` binary, sent SIGTERM, SIGUSR1 or Ctrl-C (SIGINT) mid-run,
//! checkpoints at the end of the current step and exits with code 0; `--resume` then finishes
//! the stage, every step logged once. A second Ctrl-C exits at once (code 130) without a stale
//! lock or a damaged checkpoint.
//!
//! The binary comes from CARGO_BIN_EXE_train, which cargo sets for integration tests and the
//! Bazel rule (tools/build/crate.bzl) sets runfiles-relative, with the binary shipped as data.

mod common;

use common::{repo, scratch};
use kormo_train::metrics::{read_metrics, read_records, EventRecord};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

fn train(args: &[String]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_train"));
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// The `train` arguments of these tests: 150 steps of the small recipe's pretrain1.
fn args(dir: &Path, world_size: usize, extra: &[&str]) -> Vec<String> {
    let recipe = repo().join("tests/recipes/test-small.toml");
    [
        "--stage=pretrain1".to_string(),
        format!("--config={}", recipe.display()),
        format!("--run-dir={}", dir.display()),
        "--max-steps=150".into(),
        format!("--threads={world_size}"),
        format!("--world-size={world_size}"),
        "--log-every=1".into(),
    ]
    .into_iter()
    .chain(extra.iter().map(|s| s.to_string()))
    .collect()
}

/// Starts `train` and reads its output until step `step` is logged, so that a signal sent next
/// arrives in the middle of training; returns the child, its stdout and what was read.
fn start_and_wait_for(args: &[String], step: u64) -> (Child, BufReader<ChildStdout>, String) {
    let mut child = train(args).spawn().expect("start the train binary");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while !seen.contains(&format!("step {step:>3}/150")) {
        line.clear();
        if stdout.read_line(&mut line).unwrap() == 0 {
            panic!("train ended before step {step}: {seen}");
        }
        seen.push_str(&line);
    }
    (child, stdout, seen)
}

/// Sends `signal` to the child we started.
fn send(child: &Child, signal: i32) {
    // SAFETY: sends a signal to a process this test started.
    assert_eq!(unsafe { kill(child.id() as i32, signal) }, 0);
}

/// Waits for the child; its status, the rest of stdout and stderr.
fn finish(mut child: Child, mut stdout: BufReader<ChildStdout>) -> (ExitStatus, String, String) {
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, rest, stderr)
}

/// `--resume` finishes the stage and every one of the 150 steps is logged exactly once.
fn resume_finishes(dir: &Path, world_size: usize, name: &str) {
    let output = train(&args(dir, world_size, &["--resume"]))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{name}: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("resume:") && text.contains("done:"), "{text}");
    let steps: Vec<u64> = read_metrics(&dir.join("pretrain1/metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|m| m.step)
        .collect();
    assert_eq!(steps, (1..=150).collect::<Vec<_>>(), "{name}");
}

#[test]
fn signal_checkpoints_at_end_of_step_and_resume_finishes() {
    // SIGUSR1 at world size 2: the ranks agree on the step to stop at. SIGINT is Ctrl-C.
    for (signal, name, world_size) in [(15, "SIGTERM", 1), (10, "SIGUSR1", 2), (2, "SIGINT", 1)] {
        let dir = scratch(&format!("preempt-{name}"));
        let (child, stdout, seen) = start_and_wait_for(&args(&dir, world_size, &[]), 2);
        send(&child, signal);
        let (status, rest, stderr) = finish(child, stdout);
        assert!(status.success(), "{name}: {status}\n{seen}{rest}\n{stderr}");
        assert!(
            rest.contains(&format!("event preempted: {name} received; checkpoint")),
            "{name}: {seen}{rest}"
        );
        let events: Vec<EventRecord> =
            read_records(&dir.join("pretrain1/metrics.jsonl"), "event").unwrap();
        assert_eq!(events.len(), 1, "{events:?}");
        let stopped_at = events[0].step;
        assert!(events[0].event == "preempted" && (2..150).contains(&stopped_at));
        let saved = dir
            .join("pretrain1/checkpoints")
            .join(kormo_checkpoint::step_dir_name(stopped_at));
        assert!(saved.join("manifest.json").is_file(), "{}", saved.display());
        assert!(
            !dir.join("train.lock").exists(),
            "lock released on a clean exit"
        );
        resume_finishes(&dir, world_size, name);
    }
}

#[test]
fn a_second_ctrl_c_exits_at_once_keeping_every_checkpoint_and_no_lock() {
    // The second Ctrl-C is sent once the first one's message is on stderr; should the run
    // finish its step and exit cleanly before it arrives (a race lost on a busy machine), try
    // again.
    for attempt in 0..5 {
        let dir = scratch(&format!("preempt-twice-{attempt}"));
        // After step 4, past the first periodic checkpoint (every 3 steps).
        let (mut child, stdout, seen) = start_and_wait_for(&args(&dir, 1, &[]), 4);
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        send(&child, 2);
        let mut first = String::new();
        while !first.contains("press Ctrl-C again") {
            if stderr.read_line(&mut first).unwrap() == 0 {
                break;
            }
        }
        send(&child, 2);
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut BufReader::new(stdout), &mut rest).unwrap();
        let mut tail = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut tail).unwrap();
        let status = child.wait().unwrap();
        if status.success() && rest.contains("event preempted: SIGINT received") {
            continue;
        }
        assert_eq!(
            status.code(),
            Some(130),
            "{status}\n{seen}{rest}\n{first}{tail}"
        );
        assert!(tail.contains("second Ctrl-C, exiting now"), "{first}{tail}");
        assert!(
            !dir.join("train.lock").exists(),
            "lock removed by the second Ctrl-C"
        );
        let listed = kormo_checkpoint::list_steps(&dir.join("pretrain1/checkpoints"));
        assert!(!listed.is_empty());
        for (_, checkpoint) in listed {
            kormo_checkpoint::Checkpoint::load(&checkpoint).unwrap();
        }
        resume_finishes(&dir, 1, "twice");
        return;
    }
    panic!("in 5 tries the run always finished before the second Ctrl-C arrived");
}
