//! Round trips, atomic replacement, pruning, and every corruption the loader must name.

use kormo_checkpoint::{
    keep_last, list_steps, save, save_with_budget, step_dir_name, Checkpoint, DiskBudget, Dtype,
    RunState, SafetensorsFile, Tensor,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn scratch(name: &str) -> PathBuf {
    let base = std::env::var_os("TEST_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("kormo-ckpt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Pseudo-random but reproducible values (never all zeros).
fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(12345);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

fn run_state(step: u64) -> RunState {
    RunState {
        step,
        stage: "pretrain1".into(),
        phase: "pretrain1".into(),
        config_hash: "abc123".into(),
        rng_state: serde_json::json!({"seed": 7, "word_pos": "42"}),
        data_cursor: serde_json::json!({"documents": 9}),
        trainer: serde_json::json!({"tokens": 1024}),
    }
}

fn tensors() -> Vec<Tensor> {
    vec![
        Tensor::f32("model.embed_tokens.weight", vec![5, 3], &values(15, 1)),
        Tensor::f32("model.norm.weight", vec![3], &values(3, 2)),
        Tensor::bf16("export.bf16", vec![2, 2], &[0x3f80, 0xbf80, 0x4000, 0x1234]),
        Tensor::u32("ids", vec![3], &[1, 2, 4_000_000_000]),
        Tensor::u64("counters", vec![2], &[u64::MAX, 3]),
    ]
}

#[test]
fn safetensors_round_trip_all_dtypes() {
    let dir = scratch("roundtrip");
    let path = dir.join("t.safetensors");
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    kormo_checkpoint::safetensors::write(&path, &tensors(), &meta).unwrap();
    let file = SafetensorsFile::read(&path).unwrap();
    assert_eq!(file.metadata(), &meta);
    assert_eq!(
        file.f32("model.embed_tokens.weight", Some(&[5, 3]))
            .unwrap(),
        values(15, 1)
    );
    assert_eq!(file.f32("model.norm.weight", None).unwrap(), values(3, 2));
    assert_eq!(
        file.bf16("export.bf16", None).unwrap(),
        vec![0x3f80, 0xbf80, 0x4000, 0x1234]
    );
    assert_eq!(file.u32("ids", None).unwrap(), vec![1, 2, 4_000_000_000]);
    assert_eq!(file.u64("counters", None).unwrap(), vec![u64::MAX, 3]);
    // Header length is 8-byte aligned so tensor data is aligned too.
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(u64::from_le_bytes(bytes[..8].try_into().unwrap()) % 8, 0);
    let err = file.f32("ids", None).unwrap_err().to_string();
    assert!(err.contains("`ids` is U32, expected F32"), "{err}");
    let err = file
        .f32("model.norm.weight", Some(&[4]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("shape [3], expected [4]"), "{err}");
}

#[test]
fn safetensors_reader_accepts_reference_layout() {
    // Hand-built file in the reference implementation's layout: header then data.
    let header =
        br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"k":"v"}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&1.5f32.to_le_bytes());
    bytes.extend_from_slice(&(-2.0f32).to_le_bytes());
    let file = SafetensorsFile::parse(Path::new("ref.safetensors"), bytes).unwrap();
    assert_eq!(file.f32("a", Some(&[2])).unwrap(), vec![1.5, -2.0]);
    assert_eq!(file.metadata()["k"], "v");
}

fn expect_parse_error(bytes: Vec<u8>, needle: &str) {
    let err = SafetensorsFile::parse(Path::new("bad.safetensors"), bytes)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("bad.safetensors: "), "{err}");
    assert!(err.contains(needle), "expected `{needle}` in: {err}");
}

#[test]
fn safetensors_reader_rejects_malformed_files() {
    let dir = scratch("malformed");
    let path = dir.join("t.safetensors");
    kormo_checkpoint::safetensors::write(&path, &tensors(), &BTreeMap::new()).unwrap();
    let good = std::fs::read(&path).unwrap();
    expect_parse_error(good[..5].to_vec(), "truncated");
    expect_parse_error(good[..good.len() - 3].to_vec(), "outside");
    let mut huge_header = good.clone();
    huge_header[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    expect_parse_error(huge_header, "header length");
    let mut bad_json = good.clone();
    bad_json[8] = b'[';
    expect_parse_error(bad_json, "bad header JSON");
    let mut trailing = good.clone();
    trailing.extend_from_slice(&[0; 4]);
    expect_parse_error(trailing, "trailing bytes");
    // A file of this header and 8 data bytes.
    let with_header = |header: &[u8]| {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[1; 8]);
        bytes
    };
    let hole = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    expect_parse_error(with_header(hole), "overlap or hole");
    let wrong_size = br#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
    expect_parse_error(with_header(wrong_size), "do not match shape");
    let dtype = br#"{"a":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}}"#;
    expect_parse_error(with_header(dtype), "unsupported dtype `F64`");
}

#[test]
fn checkpoint_round_trip_and_manifest() {
    let dir = scratch("ckpt");
    let target = dir.join(step_dir_name(3));
    let other = vec![Tensor::f32(
        "exp_avg.model.norm.weight",
        vec![3],
        &values(3, 9),
    )];
    save(
        &target,
        run_state(3),
        &[
            ("model.safetensors", tensors()),
            ("optimizer.safetensors", other),
        ],
    )
    .unwrap();
    let ckpt = Checkpoint::load(&target).unwrap();
    assert_eq!(ckpt.manifest.run, run_state(3));
    assert_eq!(
        ckpt.manifest.format_version,
        kormo_checkpoint::FORMAT_VERSION
    );
    let model = ckpt.file("model.safetensors").unwrap();
    assert_eq!(
        model.f32("model.embed_tokens.weight", None).unwrap(),
        values(15, 1)
    );
    let record = &ckpt.manifest.files["model.safetensors"].tensors["model.norm.weight"];
    assert_eq!(record.dtype, Dtype::F32);
    assert_eq!(
        record.crc32,
        crc32fast::hash(&Tensor::f32("x", vec![3], &values(3, 2)).bytes)
    );
    assert_eq!(
        ckpt.file("optimizer.safetensors")
            .unwrap()
            .f32("exp_avg.model.norm.weight", None)
            .unwrap(),
        values(3, 9)
    );
    assert!(ckpt
        .file("missing.safetensors")
        .unwrap_err()
        .to_string()
        .contains("missing.safetensors"));
    // No temp directories are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from(step_dir_name(3))]);
}

#[test]
fn save_replaces_existing_checkpoint_atomically() {
    let dir = scratch("replace");
    let target = dir.join("final");
    save(&target, run_state(1), &[("model.safetensors", tensors())]).unwrap();
    let newer = vec![Tensor::f32("w", vec![2], &[3.0, 4.0])];
    save(&target, run_state(2), &[("model.safetensors", newer)]).unwrap();
    let ckpt = Checkpoint::load(&target).unwrap();
    assert_eq!(ckpt.manifest.run.step, 2);
    assert_eq!(
        ckpt.file("model.safetensors")
            .unwrap()
            .f32("w", None)
            .unwrap(),
        vec![3.0, 4.0]
    );
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
}

#[test]
fn interrupted_save_is_invisible_and_cleaned_up() {
    let dir = scratch("interrupted");
    save(
        &dir.join(step_dir_name(1)),
        run_state(1),
        &[("model.safetensors", tensors())],
    )
    .unwrap();
    // A crash mid-save leaves only a temp directory (possibly without a manifest).
    let crashed = dir.join(".tmp-step-000000002-1-1");
    std::fs::create_dir(&crashed).unwrap();
    std::fs::write(crashed.join("model.safetensors"), b"partial").unwrap();
    // And a half-written final-named directory without manifest is not a checkpoint either.
    std::fs::create_dir(dir.join(step_dir_name(5))).unwrap();
    let steps: Vec<u64> = list_steps(&dir).into_iter().map(|(s, _)| s).collect();
    assert_eq!(steps, vec![1]);
    save(
        &dir.join(step_dir_name(2)),
        run_state(2),
        &[("model.safetensors", tensors())],
    )
    .unwrap();
    assert!(
        !crashed.exists(),
        "stale temp directory removed by the next save"
    );
    let steps: Vec<u64> = list_steps(&dir).into_iter().map(|(s, _)| s).collect();
    assert_eq!(steps, vec![1, 2]);
}

#[test]
fn disk_full_leaves_previous_checkpoint_intact() {
    let dir = scratch("diskfull");
    let target = dir.join("final");
    save(&target, run_state(1), &[("model.safetensors", tensors())]).unwrap();
    let before = std::fs::read(target.join("model.safetensors")).unwrap();
    let newer = vec![Tensor::f32("w", vec![64], &values(64, 9))];
    // Fail inside the tensor file, and (with a budget that covers it) inside the manifest.
    let tensor_file_bytes = {
        let probe = dir.join("probe");
        save(
            &probe,
            run_state(2),
            &[("model.safetensors", newer.clone())],
        )
        .unwrap();
        std::fs::metadata(probe.join("model.safetensors"))
            .unwrap()
            .len()
    };
    for limit in [0, 100, tensor_file_bytes + 10] {
        let err = save_with_budget(
            &target,
            run_state(2),
            &[("model.safetensors", newer.clone())],
            &DiskBudget::fail_after(limit),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("No space left on device")
                && err.contains("disk is full")
                && err.contains(&format!(
                    "previous checkpoint at {} is intact",
                    target.display()
                )),
            "limit {limit}: {err}"
        );
        let ckpt = Checkpoint::load(&target).unwrap();
        assert_eq!(ckpt.manifest.run.step, 1);
        assert_eq!(
            std::fs::read(target.join("model.safetensors")).unwrap(),
            before
        );
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["final", "probe"], "no temp directory left behind");
    }
    // A budget that is large enough changes nothing.
    save_with_budget(
        &target,
        run_state(3),
        &[("model.safetensors", newer)],
        &DiskBudget::fail_after(1 << 20),
    )
    .unwrap();
    assert_eq!(Checkpoint::load(&target).unwrap().manifest.run.step, 3);
}

#[test]
fn keep_last_prunes_oldest() {
    let dir = scratch("keep");
    for step in [10, 20, 30, 40] {
        save(
            &dir.join(step_dir_name(step)),
            run_state(step),
            &[("model.safetensors", tensors())],
        )
        .unwrap();
    }
    keep_last(&dir, 2).unwrap();
    let steps: Vec<u64> = list_steps(&dir).into_iter().map(|(s, _)| s).collect();
    assert_eq!(steps, vec![30, 40]);
}

fn saved(name: &str) -> PathBuf {
    let dir = scratch(name);
    let target = dir.join("ckpt");
    save(&target, run_state(4), &[("model.safetensors", tensors())]).unwrap();
    target
}

fn expect_load_error(dir: &Path, file: &str, needle: &str) {
    let err = Checkpoint::load(dir).unwrap_err();
    assert_eq!(err.path, dir.join(file), "{err}");
    assert!(
        err.to_string().contains(needle),
        "expected `{needle}` in: {err}"
    );
}

#[test]
fn load_detects_truncated_file() {
    let dir = saved("truncated");
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
    expect_load_error(&dir, "model.safetensors", "truncated");
}

#[test]
fn load_detects_flipped_bit() {
    let dir = saved("bitflip");
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    expect_load_error(
        &dir,
        "model.safetensors",
        "checksum mismatch in tensor `model.norm.weight`",
    );
}

#[test]
fn load_detects_bad_header() {
    let dir = saved("badheader");
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[9] = b'!';
    std::fs::write(&path, &bytes).unwrap();
    expect_load_error(&dir, "model.safetensors", "bad header JSON");
}

#[test]
fn load_detects_missing_tensor_and_file() {
    let dir = saved("missing");
    let manifest_path = dir.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    let record = manifest["files"]["model.safetensors"]["tensors"]["ids"].clone();
    manifest["files"]["model.safetensors"]["tensors"]["lm_head.weight"] = record;
    std::fs::write(&manifest_path, serde_json::to_string(&manifest).unwrap()).unwrap();
    expect_load_error(&dir, "model.safetensors", "missing tensor `lm_head.weight`");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    expect_load_error(&dir, "model.safetensors", "cannot read");
}

#[test]
fn load_detects_bad_manifest() {
    let dir = saved("badmanifest");
    let manifest_path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&manifest_path).unwrap();
    std::fs::write(
        &manifest_path,
        text.replace("\"format_version\": 1", "\"format_version\": 99"),
    )
    .unwrap();
    expect_load_error(&dir, "manifest.json", "format version 99");
    std::fs::write(&manifest_path, "{").unwrap();
    expect_load_error(&dir, "manifest.json", "bad manifest");
    std::fs::remove_file(&manifest_path).unwrap();
    expect_load_error(&dir, "manifest.json", "cannot read checkpoint manifest");
}

/// tests/golden/format-v1: a checkpoint written by kormo's former hand-written safetensors writer
/// (header keys sorted, fields in `data_offsets, dtype, shape` order, a 3-element BF16 tensor so
/// the tensors after it are not 4-byte aligned).
fn golden_v1() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/format-v1"
    ))
}

#[test]
fn checkpoint_written_by_the_hand_written_writer_loads() {
    let ckpt = Checkpoint::load(&golden_v1()).unwrap();
    assert_eq!(ckpt.manifest.run.step, 4);
    let file = ckpt.file("model.safetensors").unwrap();
    assert_eq!(file.metadata()["format"], "pt");
    let embed: Vec<f32> = (0..15).map(|i| (i as f32 - 7.0) * 0.375).collect();
    assert_eq!(
        file.f32("model.embed_tokens.weight", Some(&[5, 3]))
            .unwrap(),
        embed
    );
    assert_eq!(
        file.f32("model.norm.weight", Some(&[3])).unwrap(),
        vec![1.0, -0.5, 0.25]
    );
    assert_eq!(
        file.bf16("export.bf16", Some(&[3])).unwrap(),
        vec![0x3f80, 0xbf80, 0x4000]
    );
    assert_eq!(
        file.u32("ids", Some(&[3])).unwrap(),
        vec![1, 2, 4_000_000_000]
    );
    assert_eq!(file.u64("counters", Some(&[2])).unwrap(), vec![u64::MAX, 3]);

    // Written again, the data buffer is byte for byte the old one (same name-order layout).
    let tensors: Vec<Tensor> = file
        .tensors()
        .iter()
        .map(|(name, info)| Tensor {
            name: name.clone(),
            dtype: info.dtype,
            shape: info.shape.clone(),
            bytes: file.raw(name).unwrap().to_vec(),
        })
        .collect();
    let path = scratch("rewrite").join("model.safetensors");
    kormo_checkpoint::safetensors::write(&path, &tensors, file.metadata()).unwrap();
    let data = |bytes: &[u8]| {
        bytes[8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize..].to_vec()
    };
    let old = std::fs::read(golden_v1().join("model.safetensors")).unwrap();
    assert_eq!(data(&std::fs::read(&path).unwrap()), data(&old));
}

#[test]
fn safetensors_errors_name_the_tensor_at_fault() {
    let two = |header: &[u8]| {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[1; 8]);
        bytes
    };
    let overlap = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    expect_parse_error(two(overlap), "overlap or hole");
    let past_end = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    expect_parse_error(
        two(past_end),
        "tensor `b`: data_offsets [4, 12] outside the 8-byte data buffer",
    );
    let misfit = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"U64","shape":[1],"data_offsets":[4,8]}}"#;
    expect_parse_error(
        two(misfit),
        "tensor `b`: 4 bytes do not match shape [1] of U64",
    );
    let f16 = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"h":{"dtype":"F16","shape":[2],"data_offsets":[4,8]}}"#;
    expect_parse_error(two(f16), "tensor `h`: unsupported dtype `F16`");
    let unknown = br#"{"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,8]}}"#;
    expect_parse_error(two(unknown), "bad header JSON");
    let metadata =
        br#"{"__metadata__":{"k":1},"a":{"dtype":"U64","shape":[1],"data_offsets":[0,8]}}"#;
    expect_parse_error(two(metadata), "bad header JSON");
    let padded = br#"{"a":{"dtype":"U64","shape":[1],"data_offsets":[0,8]}} "#;
    let mut not_utf8 = two(padded);
    not_utf8[8 + padded.len() - 1] = 0xff; // the padding space

    expect_parse_error(not_utf8, "not UTF-8");
    let mut long_header = two(b"{}");
    long_header[..8].copy_from_slice(&1000u64.to_le_bytes());
    expect_parse_error(long_header, "header length 1000 exceeds file size 18");
}

#[test]
fn safetensors_writer_rejects_bad_tensors() {
    let path = scratch("badwrite").join("t.safetensors");
    let write = |tensors: &[Tensor]| {
        kormo_checkpoint::safetensors::write(&path, tensors, &BTreeMap::new())
            .unwrap_err()
            .to_string()
    };
    let mut short = Tensor::f32("w", vec![2, 2], &[1.0; 4]);
    short.bytes.pop();
    let err = write(&[short]);
    assert!(
        err.contains("tensor `w`: 15 bytes do not match shape [2, 2] of F32"),
        "{err}"
    );
    let twice = [
        Tensor::u32("x", vec![1], &[1]),
        Tensor::u32("x", vec![1], &[2]),
    ];
    assert!(write(&twice).contains("tensor name `x` used twice or reserved"));
    let reserved = [Tensor::u32("__metadata__", vec![1], &[1])];
    assert!(write(&reserved).contains("`__metadata__` used twice or reserved"));
    assert!(!path.exists(), "nothing written for rejected tensors");
}
