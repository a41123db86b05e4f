//! Batched log-likelihoods of multiple-choice continuations over any [`Ops`] backend.
//!
//! A question is its context ids (`<|BOS|>` first) and each choice's continuation ids (as
//! [`crate::score::split_ids`] makes them). Choice `c` with tokens `c[0..n]` needs the
//! log-softmax at the context's last token and after each of `c[0..n-1]`, so it can be read
//! from any document whose tokens start with `context + c[0..n-1]`. The choices of a question
//! therefore share documents ([`question_documents`]): one document `context + c[0..n-1]` per
//! choice whose `c[0..n-1]` is not a prefix of a longer choice's, and every other choice is read
//! from one of those. Choices of one token each (BoolQ's yes/no, letter answers) all share a
//! single document, the context, read at its last position. Multi-token choices whose tokens
//! differ repeat the context once each: attention is causal within a document, so a second
//! continuation placed after the first in one document would see it, and a continuation in a
//! document of its own would not see the context.
//!
//! The documents of a task are sorted by length, longest first (as lm-evaluation-harness sorts
//! its requests), and packed first-fit into rows of `seq` tokens ([`pack`]); each document in a
//! row has its own document id and positions from 0, so it gets the logits it gets alone, and
//! the row's tail is one more document of padding. `rows_per_forward` rows make one [`Batch`];
//! [`Model::log_probs`] returns only the queried log-softmax values.

use std::cmp::Reverse;

use kormo_model::{Batch, Model, Ops};

/// Row length and forward size of the packing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packing {
    /// Tokens per row (a task whose longest document is longer uses that length instead).
    pub seq: usize,
    /// Tokens per forward pass: `max(1, batch_tokens / seq)` rows.
    pub batch_tokens: usize,
}

impl Default for Packing {
    fn default() -> Self {
        Packing { seq: 2048, batch_tokens: 8192 }
    }
}

/// One multiple-choice question: context ids (BOS first) and each choice's continuation ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub context: Vec<u32>,
    pub continuations: Vec<Vec<u32>>,
}

/// A log-softmax read: at `offset` (a token index in its document), the log-probability of
/// `id`, added to choice `choice` of question `question`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Read {
    pub offset: usize,
    pub id: u32,
    pub question: usize,
    pub choice: usize,
}

/// A document to run and the reads it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub tokens: Vec<u32>,
    pub reads: Vec<Read>,
}

/// What scoring cost: forward passes, rows of `seq` tokens, documents, scored (document)
/// tokens and padding tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    pub forwards: usize,
    pub seq: usize,
    pub rows: usize,
    pub documents: usize,
    pub tokens: usize,
    pub padding: usize,
}

/// The documents of question `index` (see the module docs), appended to `docs`.
pub fn question_documents(q: &Question, index: usize, docs: &mut Vec<Document>) -> Result<(), String> {
    if q.context.is_empty() {
        return Err(format!("question {index}: the context has no tokens"));
    }
    if let Some(c) = q.continuations.iter().position(Vec::is_empty) {
        return Err(format!("question {index}: choice {c} has no tokens after the context"));
    }
    let first = docs.len();
    let n = q.context.len();
    let mut order: Vec<usize> = (0..q.continuations.len()).collect();
    order.sort_by_key(|&c| Reverse(q.continuations[c].len()));
    for c in order {
        let cont = &q.continuations[c];
        let input = &cont[..cont.len() - 1];
        let d = match docs[first..].iter().position(|d| d.tokens[n..].starts_with(input)) {
            Some(i) => first + i,
            None => {
                docs.push(Document { tokens: q.context.iter().chain(input).copied().collect(), reads: Vec::new() });
                docs.len() - 1
            }
        };
        docs[d].reads.extend(cont.iter().enumerate().map(|(i, &id)| Read { offset: n - 1 + i, id, question: index, choice: c }));
    }
    Ok(())
}

/// Rows of document indices: longest document first, each into the first row with room
/// (first-fit decreasing; ties keep document order). `seq` must hold the longest document.
pub fn pack(lengths: &[usize], seq: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&d| Reverse(lengths[d]));
    let mut rows: Vec<(usize, Vec<usize>)> = Vec::new();
    for d in order {
        let len = lengths[d];
        assert!(len <= seq, "document of {len} tokens in rows of {seq}");
        match rows.iter_mut().find(|(used, _)| used + len <= seq) {
            Some((used, docs)) => {
                *used += len;
                docs.push(d);
            }
            None => rows.push((len, vec![d])),
        }
    }
    rows.into_iter().map(|(_, docs)| docs).collect()
}

/// The batch of `rows` (document indices) of `seq` tokens and its log-prob queries, each with
/// the read it answers.
pub fn batch_of(docs: &[Document], rows: &[Vec<usize>], seq: usize) -> (Batch, Vec<(usize, u32)>, Vec<Read>) {
    let n = rows.len() * seq;
    let mut b = Batch { tokens: Vec::with_capacity(n), targets: vec![0; n], loss_weights: vec![0.0; n], doc_ids: Vec::with_capacity(n), positions: Vec::with_capacity(n), batch_size: rows.len(), seq_len: seq };
    let (mut queries, mut reads) = (Vec::new(), Vec::new());
    for row in rows {
        let start = b.tokens.len();
        for (id, &d) in row.iter().enumerate() {
            let doc_start = b.tokens.len();
            b.tokens.extend(&docs[d].tokens);
            b.doc_ids.extend(std::iter::repeat_n(id as u32, docs[d].tokens.len()));
            b.positions.extend(0..docs[d].tokens.len() as u32);
            for r in &docs[d].reads {
                queries.push((doc_start + r.offset, r.id));
                reads.push(*r);
            }
        }
        // The tail: one document of padding (its own id, so nothing attends to it).
        let pad = start + seq - b.tokens.len();
        b.tokens.extend(std::iter::repeat_n(0, pad));
        b.doc_ids.extend(std::iter::repeat_n(row.len() as u32, pad));
        b.positions.extend(0..pad as u32);
    }
    (b, queries, reads)
}

/// Per question, per choice, the log-likelihood of the continuation after the context, and
/// what it cost. `on_forward(done, total)` is called after each forward pass.
pub fn loglikelihoods<O: Ops>(model: &mut Model<O>, questions: &[Question], packing: Packing, mut on_forward: impl FnMut(usize, usize)) -> Result<(Vec<Vec<f64>>, Stats), String> {
    let mut docs = Vec::new();
    for (i, q) in questions.iter().enumerate() {
        question_documents(q, i, &mut docs)?;
    }
    let lengths: Vec<usize> = docs.iter().map(|d| d.tokens.len()).collect();
    let seq = lengths.iter().copied().max().unwrap_or(1).max(packing.seq.max(1));
    let rows = pack(&lengths, seq);
    let per_forward = (packing.batch_tokens / seq).max(1);
    let total = rows.len().div_ceil(per_forward);
    let mut lls: Vec<Vec<f64>> = questions.iter().map(|q| vec![0.0; q.continuations.len()]).collect();
    for (done, chunk) in rows.chunks(per_forward).enumerate() {
        let (batch, queries, reads) = batch_of(&docs, chunk, seq);
        let values = model.log_probs(&batch, &queries).map_err(|e| e.to_string())?;
        for (r, v) in reads.iter().zip(values) {
            lls[r.question][r.choice] += v;
        }
        on_forward(done + 1, total);
    }
    let tokens = lengths.iter().sum();
    let stats = Stats { forwards: total, seq, rows: rows.len(), documents: docs.len(), tokens, padding: rows.len() * seq - tokens };
    Ok((lls, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(context: &[u32], conts: &[&[u32]]) -> Question {
        Question { context: context.to_vec(), continuations: conts.iter().map(|c| c.to_vec()).collect() }
    }

    #[test]
    fn single_token_choices_share_one_document_the_context() {
        let mut docs = Vec::new();
        question_documents(&q(&[1, 5, 6], &[&[7], &[8], &[9]]), 4, &mut docs).unwrap();
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].tokens, [1, 5, 6]);
        let reads: Vec<(usize, u32, usize)> = docs[0].reads.iter().map(|r| (r.offset, r.id, r.choice)).collect();
        assert_eq!(reads, [(2, 7, 0), (2, 8, 1), (2, 9, 2)]);
        assert!(docs[0].reads.iter().all(|r| r.question == 4));
    }

    #[test]
    fn a_choice_is_read_from_a_longer_choice_it_prefixes_and_others_repeat_the_context() {
        let mut docs = Vec::new();
        // [7, 8, 9] needs context + [7, 8]; [7, 8] and [3] read from it; [4, 4] needs its own.
        question_documents(&q(&[1, 5], &[&[7, 8], &[4, 4], &[7, 8, 9], &[3]]), 0, &mut docs).unwrap();
        let tokens: Vec<&[u32]> = docs.iter().map(|d| d.tokens.as_slice()).collect();
        assert_eq!(tokens, [&[1, 5, 7, 8][..], &[1, 5, 4][..]]);
        let of = |d: usize, c: usize| docs[d].reads.iter().filter(|r| r.choice == c).map(|r| (r.offset, r.id)).collect::<Vec<_>>();
        assert_eq!(of(0, 2), [(1, 7), (2, 8), (3, 9)]);
        assert_eq!(of(0, 0), [(1, 7), (2, 8)]);
        assert_eq!(of(0, 3), [(1, 3)]);
        assert_eq!(of(1, 1), [(1, 4), (2, 4)]);
        assert!(question_documents(&q(&[1], &[&[2], &[]]), 0, &mut docs).unwrap_err().contains("choice 1"));
    }

    #[test]
    fn packing_is_first_fit_decreasing_and_pads_each_row_as_its_own_document() {
        let rows = pack(&[3, 5, 2, 4, 1], 6);
        assert_eq!(rows, [vec![1, 4], vec![3, 2], vec![0]]);
        let docs: Vec<Document> = [3, 5, 2, 4, 1].iter().map(|&n| Document { tokens: vec![n as u32 + 10; n], reads: vec![Read { offset: n - 1, id: 1, question: n, choice: 0 }] }).collect();
        let (b, queries, reads) = batch_of(&docs, &rows[1..], 6);
        assert_eq!((b.batch_size, b.seq_len), (2, 6));
        assert_eq!(b.tokens, [14, 14, 14, 14, 12, 12, 13, 13, 13, 0, 0, 0]);
        assert_eq!(b.doc_ids, [0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 1]);
        assert_eq!(b.positions, [0, 1, 2, 3, 0, 1, 0, 1, 2, 0, 1, 2]);
        assert!(b.loss_weights.iter().all(|&w| w == 0.0));
        assert_eq!(queries, [(3, 1), (5, 1), (8, 1)]);
        assert_eq!(reads.iter().map(|r| r.question).collect::<Vec<_>>(), [4, 2, 3]);
        b.validate(20).unwrap();
    }
}
