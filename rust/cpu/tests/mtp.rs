//! Multi-token prediction (`mtp_depth = k`, see `kormo_model::mtp`) on the CPU reference: the
//! targets stop at document and row ends; with identity projections and the final norm's gain
//! each head's loss is the next-token logits' cross-entropy against the shifted targets
//! (computed here on the host); every tensor's gradient (the MTP tensors included) against
//! central differences in f64 of the objective `(sum w l + mtp_loss_weight * mtp sum) / sum w`
//! at depths 1 and 2; and `mtp_depth = 0` spelled out is bitwise the default model, while an
//! MTP model's next-token path is bitwise the model without MTP.

mod common;

use common::{assert_model_gradients_of, micro_config, packed_batch, rng};
use kormo_cpu::CpuOps;
use kormo_model::mtp::mtp_targets;
use kormo_model::{Batch, Model, ModelConfig, DEFAULT_MTP_LOSS_WEIGHT};
use rand::Rng;

fn check_model_gradients(cfg: ModelConfig, samples: usize) {
    let batch = packed_batch(&[&[4, 5], &[2, 3, 4]], cfg.vocab as u32, false, 41);
    let weight = cfg.mtp_loss_weight as f64;
    let mut model = Model::new(cfg, CpuOps::<f64>::with_threads(2), 8).unwrap();
    let mut r = rng(42);
    for (spec, p) in model.param_specs().to_vec().iter().zip(model.params_mut()) {
        for x in p.iter_mut() {
            *x = if spec.shape.len() == 1 { 1.0 + r.random_range(-0.4..0.4) } else { *x * 10.0 };
        }
    }
    model.set_z_loss(1e-3);
    let loss = model.evaluate(&batch).unwrap();
    assert!(loss.mtp_weight > 0.0 && loss.mtp_weighted_loss > 0.0, "{loss:?}");
    assert_model_gradients_of(&mut model, &batch, samples, &mut r, |l| l.objective(weight));
}

#[test]
fn mtp_depth_1_gradients_match_finite_differences() {
    check_model_gradients(ModelConfig { mtp_depth: 1, ..micro_config() }, 8);
}

#[test]
fn mtp_depth_2_gradients_match_finite_differences_with_tied_embeddings() {
    check_model_gradients(ModelConfig { mtp_depth: 2, mtp_loss_weight: 0.7, tie_embeddings: true, ..micro_config() }, 6);
}

#[test]
fn mtp_targets_stop_at_document_and_row_ends() {
    let batch = Batch {
        tokens: vec![0; 8],
        targets: vec![10, 11, 12, 13, 14, 15, 16, 17],
        loss_weights: vec![1.0, 1.0, 0.5, 0.0, 1.0, 1.0, 1.0, 1.0],
        doc_ids: vec![0, 0, 0, 0, 0, 1, 1, 1],
        positions: vec![0, 1, 2, 3, 0, 1, 0, 1],
        batch_size: 2,
        seq_len: 4,
    };
    let (targets, weights) = mtp_targets(&batch, 1);
    // Row 0: position 2 looks at 3 (weight 0); 3 is the row end. Row 1: 4 -> 5 crosses a
    // document boundary, 5 -> 6 and 6 -> 7 stay in the second document.
    assert_eq!(weights, vec![1.0, 0.5, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0]);
    assert_eq!(targets, vec![11, 12, 0, 0, 0, 16, 17, 0]);
    let (targets, weights) = mtp_targets(&batch, 2);
    assert_eq!(weights, vec![0.5, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
    assert_eq!((targets[0], targets[5]), (12, 17));
    assert_eq!(mtp_targets(&batch, 4).1, vec![0.0; 8]);
}

/// Head d with `P_d = I` and the final norm's gain computes the next-token logits, so its loss
/// is their cross-entropy against the depth-d targets: an independent check of the shift, the
/// masking and the `1/k` mean over depths.
#[test]
fn mtp_loss_with_identity_heads_is_the_shifted_next_token_cross_entropy() {
    let cfg = ModelConfig { mtp_depth: 2, ..micro_config() };
    let (h, vocab) = (cfg.hidden, cfg.vocab);
    let batch = packed_batch(&[&[6, 5], &[3, 8]], vocab as u32, true, 43);
    let mut model = Model::new(cfg.clone(), CpuOps::<f64>::new(), 9).unwrap();
    let mut gain = vec![0.0f32; h];
    model.read_param("model.norm.weight", &mut gain).unwrap();
    let identity: Vec<f32> = (0..h * h).map(|i| if i / h == i % h { 1.0 } else { 0.0 }).collect();
    for d in 1..=2 {
        model.write_param(&format!("mtp.{d}.proj.weight"), &identity).unwrap();
        model.write_param(&format!("mtp.{d}.norm.weight"), &gain).unwrap();
    }
    let logits = model.forward(&batch).unwrap();
    let loss = model.evaluate(&batch).unwrap();
    let (mut want_loss, mut want_weight) = (0.0, 0.0);
    for d in 1..=2 {
        let (targets, weights) = mtp_targets(&batch, d);
        for (t, (&target, &w)) in targets.iter().zip(&weights).enumerate() {
            let row = &logits[t * vocab..][..vocab];
            let max = row.iter().copied().fold(f32::MIN, f32::max) as f64;
            let lse = max + row.iter().map(|&z| (z as f64 - max).exp()).sum::<f64>().ln();
            want_loss += w as f64 * (lse - row[target as usize] as f64);
            want_weight += w as f64;
        }
    }
    let (want_loss, want_weight) = (want_loss / 2.0, want_weight / 2.0);
    assert_eq!(loss.mtp_weight, want_weight);
    assert!((loss.mtp_weighted_loss - want_loss).abs() <= 1e-6 * want_loss, "{} vs {want_loss}", loss.mtp_weighted_loss);
}

/// `mtp_depth = 0` (and the default weight) spelled out is the default model bitwise; an MTP
/// model shares the default model's tensors bitwise (the MTP tensors come last and each tensor
/// draws its own stream), and its logits and next-token loss are bitwise the same.
#[test]
fn mtp_off_is_bitwise_the_default_model_and_mtp_keeps_the_next_token_path() {
    let default = micro_config();
    let explicit = ModelConfig { mtp_depth: 0, mtp_loss_weight: DEFAULT_MTP_LOSS_WEIGHT, ..default.clone() };
    assert_eq!(default, explicit);
    let batch = packed_batch(&[&[5, 4], &[9]], default.vocab as u32, false, 44);
    let run = |cfg: &ModelConfig| {
        let mut model = Model::new(cfg.clone(), CpuOps::<f32>::with_threads(2), 10).unwrap();
        let loss = model.forward_backward(&batch, 0.125).unwrap();
        let grads = model.grads().to_vec();
        let eval = model.evaluate(&batch).unwrap();
        (model.params().to_vec(), grads, loss, eval, model.forward(&batch).unwrap())
    };
    let (a, b) = (run(&default), run(&explicit));
    assert_eq!(a, b);
    assert_eq!((a.2.mtp_weighted_loss, a.2.mtp_weight), (0.0, 0.0));

    let mtp = run(&ModelConfig { mtp_depth: 2, ..default.clone() });
    let shared = a.0.len();
    assert_eq!(mtp.0[..shared], a.0[..], "shared tensors initialise alike");
    assert_eq!(mtp.0.len(), shared + 4);
    assert_eq!((mtp.2.weighted_loss, mtp.2.weight), (a.2.weighted_loss, a.2.weight), "training next-token loss");
    assert_eq!((mtp.3.weighted_loss, mtp.3.weight), (a.3.weighted_loss, a.3.weight), "evaluated next-token loss");
    assert_eq!(mtp.4, a.4, "logits");
    assert_eq!(mtp.2.mtp_weighted_loss, mtp.3.mtp_weighted_loss, "training and evaluation measure the same MTP loss");
    assert!(mtp.2.mtp_weight > 0.0);
    // The MTP heads' backward reaches the trunk: the last layer's gradients differ.
    assert_ne!(mtp.1[shared - 3], a.1[shared - 3]);
}
