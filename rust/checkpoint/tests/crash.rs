//! What a kill leaves on disk: at every filesystem step of saving and pruning (deterministic
//! fault hook), and under SIGKILL at varied delays (a child process). In every case the listed
//! checkpoints are exactly the complete ones and each of them loads.

use kormo_checkpoint::{
    fault, keep_last, list_steps, recover_interrupted, save, step_dir_name, Checkpoint, RunState,
    Tensor,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn scratch(name: &str) -> PathBuf {
    let base = std::env::var_os("TEST_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("kormo-crash-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run_state(step: u64) -> RunState {
    RunState {
        step,
        stage: "pretrain1".into(),
        phase: "pretrain1".into(),
        config_hash: "abc".into(),
        rng_state: serde_json::json!({}),
        data_cursor: serde_json::json!({}),
        trainer: serde_json::json!({}),
    }
}

/// Several tensor files, so a deletion has many steps to be stopped between.
fn files(step: u64) -> Vec<(&'static str, Vec<Tensor>)> {
    [
        "a.safetensors",
        "b.safetensors",
        "c.safetensors",
        "model.safetensors",
    ]
    .into_iter()
    .enumerate()
    .map(|(i, name)| {
        let values: Vec<f32> = (0..256)
            .map(|j| (step * 1000 + i as u64 * 300 + j) as f32)
            .collect();
        (name, vec![Tensor::f32("w", vec![256], &values)])
    })
    .collect()
}

fn save_step(dir: &Path, step: u64) {
    let files = files(step);
    let refs: Vec<(&str, Vec<Tensor>)> = files.iter().map(|(n, t)| (*n, t.clone())).collect();
    save(&dir.join(step_dir_name(step)), run_state(step), &refs).unwrap();
}

/// Every listed checkpoint loads and records its own step; returns the listed steps.
fn check_listed(dir: &Path) -> Vec<u64> {
    list_steps(dir)
        .into_iter()
        .map(|(step, path)| {
            let loaded = Checkpoint::load(&path).unwrap_or_else(|e| {
                panic!("listed checkpoint {} does not load: {e}", path.display())
            });
            assert_eq!(loaded.manifest.run.step, step);
            step
        })
        .collect()
}

#[test]
fn a_half_deleted_step_directory_is_not_listed() {
    let dir = scratch("half");
    save_step(&dir, 1);
    save_step(&dir, 2);
    // What a kill during a plain recursive delete leaves: the manifest without (some) files.
    std::fs::remove_file(dir.join(step_dir_name(1)).join("model.safetensors")).unwrap();
    assert_eq!(check_listed(&dir), [2]);
    for name in ["a", "b", "c"] {
        std::fs::remove_file(
            dir.join(step_dir_name(1))
                .join(format!("{name}.safetensors")),
        )
        .unwrap();
    }
    assert_eq!(check_listed(&dir), [2]);
    // A damaged (truncated) file is listed, so that loading it reports the damage.
    std::fs::write(dir.join(step_dir_name(2)).join("a.safetensors"), b"short").unwrap();
    let listed = list_steps(&dir);
    assert_eq!(listed.len(), 1);
    assert!(Checkpoint::load(&listed[0].1).is_err());
}

/// Runs `op` with a crash armed at point `n`; true when it crashed, false when it finished.
fn crashes_at(n: u64, op: impl FnOnce() + std::panic::UnwindSafe) -> bool {
    fault::crash_at(Some(n));
    let result = std::panic::catch_unwind(op);
    fault::crash_at(None);
    match result {
        Ok(()) => false,
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_default();
            assert!(
                message.starts_with(fault::CRASH_MESSAGE),
                "unexpected panic: {message}"
            );
            true
        }
    }
}

#[test]
fn a_crash_at_every_step_of_save_and_prune_leaves_only_whole_checkpoints() {
    let mut crashed_points = 0;
    for n in 1.. {
        let dir = scratch(&format!("points-{n}"));
        save_step(&dir, 1);
        save_step(&dir, 2);
        let d = dir.clone();
        let crashed = crashes_at(n, move || {
            save_step(&d, 3);
            keep_last(&d, 2).unwrap();
        });
        let listed = check_listed(&dir);
        assert!(
            [vec![1, 2], vec![1, 2, 3], vec![2, 3]].contains(&listed),
            "crash at point {n}: listed {listed:?}"
        );
        // The next save and prune tidy whatever the crash left.
        save_step(&dir, 4);
        keep_last(&dir, 2).unwrap();
        let listed = check_listed(&dir);
        assert!(
            listed.ends_with(&[4]) && listed.len() == 2,
            "after crash {n}: {listed:?}"
        );
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 2, "leftovers after crash {n}: {names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
        if !crashed {
            break;
        }
        crashed_points += 1;
    }
    // 4 files written + manifest + syncs + renames, then a rename and 5 deletions per prune.
    assert!(
        crashed_points >= 12,
        "only {crashed_points} fault points were reached"
    );
}

#[test]
fn a_crash_while_replacing_a_checkpoint_keeps_the_old_or_the_new_one() {
    for n in 1.. {
        let dir = scratch(&format!("replace-{n}"));
        let target = dir.join("final");
        let refs = |step| files(step).into_iter().collect::<Vec<_>>();
        save(&target, run_state(1), &refs(1)).unwrap();
        let t = target.clone();
        let crashed = crashes_at(n, move || {
            save(&t, run_state(2), &refs(2)).unwrap();
        });
        recover_interrupted(&dir);
        let step = Checkpoint::load(&target)
            .unwrap_or_else(|e| panic!("crash at point {n}: {e}"))
            .manifest
            .run
            .step;
        assert!(step == 1 || step == 2, "crash at point {n}: step {step}");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "crash at point {n}: leftovers"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        if !crashed {
            assert_eq!(step, 2);
            break;
        }
    }
}

const CHILD_DIR: &str = "KORMO_CHECKPOINT_CRASH_CHILD_DIR";

/// The child of the SIGKILL test: saves and prunes until it is killed.
#[test]
fn sigkill_child_saves_and_prunes_until_killed() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return; // Only meaningful as the child of the test below.
    };
    let dir = PathBuf::from(dir);
    for step in 1.. {
        save_step(&dir, step);
        keep_last(&dir, 2).unwrap();
        if step == 3 {
            std::fs::write(dir.join("ready"), b"").unwrap();
        }
    }
}

#[test]
fn sigkill_at_varied_delays_never_leaves_a_listed_partial_checkpoint() {
    let exe = std::env::current_exe().unwrap();
    let dir = scratch("sigkill");
    for kill in 0..24u64 {
        let ready = dir.join("ready");
        let _ = std::fs::remove_file(&ready);
        let mut child = std::process::Command::new(&exe)
            .args([
                "--exact",
                "sigkill_child_saves_and_prunes_until_killed",
                "--nocapture",
            ])
            .env(CHILD_DIR, &dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while !ready.exists() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the child never got going"
            );
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the child exited early: {status}");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        // Spread the kills over a few save-and-prune cycles (0.0 to 11.5 ms).
        std::thread::sleep(Duration::from_micros(500 * kill));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let listed = check_listed(&dir);
        assert!(!listed.is_empty(), "kill {kill}: nothing listed");
        assert!(listed.len() <= 3, "kill {kill}: listed {listed:?}");
        recover_interrupted(&dir);
        assert_eq!(
            check_listed(&dir),
            listed,
            "kill {kill}: recovery changed the listing"
        );
        // The next run continues in the same directory, as a resumed trainer would.
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
    }
}
