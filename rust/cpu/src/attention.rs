//! Causal same-document GQA attention, forward and backward (math in
//! [`kormo_model::Ops::attention_fwd`] / `attention_bwd`).
//!
//! A direct two-pass softmax per (query, head): scores of the visible keys, their max, then
//! probabilities and the weighted sum of values; the log-sum-exp is kept so backward can
//! recompute probabilities instead of storing the `seq x seq` matrix. Forward splits query
//! tokens across threads; backward splits (row, KV head) pairs, so each item owns all the
//! gradients it produces (the query heads of its group and its key/value head) and every
//! visible (query, key) pair costs one exp, two dot products and three axpys.
//! Visibility is decided per pair from the document ids ([`kormo_model::attention_visible`]:
//! same document, or with cross-lingual attention another language), so documents need not be
//! contiguous.

use kormo_model::{attention_visible, AttentionShape};

use crate::float::{axpy, dot, Float};
use crate::parallel;

/// Tokens per work item: small, because causal rows have very uneven cost.
const TOKENS_PER_ITEM: usize = 4;

struct Dims {
    seq: usize,
    hd: usize,
    heads: usize,
    group: usize,
    q_row: usize,
    kv_row: usize,
}

fn dims(s: &AttentionShape) -> Dims {
    assert!(s.kv_heads > 0 && s.heads.is_multiple_of(s.kv_heads), "attention: heads {} vs kv_heads {}", s.heads, s.kv_heads);
    Dims {
        seq: s.seq,
        hd: s.head_dim,
        heads: s.heads,
        group: s.heads / s.kv_heads,
        q_row: s.heads * s.head_dim,
        kv_row: s.kv_heads * s.head_dim,
    }
}

fn check_lengths<T>(s: &AttentionShape, q: &[T], k: &[T], v: &[T], doc_ids: &[u32], o: &[T], lse: &[T]) {
    let t = s.tokens();
    assert_eq!(q.len(), t * s.heads * s.head_dim, "attention: q length");
    assert_eq!(k.len(), t * s.kv_heads * s.head_dim, "attention: k length");
    assert_eq!(v.len(), t * s.kv_heads * s.head_dim, "attention: v length");
    assert_eq!(o.len(), t * s.heads * s.head_dim, "attention: out length");
    assert_eq!(lse.len(), t * s.heads, "attention: lse length");
    assert_eq!(doc_ids.len(), t, "attention: doc_ids length");
}

#[allow(clippy::too_many_arguments)]
pub fn attention_fwd<T: Float>(
    threads: usize,
    q: &[T],
    k: &[T],
    v: &[T],
    doc_ids: &[u32],
    out: &mut [T],
    lse: &mut [T],
    s: AttentionShape,
) {
    check_lengths(&s, q, k, v, doc_ids, out, lse);
    let d = dims(&s);
    let scale = T::from_f64(1.0 / (d.hd as f64).sqrt());
    let items = out.chunks_mut(TOKENS_PER_ITEM * d.q_row.max(1)).zip(lse.chunks_mut(TOKENS_PER_ITEM * d.heads)).enumerate();
    parallel::for_each(threads, items, |(item, (out, lse))| {
        let mut visible = Vec::with_capacity(d.seq);
        let mut scores = Vec::with_capacity(d.seq);
        for (n, (out, lse)) in out.chunks_mut(d.q_row.max(1)).zip(lse.chunks_mut(d.heads)).enumerate() {
            let t = item * TOKENS_PER_ITEM + n;
            let row_start = t - t % d.seq;
            visible.clear();
            visible.extend((row_start..=t).filter(|&j| attention_visible(doc_ids[t], doc_ids[j], s.cross_lingual)));
            for h in 0..d.heads {
                let kv_off = (h / d.group) * d.hd;
                let qv = &q[t * d.q_row + h * d.hd..][..d.hd];
                scores.clear();
                scores.extend(visible.iter().map(|&j| dot(qv, &k[j * d.kv_row + kv_off..][..d.hd]) * scale));
                let max = scores.iter().fold(T::NEG_INFINITY, |m, &x| m.max(x));
                let o = &mut out[h * d.hd..][..d.hd];
                o.fill(T::ZERO);
                let mut sum = T::ZERO;
                for (&j, &score) in visible.iter().zip(&scores) {
                    let p = (score - max).exp();
                    sum += p;
                    axpy(p, &v[j * d.kv_row + kv_off..][..d.hd], o);
                }
                let inv = T::ONE / sum;
                o.iter_mut().for_each(|x| *x *= inv);
                lse[h] = max + sum.ln();
            }
        }
    });
}

#[allow(clippy::too_many_arguments)]
pub fn attention_bwd<T: Float>(
    threads: usize,
    q: &[T],
    k: &[T],
    v: &[T],
    doc_ids: &[u32],
    out: &[T],
    lse: &[T],
    dout: &[T],
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
    s: AttentionShape,
) {
    check_lengths(&s, q, k, v, doc_ids, out, lse);
    assert_eq!(dout.len(), out.len(), "attention: dout length");
    assert_eq!(dq.len(), q.len(), "attention: dq length");
    assert_eq!(dk.len(), k.len(), "attention: dk length");
    assert_eq!(dv.len(), v.len(), "attention: dv length");
    let d = dims(&s);
    let scale = T::from_f64(1.0 / (d.hd as f64).sqrt());
    let kv_heads = s.kv_heads;

    // One work item per (row, KV head): it owns the dq of the query heads in the group and
    // the dk, dv of its KV head for that row, accumulated in local `[seq, ...]` buffers and
    // scattered into the strided outputs afterwards.
    let mut locals: Vec<BackwardLocal<T>> = (0..s.batch * kv_heads)
        .map(|_| BackwardLocal {
            dq: vec![T::ZERO; d.seq * d.group * d.hd],
            dk: vec![T::ZERO; d.seq * d.hd],
            dv: vec![T::ZERO; d.seq * d.hd],
        })
        .collect();
    parallel::for_each(threads, locals.iter_mut().enumerate(), |(item, local)| {
        let (b, g) = (item / kv_heads, item % kv_heads);
        let row_start = b * d.seq;
        let mut visible = Vec::with_capacity(d.seq);
        for i in 0..d.seq {
            let ti = row_start + i;
            visible.clear();
            visible.extend((0..=i).filter(|&j| attention_visible(doc_ids[ti], doc_ids[row_start + j], s.cross_lingual)));
            for hg in 0..d.group {
                let h = g * d.group + hg;
                let at = ti * d.q_row + h * d.hd;
                let (qi, doi, oi) = (&q[at..at + d.hd], &dout[at..at + d.hd], &out[at..at + d.hd]);
                // delta = dout · out: the softmax-backward correction shared by all keys.
                let delta = dot(doi, oi);
                let lse_i = lse[ti * d.heads + h];
                let dqi = &mut local.dq[(i * d.group + hg) * d.hd..][..d.hd];
                for &j in &visible {
                    let kv_at = (row_start + j) * d.kv_row + g * d.hd;
                    let (kj, vj) = (&k[kv_at..kv_at + d.hd], &v[kv_at..kv_at + d.hd]);
                    let p = (dot(qi, kj) * scale - lse_i).exp();
                    let ds = p * (dot(doi, vj) - delta) * scale;
                    axpy(ds, kj, dqi);
                    axpy(ds, qi, &mut local.dk[j * d.hd..][..d.hd]);
                    axpy(p, doi, &mut local.dv[j * d.hd..][..d.hd]);
                }
            }
        }
    });
    for (item, local) in locals.iter().enumerate() {
        let (b, g) = (item / kv_heads, item % kv_heads);
        for i in 0..d.seq {
            let t = b * d.seq + i;
            let q_at = t * d.q_row + g * d.group * d.hd;
            dq[q_at..q_at + d.group * d.hd].copy_from_slice(&local.dq[i * d.group * d.hd..][..d.group * d.hd]);
            let kv_at = t * d.kv_row + g * d.hd;
            dk[kv_at..kv_at + d.hd].copy_from_slice(&local.dk[i * d.hd..][..d.hd]);
            dv[kv_at..kv_at + d.hd].copy_from_slice(&local.dv[i * d.hd..][..d.hd]);
        }
    }
}

/// Gradients one backward work item accumulates for its (row, KV head).
struct BackwardLocal<T> {
    /// `[seq, group, head_dim]`: the query heads of the group, in head order.
    dq: Vec<T>,
    /// `[seq, head_dim]`.
    dk: Vec<T>,
    dv: Vec<T>,
}
