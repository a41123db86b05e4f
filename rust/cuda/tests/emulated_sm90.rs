//! The Hopper (sm_90a) kernels on the CPU emulator (cuda/emulator/kormo_hopper_emu.h: mbarriers,
//! TMA boxes, wgmma descriptors and the 128-byte swizzle, named barriers), against the same f64
//! references and tolerance rule as tests/emulated.rs (a separate test binary: the attention
//! cases are the slowest of the emulator's).

mod support;

use kormo_model::AttentionShape;
use support::cases::{self, AttnCase};
use support::Emulator;

/// The sm_90a forward and backward (wgmma + TMA, cuda/include/kormo_attention_sm90.cuh) over
/// the common layouts plus the Hopper tiles' edges: 3-4 key tiles with the 2-stage ring
/// wrapping, documents across tile edges (edge tiles masked, earlier documents' tiles never
/// loaded) in two rows, single-token documents before a long one, forward blocks packing 4 and 8
/// query heads of a GQA group (1 where the group size, 3, does not divide 128). Every launch
/// must have been an sm_90a kernel.
#[test]
fn attention_sm90_emulated() {
    let shape = |batch, seq, heads, kv_heads, head_dim| AttentionShape::new(batch, seq, heads, kv_heads, head_dim);
    let emu = Emulator::hopper();
    let mut cases = cases::attention_layouts();
    cases.extend([
        AttnCase { name: "sm90: causal, 4 key tiles, hd128, GQA 3", shape: shape(1, 500, 3, 1, 128), docs: None, pad: 8, seed: 31 },
        AttnCase { name: "sm90: docs across tile edges, 2 rows, hd64, 2 kv heads x GQA 2", shape: shape(2, 384, 4, 2, 64), docs: Some(vec![100, 200, 150, 1, 60, 130, 127]), pad: 0, seed: 32 },
        AttnCase { name: "sm90: single-token docs then a long one, hd128", shape: shape(1, 200, 1, 1, 128), docs: Some([vec![1; 70], vec![130]].concat()), pad: 0, seed: 33 },
        // Forward blocks of 4 and 8 query heads x 32 and 16 positions (the group shares K/V tiles).
        AttnCase { name: "sm90: GQA 4 packed, docs, hd64", shape: shape(1, 300, 8, 2, 64), docs: Some(vec![37, 150, 113]), pad: 8, seed: 34 },
        AttnCase { name: "sm90: GQA 8 packed, causal, hd128", shape: shape(1, 150, 8, 1, 128), docs: None, pad: 0, seed: 35 },
    ]);
    cases::check_attention(&emu, &cases);
    let launched = emu.launched();
    let count = |prefix: &str| launched.iter().filter(|n| n.starts_with(prefix)).count();
    assert_eq!(count("kormo_attention_fwd_sm90_"), cases.len(), "every forward on sm_90a: {launched:?}");
    assert_eq!(count("kormo_attention_bwd_sm90_"), cases.len(), "every backward on sm_90a: {launched:?}");
    assert_eq!(count("kormo_attention_fwd_hd") + count("kormo_attention_bwd_hd"), 0, "sm_80 kernels ran: {launched:?}");
}

/// The deterministic backward on the Hopper path (sm_90a dK/dV pass, then the dQ pass without
/// atomics) over the multi-tile layouts, in grid order and a shuffled block order: checked
/// against the references each time, and bitwise equal across the orders.
#[test]
fn attention_sm90_deterministic_emulated() {
    let layouts = cases::attention_layouts();
    let multi_tile: Vec<AttnCase> = layouts.into_iter().filter(|c| c.shape.seq > 128).collect();
    let runs: Vec<_> = [Emulator::hopper(), Emulator::hopper_with_block_order(7)]
        .iter()
        .map(|emu| {
            let out = cases::check_attention_mode(emu, &multi_tile, true);
            let launched = emu.launched();
            assert!(launched.iter().filter(|n| n.starts_with("kormo_attention_bwd_dkdv_sm90_")).count() == multi_tile.len(), "{launched:?}");
            out
        })
        .collect();
    assert!(runs[0] == runs[1], "the deterministic sm_90a backward differs between block orders");
}
