//! The Hopper (sm_90a) kernels on the CPU emulator (cuda/emulator/kormo_hopper_emu.h: mbarriers,
//! TMA boxes, wgmma descriptors and the 128-byte swizzle, named barriers), against the same f64
//! references and tolerance rule as tests/emulated.rs (a separate test binary: the attention
//! cases are the slowest of the emulator's).

mod support;

use kormo_model::AttentionShape;
use support::cases::{self, AttnCase};
use support::Emulator;

/// The sm_90a forward (wgmma + TMA, cuda/include/kormo_attention_sm90.cuh) over the same layouts
/// plus layouts at its 128-key tiles: 3-4 key tiles with the 2-stage ring wrapping, documents
/// crossing tile edges (edge tiles masked, earlier documents' tiles never loaded), a row of
/// single-token documents, seq not a multiple of the tile, two rows. The sm_80 backward then runs
/// from its o and lse. Every forward launch must have been the sm_90a kernel.
#[test]
fn attention_sm90_emulated() {
    let shape = |batch, seq, heads, kv_heads, head_dim| AttentionShape { batch, seq, heads, kv_heads, head_dim };
    let emu = Emulator::hopper();
    let mut cases = cases::attention_layouts();
    cases.extend([
        AttnCase { name: "sm90: causal, 4 key tiles, hd128, GQA 3", shape: shape(1, 500, 3, 1, 128), docs: None, pad: 8, seed: 31 },
        AttnCase { name: "sm90: docs across tile edges, 2 rows, hd64, 2 kv heads x GQA 2", shape: shape(2, 384, 4, 2, 64), docs: Some(vec![100, 200, 150, 1, 60, 130, 127]), pad: 0, seed: 32 },
        AttnCase { name: "sm90: single-token docs then a long one, hd128", shape: shape(1, 200, 1, 1, 128), docs: Some([vec![1; 70], vec![130]].concat()), pad: 0, seed: 33 },
    ]);
    cases::check_attention(&emu, &cases);
    let forwards: Vec<&str> = emu.launched().into_iter().filter(|n| n.starts_with("kormo_attention_fwd")).collect();
    assert_eq!(forwards.len(), cases.len(), "one forward per case: {forwards:?}");
    assert!(forwards.iter().all(|n| n.starts_with("kormo_attention_fwd_sm90_")), "forwards that were not sm_90a: {forwards:?}");
}
