//! Cached incremental decoding against the training model's full forward pass, greedy
//! determinism, and the `generate` binary end to end (including bad input).

use kormo_cpu::CpuOps;
use kormo_generate::{generate, Decoder, Limits, Sampler, StopReason, Strategy};
use kormo_hf::Weights;
use kormo_model::{Batch, Model, ModelConfig, ParamKind};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;
use std::process::Command;

/// The tiny architecture with 2 layers and random weights large enough for peaked attention
/// and confident logits (the 0.02 init gives near-uniform ones).
fn random_weights(seed: u64) -> Weights {
    let mut config = ModelConfig::tiny();
    config.layers = 2;
    let model = Model::new(config, CpuOps::<f32>::with_threads(1), seed).unwrap();
    let mut weights = Weights::from_model(&model);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (tensor, spec) in weights.tensors.iter_mut().zip(model.param_specs()) {
        for x in &mut tensor.values {
            *x = match spec.kind {
                ParamKind::Norm => rng.random_range(0.5..1.5),
                _ => *x * 8.0,
            };
        }
    }
    weights
}

fn full_forward(weights: &Weights, tokens: &[u32]) -> Vec<f32> {
    let mut model = weights.to_model(CpuOps::<f32>::with_threads(2), std::path::Path::new("test")).unwrap();
    model.forward(&Batch::forward_only(tokens)).unwrap()
}

#[test]
fn cached_decoding_matches_the_full_forward_pass() {
    let weights = random_weights(3);
    let vocab = weights.config.vocab;
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let tokens: Vec<u32> = (0..40).map(|_| rng.random_range(0..vocab as u32)).collect();
    let reference = full_forward(&weights, &tokens);
    let spread = reference.iter().fold(0f32, |m, &x| m.max(x.abs()));
    assert!(spread > 1.0, "logits too flat for a meaningful comparison: {spread}");

    // Prefill 7 tokens, then single tokens, a chunk of 5, and single tokens again.
    let mut decoder = Decoder::new(&weights, 2);
    let mut cached = decoder.extend_all(&tokens[..7]);
    for &t in &tokens[7..20] {
        cached.extend(decoder.extend(&[t]));
    }
    cached.extend(decoder.extend_all(&tokens[20..25]));
    for &t in &tokens[25..] {
        cached.extend(decoder.extend(&[t]));
    }
    assert_eq!(decoder.len(), tokens.len());
    assert_eq!(cached.len(), reference.len());
    let worst = cached.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-4, "cached logits differ from the full forward by {worst}");

    // `extend` returns the last row of what `extend_all` would.
    decoder.reset();
    let last = decoder.extend(&tokens[..12]);
    assert_eq!(last.len(), vocab);
    let worst = last.iter().zip(&reference[11 * vocab..12 * vocab]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-4, "{worst}");
}

#[test]
fn greedy_generation_is_deterministic_and_equals_naive_argmax_decoding() {
    let weights = random_weights(5);
    let prompt: Vec<u32> = vec![256, 72, 105, 32, 235, 130];
    let limits = Limits { max_new_tokens: 12, stop_tokens: vec![], max_context: 4096 };
    let run = || {
        let mut decoder = Decoder::new(&weights, 2);
        let mut sampler = Sampler::new(Strategy::Greedy, 0, weights.config.vocab);
        let mut streamed = Vec::new();
        let generation = generate(&mut decoder, &mut sampler, &prompt, &limits, |id| streamed.push(id)).unwrap();
        assert_eq!(generation.tokens, streamed);
        assert_eq!(generation.stop, StopReason::MaxNewTokens);
        generation.tokens
    };
    let first = run();
    assert_eq!(first, run());
    // Naive decoding: full forward over the whole sequence at every step.
    let vocab = weights.config.vocab;
    let mut sequence = prompt.clone();
    for _ in 0..limits.max_new_tokens {
        let logits = full_forward(&weights, &sequence);
        sequence.push(kormo_generate::sampling::argmax(&logits[logits.len() - vocab..]));
    }
    assert_eq!(first, sequence[prompt.len()..]);

    // A stop token ends generation without being emitted.
    let stop = first[3];
    let mut decoder = Decoder::new(&weights, 1);
    let mut sampler = Sampler::new(Strategy::Greedy, 0, vocab);
    let limits = Limits { stop_tokens: vec![stop], ..limits };
    let stopped = generate(&mut decoder, &mut sampler, &prompt, &limits, |_| {}).unwrap();
    let end = first.iter().position(|&t| t == stop).unwrap();
    assert_eq!(stopped.tokens, first[..end]);
    assert_eq!(stopped.stop, StopReason::StopToken(stop));
    // Context limit and bad prompts are errors, not panics.
    let mut decoder = Decoder::new(&weights, 1);
    let tight = Limits { max_context: 4, ..limits.clone() };
    assert!(generate(&mut decoder, &mut sampler, &prompt, &tight, |_| {}).unwrap_err().contains("context limit"));
    assert!(generate(&mut decoder, &mut sampler, &[], &limits, |_| {}).is_err());
    assert!(generate(&mut decoder, &mut sampler, &[vocab as u32], &limits, |_| {}).unwrap_err().contains("outside"));
}

fn scratch(name: &str) -> PathBuf {
    let base = std::env::var_os("TEST_TMPDIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("kormo-generate-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn generate_binary_streams_text_and_rejects_bad_input() {
    // The binary reads a kormo checkpoint of the full tiny preset (its default).
    let model = Model::new(ModelConfig::tiny(), CpuOps::<f32>::with_threads(1), 1).unwrap();
    let weights = Weights::from_model(&model);
    let dir = scratch("binary");
    let checkpoint = dir.join("run/sft/final");
    // A checkpoint that records no architecture (unlike `Weights::save_checkpoint`'s), so
    // --preset decides it and a wrong preset is refused below.
    let tensors = weights.tensors.iter().map(|t| kormo_checkpoint::Tensor::f32(t.name.clone(), t.shape.clone(), &t.values)).collect();
    let run = kormo_checkpoint::RunState {
        step: 1, stage: "sft".into(), phase: "main".into(), config_hash: String::new(),
        rng_state: serde_json::Value::Null, data_cursor: serde_json::Value::Null, trainer: serde_json::json!({}),
    };
    kormo_checkpoint::save(&checkpoint, run, &[("model.safetensors", tensors)]).unwrap();

    let bin = env!("CARGO_BIN_EXE_generate");
    let ok = |args: &[&str]| {
        let out = Command::new(bin).arg("--model").arg(&checkpoint).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    let (text, stats) = ok(&["--prompt", "하늘은 무슨 색인가요?", "--chat", "--max-new-tokens", "16"]);
    assert!(stats.contains("generated tokens"), "{stats}");
    assert!(!text.trim().is_empty() || stats.contains("end of turn"), "{text:?} {stats}");
    let again = ok(&["--prompt", "하늘은 무슨 색인가요?", "--chat", "--max-new-tokens", "16"]).0;
    assert_eq!(text, again, "greedy output must be deterministic");
    let sampled = ok(&["--prompt", "Hello", "--temperature", "0.9", "--top-p", "0.9", "--seed", "3", "--max-new-tokens", "8"]).0;
    assert_eq!(sampled, ok(&["--prompt", "Hello", "--temperature", "0.9", "--top-p", "0.9", "--seed", "3", "--max-new-tokens", "8"]).0);
    ok(&["--prompt", "2+2?", "--chat", "--thinking", "on", "--max-new-tokens", "4"]);

    let fail = |args: &[&str], expected: &str| {
        let out = Command::new(bin).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.starts_with("generate: ") && stderr.contains(expected), "{args:?}: {stderr}");
    };
    let path = checkpoint.to_str().unwrap();
    fail(&["--model", "/no/such/model", "--prompt", "x"], "/no/such/model");
    fail(&["--model", path, "--prompt", "x", "--temperature", "-1"], "--temperature");
    fail(&["--model", path, "--prompt", "x", "--thinking", "maybe"], "--thinking");
    fail(&["--model", path, "--prompt", "x", "--preset", "proxy-1b"], "model.safetensors");
    fail(&["--model", path, "--prompt", "x", "--max-context", "2"], "context limit");
    // Usage mistakes are clap's: exit code 2, the usage line.
    for (args, expected) in [(vec!["--model", path], "--prompt <TEXT>"), (vec!["--model", path, "--prompt", "x", "--bogus", "1"], "'--bogus'")] {
        let out = Command::new(bin).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: ") && stderr.contains(expected) && stderr.contains("Usage: generate"), "{args:?}: {stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The decoder's post-LN path against the training model's full forward: Mix-LN with two
/// layers, the first post-LN, and DeepNorm (both post-LN, the residual scaled); each must also
/// change the logits against the same weights read as pre-LN.
#[test]
fn cached_decoding_of_post_ln_models_matches_their_full_forward_pass() {
    for norm in [kormo_model::NormPlacement::MixLn, kormo_model::NormPlacement::DeepNorm] {
        let mut weights = random_weights(5);
        weights.config.norm = norm;
        if norm == kormo_model::NormPlacement::MixLn {
            weights.config.mixln_post_fraction = 0.5;
        }
        assert_eq!(weights.config.post_ln_layers(), if norm == kormo_model::NormPlacement::MixLn { 1 } else { 2 });
        let vocab = weights.config.vocab;
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let tokens: Vec<u32> = (0..24).map(|_| rng.random_range(0..vocab as u32)).collect();
        let reference = full_forward(&weights, &tokens);
        let pre_ln = {
            let mut plain = weights.clone();
            plain.config.norm = kormo_model::NormPlacement::Pre;
            plain.config.mixln_post_fraction = kormo_model::DEFAULT_MIXLN_POST_FRACTION;
            full_forward(&plain, &tokens)
        };
        let differs = reference.iter().zip(&pre_ln).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(differs > 1e-2, "{norm:?} must change the logits: {differs}");
        let mut decoder = Decoder::new(&weights, 2);
        let mut cached = decoder.extend_all(&tokens[..9]);
        for &t in &tokens[9..] {
            cached.extend(decoder.extend(&[t]));
        }
        let worst = cached.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-4, "cached {norm:?} logits differ from the full forward by {worst}");
    }
}
