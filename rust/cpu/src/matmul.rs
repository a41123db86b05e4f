//! GEMM through matrixmultiply (sgemm/dgemm). Transposes are expressed as strides, so no
//! operand is ever copied. matrixmultiply threads internally (MATMUL_NUM_THREADS, at most 4)
//! and gives each output block to one thread, so results are deterministic.

use kormo_model::MatmulShape;

use crate::float::Float;

/// `C (= or +=) alpha * op(A) · op(B)`, see [`MatmulShape`].
pub fn matmul<T: Float>(a: &[T], b: &[T], c: &mut [T], s: MatmulShape) {
    let MatmulShape { m, n, k, trans_a, trans_b, accumulate, alpha } = s;
    assert_eq!(a.len(), m * k, "matmul: A has {} elements, shape {s:?}", a.len());
    assert_eq!(b.len(), k * n, "matmul: B has {} elements, shape {s:?}", b.len());
    assert_eq!(c.len(), m * n, "matmul: C has {} elements, shape {s:?}", c.len());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(T::ZERO);
        }
        return;
    }
    // A[i, p] lives at i*rsa + p*csa; stored [m, k] normally, [k, m] when transposed.
    let (rsa, csa) = if trans_a { (1, m as isize) } else { (k as isize, 1) };
    let (rsb, csb) = if trans_b { (1, k as isize) } else { (n as isize, 1) };
    let beta = if accumulate { T::ONE } else { T::ZERO };
    // SAFETY: the lengths were checked above against the strides' extents, and `c` is a
    // unique borrow that cannot overlap `a` or `b`.
    unsafe {
        T::gemm(
            m,
            k,
            n,
            T::from_f32(alpha),
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            rsb,
            csb,
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain triple loop over logical indices.
    fn reference(a: &[f64], b: &[f64], c: &mut [f64], s: MatmulShape) {
        for i in 0..s.m {
            for j in 0..s.n {
                let mut acc = 0.0;
                for p in 0..s.k {
                    let x = if s.trans_a { a[p * s.m + i] } else { a[i * s.k + p] };
                    let y = if s.trans_b { b[j * s.k + p] } else { b[p * s.n + j] };
                    acc += x * y;
                }
                let out = &mut c[i * s.n + j];
                *out = s.alpha as f64 * acc + if s.accumulate { *out } else { 0.0 };
            }
        }
    }

    #[test]
    fn all_transpose_and_accumulate_combinations_match_reference() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.91).cos()).collect();
        let c0: Vec<f64> = (0..m * n).map(|i| i as f64 * 0.1 - 1.0).collect();
        for trans_a in [false, true] {
            for trans_b in [false, true] {
                for accumulate in [false, true] {
                    let s = MatmulShape { m, n, k, trans_a, trans_b, accumulate, alpha: 0.5 };
                    let mut want = c0.clone();
                    reference(&a, &b, &mut want, s);
                    let mut got = c0.clone();
                    matmul(&a, &b, &mut got, s);
                    for (g, w) in got.iter().zip(&want) {
                        assert!((g - w).abs() < 1e-12, "{s:?}: {g} vs {w}");
                    }
                }
            }
        }
    }
}
