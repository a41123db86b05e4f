//! Every kernel against its f64 reference (kormo_cpu / kormo_optim), on a CUDA device, at realistic odd shapes (the
//! checks themselves are in support/cases.rs and also run on the CPU emulator in emulated.rs).
//! The `cuda_ops_*` tests run the whole model on the CUDA backend against the CPU backend.
//! Without a device each test prints "skipped: no CUDA device" (see support::kernels_or_skip).

mod support;

use kormo_cpu::CpuOps;
use kormo_cuda::kernel_launch::WithCapability;
use kormo_cuda::optim::DeviceAdamW;
use kormo_cuda::{bf16, CudaBuf, CudaOps};
use kormo_model::{
    AttentionShape, Batch, CrossEntropyShape, EmbeddingShape, MatmulShape, Model, ModelConfig, NormPlacement, Ops, RopeShape, RowsShape,
};
use kormo_optim::{AdamW, AdamWConfig, ParamInfo};
use support::cases::{self, AttnCase};
use support::*;

#[test]
fn rmsnorm_forward_and_backward() {
    let Some(k) = kernels_or_skip() else { return };
    cases::check_rmsnorm(&k, &[(1, 37, 1000, false, 5), (2, 5, 4096, true, 5), (3, 64, 333, true, 3)]);
}

#[test]
fn swiglu_forward_and_backward() {
    let Some(k) = kernels_or_skip() else { return };
    cases::check_swiglu(&k, &[(4, 33, 1001), (5, 8, 4096)]);
}

#[test]
fn rope_forward_and_backward() {
    let Some(k) = kernels_or_skip() else { return };
    cases::check_rope(&k, &[(6, 50, 5, 128, 500000.0), (7, 77, 3, 64, 10000.0)]);
    cases::check_rope_layouts(&k, &cases::rope_layouts());
}

#[test]
fn attention_forward_and_backward_over_document_layouts() {
    let Some(k) = kernels_or_skip() else { return };
    let mut rng = SplitMix64::new(99);
    let many_short: Vec<usize> = (0..400).map(|_| 1 + rng.below(20) as usize).collect();
    let shape = |batch, seq, heads, kv_heads, head_dim| AttentionShape::new(batch, seq, heads, kv_heads, head_dim);
    let cases = [
            AttnCase { name: "causal, hd128, MHA", shape: shape(1, 130, 4, 4, 128), docs: None, pad: 0, seed: 21 },
            AttnCase { name: "doc mask, one document per row, hd64, GQA 3", shape: shape(2, 200, 6, 2, 64), docs: Some(vec![200, 200]), pad: 8, seed: 22 },
            AttnCase { name: "many short docs, hd64, GQA 3", shape: shape(2, 200, 6, 2, 64), docs: Some(many_short), pad: 0, seed: 23 },
            AttnCase { name: "docs straddling row starts, hd128, GQA 8", shape: shape(3, 97, 8, 1, 128), docs: Some(vec![150, 90, 7, 50]), pad: 16, seed: 24 },
            // Single-token documents between longer ones: a row of ONLY 1-token documents has exactly
            // zero dq/dk (softmax over one key), which a relative error cannot measure.
            AttnCase { name: "single-token docs between longer ones, hd64, GQA 2", shape: shape(1, 64, 2, 1, 64), docs: Some(vec![1, 1, 5, 1, 9, 1, 1, 20, 1, 24]), pad: 0, seed: 25 },
            AttnCase { name: "causal, hd64, long row", shape: shape(1, 517, 2, 1, 64), docs: None, pad: 0, seed: 26 },
            // The sm_90a kernels' 128-key tiles: documents across tile edges, several tiles, two rows.
            AttnCase { name: "docs across 128-key tiles, hd128, GQA 4", shape: shape(2, 700, 8, 2, 128), docs: Some(vec![100, 300, 129, 1, 127, 400, 343]), pad: 8, seed: 27 },
            // Cross-lingual attention (odd documents in the other language).
            AttnCase { name: "xlda, docs across tiles, hd128, GQA 4", shape: AttentionShape { cross_lingual: true, ..shape(2, 700, 8, 2, 128) }, docs: Some(vec![100, 300, 129, 1, 127, 400, 343]), pad: 0, seed: 28 },
    ];
    // The path the device takes (sm_90a on an H100/H200), then the sm_80 one on the same device.
    cases::check_attention(&k, &cases);
    if k.compute_capability() == (9, 0) {
        cases::check_attention(&WithCapability(&k, (8, 0)), &cases);
    }
}

#[test]
fn cross_entropy_loss_and_gradient() {
    let Some(k) = kernels_or_skip() else { return };
    cases::check_cross_entropy(&k, &[(31, 19, 5003, false, 0.0), (32, 3, 125_184, true, 1e-4), (33, 7, 1000, true, 0.05)]);
    cases::check_cross_entropy_layouts(&k, &cases::cross_entropy_layouts());
}

#[test]
fn embedding_lookup_and_scatter_add() {
    let Some(k) = kernels_or_skip() else { return };
    cases::check_embedding(&k, (1000, 136, 777)); // 16-byte copies
    cases::check_embedding(&k, (1000, 37, 777)); // dim not a multiple of 8: 2-byte copies
}

/// The deterministic variants (CudaOps::set_deterministic) against the references, each run
/// twice: the outputs must repeat bitwise (on the device the block schedule differs run to run).
#[test]
fn deterministic_variants_match_references_and_repeat_bitwise() {
    let Some(k) = kernels_or_skip() else { return };
    for shape in [(1000, 136, 777), (1000, 37, 777), (32_768, 2048, 4096)] {
        let first = cases::check_embedding_mode(&k, shape, 41, true);
        assert!(first == cases::check_embedding_mode(&k, shape, 41, true), "deterministic embedding backward {shape:?} did not repeat");
    }
    let lens = [10_007, 3_000_000, 1];
    let first = cases::check_grad_sumsq(&k, &lens, 91, true);
    assert_eq!(first, cases::check_grad_sumsq(&k, &lens, 91, true), "deterministic grad sum of squares did not repeat");
    let shape = |batch, seq, heads, kv_heads, head_dim| AttentionShape::new(batch, seq, heads, kv_heads, head_dim);
    let attn = [
        AttnCase { name: "causal, hd128, MHA", shape: shape(1, 130, 4, 4, 128), docs: None, pad: 0, seed: 21 },
        AttnCase { name: "docs straddling row starts, hd128, GQA 8", shape: shape(3, 97, 8, 1, 128), docs: Some(vec![150, 90, 7, 50]), pad: 16, seed: 24 },
        AttnCase { name: "many short docs, hd64, GQA 3", shape: shape(2, 200, 6, 2, 64), docs: Some((0..40).map(|i| 3 + (i * 7) % 19).collect()), pad: 8, seed: 23 },
        AttnCase { name: "causal, hd64, long row", shape: shape(1, 1517, 2, 1, 64), docs: None, pad: 0, seed: 26 },
    ];
    let first = cases::check_attention_mode(&k, &attn, true);
    assert!(first == cases::check_attention_mode(&k, &attn, true), "deterministic attention did not repeat");
    if k.compute_capability() == (9, 0) {
        let sm80 = WithCapability(&k, (8, 0));
        let first = cases::check_attention_mode(&sm80, &attn, true);
        assert!(first == cases::check_attention_mode(&sm80, &attn, true), "deterministic sm_80 attention did not repeat");
    }
}

/// CudaOps in deterministic mode: the model's forward/backward still matches the CPU backend,
/// and two runs from the same parameters and batch give bitwise the same loss and gradients.
#[test]
fn cuda_ops_deterministic_forward_backward_repeats_bitwise() {
    let Some(ops) = cuda_ops_or_skip() else { return };
    assert!(!ops.deterministic(), "deterministic mode is off by default");
    ops.set_deterministic(true);
    assert!(ops.clone().deterministic(), "clones share the mode");
    check_forward_backward(ops.clone(), true);
    let run = || {
        let mut model = Model::new(gpu_tiny_config(false), ops.clone(), 7).expect("model");
        let batch = packed_batch(3, model.config().vocab);
        model.zero_grads();
        let loss = model.forward_backward(&batch, 1.0 / batch.loss_weight_sum() as f32).expect("forward_backward");
        let bits = loss.mean().to_bits();
        let mut out = vec![bits as u32, (bits >> 32) as u32];
        for spec in model.param_specs().to_vec() {
            let mut g = vec![0.0; spec.numel()];
            model.read_grad(&spec.name, &mut g).expect("read grad");
            out.extend(g.iter().map(|x| x.to_bits()));
        }
        out
    };
    assert!(run() == run(), "deterministic CudaOps forward/backward did not repeat bitwise");
}

#[test]
fn adamw_with_device_side_clipping() {
    let Some(k) = kernels_or_skip() else { return };
    cases::check_adamw(&k, 10_007);
}

#[test]
fn elementwise_ops_and_dtype_conversion() {
    let Some(k) = kernels_or_skip() else { return };
    cases::check_elementwise(&k, 100_003);
}

// ------------------------------------------------------------------------------------------
// The CUDA backend (CudaOps) driving the real model, against the CPU backend in f32.

/// A tiny model the attention kernels cover (head dim 64; the `tiny` preset's 32 is not compiled).
fn gpu_tiny_config(tie_embeddings: bool) -> ModelConfig {
    ModelConfig { hidden: 128, layers: 2, heads: 2, kv_heads: 1, head_dim: 64, ffn: 384, vocab: 384, tie_embeddings, ..ModelConfig::tiny() }
}

/// Two rows of 96 tokens packed with documents of random lengths (ids non-decreasing within a
/// row, positions restarting per document), some tokens untrained (weight 0) or half-weighted.
fn packed_batch(seed: u64, vocab: usize) -> Batch {
    let (batch_size, seq_len) = (2, 96);
    let mut rng = SplitMix64::new(seed);
    let lengths: Vec<usize> = (0..40).map(|_| 5 + rng.below(40) as usize).collect();
    let doc_ids = doc_ids_from_lengths(&lengths, batch_size, seq_len);
    let n = batch_size * seq_len;
    Batch {
        tokens: (0..n).map(|_| rng.below(vocab as u64) as u32).collect(),
        targets: (0..n).map(|_| rng.below(vocab as u64) as u32).collect(),
        loss_weights: (0..n).map(|i| [1.0, 1.0, 0.0, 1.0, 0.5][i % 5]).collect(),
        positions: positions_from_doc_ids(&doc_ids),
        doc_ids,
        batch_size,
        seq_len,
    }
}

/// Runs every `Ops` method once on backend `O` from the same host inputs and returns each
/// output read back (name, values). Used with CudaOps and CpuOps<f64>; the attention lse is not
/// returned (its layout is backend-private) but feeds the attention backward.
fn every_op<O: Ops>(ops: &O, seed: u64) -> Vec<(String, Vec<f32>)> {
    let mut rng = SplitMix64::new(seed);
    let mut values = |len: usize, scale: f32| bf16_values(&mut rng, len, scale);
    let mut out = Vec::new();
    let mut read = |name: &str, buf: &O::Buf, len: usize| {
        let mut host = vec![0.0; len];
        ops.read(buf, &mut host);
        out.push((name.to_string(), host));
    };
    let (m, n, k) = (37, 24, 40);
    for (trans_a, trans_b) in [(false, false), (false, true), (true, false), (true, true)] {
        let shape = MatmulShape { m, n, k, trans_a, trans_b, accumulate: true, alpha: 0.5 };
        let (a, b) = (ops.upload(&values(m * k, 1.0)), ops.upload(&values(k * n, 1.0)));
        let mut c = ops.upload(&values(m * n, 1.0));
        ops.matmul(&a, &b, &mut c, shape);
        read(&format!("matmul trans_a {trans_a} trans_b {trans_b} (+=)"), &c, m * n);
        ops.matmul(&a, &b, &mut c, MatmulShape { accumulate: false, ..shape });
        read(&format!("matmul trans_a {trans_a} trans_b {trans_b} (=)"), &c, m * n);
    }

    let (batch, seq, heads, kv_heads, head_dim) = (2, 40, 2, 1, 64);
    let (t, hidden) = (batch * seq, 128);
    let rows = RowsShape { rows: t, dim: hidden };
    let (x, w) = (ops.upload(&values(t * hidden, 2.0)), ops.upload(&values(hidden, 1.5)));
    let (mut y, mut inv_rms) = (ops.zeros(t * hidden), ops.zeros(t));
    ops.rmsnorm_fwd(&x, &w, &mut y, &mut inv_rms, rows, 1e-5);
    read("rmsnorm y", &y, t * hidden);
    read("rmsnorm inv_rms", &inv_rms, t);
    let dy = ops.upload(&values(t * hidden, 1.0));
    let (mut dx, mut dw) = (ops.upload(&values(t * hidden, 1.0)), ops.upload(&values(hidden, 1.0)));
    ops.rmsnorm_bwd(&x, &w, &inv_rms, &dy, &mut dx, &mut dw, rows);
    read("rmsnorm dx (+=)", &dx, t * hidden);
    read("rmsnorm dweight (+=)", &dw, hidden);

    let doc_ids = doc_ids_from_lengths(&[30, 25, 1, 24, 100], batch, seq);
    let positions = positions_from_doc_ids(&doc_ids);
    let (doc_buf, pos_buf) = (ops.upload_idx(&doc_ids), ops.upload_idx(&positions));
    let (q_len, kv_len) = (t * heads * head_dim, t * kv_heads * head_dim);
    let (mut q, mut kk, v) = (ops.upload(&values(q_len, 1.0)), ops.upload(&values(kv_len, 1.0)), ops.upload(&values(kv_len, 1.0)));
    ops.rope_fwd(&mut q, &pos_buf, RopeShape { tokens: t, heads, head_dim }, 500_000.0);
    ops.rope_fwd(&mut kk, &pos_buf, RopeShape { tokens: t, heads: kv_heads, head_dim }, 500_000.0);
    read("rope q", &q, q_len);
    let shape = AttentionShape::new(batch, seq, heads, kv_heads, head_dim);
    let (mut o, mut lse) = (ops.zeros(q_len), ops.zeros(t * heads));
    ops.attention_fwd(&q, &kk, &v, &doc_buf, &mut o, &mut lse, shape);
    read("attention out", &o, q_len);
    let dout = ops.upload(&values(q_len, 1.0));
    let (mut dq, mut dk, mut dv) = (ops.zeros(q_len), ops.zeros(kv_len), ops.zeros(kv_len));
    ops.attention_bwd(&q, &kk, &v, &doc_buf, &o, &lse, &dout, &mut dq, &mut dk, &mut dv, shape);
    read("attention dk", &dk, kv_len);
    read("attention dv", &dv, kv_len);
    ops.rope_bwd(&mut dq, &pos_buf, RopeShape { tokens: t, heads, head_dim }, 500_000.0);
    read("attention dq, rope backward", &dq, q_len);

    let len = 1001;
    let (gate, up, dh) = (ops.upload(&values(len, 4.0)), ops.upload(&values(len, 2.0)), ops.upload(&values(len, 1.0)));
    let (mut h, mut dgate, mut dup) = (ops.zeros(len), ops.zeros(len), ops.zeros(len));
    ops.swiglu_fwd(&gate, &up, &mut h, len);
    ops.swiglu_bwd(&gate, &up, &dh, &mut dgate, &mut dup, len);
    read("swiglu h", &h, len);
    read("swiglu dgate", &dgate, len);
    read("swiglu dup", &dup, len);

    let (vocab, dim) = (300, 40);
    let emb = EmbeddingShape { tokens: t, vocab, dim };
    let tokens: Vec<u32> = (0..t).map(|i| (i * 7 % 50) as u32).collect();
    let token_buf = ops.upload_idx(&tokens);
    let table = ops.upload(&values(vocab * dim, 1.0));
    let mut rows_out = ops.zeros(t * dim);
    ops.embedding_fwd(&table, &token_buf, &mut rows_out, emb);
    read("embedding rows", &rows_out, t * dim);
    let mut dtable = ops.upload(&values(vocab * dim, 0.1));
    ops.embedding_bwd(&ops.upload(&values(t * dim, 1.0)), &token_buf, &mut dtable, emb);
    read("embedding dtable (+=)", &dtable, vocab * dim);

    let ce = CrossEntropyShape { tokens: t, vocab };
    let mut logits = ops.upload(&values(t * vocab, 8.0));
    let targets: Vec<u32> = (0..t).map(|i| (i * 13 % vocab) as u32).collect();
    let weights: Vec<f32> = (0..t).map(|i| [1.0, 0.0, 0.5, 2.0][i % 4]).collect();
    let (target_buf, weight_buf) = (ops.upload_idx(&targets), ops.upload(&weights));
    let mut losses = ops.zeros(t);
    ops.cross_entropy(&mut logits, &target_buf, &weight_buf, &mut losses, ce, 1e-3, 0.01);
    read("cross entropy dlogits", &logits, t * vocab);
    read("cross entropy losses", &losses, t);
    let loss_sum = ops.sum(&losses) as f32;

    let mut e = ops.upload(&values(len, 1.0));
    ops.scale(&mut e, -0.5);
    ops.add_assign(&mut e, &gate);
    read("scale, add_assign", &e, len);
    ops.copy(&up, &mut e);
    read("copy", &e, len);
    ops.fill(&mut e, 0.375);
    read("fill", &e, len);
    out.push(("sum of losses".into(), vec![loss_sum]));
    out
}

/// Every op of CudaOps against CpuOps<f64> on the same bf16-representable inputs: 1e-2
/// relative L2 (what the kernels reach on their own; the op layer adds only dtype bookkeeping).
#[test]
fn cuda_ops_each_op_matches_cpu() {
    let Some(ops) = cuda_ops_or_skip() else { return };
    let got = every_op(&ops, 71);
    let want = every_op(&CpuOps::<f64>::new(), 71);
    assert_eq!(got.len(), want.len());
    for ((name, g), (_, w)) in got.iter().zip(&want) {
        assert_close(&format!("CudaOps {name}"), g, &w.iter().map(|&x| x as f64).collect::<Vec<_>>(), BF16_REL_L2);
    }
}

/// The harness of `cuda_ops_each_op_matches_cpu` on two CPU precisions (runs everywhere): its
/// shapes are consistent, every output is finite and non-zero, and f32 meets the bound easily.
#[test]
fn every_op_harness_on_cpu_backends() {
    let got = every_op(&CpuOps::<f32>::new(), 71);
    let want = every_op(&CpuOps::<f64>::new(), 71);
    for ((name, g), (_, w)) in got.iter().zip(&want) {
        assert_close(&format!("CpuOps<f32> {name}"), g, &w.iter().map(|&x| x as f64).collect::<Vec<_>>(), 1e-5);
    }
}

/// A model on `ops` and a CPU f32 model holding the same parameters (the first model's values,
/// bf16-rounded on the CUDA backend).
fn model_pair<O: Ops>(ops: O, config: ModelConfig) -> (Model<O>, Model<CpuOps<f32>>) {
    let tested = Model::new(config.clone(), ops, 7).expect("model");
    let mut cpu = Model::new(config, CpuOps::<f32>::new(), 7).expect("cpu model");
    for spec in tested.param_specs() {
        let mut values = vec![0.0; spec.numel()];
        tested.read_param(&spec.name, &mut values).expect("read param");
        cpu.write_param(&spec.name, &values).expect("write param");
    }
    (tested, cpu)
}

fn rel_l2_vs(what: &str, got: &[f32], want: &[f32]) -> f64 {
    rel_l2(what, got, &want.iter().map(|&w| w as f64).collect::<Vec<_>>())
}

/// One forward/backward of the whole model on `ops` against CpuOps<f32>: loss within 0.5% and
/// every parameter gradient within 5% relative L2. (bf16 activations put single ops near
/// 0.4%; two layers of backward compound that to ~1-2%.)
fn check_forward_backward<O: Ops>(ops: O, tie: bool) {
    check_config_forward_backward(ops, gpu_tiny_config(tie), &format!("tied {tie}"));
}

/// [`check_forward_backward`] for `config` (the recipe switches: Mix-LN, MTP heads), the MTP
/// loss held to the next-token loss's tolerance.
fn check_config_forward_backward<O: Ops>(ops: O, config: ModelConfig, label: &str) {
    check_chunked_forward_backward(ops, config, None, label);
}

/// [`check_config_forward_backward`] with the tested model's LM head chunked to `head_chunk`
/// tokens (the CPU model unchunked).
fn check_chunked_forward_backward<O: Ops>(ops: O, config: ModelConfig, head_chunk: Option<usize>, label: &str) {
    let (mut tested, mut cpu) = model_pair(ops, config);
    if let Some(chunk) = head_chunk {
        tested.set_head_chunk_tokens(chunk);
    }
    let batch = packed_batch(3, cpu.config().vocab);
    let grad_scale = 1.0 / batch.loss_weight_sum() as f32;
    tested.zero_grads();
    cpu.zero_grads();
    let loss = tested.forward_backward(&batch, grad_scale).expect("forward_backward");
    let cpu_loss = cpu.forward_backward(&batch, grad_scale).expect("cpu forward_backward");
    let loss_err = (loss.mean() - cpu_loss.mean()).abs() / cpu_loss.mean();
    println!("{label}: loss {:.6} cpu {:.6}: relative L2 error {loss_err:.3e}", loss.mean(), cpu_loss.mean());
    assert!(loss_err < 5e-3, "{label}: loss differs by {loss_err:.3e} (relative)");
    assert!((loss.weight - cpu_loss.weight).abs() < 1e-6, "{label}: loss weight sums differ");
    if cpu.config().mtp_depth > 0 {
        let mtp_err = (loss.mtp_mean() - cpu_loss.mtp_mean()).abs() / cpu_loss.mtp_mean();
        println!("{label}: mtp loss {:.6} cpu {:.6}: relative error {mtp_err:.3e}", loss.mtp_mean(), cpu_loss.mtp_mean());
        assert!(mtp_err < 5e-3, "{label}: MTP loss differs by {mtp_err:.3e} (relative)");
    }
    for spec in cpu.param_specs() {
        let (mut g, mut c) = (vec![0.0; spec.numel()], vec![0.0; spec.numel()]);
        tested.read_grad(&spec.name, &mut g).expect("read grad");
        cpu.read_grad(&spec.name, &mut c).expect("read grad");
        let err = rel_l2_vs(&spec.name, &g, &c);
        println!("{label}: grad {}: relative L2 error {err:.3e}", spec.name);
        assert!(err < 5e-2, "{label}: gradient of {} differs by {err:.3e} relative L2", spec.name);
    }
}

/// The recipe switches that change the model, on the tiny GPU shape: Mix-LN (first half of the
/// layers post-LN), DeepNorm and MTP heads of depth 1 and 2 (tied and untied).
fn switch_configs() -> Vec<(String, ModelConfig)> {
    let mut out = vec![
        ("mixln".to_string(), ModelConfig { norm: NormPlacement::MixLn, mixln_post_fraction: 0.5, ..gpu_tiny_config(false) }),
        ("deepnorm".to_string(), ModelConfig { norm: NormPlacement::DeepNorm, ..gpu_tiny_config(false) }),
    ];
    for (depth, tie) in [(1, false), (2, true)] {
        out.push((format!("mtp depth {depth}, tied {tie}"), ModelConfig { mtp_depth: depth, ..gpu_tiny_config(tie) }));
    }
    out
}

#[test]
fn cuda_ops_recipe_switches_match_cpu() {
    for (label, config) in switch_configs() {
        let Some(ops) = cuda_ops_or_skip() else { return };
        CudaOps::check_config(&config).expect("config supported by the kernels");
        check_config_forward_backward(ops, config, &label);
    }
}

/// The LM head chunked over tokens (50-token chunks of the 192-token batch, the last one
/// padded), plain and with MTP heads, on `CudaOps` against the unchunked CPU model.
#[test]
fn cuda_ops_chunked_head_matches_cpu() {
    for (label, config) in [("chunked head", gpu_tiny_config(false)), ("chunked head, mtp 1", ModelConfig { mtp_depth: 1, ..gpu_tiny_config(true) })] {
        let Some(ops) = cuda_ops_or_skip() else { return };
        check_chunked_forward_backward(ops, config, Some(50), label);
    }
}

#[test]
fn chunked_head_harness_on_cpu_f64() {
    check_chunked_forward_backward(CpuOps::<f64>::new(), gpu_tiny_config(false), Some(50), "chunked head");
}

/// The switch check above on CpuOps<f64> in place of the CUDA backend: the harness itself holds
/// for an exact backend.
#[test]
fn recipe_switches_harness_on_cpu_f64() {
    for (label, config) in switch_configs() {
        check_config_forward_backward(CpuOps::<f64>::new(), config, &label);
    }
}

/// `Model::log_probs` on `ops` against CpuOps<f32> at 45 random (token, id) queries of a packed
/// batch (bf16 logits: each value within 0.05 + 2% of the CPU's, their mean error below 0.02),
/// the same values again with a different query count (the scoring buffers are resized), and a
/// full `forward` afterwards (its workspace needs the logits `log_probs` leaves out) repeats the
/// one before bitwise.
fn check_log_probs<O: Ops>(ops: O) {
    let (mut tested, mut cpu) = model_pair(ops, gpu_tiny_config(false));
    let vocab = cpu.config().vocab;
    let batch = packed_batch(9, vocab);
    let mut rng = SplitMix64::new(10);
    let queries: Vec<(usize, u32)> = (0..45).map(|_| (rng.below(batch.num_tokens() as u64) as usize, rng.below(vocab as u64) as u32)).collect();
    let before = tested.forward(&batch).expect("forward");
    let got = tested.log_probs(&batch, &queries).expect("log_probs");
    let want = cpu.log_probs(&batch, &queries).expect("cpu log_probs");
    let mut sum = 0.0;
    for ((q, g), w) in queries.iter().zip(&got).zip(&want) {
        assert!((g - w).abs() <= 0.05 + 0.02 * w.abs(), "query {q:?}: {g} vs cpu {w}");
        sum += (g - w).abs();
    }
    let mean = sum / queries.len() as f64;
    println!("log_probs: mean |tested - cpu| {mean:.3e} over {} queries", queries.len());
    assert!(mean < 0.02, "mean error {mean}");
    let again = tested.log_probs(&batch, &queries[..7]).expect("log_probs");
    assert_eq!(again, got[..7], "same queries, fewer of them: same values");
    assert_eq!(tested.forward(&batch).expect("forward"), before, "forward after log_probs");
}

#[test]
fn cuda_ops_log_probs_match_cpu() {
    let Some(ops) = cuda_ops_or_skip() else { return };
    check_log_probs(ops);
}

/// The same check with CpuOps<f64> as the tested backend, so it runs without a device.
#[test]
fn log_probs_check_on_cpu_f64() {
    check_log_probs(CpuOps::<f64>::new());
}

/// 50 AdamW steps (host optimizer, lr 1e-3) on one repeated batch from the same start on `ops`
/// and on CpuOps<f32>: the loss curves (about 6.0 -> 0.2 in exact arithmetic) agree at every step
/// within |diff| <= 5% of the CPU loss + 0.05, and both learn (final loss below 60% of the
/// first). Why that bound: one step differs by ~0.1% (bf16 activations); bf16 parameters and
/// gradients make the two trajectories drift apart slowly, by a few percent over 50 steps where
/// the loss moves ~0.1 per step; a wrong gradient anywhere breaks the curve by far more.
/// Returns `allocations(ops)` after steps 2 and 50.
fn check_loss_curve<O: Ops>(ops: O, allocations: impl Fn(&O) -> u64) -> (u64, u64) {
    let (mut tested, mut cpu) = model_pair(ops, gpu_tiny_config(false));
    let batch = packed_batch(5, cpu.config().vocab);
    let grad_scale = 1.0 / batch.loss_weight_sum() as f32;
    let specs = cpu.param_specs().to_vec();
    let infos = kormo_cuda::optim::param_infos(&specs);
    let start: Vec<Vec<f32>> = specs
        .iter()
        .map(|s| {
            let mut v = vec![0.0; s.numel()];
            cpu.read_param(&s.name, &mut v).expect("read param");
            v
        })
        .collect();
    let new_adamw = || AdamW::new(AdamWConfig::default(), infos.clone()).expect("adamw");
    let (mut tested_opt, mut cpu_opt) = ((new_adamw(), start.clone()), (new_adamw(), start));
    let mut grads: Vec<Vec<f32>> = specs.iter().map(|s| vec![0.0; s.numel()]).collect();
    let (mut first, mut last, mut worst, mut after_step_2) = (0.0, 0.0, 0.0f64, 0);
    for step in 1..=50 {
        tested.zero_grads();
        cpu.zero_grads();
        let loss = tested.forward_backward(&batch, grad_scale).expect("step").mean();
        let cpu_loss = cpu.forward_backward(&batch, grad_scale).expect("cpu step").mean();
        println!("step {step}: loss {loss:.5} cpu {cpu_loss:.5}");
        let diff = (loss - cpu_loss).abs();
        assert!(diff <= 0.05 * cpu_loss + 0.05, "step {step}: loss {loss} vs cpu {cpu_loss}");
        worst = worst.max(diff / cpu_loss);
        if step == 1 {
            first = cpu_loss;
        }
        last = cpu_loss;
        if step == 2 {
            after_step_2 = allocations(tested.ops());
        }
        // Host AdamW on each model's own gradients; the new parameters go back into the model.
        for spec_grad in specs.iter().zip(grads.iter_mut()) {
            tested.read_grad(&spec_grad.0.name, spec_grad.1).expect("read grad");
        }
        tested_opt.0.step(&mut tested_opt.1, &grads, 1e-3).expect("adamw step");
        for (spec, values) in specs.iter().zip(&tested_opt.1) {
            tested.write_param(&spec.name, values).expect("write param");
        }
        for spec_grad in specs.iter().zip(grads.iter_mut()) {
            cpu.read_grad(&spec_grad.0.name, spec_grad.1).expect("read grad");
        }
        cpu_opt.0.step(&mut cpu_opt.1, &grads, 1e-3).expect("adamw step");
        for (spec, values) in specs.iter().zip(&cpu_opt.1) {
            cpu.write_param(&spec.name, values).expect("write param");
        }
    }
    println!("loss curves: {first:.4} -> {last:.4}, worst relative difference {worst:.3e}");
    assert!(last < 0.6 * first, "the model did not learn: loss {first} -> {last}");
    (after_step_2, allocations(tested.ops()))
}

/// [`check_loss_curve`] on the CUDA backend, which also must not allocate after step 2.
#[test]
fn cuda_ops_loss_curve_tracks_cpu() {
    let Some(ops) = cuda_ops_or_skip() else { return };
    CudaOps::check_config(&gpu_tiny_config(false)).expect("config supported by the kernels");
    let (after_step_2, at_end) = check_loss_curve(ops, |ops| ops.memory().allocations);
    let memory_note = "steps 3..50 allocated device memory";
    assert_eq!(at_end, after_step_2, "{memory_note}");
}

/// The two model-level checks above, run here on CpuOps<f64> in place of the CUDA backend (no
/// GPU needed): the harness itself is sound, the batch and learning rate make the model learn
/// within 50 steps, and the tolerances hold for an exact backend.
#[test]
fn model_checks_harness_on_cpu_f64() {
    check_forward_backward(CpuOps::<f64>::new(), false);
    check_forward_backward(CpuOps::<f64>::new(), true);
    check_loss_curve(CpuOps::<f64>::new(), |_| 0);
}

/// DeviceAdamW against kormo_optim's host AdamW on clip_grad_norm-ed gradients: three steps
/// (clipping active in the first two, off in the third), each as clip_grad_norm then apply;
/// the f32 master weights' cumulative update within 1e-3 relative L2, the bf16 parameters
/// exactly the rounded masters, the pre-clip norm within 1e-5, the moments within 1e-4.
/// Measuring alone changes no weights nor the step count, and an apply without a fresh
/// measurement is refused.
#[test]
fn device_adamw_matches_kormo_optim() {
    let Some(ops) = cuda_ops_or_skip() else { return };
    let mut rng = SplitMix64::new(81);
    let infos = vec![
        ParamInfo { name: "w".into(), numel: 10_007, weight_decay: true },
        ParamInfo { name: "norm".into(), numel: 37, weight_decay: false },
    ];
    let initial: Vec<Vec<f32>> = infos.iter().map(|p| rng.vec(p.numel, 1.0)).collect();
    let initial_slices: Vec<&[f32]> = initial.iter().map(|v| v.as_slice()).collect();
    let config = AdamWConfig::default();
    let mut device = DeviceAdamW::new(&ops, config.clone(), infos.clone(), &initial_slices).expect("device adamw");
    let mut host = AdamW::new(config, infos.clone()).expect("host adamw");
    let mut host_params = initial.clone();
    let mut params: Vec<CudaBuf> = initial.iter().map(|v| ops.upload(v)).collect();
    for step in 1..=3 {
        let g: Vec<Vec<f32>> = infos.iter().map(|p| rng.vec(p.numel, 2.0)).collect();
        let mut grads: Vec<CudaBuf> = g.iter().map(|v| ops.upload_f32(v)).collect();
        let max_norm = (step < 3).then(|| kormo_optim::grad_norm(&g) / 2.0);
        let device_norm = device.clip_grad_norm(&ops, &mut grads, max_norm).expect("device grad norm");
        let mut clipped = g.clone();
        let norm = kormo_optim::clip_grad_norm(&mut clipped, max_norm.unwrap_or(f64::INFINITY));
        let norm_err = (device_norm - norm).abs() / norm;
        assert!(norm_err < 1e-5, "step {step}: grad norm relative error {norm_err:.3e}");
        if step == 2 {
            // A skipped update (the outlier guard's case): measuring changed nothing, so the
            // masters still hold step 1's update and the step count stays 1; the gradients are
            // measured again below, as the next training step would.
            assert_eq!(device.step_count(), 1);
            let master = device.master(&ops, 0);
            let update: Vec<f32> = master.iter().zip(&initial[0]).map(|(m, s)| m - s).collect();
            let want: Vec<f64> = host_params[0].iter().zip(&initial[0]).map(|(&h, &s)| h as f64 - s as f64).collect();
            assert_close("step 2 before its update: w master", &update, &want, 1e-3);
            // (f32 atomics sum in any order: equal up to rounding.)
            let again = device.clip_grad_norm(&ops, &mut grads, max_norm).expect("grad norm again");
            assert!((again - device_norm).abs() <= 1e-5 * device_norm, "{again} vs {device_norm}");
        }
        device.apply(&ops, &mut params, &mut grads, 1e-2).expect("device update");
        assert!(
            device.apply(&ops, &mut params, &mut grads, 1e-2).is_err(),
            "a second update needs its own clip_grad_norm"
        );
        host.step(&mut host_params, &clipped, 1e-2).expect("host step");
        assert_eq!(device.step_count(), step);
        for (i, info) in infos.iter().enumerate() {
            let master = device.master(&ops, i);
            let update: Vec<f32> = master.iter().zip(&initial[i]).map(|(m, s)| m - s).collect();
            let want: Vec<f64> = host_params[i].iter().zip(&initial[i]).map(|(&h, &s)| h as f64 - s as f64).collect();
            assert_close(&format!("step {step}: {} master update", info.name), &update, &want, 1e-3);
            let mut weights = vec![0.0; info.numel];
            ops.read(&params[i], &mut weights);
            assert!(
                weights.iter().zip(&master).all(|(&w, &m)| w == bf16::to_f32(bf16::from_f32(m))),
                "step {step}: {} bf16 weights must be the rounded master",
                info.name
            );
        }
    }
    for (name, want) in host.state_tensors() {
        let got = device.state_tensor(&ops, &name).expect("state tensor");
        assert_close(&format!("state {name}"), &got, &to_f64(want), 1e-4);
    }
}
