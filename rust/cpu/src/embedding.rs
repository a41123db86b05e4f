//! Embedding gather and its scatter-add backward. The backward runs on one thread on purpose:
//! tokens repeat, so a parallel scatter would need atomics or per-thread tables, and the cost
//! (tokens x dim additions) is negligible next to the matmuls.

use kormo_model::EmbeddingShape;

use crate::float::Float;
use crate::parallel;

const TOKENS_PER_ITEM: usize = 64;

pub fn embedding_fwd<T: Float>(threads: usize, table: &[T], tokens: &[u32], out: &mut [T], s: EmbeddingShape) {
    let d = s.dim;
    assert_eq!(table.len(), s.vocab * d);
    assert_eq!(tokens.len(), s.tokens);
    assert_eq!(out.len(), s.tokens * d);
    let workers = parallel::threads_for(threads, out.len());
    let items = out.chunks_mut(TOKENS_PER_ITEM * d.max(1)).zip(tokens.chunks(TOKENS_PER_ITEM));
    parallel::for_each(workers, items, |(out, tokens)| {
        for (row, &id) in out.chunks_mut(d.max(1)).zip(tokens) {
            let id = id as usize;
            row.copy_from_slice(&table[id * d..(id + 1) * d]);
        }
    });
}

pub fn embedding_bwd<T: Float>(dout: &[T], tokens: &[u32], dtable: &mut [T], s: EmbeddingShape) {
    let d = s.dim;
    assert_eq!(dtable.len(), s.vocab * d);
    assert_eq!(tokens.len(), s.tokens);
    assert_eq!(dout.len(), s.tokens * d);
    for (row, &id) in dout.chunks(d.max(1)).zip(tokens) {
        let id = id as usize;
        for (acc, &g) in dtable[id * d..(id + 1) * d].iter_mut().zip(row) {
            *acc += g;
        }
    }
}
