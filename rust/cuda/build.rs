//! Cargo-only build step: compiles the kernels into the fatbin that src/module.rs embeds with
//! `include_bytes!(env!("KORMO_FATBIN"))`. Under Bazel this script does not run: the genrule in
//! cuda/BUILD.bazel builds the same fatbin and the Rust rule sets KORMO_FATBIN.
//!
//! nvcc is looked up as: $KORMO_NVCC, the pinned pip toolkit at /tmp/cuda13, then `nvcc` on PATH.
//! Without one the crate still builds, embedding an empty fatbin, and loading kernels reports
//! "kernels not built (no nvcc at build time)". With one, a compile error fails the build:
//! a broken kernel must never turn silently into "no kernels".

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const PINNED_TOOLKIT_NVCC: &str = "/tmp/cuda13/nvidia/cu13/bin/nvcc";

/// The nvcc flags of cuda/nvcc.flags (one per line, `#` comments), the list the Bazel genrule
/// reads too.
fn nvcc_flags(cuda_dir: &Path) -> Vec<String> {
    let path = cuda_dir.join("nvcc.flags");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("kormo-cuda: {}: {e}", path.display()));
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect()
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let cuda_dir = manifest.join("../../cuda");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("kormo.fatbin");
    println!("cargo:rerun-if-env-changed=KORMO_NVCC");
    println!("cargo:rerun-if-env-changed=KORMO_FATBIN");
    println!("cargo:rerun-if-changed={}", cuda_dir.display());
    for sub in ["include", "generated"] {
        println!("cargo:rerun-if-changed={}", cuda_dir.join(sub).display());
    }

    // A prebuilt fatbin (e.g. from Bazel) wins.
    if let Ok(prebuilt) = env::var("KORMO_FATBIN") {
        println!("cargo:rustc-env=KORMO_FATBIN={prebuilt}");
        return;
    }
    match find_nvcc() {
        Some(nvcc) => compile(&nvcc, &cuda_dir, &out),
        None => {
            println!("cargo:warning=kormo-cuda: no nvcc found (KORMO_NVCC, {PINNED_TOOLKIT_NVCC}, PATH); embedding an empty fatbin");
            std::fs::write(&out, b"").expect("write empty fatbin");
        }
    }
    println!("cargo:rustc-env=KORMO_FATBIN={}", out.display());
}

fn find_nvcc() -> Option<PathBuf> {
    if let Ok(path) = env::var("KORMO_NVCC") {
        return Some(PathBuf::from(path));
    }
    if Path::new(PINNED_TOOLKIT_NVCC).is_file() {
        return Some(PathBuf::from(PINNED_TOOLKIT_NVCC));
    }
    let path = env::var_os("PATH")?;
    env::split_paths(&path).map(|dir| dir.join("nvcc")).find(|p| p.is_file())
}

fn compile(nvcc: &Path, cuda_dir: &Path, out: &Path) {
    let mut cmd = Command::new(nvcc);
    cmd.arg("-fatbin").args(nvcc_flags(cuda_dir));
    // The pip toolkit keeps <nv/target> (needed by cuda_bf16.h) under include/cccl.
    if let Some(cccl) = nvcc.parent().map(|bin| bin.join("../include/cccl")).filter(|p| p.is_dir()) {
        cmd.arg("-I").arg(cccl);
    }
    cmd.arg("-I").arg(cuda_dir.join("include")).arg("-I").arg(cuda_dir);
    cmd.arg("-o").arg(out).arg(cuda_dir.join("generated/kormo_all.cu"));
    let status = cmd.status().unwrap_or_else(|e| panic!("kormo-cuda: cannot run {}: {e}", nvcc.display()));
    assert!(status.success(), "kormo-cuda: nvcc failed ({status}) building {}", out.display());
}
