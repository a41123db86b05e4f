//! An exported model's logits from an independent implementation: tests/numpy_reference/
//! llama_ref.py (own safetensors parser, float64 NumPy Llama forward) against kormo's CPU
//! forward pass, for both flavours and a sharded bf16 export. The python3 with NumPy comes from
//! the build (kormo_testdeps).

mod common;

use common::{random_weights, scratch, small_config};
use kormo_cpu::CpuOps;
use kormo_hf::Weights;
use kormo_hf::vocab::{byte_tokenizer, ModelTokenizer, TokenizerSource};
use kormo_hf::{export_folder, load_hf_folder, ExportDtype, ExportOptions, Flavor};
use std::path::Path;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/numpy_reference/llama_ref.py");

/// Logits from the NumPy reference (run by the build's python3, which has NumPy).
fn numpy_logits(dir: &Path, tokens: &[u32]) -> Vec<f64> {
    let out = dir.join("reference.f64");
    let ids: Vec<String> = tokens.iter().map(|t| t.to_string()).collect();
    let result = kormo_testdeps::python(&["numpy"])
        .arg(SCRIPT)
        .arg(dir)
        .arg(ids.join(","))
        .arg(&out)
        .output()
        .expect("running the checked python3");
    assert!(result.status.success(), "llama_ref.py failed: {}", String::from_utf8_lossy(&result.stderr));
    let bytes = std::fs::read(&out).unwrap();
    bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect()
}

/// Logits of `tokens` (one sequence) from kormo's own forward pass on the CPU backend.
fn kormo_logits(weights: &Weights, tokens: &[u32]) -> Vec<f32> {
    let mut model = weights.to_model(CpuOps::<f32>::with_threads(2), std::path::Path::new("test")).unwrap();
    model.forward(&kormo_model::Batch::forward_only(tokens)).unwrap()
}

#[test]
fn exported_logits_match_an_independent_numpy_forward() {
    let tokens: Vec<u32> = vec![3, 17, 42, 5, 79, 0, 42, 42, 11, 64, 2, 33];
    let tokenizer = ModelTokenizer { tokenizer: byte_tokenizer(), source: TokenizerSource::ByteVocab };
    let mut config = small_config();
    config.vocab = 384; // the byte vocabulary's tokenizer goes with the export
    let weights = random_weights(&config, 11);
    let mut tied_config = config.clone();
    tied_config.tie_embeddings = true;
    let tied = random_weights(&tied_config, 12);
    let cases = [
        (&weights, Flavor::Llama, ExportDtype::F32, u64::MAX),
        (&weights, Flavor::Kormo, ExportDtype::F32, u64::MAX),
        (&weights, Flavor::Llama, ExportDtype::BF16, 30_000),
        (&tied, Flavor::Kormo, ExportDtype::F32, u64::MAX),
    ];
    for (case, (weights, flavor, dtype, max_shard_bytes)) in cases.into_iter().enumerate() {
        let dir = scratch(&format!("numpy-{case}"));
        let opts = ExportOptions { flavor, dtype, max_shard_bytes, ..ExportOptions::default() };
        export_folder(weights, &tokenizer, &dir, &opts).unwrap();
        // kormo computes with what the folder holds (bf16-rounded for a bf16 export).
        let ours = kormo_logits(&load_hf_folder(&dir).unwrap(), &tokens);
        let reference = numpy_logits(&dir, &tokens);
        assert_eq!(reference.len(), ours.len());
        let max_abs = reference.iter().fold(0f64, |m, &x| m.max(x.abs()));
        assert!(max_abs > 0.5, "logits too small to be a meaningful check: {max_abs}");
        let worst = ours.iter().zip(&reference).map(|(&a, &b)| (a as f64 - b).abs()).fold(0f64, f64::max);
        let tie = weights.config.tie_embeddings;
        println!("{flavor:?} {dtype:?} tied {tie}: max |kormo - numpy| = {worst:.2e} (logits up to {max_abs:.2})");
        assert!(worst < 1e-4, "{flavor:?} {dtype:?}: logits differ by {worst}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
