//! `ablate` end to end: two learning rates of the tiny recipe, each trained by the real `train`
//! binary for a few steps with one seed; the summary, the chart and each variant's recipe.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `train`: KORMO_TRAIN_BIN, else beside this crate's binaries (cargo: build it first with
/// `cargo build -p kormo-train`), else its Bazel runfiles path.
fn train_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KORMO_TRAIN_BIN") {
        return p.into();
    }
    let sibling = Path::new(env!("CARGO_BIN_EXE_ablate")).with_file_name("train");
    for p in [sibling, PathBuf::from("rust/train/bin/train")] {
        if p.is_file() {
            return p;
        }
    }
    panic!("no train binary: run `cargo build -p kormo-train` first or set KORMO_TRAIN_BIN");
}

fn tiny_recipe() -> PathBuf {
    let runfiles = PathBuf::from("configs/tiny.toml");
    if runfiles.is_file() {
        return std::fs::canonicalize(runfiles).unwrap();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/tiny.toml")
}

#[test]
fn two_learning_rates_of_the_tiny_recipe() {
    let dir = kormo_testdeps::test_dir("ablate");
    let spec = format!(
        "base = {:?}\nstage = \"pretrain1\"\nmax_steps = 4\nseed = 7\ntrain_args = [\"--backend\", \"cpu\", \"--threads\", \"2\"]\n\
         [[variant]]\nname = \"lr-3e-3\"\n\
         [[variant]]\nname = \"lr-3e-4\"\nset = {{ \"optimizer.lr\" = 3e-4 }}\n",
        tiny_recipe().display().to_string()
    );
    std::fs::write(dir.join("ablation.toml"), spec).unwrap();
    let out = dir.join("out");
    let run = Command::new(env!("CARGO_BIN_EXE_ablate"))
        .arg(dir.join("ablation.toml"))
        .arg("--out")
        .arg(&out)
        .arg("--train")
        .arg(train_bin())
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    let rows = summary.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        assert_eq!(row["steps"].as_u64(), Some(4), "{summary}");
        assert!(row["final_loss"].as_f64().unwrap().is_finite() && row["tokens_per_s"].as_f64().unwrap() > 0.0);
    }
    // Same seed and data order: identical tokens; different learning rates: different losses.
    assert_eq!(rows[0]["tokens"], rows[1]["tokens"]);
    assert_ne!(rows[0]["final_loss"], rows[1]["final_loss"]);
    let recipe: toml::Table = std::fs::read_to_string(out.join("lr-3e-4/recipe.toml")).unwrap().parse().unwrap();
    assert_eq!(recipe["optimizer"]["lr"].as_float(), Some(3e-4));
    let png = std::fs::read(out.join("loss.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let table = String::from_utf8(run.stdout).unwrap();
    assert!(table.contains("| lr-3e-4 | 4 |"), "{table}");
}
