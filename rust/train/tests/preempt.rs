//! Preemption: the `train` binary, sent SIGTERM (or SIGUSR1) mid-run, checkpoints at the end
//! of the current step and exits with code 0; `--resume` then finishes the stage, every step
//! logged once.
//!
//! The binary comes from CARGO_BIN_EXE_train, which cargo sets for integration tests and the
//! Bazel rule (tools/build/crate.bzl) sets runfiles-relative, with the binary shipped as data.

mod common;

use common::{repo, scratch};
use kormo_train::metrics::{read_metrics, read_records, EventRecord};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

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

#[test]
fn signal_checkpoints_at_end_of_step_and_resume_finishes() {
    let recipe = repo().join("tests/recipes/test-small.toml");
    // SIGUSR1 at world size 2: the ranks agree on the step to stop at.
    for (signal, name, world_size) in [(15, "SIGTERM", 1), (10, "SIGUSR1", 2)] {
        let dir = scratch(&format!("preempt-{name}"));
        let args = |extra: &[&str]| -> Vec<String> {
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
        };
        let mut child = train(&args(&[])).spawn().expect("start the train binary");
        // Wait for the second logged step: the signal then arrives in the middle of training.
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut seen = String::new();
        let mut line = String::new();
        while !seen.contains("step   2/150") {
            line.clear();
            if stdout.read_line(&mut line).unwrap() == 0 {
                panic!("train ended before step 2: {seen}");
            }
            seen.push_str(&line);
        }
        // SAFETY: sends a signal to the child we started.
        assert_eq!(unsafe { kill(child.id() as i32, signal) }, 0);
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
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

        let output = train(&args(&["--resume"])).output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{text}{}",
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
}
