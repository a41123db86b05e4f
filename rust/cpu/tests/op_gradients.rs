//! Every CPU op against a plain reference (forward) and central finite differences in f64
//! (backward), on random inputs with odd shapes. Each backward is checked as the gradient of
//! the scalar `sum(output * R)` for a random `R`.

mod common;

use common::{check_gradient, random_vec, rng, weighted_sum};
use kormo_cpu::CpuOps;
use kormo_model::{AttentionShape, CrossEntropyShape, EmbeddingShape, Ops, RopeShape, RowsShape};

/// Odd thread count so work splitting is exercised off the even path.
fn ops() -> CpuOps<f64> {
    CpuOps::with_threads(3)
}

#[test]
fn rmsnorm_forward_matches_reference_and_backward_matches_fd() {
    let ops = ops();
    let mut r = rng(1);
    let s = RowsShape { rows: 5, dim: 7 };
    let eps = 1e-5;
    let x = random_vec(&mut r, 35, 1.0);
    let mut w: Vec<f64> = random_vec(&mut r, 7, 0.3).iter().map(|v| 1.0 + v).collect();
    let probe = random_vec(&mut r, 35, 1.0);
    let forward = |x: &[f64], w: &[f64]| {
        let (mut y, mut inv) = (vec![0.0; 35], vec![0.0; 5]);
        ops.rmsnorm_fwd(&x.to_vec(), &w.to_vec(), &mut y, &mut inv, s, eps);
        (y, inv)
    };
    let (y, inv) = forward(&x, &w);
    for row in 0..5 {
        let xr = &x[row * 7..][..7];
        let rms = (xr.iter().map(|v| v * v).sum::<f64>() / 7.0 + eps as f64).sqrt();
        assert!((inv[row] - 1.0 / rms).abs() < 1e-12);
        for j in 0..7 {
            assert!((y[row * 7 + j] - xr[j] / rms * w[j]).abs() < 1e-12);
        }
    }
    // Start from non-zero accumulators: both outputs are `+=`.
    let dx0 = random_vec(&mut r, 35, 1.0);
    let dw0 = random_vec(&mut r, 7, 1.0);
    let (mut dx, mut dw) = (dx0.clone(), dw0.clone());
    ops.rmsnorm_bwd(&x, &w, &inv, &probe, &mut dx, &mut dw, s);
    let dx: Vec<f64> = dx.iter().zip(&dx0).map(|(a, b)| a - b).collect();
    let dw: Vec<f64> = dw.iter().zip(&dw0).map(|(a, b)| a - b).collect();
    let w_fixed = w.clone();
    check_gradient("rmsnorm dx", &mut x.clone(), &dx, None, |x| weighted_sum(&forward(x, &w_fixed).0, &probe));
    check_gradient("rmsnorm dweight", &mut w, &dw, None, |w| weighted_sum(&forward(&x, w).0, &probe));
}

#[test]
fn rope_matches_rotate_half_formula_and_backward_is_adjoint() {
    let ops = ops();
    let mut r = rng(2);
    let s = RopeShape { tokens: 4, heads: 3, head_dim: 6 };
    let theta = 10_000.0;
    let positions = vec![0u32, 7, 1000, 3];
    let n = 4 * 3 * 6;
    let mut x = random_vec(&mut r, n, 1.0);
    let probe = random_vec(&mut r, n, 1.0);
    let forward = |x: &[f64]| {
        let mut y = x.to_vec();
        ops.rope_fwd(&mut y, &positions, s, theta);
        y
    };
    let y = forward(&x);
    for (t, &pos) in positions.iter().enumerate() {
        for h in 0..3 {
            let base = (t * 3 + h) * 6;
            for i in 0..3 {
                let angle = pos as f64 * (theta as f64).powf(-((2 * i) as f64) / 6.0);
                let (a, b) = (x[base + i], x[base + i + 3]);
                assert!((y[base + i] - (a * angle.cos() - b * angle.sin())).abs() < 1e-12);
                assert!((y[base + i + 3] - (b * angle.cos() + a * angle.sin())).abs() < 1e-12);
            }
        }
    }
    let mut grad = probe.clone();
    ops.rope_bwd(&mut grad, &positions, s, theta);
    check_gradient("rope dx", &mut x, &grad, None, |x| weighted_sum(&forward(x), &probe));
}

#[test]
fn rope_scores_depend_only_on_relative_position() {
    let ops = ops();
    let mut r = rng(3);
    let s = RopeShape { tokens: 1, heads: 1, head_dim: 8 };
    let (q, k) = (random_vec(&mut r, 8, 1.0), random_vec(&mut r, 8, 1.0));
    let score = |m: u32, n: u32| {
        let (mut qm, mut kn) = (q.clone(), k.clone());
        ops.rope_fwd(&mut qm, &vec![m], s, 500_000.0);
        ops.rope_fwd(&mut kn, &vec![n], s, 500_000.0);
        weighted_sum(&qm, &kn)
    };
    assert!((score(10, 3) - score(107, 100)).abs() < 1e-10);
    assert!((score(10, 3) - score(10, 4)).abs() > 1e-6);
}

/// Row 0 holds three contiguous documents; row 1 interleaves two documents to show that
/// visibility is decided per pair of tokens, not by contiguous ranges. The cross-lingual case
/// has the same documents with languages 0, 1, 0 (row 0) and 0, 1 (row 1) in bit 31.
fn attention_cases() -> [(AttentionShape, Vec<u32>); 2] {
    let s = AttentionShape::new(2, 5, 4, 2, 3);
    const L: u32 = 1 << 31;
    [(s, vec![0, 0, 1, 1, 2, 5, 6, 5, 6, 6]), (AttentionShape { cross_lingual: true, ..s }, vec![0, 0, 1 | L, 1 | L, 2, 5, 6 | L, 5, 6 | L, 6 | L])]
}

/// Plain attention with an explicit mask matrix.
fn attention_reference(s: AttentionShape, q: &[f64], k: &[f64], v: &[f64], doc: &[u32]) -> (Vec<f64>, Vec<f64>) {
    let (hd, nh, nkv) = (s.head_dim, s.heads, s.kv_heads);
    let mut out = vec![0.0; s.tokens() * nh * hd];
    let mut lse = vec![0.0; s.tokens() * nh];
    for b in 0..s.batch {
        for i in 0..s.seq {
            for h in 0..nh {
                let g = h / (nh / nkv);
                let ti = b * s.seq + i;
                let mut scores = Vec::new();
                for j in 0..s.seq {
                    let tj = b * s.seq + j;
                    let other_language = s.cross_lingual && doc[tj] >> 31 != doc[ti] >> 31;
                    if j <= i && (doc[tj] == doc[ti] || other_language) {
                        let dot: f64 = (0..hd).map(|e| q[(ti * nh + h) * hd + e] * k[(tj * nkv + g) * hd + e]).sum();
                        scores.push((tj, dot / (hd as f64).sqrt()));
                    }
                }
                let z: f64 = scores.iter().map(|(_, sc)| sc.exp()).sum();
                lse[ti * nh + h] = z.ln();
                for (tj, sc) in scores {
                    for e in 0..hd {
                        out[(ti * nh + h) * hd + e] += sc.exp() / z * v[(tj * nkv + g) * hd + e];
                    }
                }
            }
        }
    }
    (out, lse)
}

#[test]
fn attention_forward_matches_masked_reference() {
    let ops = ops();
    let mut outputs = Vec::new();
    for (s, doc) in attention_cases() {
        let mut r = rng(4);
        let q = random_vec(&mut r, s.tokens() * 12, 1.5);
        let k = random_vec(&mut r, s.tokens() * 6, 1.5);
        let v = random_vec(&mut r, s.tokens() * 6, 1.0);
        let (mut out, mut lse) = (vec![0.0; q.len()], vec![0.0; s.tokens() * 4]);
        ops.attention_fwd(&q, &k, &v, &doc, &mut out, &mut lse, s);
        let (want_out, want_lse) = attention_reference(s, &q, &k, &v, &doc);
        for (a, b) in out.iter().zip(&want_out).chain(lse.iter().zip(&want_lse)) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b} (cross-lingual: {})", s.cross_lingual);
        }
        outputs.push(out);
    }
    // Same inputs, so the cross-lingual keys must have changed something.
    assert!(outputs[0].iter().zip(&outputs[1]).any(|(a, b)| (a - b).abs() > 1e-6), "XLDA saw nothing more");
}

#[test]
fn attention_backward_matches_fd_for_q_k_v() {
    for (s, doc) in attention_cases() {
        attention_backward_case(s, &doc);
    }
}

fn attention_backward_case(s: AttentionShape, doc: &[u32]) {
    let ops = ops();
    let mut r = rng(5);
    let doc = doc.to_vec();
    let mut q = random_vec(&mut r, s.tokens() * 12, 1.5);
    let mut k = random_vec(&mut r, s.tokens() * 6, 1.5);
    let mut v = random_vec(&mut r, s.tokens() * 6, 1.0);
    let probe = random_vec(&mut r, q.len(), 1.0);
    let forward = |q: &[f64], k: &[f64], v: &[f64]| {
        let (mut out, mut lse) = (vec![0.0; q.len()], vec![0.0; s.tokens() * 4]);
        ops.attention_fwd(&q.to_vec(), &k.to_vec(), &v.to_vec(), &doc, &mut out, &mut lse, s);
        (out, lse)
    };
    let (out, lse) = forward(&q, &k, &v);
    // Outputs are overwritten, so start them dirty.
    let (mut dq, mut dk, mut dv) = (vec![9.0; q.len()], vec![9.0; k.len()], vec![9.0; v.len()]);
    ops.attention_bwd(&q, &k, &v, &doc, &out, &lse, &probe, &mut dq, &mut dk, &mut dv, s);
    let (k0, v0, q0) = (k.clone(), v.clone(), q.clone());
    check_gradient("attention dq", &mut q, &dq, None, |q| weighted_sum(&forward(q, &k0, &v0).0, &probe));
    check_gradient("attention dk", &mut k, &dk, None, |k| weighted_sum(&forward(&q0, k, &v0).0, &probe));
    check_gradient("attention dv", &mut v, &dv, None, |v| weighted_sum(&forward(&q0, &k0, v).0, &probe));
}

#[test]
fn swiglu_forward_and_backward() {
    let ops = ops();
    let mut r = rng(6);
    let n = 23;
    let mut gate = random_vec(&mut r, n, 3.0);
    let mut up = random_vec(&mut r, n, 2.0);
    let probe = random_vec(&mut r, n, 1.0);
    let forward = |g: &[f64], u: &[f64]| {
        let mut h = vec![0.0; n];
        ops.swiglu_fwd(&g.to_vec(), &u.to_vec(), &mut h, n);
        h
    };
    let h = forward(&gate, &up);
    for i in 0..n {
        assert!((h[i] - gate[i] / (1.0 + (-gate[i]).exp()) * up[i]).abs() < 1e-12);
    }
    let (mut dg, mut du) = (vec![0.0; n], vec![0.0; n]);
    ops.swiglu_bwd(&gate, &up, &probe, &mut dg, &mut du, n);
    let (g0, u0) = (gate.clone(), up.clone());
    check_gradient("swiglu dgate", &mut gate, &dg, None, |g| weighted_sum(&forward(g, &u0), &probe));
    check_gradient("swiglu dup", &mut up, &du, None, |u| weighted_sum(&forward(&g0, u), &probe));
}

#[test]
fn embedding_gathers_rows_and_scatter_adds_repeats() {
    let ops = ops();
    let mut r = rng(7);
    let s = EmbeddingShape { tokens: 6, vocab: 5, dim: 3 };
    let tokens = vec![4u32, 1, 4, 0, 4, 2];
    let mut table = random_vec(&mut r, 15, 1.0);
    let probe = random_vec(&mut r, 18, 1.0);
    let forward = |table: &[f64]| {
        let mut out = vec![0.0; 18];
        ops.embedding_fwd(&table.to_vec(), &tokens, &mut out, s);
        out
    };
    let out = forward(&table);
    for (t, &id) in tokens.iter().enumerate() {
        assert_eq!(&out[t * 3..t * 3 + 3], &table[id as usize * 3..id as usize * 3 + 3]);
    }
    let dtable0 = random_vec(&mut r, 15, 1.0);
    let mut dtable = dtable0.clone();
    ops.embedding_bwd(&probe, &tokens, &mut dtable, s);
    let grad: Vec<f64> = dtable.iter().zip(&dtable0).map(|(a, b)| a - b).collect();
    // Row 3 is never looked up: its gradient must be exactly zero.
    assert!(grad[9..12].iter().all(|&g| g == 0.0));
    let used: Vec<usize> = (0..15).filter(|i| i / 3 != 3).collect();
    check_gradient("embedding dtable", &mut table, &grad, Some(&used), |t| weighted_sum(&forward(t), &probe));
}

#[test]
fn cross_entropy_loss_weights_z_loss_and_gradient() {
    let ops = ops();
    let mut r = rng(8);
    let s = CrossEntropyShape { tokens: 5, vocab: 7 };
    let mut logits = random_vec(&mut r, 35, 3.0);
    // Token 2 is ignored; its target is out of range to prove it is never read.
    let targets = vec![3u32, 0, u32::MAX, 6, 3];
    let weights = vec![1.0, 0.5, 0.0, 1.0, 2.0];
    let (z_loss, grad_scale) = (0.01f32, 0.25f32);
    let loss_of = |logits: &[f64], z: f32| {
        let mut l = logits.to_vec();
        let mut losses = vec![0.0; 5];
        ops.cross_entropy(&mut l, &targets, &weights, &mut losses, s, z, 0.0);
        losses
    };
    let losses = loss_of(&logits, z_loss);
    for t in 0..5 {
        let row = &logits[t * 7..][..7];
        let lse = row.iter().map(|z| z.exp()).sum::<f64>().ln();
        let want = if weights[t] == 0.0 {
            0.0
        } else {
            weights[t] * (lse - row[targets[t] as usize] + z_loss as f64 * lse * lse)
        };
        assert!((losses[t] - want).abs() < 1e-12, "token {t}: {} vs {want}", losses[t]);
    }
    let mut grad = logits.clone();
    let mut scratch = vec![0.0; 5];
    ops.cross_entropy(&mut grad, &targets, &weights, &mut scratch, s, z_loss, grad_scale);
    assert!(grad[14..21].iter().all(|&g| g == 0.0), "ignored token has gradient");
    let unscaled: Vec<f64> = grad.iter().map(|g| g / grad_scale as f64).collect();
    let trained: Vec<usize> = (0..35).filter(|i| i / 7 != 2).collect();
    check_gradient("cross-entropy dlogits", &mut logits, &unscaled, Some(&trained), |l| loss_of(l, z_loss).iter().sum());
    // The z-loss term really changes the gradient (so the check above covers it).
    let mut plain = logits.clone();
    ops.cross_entropy(&mut plain, &targets, &weights, &mut scratch, s, 0.0, grad_scale);
    assert!(plain.iter().zip(&grad).any(|(a, b)| (a - b).abs() > 1e-4));
}

#[test]
fn elementwise_ops() {
    let ops = ops();
    let mut x = ops.upload(&[1.0, -2.0, 3.5]);
    ops.scale(&mut x, 2.0);
    assert_eq!(x, vec![2.0, -4.0, 7.0]);
    let y = ops.upload(&[0.5, 0.5, 0.5]);
    ops.add_assign(&mut x, &y);
    assert_eq!(x, vec![2.5, -3.5, 7.5]);
    let mut z = ops.zeros(3);
    ops.copy(&x, &mut z);
    assert_eq!(z, x);
    ops.fill(&mut z, -1.0);
    assert_eq!(z, vec![-1.0; 3]);
    let mut host = [0.0f32; 3];
    ops.read(&x, &mut host);
    assert_eq!(host, [2.5, -3.5, 7.5]);
}

/// Thread-count independence on sizes that split into many work items.
#[test]
fn results_do_not_depend_on_thread_count() {
    let mut r = rng(9);
    let s = RowsShape { rows: 300, dim: 33 };
    let x = random_vec(&mut r, 300 * 33, 1.0);
    let w = random_vec(&mut r, 33, 1.0);
    let dy = random_vec(&mut r, 300 * 33, 1.0);
    let run = |threads| {
        let ops = CpuOps::<f64>::with_threads(threads);
        let (mut y, mut inv) = (vec![0.0; x.len()], vec![0.0; 300]);
        ops.rmsnorm_fwd(&x, &w, &mut y, &mut inv, s, 1e-5);
        let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; 33]);
        ops.rmsnorm_bwd(&x, &w, &inv, &dy, &mut dx, &mut dw, s);
        (y, dx, dw)
    };
    assert_eq!(run(1), run(4));
}
