//! Sharded checkpoints: saved at 4 ranks, resumed at 2 (resharding) and at 4, consolidated into
//! the single-process format.

mod common;

use std::path::PathBuf;

use common::*;
use kormo_checkpoint::{Checkpoint, RunState};
use kormo_dist::sharded_checkpoint::{self, ShardedCheckpoint};
use kormo_dist::{LocalComm, Strategy};

fn temp_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("TEST_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("kormo-dist-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn run_state(step: u64) -> RunState {
    RunState {
        step,
        stage: "test".into(),
        phase: "p".into(),
        config_hash: "h".into(),
        rng_state: serde_json::json!({}),
        data_cursor: serde_json::json!({ "step": step }),
        trainer: serde_json::json!({}),
    }
}

/// Model and optimizer tensors of a consolidated checkpoint, by name.
fn tensors(dir: &std::path::Path) -> Vec<(String, Vec<f32>)> {
    let ckpt = Checkpoint::load(dir).unwrap();
    let mut out = Vec::new();
    for file in [
        sharded_checkpoint::MODEL_FILE,
        sharded_checkpoint::OPTIMIZER_FILE,
    ] {
        let f = ckpt.file(file).unwrap();
        for name in f.tensors().keys().filter(|n| *n != "step") {
            out.push((format!("{file}:{name}"), f.f32(name, None).unwrap()));
        }
    }
    out
}

#[test]
fn save_at_four_resume_at_two_and_consolidate() {
    let root = temp_dir("reshard");
    let (saved, consolidated, resaved, consolidated2) = (
        root.join("at4"),
        root.join("single"),
        root.join("at2"),
        root.join("single2"),
    );
    let config = fsdp_config(Strategy::FullShard, None);

    // 4 ranks: 3 steps, save, 3 more steps.
    let four = LocalComm::run(4, TIMEOUT, |comm| {
        let mut rank = fsdp_rank(comm, &config);
        train(&mut rank, 0, 3, 1);
        sharded_checkpoint::save(&rank, &saved, &run_state(3)).unwrap();
        let at_save = full_params(&rank);
        let (losses, _) = train(&mut rank, 3, 3, 1);
        (at_save, losses, full_params(&rank))
    });
    let (params_at_save, losses_after, params_after) = four[0].clone();
    let files: Vec<String> = std::fs::read_dir(&saved)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        files.len(),
        5,
        "4 shards + metadata, no temp files: {files:?}"
    );

    // Consolidated weights are the gathered weights at the save, bit for bit.
    let opened = ShardedCheckpoint::open(&saved).unwrap();
    assert_eq!(opened.meta().shard_count, 4);
    opened.consolidate(&consolidated).unwrap();
    let single = Checkpoint::load(&consolidated).unwrap();
    assert_eq!(
        single
            .file(sharded_checkpoint::OPTIMIZER_FILE)
            .unwrap()
            .u64("step", Some(&[1]))
            .unwrap(),
        vec![3]
    );
    let specs = model().param_specs().to_vec();
    for (spec, values) in specs.iter().zip(&params_at_save) {
        assert_eq!(
            &single
                .file(sharded_checkpoint::MODEL_FILE)
                .unwrap()
                .f32(&spec.name, Some(&spec.shape))
                .unwrap(),
            values
        );
    }

    // 2 ranks resume from the 4-rank checkpoint: identical state (re-saved and consolidated
    // again it is the same, moments included), then training continues like the 4-rank run.
    let two = LocalComm::run(2, TIMEOUT, |comm| {
        let mut rank = fsdp_rank(comm, &config);
        let run = ShardedCheckpoint::open(&saved)
            .unwrap()
            .restore(&mut rank)
            .unwrap();
        assert_eq!(run.step, 3);
        assert_eq!(rank.adamw().step_count(), 3);
        sharded_checkpoint::save(&rank, &resaved, &run).unwrap();
        let (losses, _) = train(&mut rank, 3, 3, 1);
        (losses, full_params(&rank))
    });
    ShardedCheckpoint::open(&resaved)
        .unwrap()
        .consolidate(&consolidated2)
        .unwrap();
    assert_eq!(
        tensors(&consolidated),
        tensors(&consolidated2),
        "resharded state is bitwise the saved state"
    );
    assert!(max_loss_diff(&two[0].0, &losses_after) < 1e-6);
    assert!(max_param_diff(&two[0].1, &params_after) < 1e-5);

    // Resuming at the same world size is bit-exact.
    let again = LocalComm::run(4, TIMEOUT, |comm| {
        let mut rank = fsdp_rank(comm, &config);
        ShardedCheckpoint::open(&saved)
            .unwrap()
            .restore(&mut rank)
            .unwrap();
        let (losses, _) = train(&mut rank, 3, 3, 1);
        (losses, full_params(&rank))
    });
    assert_eq!(again[0], (losses_after, params_after));
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn incomplete_or_mismatched_checkpoints_are_rejected_with_the_file_named() {
    let root = temp_dir("broken");
    let dir = root.join("ckpt");
    let fsdp = fsdp_config(Strategy::ShardGradOp, None);
    LocalComm::run(2, TIMEOUT, |comm| {
        let rank = fsdp_rank(comm, &fsdp);
        sharded_checkpoint::save(&rank, &dir, &run_state(0)).unwrap();
    });
    // A missing shard names its file.
    let victim = dir.join(sharded_checkpoint::shard_file_name(1, 2));
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::remove_file(&victim).unwrap();
    let err = ShardedCheckpoint::open(&dir)
        .unwrap()
        .consolidate(&root.join("out"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("shard-00001-of-00002.safetensors"), "{err}");
    std::fs::write(&victim, bytes).unwrap();

    // Another model shape is refused, naming the unit.
    let mut other = config();
    other.ffn = 64;
    let errors = LocalComm::run(1, TIMEOUT, |comm| {
        let model = kormo_model::Model::new(
            other.clone(),
            kormo_cpu::CpuOps::<f32>::with_threads(1),
            SEED,
        )
        .unwrap();
        let mut rank = kormo_dist::FsdpRank::new(
            std::sync::Arc::new(comm),
            model,
            Default::default(),
            fsdp.clone(),
        )
        .unwrap();
        ShardedCheckpoint::open(&dir)
            .unwrap()
            .restore(&mut rank)
            .unwrap_err()
            .to_string()
    });
    assert!(errors[0].contains("unit `layers.0`"), "{}", errors[0]);

    // No metadata (an interrupted save) is reported as such.
    std::fs::remove_file(dir.join(sharded_checkpoint::META_FILE)).unwrap();
    let err = ShardedCheckpoint::open(&dir).err().unwrap().to_string();
    assert!(
        err.contains("sharded.json") && err.contains("did not complete"),
        "{err}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn hybrid_saves_one_replica_and_reloads_unsharded() {
    let root = temp_dir("hybrid");
    let (saved, single) = (root.join("hybrid"), root.join("single"));
    let hybrid = fsdp_config(Strategy::Hybrid, Some(2));
    let runs = LocalComm::run(4, TIMEOUT, |comm| {
        let mut rank = fsdp_rank(comm, &hybrid);
        train(&mut rank, 0, 2, 1);
        sharded_checkpoint::save(&rank, &saved, &run_state(2)).unwrap();
        full_params(&rank)
    });
    let mut files: Vec<String> = std::fs::read_dir(&saved)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "shard-00000-of-00002.safetensors",
            "shard-00001-of-00002.safetensors",
            "sharded.json"
        ]
    );
    // One rank, full_shard: the whole model comes back.
    let one = LocalComm::run(1, TIMEOUT, |comm| {
        let mut rank = fsdp_rank(comm, &fsdp_config(Strategy::FullShard, None));
        ShardedCheckpoint::open(&saved)
            .unwrap()
            .restore(&mut rank)
            .unwrap();
        full_params(&rank)
    });
    assert_eq!(one[0], runs[0]);
    ShardedCheckpoint::open(&saved)
        .unwrap()
        .consolidate(&single)
        .unwrap();
    let ckpt = Checkpoint::load(&single).unwrap();
    let model_file = ckpt.file(sharded_checkpoint::MODEL_FILE).unwrap();
    for (spec, values) in model().param_specs().iter().zip(&runs[0]) {
        assert_eq!(
            &model_file.f32(&spec.name, Some(&spec.shape)).unwrap(),
            values
        );
    }
    std::fs::remove_dir_all(&root).unwrap();
}
