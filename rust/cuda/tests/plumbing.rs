//! The test plumbing of tests/support itself (no GPU, no emulator): the document layouts the
//! attention checks build, the lse layout adapter between kormo_model ([tokens, heads]) and
//! the attention kernels ([heads, tokens]), and the low-precision tolerance rule the attention
//! checks apply. The references are kormo_cpu's and kormo_optim's, tested in their own crates.

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

#[test]
fn low_precision_rule_accepts_errors_within_the_factor() {
    // Reference error: one element off by 1e-3 of a norm-1 vector; kernel error 1.9x that.
    let want = [1.0, 0.0, 0.0, 0.0];
    let (low, got) = ([1.001f32, 0.0, 0.0, 0.0], [1.0019f32, 0.0, 0.0, 0.0]);
    let (err, low_err) = assert_within_low_precision_error("within", &got, &low, &want, 2.0);
    assert!((err / low_err - 1.9).abs() < 0.01, "ratio {}", err / low_err);
}

#[test]
#[should_panic(expected = "above the low-precision bound")]
fn low_precision_rule_rejects_errors_beyond_the_factor() {
    // 2.5x the reference's error, though far inside the absolute 1e-2 bound.
    let want = [1.0, 0.0, 0.0, 0.0];
    let (low, got) = ([1.001f32, 0.0, 0.0, 0.0], [1.0025f32, 0.0, 0.0, 0.0]);
    assert_within_low_precision_error("beyond", &got, &low, &want, 2.0);
}

#[test]
fn low_precision_rule_floor_covers_an_exact_reference() {
    let want = [1.0, -2.0];
    let (low, got) = ([1.0f32, -2.0], [1.0f32, -2.0001]);
    assert_within_low_precision_error("exact reference", &got, &low, &want, 2.0);
}
