//! RMSNorm forward and backward (math in [`kormo_model::Ops::rmsnorm_fwd`]).
//!
//! Rows are independent, so both passes split rows across threads; the weight gradient is a sum
//! over rows, computed as per-chunk partials that are added in chunk order (deterministic for
//! any thread count).

use kormo_model::RowsShape;

use crate::float::{dot, Float};
use crate::parallel;

/// Rows per work item; fixed so that the partial sums of the weight gradient do not depend on
/// the thread count.
const ROWS_PER_ITEM: usize = 32;

pub fn rmsnorm_fwd<T: Float>(threads: usize, x: &[T], weight: &[T], y: &mut [T], inv_rms: &mut [T], s: RowsShape, eps: f32) {
    let d = s.dim;
    assert_eq!(x.len(), s.rows * d);
    assert_eq!(y.len(), s.rows * d);
    assert_eq!(inv_rms.len(), s.rows);
    assert_eq!(weight.len(), d);
    let eps = T::from_f32(eps);
    let inv_d = T::from_f64(1.0 / d as f64);
    let items = x.chunks(ROWS_PER_ITEM * d).zip(y.chunks_mut(ROWS_PER_ITEM * d)).zip(inv_rms.chunks_mut(ROWS_PER_ITEM));
    parallel::for_each(parallel::threads_for(threads, x.len()), items, |((x, y), inv_rms)| {
        for ((x, y), r) in x.chunks(d).zip(y.chunks_mut(d)).zip(inv_rms.iter_mut()) {
            *r = T::ONE / (dot(x, x) * inv_d + eps).sqrt();
            for ((yi, &xi), &wi) in y.iter_mut().zip(x).zip(weight) {
                *yi = xi * *r * wi;
            }
        }
    });
}

#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_bwd<T: Float>(
    threads: usize,
    x: &[T],
    weight: &[T],
    inv_rms: &[T],
    dy: &[T],
    dx: &mut [T],
    dweight: &mut [T],
    s: RowsShape,
) {
    let d = s.dim;
    assert_eq!(x.len(), s.rows * d);
    assert_eq!(dy.len(), s.rows * d);
    assert_eq!(dx.len(), s.rows * d);
    assert_eq!(inv_rms.len(), s.rows);
    assert_eq!(weight.len(), d);
    assert_eq!(dweight.len(), d);
    let inv_d = T::from_f64(1.0 / d as f64);
    let items_count = s.rows.div_ceil(ROWS_PER_ITEM);
    let mut partials = vec![T::ZERO; items_count * d];
    let items = x
        .chunks(ROWS_PER_ITEM * d)
        .zip(dy.chunks(ROWS_PER_ITEM * d))
        .zip(dx.chunks_mut(ROWS_PER_ITEM * d))
        .zip(inv_rms.chunks(ROWS_PER_ITEM))
        .zip(partials.chunks_mut(d.max(1)));
    parallel::for_each(parallel::threads_for(threads, x.len()), items, |((((x, dy), dx), inv_rms), dw)| {
        let mut g = vec![T::ZERO; d];
        for (((x, dy), dx), &r) in x.chunks(d).zip(dy.chunks(d)).zip(dx.chunks_mut(d)).zip(inv_rms) {
            // g = dy * weight; n = x * r; dx += r * (g - n * mean(g * n)); dw += dy * n.
            for ((gi, &dyi), &wi) in g.iter_mut().zip(dy).zip(weight) {
                *gi = dyi * wi;
            }
            let mean_gn = dot(&g, x) * r * inv_d;
            for (((dxi, &gi), &xi), (dwi, &dyi)) in dx.iter_mut().zip(&g).zip(x).zip(dw.iter_mut().zip(dy)) {
                let n = xi * r;
                *dxi += r * (gi - n * mean_gn);
                *dwi += dyi * n;
            }
        }
    });
    for partial in partials.chunks(d.max(1)) {
        for (dwi, &p) in dweight.iter_mut().zip(partial) {
            *dwi += p;
        }
    }
}
