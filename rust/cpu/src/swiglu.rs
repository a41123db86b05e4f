//! SwiGLU `h = silu(gate) * up` and its backward (math in [`kormo_model::Ops::swiglu_fwd`]).

use crate::float::Float;
use crate::parallel;

const ELEMENTS_PER_ITEM: usize = 1 << 14;

fn sigmoid<T: Float>(g: T) -> T {
    T::ONE / (T::ONE + (-g).exp())
}

pub fn swiglu_fwd<T: Float>(threads: usize, gate: &[T], up: &[T], h: &mut [T]) {
    assert_eq!(gate.len(), h.len());
    assert_eq!(up.len(), h.len());
    let workers = parallel::threads_for(threads, h.len());
    let items = gate.chunks(ELEMENTS_PER_ITEM).zip(up.chunks(ELEMENTS_PER_ITEM)).zip(h.chunks_mut(ELEMENTS_PER_ITEM));
    parallel::for_each(workers, items, |((gate, up), h)| {
        for ((hi, &g), &u) in h.iter_mut().zip(gate).zip(up) {
            *hi = g * sigmoid(g) * u;
        }
    });
}

pub fn swiglu_bwd<T: Float>(threads: usize, gate: &[T], up: &[T], dh: &[T], dgate: &mut [T], dup: &mut [T]) {
    let n = dh.len();
    assert!(gate.len() == n && up.len() == n && dgate.len() == n && dup.len() == n);
    let items = gate
        .chunks(ELEMENTS_PER_ITEM)
        .zip(up.chunks(ELEMENTS_PER_ITEM))
        .zip(dh.chunks(ELEMENTS_PER_ITEM))
        .zip(dgate.chunks_mut(ELEMENTS_PER_ITEM).zip(dup.chunks_mut(ELEMENTS_PER_ITEM)));
    parallel::for_each(parallel::threads_for(threads, n), items, |(((gate, up), dh), (dgate, dup))| {
        for ((((&g, &u), &d), dg), du) in gate.iter().zip(up).zip(dh).zip(dgate.iter_mut()).zip(dup.iter_mut()) {
            let sig = sigmoid(g);
            *du = d * g * sig;
            *dg = d * u * sig * (T::ONE + g * (T::ONE - sig));
        }
    });
}
