//! kormo's RoPE is Hugging Face's rotate-half layout, so exported Q/K weights need no row
//! permutation. Checked against the textbook formula written here, and against the
//! interleaved-pair layout (Meta's original Llama code) to show the test can tell them apart.

use kormo_cpu::CpuOps;
use kormo_model::{Ops, RopeShape};

/// `x * cos + rotate_half(x) * sin` with `rotate_half(x) = [-x2, x1]` (transformers' Llama).
fn rotate_half_reference(x: &[f64], pos: f64, theta: f64) -> Vec<f64> {
    let d = x.len();
    let h = d / 2;
    (0..d)
        .map(|j| {
            let i = j % h;
            let angle = pos * theta.powf(-2.0 * i as f64 / d as f64);
            let rotated = if j < h { -x[j + h] } else { x[j - h] };
            x[j] * angle.cos() + rotated * angle.sin()
        })
        .collect()
}

/// Pairs `(2i, 2i + 1)` rotated together.
fn interleaved(x: &[f64], pos: f64, theta: f64) -> Vec<f64> {
    let d = x.len();
    let mut out = x.to_vec();
    for i in 0..d / 2 {
        let angle = pos * theta.powf(-2.0 * i as f64 / d as f64);
        let (a, b) = (x[2 * i], x[2 * i + 1]);
        out[2 * i] = a * angle.cos() - b * angle.sin();
        out[2 * i + 1] = b * angle.cos() + a * angle.sin();
    }
    out
}

#[test]
fn kormo_rope_is_rotate_half() {
    let (heads, head_dim, theta) = (3, 16, 500_000.0f32);
    let positions: Vec<u32> = vec![0, 1, 7, 300, 4095];
    let x: Vec<f64> = (0..positions.len() * heads * head_dim).map(|i| ((i * 37 % 101) as f64 - 50.0) / 25.0).collect();
    let ops = CpuOps::<f64>::with_threads(1);
    let mut buf: Vec<f64> = x.clone();
    ops.rope_fwd(&mut buf, &positions, RopeShape { tokens: positions.len(), heads, head_dim }, theta);
    let mut far_from_interleaved = 0f64;
    for (t, &pos) in positions.iter().enumerate() {
        for h in 0..heads {
            let at = (t * heads + h) * head_dim;
            let input = &x[at..at + head_dim];
            let expected = rotate_half_reference(input, pos as f64, theta as f64);
            for (a, b) in buf[at..at + head_dim].iter().zip(&expected) {
                assert!((a - b).abs() < 1e-12, "position {pos} head {h}: {a} vs {b}");
            }
            let other = interleaved(input, pos as f64, theta as f64);
            far_from_interleaved = expected.iter().zip(&other).map(|(a, b)| (a - b).abs()).fold(far_from_interleaved, f64::max);
        }
    }
    assert!(far_from_interleaved > 0.1, "the two layouts should differ: {far_from_interleaved}");
}
