//! The batched Ops scorer (kormo_eval::loglik) against the per-question KV-cache decoder:
//! on a small random model, questions with single-token choices, multi-token choices (some
//! prefixes of others) and contexts of different lengths give the decoder's log-likelihoods
//! (context run once, each choice continued from the cache) under several packings (one
//! document per row, rows shared, one row or many per forward, a partial last forward), and
//! shuffling the questions changes no question's values. Then a task file with both kinds of
//! choices through `Scorer` equals the decoder on the harness tokenisation, and the scorer on
//! `CudaOps` (when a device is present; on `CpuOps<f64>` everywhere) equals it on `CpuOps<f32>`.

use std::path::Path;

use kormo_cpu::CpuOps;
use kormo_eval::loglik::{loglikelihoods, Packing, Question};
use kormo_eval::score::{question, split_ids};
use kormo_eval::task::Task;
use kormo_eval::Scorer;
use kormo_generate::text::encode_plain;
use kormo_generate::Decoder;
use kormo_hf::Weights;
use kormo_model::{Model, ModelConfig, ParamKind};
use kormo_tokenizer::train::{train, TrainConfig, WordCounts, KORMO_SPECIALS};
use kormo_tokenizer::{Pattern, Tokenizer};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod common;
use common::weights;

fn log_softmax_at(logits: &[f32], id: u32) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let sum: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    logits[id as usize] as f64 - max - sum.ln()
}

/// The reference: each question alone through the KV-cache decoder, its context once, every
/// choice continued from the cache truncated back to the context.
fn decoder_lls(w: &Weights, q: &Question) -> Vec<f64> {
    let mut d = Decoder::new(w, 2);
    let last = d.extend(&q.context);
    let v = w.config.vocab;
    q.continuations
        .iter()
        .map(|cont| {
            d.truncate(q.context.len());
            let all = d.extend_all(cont);
            cont.iter().enumerate().map(|(i, &id)| log_softmax_at(if i == 0 { &last } else { &all[(i - 1) * v..i * v] }, id)).sum()
        })
        .collect()
}

fn assert_close(got: &[Vec<f64>], want: &[Vec<f64>], what: &str) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len());
        for (c, (a, b)) in g.iter().zip(w).enumerate() {
            assert!((a - b).abs() <= 2e-4 * b.abs().max(1.0), "{what}: question {i} choice {c}: {a} vs {b}");
        }
    }
}

/// Random questions: contexts of 2..40 tokens (BOS first), single-token choices, multi-token
/// choices, and multi-token choices with a shared first token or one choice a prefix of another.
fn questions(vocab: u32, r: &mut ChaCha8Rng) -> Vec<Question> {
    let bos = 1;
    (0..14)
        .map(|i| {
            let mut context = vec![bos];
            context.extend((0..r.random_range(1..40)).map(|_| r.random_range(2..vocab)));
            let mut tok = |n: usize| -> Vec<u32> { (0..n).map(|_| r.random_range(2..vocab)).collect() };
            let continuations = match i % 4 {
                0 => (0..4).map(|_| tok(1)).collect(),
                1 => vec![tok(1), tok(3), tok(2)],
                2 => {
                    let long = tok(4);
                    vec![long[..2].to_vec(), tok(1), long.clone(), tok(5)]
                }
                _ => vec![tok(1), tok(1)],
            };
            Question { context, continuations }
        })
        .collect()
}

#[test]
fn batched_log_likelihoods_equal_the_decoder_under_any_packing_and_order() {
    let vocab = 64;
    let w = weights(vocab, 11);
    let qs = questions(vocab as u32, &mut ChaCha8Rng::seed_from_u64(12));
    let want: Vec<Vec<f64>> = qs.iter().map(|q| decoder_lls(&w, q)).collect();
    let mut model = w.to_model(CpuOps::<f32>::with_threads(2), Path::new("test")).unwrap();
    model.set_activation_checkpointing(true);
    // One document per row (seq below the longest: rows take the longest length), rows
    // shared by several documents, one row per forward, a partial last forward, one forward.
    for (seq, batch_tokens) in [(1, 1), (48, 96), (64, 1), (96, 200), (4096, 4096)] {
        let (got, stats) = loglikelihoods(&mut model, &qs, Packing { seq, batch_tokens }, |_, _| {}).unwrap();
        assert_close(&got, &want, &format!("seq {seq}, batch_tokens {batch_tokens}"));
        assert_eq!(stats.seq, seq.max(stats.seq), "rows hold the longest document");
        assert_eq!(stats.rows * stats.seq, stats.tokens + stats.padding);
        assert_eq!(stats.forwards, stats.rows.div_ceil((batch_tokens / stats.seq).max(1)));
        if seq == 4096 {
            assert_eq!((stats.forwards, stats.rows), (1, 1));
        }
    }
    // Documents: one per single-token question; per multi-token question one per choice that
    // prefixes no other choice's input.
    let (_, stats) = loglikelihoods(&mut model, &qs, Packing::default(), |_, _| {}).unwrap();
    let expected: usize = (0..qs.len()).map(|i| [1, 2, 2, 1][i % 4]).sum();
    assert_eq!(stats.documents, expected);
    let context_tokens: usize = qs.iter().map(|q| q.context.len()).sum();
    assert!(stats.tokens < context_tokens + qs.iter().map(|q| q.continuations.iter().map(|c| q.context.len() + c.len()).sum::<usize>()).sum::<usize>());

    // Shuffled questions: each question's values are the same.
    let mut order: Vec<usize> = (0..qs.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(13));
    let shuffled: Vec<Question> = order.iter().map(|&i| qs[i].clone()).collect();
    let (got, _) = loglikelihoods(&mut model, &shuffled, Packing { seq: 64, batch_tokens: 128 }, |_, _| {}).unwrap();
    let (base, _) = loglikelihoods(&mut model, &qs, Packing { seq: 64, batch_tokens: 128 }, |_, _| {}).unwrap();
    for (k, &i) in order.iter().enumerate() {
        for (a, b) in got[k].iter().zip(&base[i]) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "question {i} shuffled to {k}: {a} vs {b}");
        }
    }
}

#[test]
fn progress_counts_every_forward_and_empty_choices_are_errors() {
    let w = weights(32, 3);
    let qs = questions(32, &mut ChaCha8Rng::seed_from_u64(4));
    let mut model = w.to_model(CpuOps::<f32>::with_threads(1), Path::new("test")).unwrap();
    let mut seen = Vec::new();
    let (_, stats) = loglikelihoods(&mut model, &qs, Packing { seq: 64, batch_tokens: 128 }, |done, total| seen.push((done, total))).unwrap();
    assert!(stats.forwards > 1);
    assert_eq!(seen, (1..=stats.forwards).map(|d| (d, stats.forwards)).collect::<Vec<_>>());
    let bad = [Question { context: vec![1, 2], continuations: vec![vec![3], vec![]] }];
    assert!(loglikelihoods(&mut model, &bad, Packing::default(), |_, _| {}).unwrap_err().contains("no tokens"));
}

const TEXT: &str = "The sky is blue. The grass is green. 하늘은 파랗다. 바다는 깊다. Is water wet? yes. Is fire cold? no. A B C D";

fn tokenizer() -> Tokenizer {
    let specials: Vec<String> = KORMO_SPECIALS.iter().map(|s| s.to_string()).collect();
    let mut counts = WordCounts::default();
    // " yes", " no", " A" .. " D" frequent enough to become single tokens.
    counts.add_text(&format!("{TEXT} {}", "yes no A B C D ".repeat(50)), Pattern::Qwen2, &specials, usize::MAX);
    train(&counts.counts, &TrainConfig { specials, ..TrainConfig::kormo(360) }).unwrap()
}

#[test]
fn a_task_with_single_and_multi_token_choices_scores_as_the_decoder() {
    let tok = tokenizer();
    let w = weights(tok.vocab_size(), 5);
    let bos = tok.special_id("<|BOS|>").unwrap();
    let dir = std::env::temp_dir().join(format!("kormo-eval-batched-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let docs = [
        r#"{"question": "What color is the sky?", "choices": ["A", "B", "C", "D"], "answerKey": 0}"#,
        r#"{"question": "Is water wet? The grass is green and the sky is blue.", "choices": ["yes", "no"], "answerKey": 0}"#,
        r#"{"question": "하늘은?", "choices": ["파랗다", "깊다", "the sky is blue"], "answerKey": 0}"#,
        r#"{"question": "Is fire cold?", "choices": ["no", "yes. Is water wet? yes", "no. The grass"], "answerKey": 0}"#,
    ];
    std::fs::write(dir.join("mixed.jsonl"), docs.join("\n")).unwrap();
    let spec = r#"{"task": "mixed", "output_type": "multiple_choice", "test_split": "mixed.jsonl",
      "doc_to_text": "Question: {{question}}\nAnswer:", "doc_to_target": "{{answerKey}}", "doc_to_choice": "choices"}"#;
    std::fs::write(dir.join("mixed.json"), spec).unwrap();
    let task = Task::load(&dir.join("mixed.json")).unwrap();
    let mut model = w.to_model(CpuOps::<f32>::with_threads(2), Path::new("test")).unwrap();
    let eot = tok.special_id("<|EOT|>").unwrap();
    let mut scorer = Scorer { model: &mut model, decoder: None, tok: &tok, bos, eot, packing: Packing { seq: 32, batch_tokens: 64 } };
    let r = scorer.run(&task).unwrap();
    let mut lengths = Vec::new();
    for ex in &r.examples {
        let ctx = ex["context"].as_str().unwrap();
        let conts: Vec<String> = ex["choices"].as_array().unwrap().iter().map(|c| format!(" {}", c.as_str().unwrap())).collect();
        let q = question(&tok, bos, ctx, &conts).unwrap();
        assert_eq!(q.context[1..], encode_plain(&tok, ctx.trim_end())[..]);
        assert_eq!(q.continuations[0], split_ids(&tok, ctx, &conts[0]).1);
        lengths.extend(q.continuations.iter().map(Vec::len));
        let got: Vec<f64> = ex["loglikelihoods"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_close(&[got], &[decoder_lls(&w, &q)], ctx);
    }
    assert!(lengths.contains(&1) && lengths.iter().any(|&n| n > 2), "single- and multi-token choices: {lengths:?}");
    assert!(r.stats.forwards > 1 && r.stats.tokens > 0 && r.tokens_per_s > 0.0);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn gpu_config() -> ModelConfig {
    ModelConfig { hidden: 128, layers: 2, heads: 2, kv_heads: 1, head_dim: 64, ffn: 384, vocab: 96, ..ModelConfig::tiny() }
}

/// The batched scorer on backend `ops` against `CpuOps<f32>` holding the same weights (read
/// back from `ops`, so bf16-rounded on CUDA): the same packing statistics and every choice's
/// log-likelihood within 0.1 per token + 3% (bf16 weights and activations on CUDA).
fn check_backend_against_cpu<O: kormo_model::Ops>(ops: O) {
    let config = gpu_config();
    let mut cpu = Model::new(config.clone(), CpuOps::<f32>::with_threads(2), 21).unwrap();
    // Matrices scaled up so the logits are not flat (a misplaced read would then show).
    let mut w = Weights::from_model(&cpu);
    for (t, spec) in w.tensors.iter_mut().zip(cpu.param_specs()) {
        if spec.kind != ParamKind::Norm {
            t.values.iter_mut().for_each(|x| *x *= 4.0);
        }
    }
    // As `eval` builds it: parameters only, activation checkpointing on.
    let mut tested = kormo_eval::scoring_model(&w, ops).unwrap();
    for spec in cpu.param_specs().to_vec() {
        let mut v = vec![0.0; spec.numel()];
        tested.read_param(&spec.name, &mut v).unwrap();
        cpu.write_param(&spec.name, &v).unwrap();
    }
    let qs = questions(config.vocab as u32, &mut ChaCha8Rng::seed_from_u64(22));
    let packing = Packing { seq: 128, batch_tokens: 256 };
    let (got, stats) = loglikelihoods(&mut tested, &qs, packing, |_, _| {}).unwrap();
    let (want, cpu_stats) = loglikelihoods(&mut cpu, &qs, packing, |_, _| {}).unwrap();
    assert_eq!(stats, cpu_stats);
    assert!(stats.forwards > 1);
    let mut worst: f64 = 0.0;
    for (i, q) in qs.iter().enumerate() {
        for (c, cont) in q.continuations.iter().enumerate() {
            let (a, b) = (got[i][c], want[i][c]);
            worst = worst.max((a - b).abs());
            assert!((a - b).abs() <= 0.1 * cont.len() as f64 + 0.03 * b.abs(), "question {i} choice {c}: {a} vs cpu {b}");
        }
    }
    // Single-token questions' choices differ by far more than the tolerance.
    let spread = want.iter().step_by(4).map(|l| l.iter().fold(f64::MIN, |m, &x| m.max(x)) - l.iter().fold(f64::MAX, |m, &x| m.min(x))).fold(0.0, f64::max);
    println!("max |tested - cpu| log-likelihood: {worst:.3e}; largest spread of a single-token question's choices {spread:.3}");
    assert!(spread > 0.5, "the logits are flat: spread {spread}");
}

/// The batched scorer on `CudaOps` (a head dim the kernels cover) against the CPU; prints
/// "skipped" without a usable device.
#[test]
fn the_scorer_on_cuda_matches_the_cpu() {
    match kormo_cuda::detect_devices().and_then(|_| kormo_cuda::CudaOps::for_model(&gpu_config(), 0)) {
        Ok((ops, _)) => check_backend_against_cpu(ops),
        Err(e) => println!("skipped: {e}"),
    }
}

/// The same check with `CpuOps<f64>` as the tested backend, so it runs everywhere.
#[test]
fn the_backend_check_on_cpu_f64() {
    check_backend_against_cpu(CpuOps::<f64>::with_threads(2));
}
