//! Whole-model tests on the CPU reference: forward against a naive Hugging Face-style decoder,
//! gradient check of every tensor against central differences in f64, intra-document masking
//! (packed rows equal documents run alone; perturbing one document leaves the others
//! unchanged), gradient accumulation, f32 vs f64 agreement, thread-count independence, unit
//! hooks for sharding (with and without activation checkpointing), a memorisation run, and error reporting for bad input.

mod common;

use common::{assert_model_gradients, check_against_naive_decoder, micro_config, packed_batch, rng};
use kormo_cpu::CpuOps;
use kormo_model::{Batch, Model, ModelConfig, ModelError};

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Gradient check of the whole model in f64: for every tensor, a sample of entries against
/// central differences of the mean loss (z-loss on, so its path through the model is covered).
fn check_model_gradients(cfg: ModelConfig) {
    let batch = packed_batch(&[&[3, 4], &[2, 2, 3]], cfg.vocab as u32, false, 11);
    let mut model = Model::new(cfg, CpuOps::<f64>::with_threads(2), 5).unwrap();
    // Larger-than-init weights so every path carries a visible gradient.
    for p in model.params_mut() {
        p.iter_mut().for_each(|x| *x *= 10.0);
    }
    model.set_z_loss(1e-3);
    assert_model_gradients(&mut model, &batch, 6, &mut rng(12));
}

#[test]
fn whole_model_gradients_match_finite_differences() {
    check_model_gradients(micro_config());
}

#[test]
fn whole_model_gradients_match_finite_differences_with_tied_embeddings() {
    let mut cfg = micro_config();
    cfg.tie_embeddings = true;
    check_model_gradients(cfg);
}

/// (a) With per-document positions, a packed row's logits equal each document run alone.
#[test]
fn packed_documents_with_reset_positions_equal_documents_run_alone() {
    let cfg = micro_config();
    let vocab = cfg.vocab;
    let mut model = Model::new(cfg, CpuOps::<f64>::new(), 3).unwrap();
    let docs = [4usize, 3, 5];
    let packed = packed_batch(&[&docs], vocab as u32, true, 21);
    let packed_logits = model.forward(&packed).unwrap();
    let mut start = 0;
    for &len in &docs {
        let range = start..start + len;
        let alone = Batch {
            tokens: packed.tokens[range.clone()].to_vec(),
            targets: packed.targets[range.clone()].to_vec(),
            loss_weights: packed.loss_weights[range.clone()].to_vec(),
            doc_ids: vec![0; len],
            positions: (0..len as u32).collect(),
            batch_size: 1,
            seq_len: len,
        };
        let logits = model.forward(&alone).unwrap();
        let diff = max_abs_diff(&logits, &packed_logits[start * vocab..(start + len) * vocab]);
        assert!(diff < 1e-6, "document at {start}: max logit difference {diff}");
        start += len;
    }
}

/// (b) With KORMo's running positions, changing one document's tokens leaves every other
/// document's logits unchanged (and does change its own).
#[test]
fn perturbing_one_document_leaves_other_documents_unchanged() {
    let cfg = micro_config();
    let vocab = cfg.vocab;
    let mut model = Model::new(cfg, CpuOps::<f64>::new(), 4).unwrap();
    let docs = [4usize, 3, 5];
    let batch = packed_batch(&[&docs], vocab as u32, false, 22);
    let before = model.forward(&batch).unwrap();
    let mut perturbed = batch.clone();
    for t in 4..7 {
        perturbed.tokens[t] = (perturbed.tokens[t] + 1) % vocab as u32;
    }
    let after = model.forward(&perturbed).unwrap();
    let rows = |a: &[f32], r: std::ops::Range<usize>| a[r.start * vocab..r.end * vocab].to_vec();
    assert_eq!(rows(&before, 0..4), rows(&after, 0..4), "earlier document changed");
    assert_eq!(rows(&before, 7..12), rows(&after, 7..12), "later document changed");
    assert!(max_abs_diff(&rows(&before, 4..7), &rows(&after, 4..7)) > 1e-4, "perturbed document did not change");
}

/// Accumulating two micro-batches with `grad_scale = 1 / total weight` gives the gradient of
/// the combined batch's mean loss.
#[test]
fn gradient_accumulation_over_micro_batches_matches_one_batch() {
    let cfg = micro_config();
    let both = packed_batch(&[&[3, 4], &[2, 5]], cfg.vocab as u32, false, 31);
    let half = |row: usize| {
        let r = row * both.seq_len..(row + 1) * both.seq_len;
        Batch {
            tokens: both.tokens[r.clone()].to_vec(),
            targets: both.targets[r.clone()].to_vec(),
            loss_weights: both.loss_weights[r.clone()].to_vec(),
            doc_ids: both.doc_ids[r.clone()].to_vec(),
            positions: both.positions[r].to_vec(),
            batch_size: 1,
            seq_len: both.seq_len,
        }
    };
    let mut model = Model::new(cfg, CpuOps::<f64>::new(), 6).unwrap();
    let scale = (1.0 / both.loss_weight_sum()) as f32;
    model.zero_grads();
    let whole = model.forward_backward(&both, scale).unwrap();
    let want: Vec<Vec<f64>> = model.grads().to_vec();
    model.zero_grads();
    let parts = model.forward_backward(&half(0), scale).unwrap().add(model.forward_backward(&half(1), scale).unwrap());
    assert!((whole.mean() - parts.mean()).abs() < 1e-12);
    for (spec, (got, want)) in model.param_specs().iter().zip(model.grads().iter().zip(&want)) {
        let diff = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(diff < 1e-12, "{}: {diff}", spec.name);
    }
}

#[test]
fn f32_and_f64_backends_agree() {
    let cfg = ModelConfig { hidden: 32, layers: 2, heads: 4, kv_heads: 2, head_dim: 8, ffn: 48, vocab: 50, ..micro_config() };
    let batch = packed_batch(&[&[10, 6, 8], &[24]], cfg.vocab as u32, false, 41);
    let scale = (1.0 / batch.loss_weight_sum()) as f32;
    let mut m32 = Model::new(cfg.clone(), CpuOps::<f32>::new(), 7).unwrap();
    let mut m64 = Model::new(cfg, CpuOps::<f64>::new(), 7).unwrap();
    let l32 = m32.forward_backward(&batch, scale).unwrap().mean();
    let l64 = m64.forward_backward(&batch, scale).unwrap().mean();
    assert!((l32 - l64).abs() < 1e-5, "loss {l32} vs {l64}");
    for (index, spec) in m64.param_specs().iter().enumerate() {
        let g64 = &m64.grads()[index];
        let g32 = &m32.grads()[index];
        let norm = g64.iter().map(|g| g.abs()).fold(0.0, f64::max);
        let diff = g32.iter().zip(g64).map(|(&a, b)| (a as f64 - b).abs()).fold(0.0, f64::max);
        assert!(diff <= 1e-4 * norm + 1e-9, "{}: max diff {diff} (max |g| {norm})", spec.name);
    }
}

#[test]
fn loss_at_init_is_near_uniform_and_evaluate_leaves_gradients_alone() {
    let cfg = ModelConfig::tiny().with_vocab(300);
    let batch = packed_batch(&[&[20, 12], &[32]], 300, false, 51);
    let mut model = Model::new(cfg, CpuOps::<f32>::new(), 1).unwrap();
    model.zero_grads();
    let loss = model.evaluate(&batch).unwrap();
    assert!((loss.mean() - 300f64.ln()).abs() < 0.05, "loss at init {}", loss.mean());
    assert!((loss.weight - batch.loss_weight_sum()).abs() < 1e-9);
    assert!(model.grads().iter().all(|g| g.iter().all(|&x| x == 0.0)));
}

#[test]
fn named_access_and_bad_input_errors() {
    let cfg = micro_config();
    let mut model = Model::new(cfg.clone(), CpuOps::<f32>::new(), 8).unwrap();
    let name = "model.layers.1.mlp.up_proj.weight";
    let mut values = vec![0.0f32; cfg.ffn * cfg.hidden];
    model.read_param(name, &mut values).unwrap();
    values[3] = 42.0;
    model.write_param(name, &values).unwrap();
    let mut back = vec![0.0f32; values.len()];
    model.read_param(name, &mut back).unwrap();
    assert_eq!(back, values);
    assert_eq!(model.read_param("lm_head.bias", &mut back), Err(ModelError::UnknownParam("lm_head.bias".into())));
    assert!(matches!(model.write_param(name, &[1.0]), Err(ModelError::SizeMismatch { .. })));
    let mut batch = packed_batch(&[&[5]], cfg.vocab as u32, false, 61);
    batch.tokens[2] = cfg.vocab as u32;
    let err = model.forward_backward(&batch, 1.0).unwrap_err();
    assert!(err.to_string().contains("tokens[2]"), "{err}");
    let mut bad = cfg;
    bad.heads = 3;
    assert!(Model::new(bad, CpuOps::<f32>::new(), 0).is_err());
}

/// Plain SGD on one fixed batch must drive the loss down: forward, backward and the
/// accumulation into parameter gradients work together as a training step.
#[test]
fn sgd_on_a_fixed_batch_memorises_it() {
    let cfg = ModelConfig { hidden: 32, layers: 2, heads: 4, kv_heads: 2, head_dim: 8, ffn: 48, vocab: 20, ..micro_config() };
    let mut batch = packed_batch(&[&[16], &[6, 10]], cfg.vocab as u32, false, 71);
    batch.loss_weights.iter_mut().for_each(|w| *w = 1.0);
    let mut model = Model::new(cfg, CpuOps::<f32>::new(), 9).unwrap();
    let scale = (1.0 / batch.loss_weight_sum()) as f32;
    let mut losses = Vec::new();
    for _ in 0..60 {
        model.zero_grads();
        losses.push(model.forward_backward(&batch, scale).unwrap().mean());
        let (params, grads) = model.params_and_grads_mut();
        for (p, g) in params.iter_mut().zip(grads.iter()) {
            p.iter_mut().zip(g).for_each(|(p, g)| *p -= 0.5 * g);
        }
    }
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(last < 0.3 * first, "loss went from {first} to {last}");
}

/// Kernels split work into fixed items, so the thread count cannot change any bit.
#[test]
fn gradients_do_not_depend_on_thread_count() {
    let cfg = ModelConfig::tiny().with_vocab(256);
    let batch = packed_batch(&[&[40, 24], &[64]], 256, false, 81);
    let run = |threads| {
        let mut model = Model::new(cfg.clone(), CpuOps::<f32>::with_threads(threads), 2).unwrap();
        let loss = model.forward_backward(&batch, 0.01).unwrap();
        (loss, model.grads().to_vec())
    };
    assert!(run(1) == run(3));
}

/// FSDP-style hooks: only the unit in use holds real parameters (all others are zeroed, so a
/// read outside the announced unit would change the result), and each unit's gradient is
/// moved out as soon as its backward is done. Loss and gradients must equal a plain run.
#[test]
fn unit_hooks_see_each_unit_when_it_is_used() {
    check_unit_hooks(false, kormo_model::DEFAULT_HEAD_CHUNK_TOKENS);
}

/// As above with activation checkpointing: the recomputation of a layer's forward must happen
/// inside that layer's backward window (its parameters are zeroed elsewhere), the hook calls
/// are the same, and loss and gradients equal the plain run without checkpointing bit for bit.
#[test]
fn unit_hooks_see_each_unit_when_it_is_used_with_activation_checkpointing() {
    check_unit_hooks(true, kormo_model::DEFAULT_HEAD_CHUNK_TOKENS);
}

/// As above with a head chunked into 3-token pieces: the chunked head reads the head weight
/// only inside the Head unit's windows (training runs it in the backward), and loss and
/// gradients equal a plain run with the same chunking bit for bit.
#[test]
fn unit_hooks_see_each_unit_when_it_is_used_with_a_chunked_head() {
    check_unit_hooks(false, 3);
}

fn check_unit_hooks(checkpointing: bool, head_chunk: usize) {
    use kormo_model::params::{unit_tensors, units};
    use kormo_model::{Ops, Unit, UnitHooks};

    struct Sharded {
        cfg: ModelConfig,
        stored: Vec<Vec<f32>>,
        moved_grads: Vec<Vec<f32>>,
        calls: Vec<String>,
    }
    impl Sharded {
        fn gather(&mut self, unit: Unit, params: &mut [Vec<f32>]) {
            for i in unit_tensors(&self.cfg, unit) {
                params[i].copy_from_slice(&self.stored[i]);
            }
        }
        fn release(&mut self, unit: Unit, params: &mut [Vec<f32>]) {
            for i in unit_tensors(&self.cfg, unit) {
                params[i].fill(0.0);
            }
        }
    }
    impl UnitHooks<CpuOps<f32>> for Sharded {
        fn before_forward(&mut self, _: &CpuOps<f32>, unit: Unit, params: &mut [Vec<f32>]) {
            self.calls.push(format!("before_forward {unit:?}"));
            self.gather(unit, params);
        }
        fn after_forward(&mut self, _: &CpuOps<f32>, unit: Unit, params: &mut [Vec<f32>]) {
            self.calls.push(format!("after_forward {unit:?}"));
            self.release(unit, params);
        }
        fn before_backward(&mut self, _: &CpuOps<f32>, unit: Unit, params: &mut [Vec<f32>]) {
            self.calls.push(format!("before_backward {unit:?}"));
            self.gather(unit, params);
        }
        fn after_backward(&mut self, ops: &CpuOps<f32>, unit: Unit, params: &mut [Vec<f32>], grads: &mut [Vec<f32>]) {
            self.calls.push(format!("after_backward {unit:?}"));
            self.release(unit, params);
            for i in unit_tensors(&self.cfg, unit) {
                self.moved_grads[i] = grads[i].clone();
                ops.fill(&mut grads[i], 0.0);
            }
        }
    }

    let cfg = ModelConfig { layers: 3, ..micro_config() };
    let batch = packed_batch(&[&[3, 4], &[7]], cfg.vocab as u32, false, 91);
    let mut plain = Model::new(cfg.clone(), CpuOps::<f32>::new(), 10).unwrap();
    plain.set_head_chunk_tokens(head_chunk);
    let want_loss = plain.forward_backward(&batch, 0.1).unwrap();

    let mut model = Model::new(cfg.clone(), CpuOps::<f32>::new(), 10).unwrap();
    model.set_activation_checkpointing(checkpointing);
    model.set_head_chunk_tokens(head_chunk);
    let stored = model.params().to_vec();
    let mut hooks = Sharded { cfg: cfg.clone(), moved_grads: stored.iter().map(|p| vec![0.0; p.len()]).collect(), stored, calls: Vec::new() };
    for p in model.params_mut() {
        p.fill(0.0);
    }
    let loss = model.forward_backward_with_hooks(&batch, 0.1, &mut hooks).unwrap();
    assert_eq!(loss, want_loss);
    assert_eq!(hooks.moved_grads, plain.grads().to_vec());
    assert!(model.grads().iter().all(|g| g.iter().all(|&x| x == 0.0)));

    let order = units(&cfg);
    let mut want_calls = Vec::new();
    for u in &order {
        want_calls.push(format!("before_forward {u:?}"));
        want_calls.push(format!("after_forward {u:?}"));
    }
    for u in order.iter().rev() {
        want_calls.push(format!("before_backward {u:?}"));
        want_calls.push(format!("after_backward {u:?}"));
    }
    assert_eq!(hooks.calls, want_calls);
}

/// The model's forward against the naive Hugging Face-style decoder (common/mod.rs).
#[test]
fn forward_matches_naive_reference_decoder() {
    check_against_naive_decoder(ModelConfig { rope_theta: 10_000.0, ..micro_config() }, (101, 12, 13));
}

/// `log_probs` reads the log-softmax of the forward pass's logits at the queried tokens and ids
/// (across rows, repeated positions, query counts that are not powers of two; separate and tied
/// embeddings), and a `forward` after it (whose workspace needs the full logits) still gives
/// those logits.
#[test]
fn log_probs_are_the_log_softmax_of_the_forward_logits() {
    let vocab = micro_config().vocab;
    let batch = packed_batch(&[&[4, 3], &[2, 5]], vocab as u32, true, 31);
    for (threads, tie) in [(1, false), (2, false), (2, true)] {
        let cfg = ModelConfig { tie_embeddings: tie, ..micro_config() };
        let mut model = Model::new(cfg, CpuOps::<f64>::with_threads(threads), 9).unwrap();
        for p in model.params_mut() {
            p.iter_mut().for_each(|x| *x *= 10.0);
        }
        let logits = model.forward(&batch).unwrap();
        let want = |t: usize, id: u32| {
            let row = &logits[t * vocab..(t + 1) * vocab];
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
            row[id as usize] as f64 - max - row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln()
        };
        let mut r = rng(32);
        for count in [1usize, 3, 5, 14] {
            use rand::Rng;
            let queries: Vec<(usize, u32)> = (0..count).map(|_| (r.random_range(0..batch.num_tokens()), r.random_range(0..vocab as u32))).collect();
            let got = model.log_probs(&batch, &queries).unwrap();
            assert_eq!(got.len(), count);
            for (&(t, id), &lp) in queries.iter().zip(&got) {
                assert!(lp < 0.0 && (lp - want(t, id)).abs() < 1e-5, "token {t} id {id}: {lp} vs {}", want(t, id));
            }
        }
        assert_eq!(model.forward(&batch).unwrap(), logits);
        let err = model.log_probs(&batch, &[(batch.num_tokens(), 0)]).unwrap_err();
        assert!(err.to_string().contains("outside"), "{err}");
    }
}

/// `Model::for_inference` holds the given parameters without gradients: its forward and
/// log-probs equal those of a trained-layout model with the same values, gradients are
/// refused, and a wrong tensor count or size is named.
#[test]
fn an_inference_model_forwards_like_the_full_one_and_refuses_gradients() {
    let cfg = micro_config();
    let batch = packed_batch(&[&[4, 3], &[2, 5]], cfg.vocab as u32, true, 41);
    let full = Model::new(cfg.clone(), CpuOps::<f32>::with_threads(2), 13).unwrap();
    let tensors: Vec<Vec<f32>> = full.params().to_vec();
    let slices: Vec<&[f32]> = tensors.iter().map(Vec::as_slice).collect();
    let mut inference = Model::for_inference(cfg.clone(), CpuOps::<f32>::with_threads(2), &slices).unwrap();
    let mut full = full;
    assert_eq!(inference.forward(&batch).unwrap(), full.forward(&batch).unwrap());
    let queries = [(0, 3), (5, 1), (13, 7)];
    assert_eq!(inference.log_probs(&batch, &queries).unwrap(), full.log_probs(&batch, &queries).unwrap());
    assert!(inference.grads().is_empty());
    assert_eq!(inference.forward_backward(&batch, 1.0), Err(ModelError::NoGradients));
    let name = inference.param_specs()[0].name.clone();
    let mut out = vec![0.0; inference.param_specs()[0].numel()];
    assert_eq!(inference.read_grad(&name, &mut out), Err(ModelError::NoGradients));
    assert!(matches!(Model::for_inference(cfg.clone(), CpuOps::<f32>::new(), &slices[1..]), Err(ModelError::SizeMismatch { .. })));
    let mut short = slices.clone();
    short[2] = &tensors[2][1..];
    let err = Model::for_inference(cfg, CpuOps::<f32>::new(), &short).err().unwrap();
    assert!(err.to_string().contains(&full.param_specs()[2].name), "{err}");
}
