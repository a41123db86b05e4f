//! The test plumbing of tests/support itself (no GPU, no emulator): the document layouts the
//! attention checks build and the lse layout adapter between kormo_model ([tokens, heads]) and
//! the attention kernels ([heads, tokens]). The references are kormo_cpu's and kormo_optim's,
//! tested in their own crates.

mod support;

use support::*;

#[test]
fn document_layout_helpers() {
    let doc = doc_ids_from_lengths(&[3, 4, 1, 100], 2, 4);
    assert_eq!(doc, [0, 0, 0, 1, 1, 1, 1, 2]);
    assert_eq!(positions_from_doc_ids(&doc), [0, 1, 2, 0, 1, 2, 3, 0]);
}

#[test]
fn lse_adapter_transposes_tokens_and_heads() {
    // 3 tokens x 2 heads, value = 10 * token + head.
    let tokens_major = [0.0, 1.0, 10.0, 11.0, 20.0, 21.0];
    assert_eq!(heads_major(&tokens_major, 3, 2), [0.0, 10.0, 20.0, 1.0, 11.0, 21.0]);
}
