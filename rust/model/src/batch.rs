//! One packed micro-batch as the data layer hands it to the model, and the loss it yields.
//!
//! All per-token vectors have `batch_size * seq_len` entries, row-major (token `t = b * seq_len
//! + s`). The data layer decides documents and positions: KORMo's default is document id =
//! running count of BOS tokens in the row and positions `0..seq_len` across the whole row (not
//! reset per document); resetting positions at each document start is an option it may apply.
//! The model only requires that `doc_ids` mark which tokens may attend to each other.

use crate::error::ModelError;

/// Inputs of one forward/backward pass.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Batch {
    /// Input token ids, each `< vocab`.
    pub tokens: Vec<u32>,
    /// Next-token targets; read only where `loss_weights > 0`, where they must be `< vocab`.
    pub targets: Vec<u32>,
    /// Per-token loss weight (0 = not trained on, 1 = normal); finite and non-negative.
    pub loss_weights: Vec<f32>,
    /// Document id per token; attention is causal AND within equal ids of the same row.
    pub doc_ids: Vec<u32>,
    /// RoPE position id per token.
    pub positions: Vec<u32>,
    pub batch_size: usize,
    pub seq_len: usize,
}

impl Batch {
    /// One sequence for a forward pass only (logits, decoding checks): nothing trained on
    /// (all loss weights 0), one document, positions `0..n`.
    pub fn forward_only(tokens: &[u32]) -> Batch {
        let n = tokens.len();
        Batch {
            tokens: tokens.to_vec(),
            targets: vec![0; n],
            loss_weights: vec![0.0; n],
            doc_ids: vec![0; n],
            positions: (0..n as u32).collect(),
            batch_size: 1,
            seq_len: n,
        }
    }

    /// Number of tokens (`batch_size * seq_len`).
    pub fn num_tokens(&self) -> usize {
        self.batch_size * self.seq_len
    }

    /// Sum of the loss weights: the denominator of the mean loss (for 0/1 weights, the number
    /// of trained tokens).
    pub fn loss_weight_sum(&self) -> f64 {
        self.loss_weights.iter().map(|&w| w as f64).sum()
    }

    /// Checks lengths and id ranges against a vocabulary of `vocab` entries.
    pub fn validate(&self, vocab: usize) -> Result<(), ModelError> {
        let n = self.num_tokens();
        if n == 0 {
            return Err(ModelError::Batch("batch_size and seq_len must both be at least 1".into()));
        }
        let lengths = [
            ("tokens", self.tokens.len()),
            ("targets", self.targets.len()),
            ("loss_weights", self.loss_weights.len()),
            ("doc_ids", self.doc_ids.len()),
            ("positions", self.positions.len()),
        ];
        for (field, len) in lengths {
            if len != n {
                return Err(ModelError::Batch(format!(
                    "{field} has {len} entries, expected batch_size {} x seq_len {} = {n}",
                    self.batch_size, self.seq_len
                )));
            }
        }
        if let Some((t, &id)) = self.tokens.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
            return Err(ModelError::Batch(format!("tokens[{t}] = {id} is not below vocab {vocab}")));
        }
        for (t, (&w, &target)) in self.loss_weights.iter().zip(&self.targets).enumerate() {
            if !(w.is_finite() && w >= 0.0) {
                return Err(ModelError::Batch(format!("loss_weights[{t}] = {w} must be finite and >= 0")));
            }
            if w > 0.0 && target as usize >= vocab {
                return Err(ModelError::Batch(format!(
                    "targets[{t}] = {target} is not below vocab {vocab} (and its loss weight is {w})"
                )));
            }
        }
        Ok(())
    }
}

/// Loss of a pass: `weighted_loss = sum_t w_t * loss_t` and `weight = sum_t w_t`, both summed
/// in f64 so micro-batches and data-parallel ranks can be added before dividing.
///
/// With multi-token prediction (`mtp_depth = k > 0`) the MTP heads' loss comes separately:
/// `mtp_weighted_loss = (1/k) sum_d sum_t w^d_t * loss^d_t` and `mtp_weight = (1/k) sum_d
/// sum_t w^d_t` (both 0 without MTP), so `weighted_loss / weight` stays the next-token loss,
/// comparable with runs without MTP. The training objective whose gradient
/// `Model::forward_backward` takes is `(weighted_loss + mtp_loss_weight * mtp_weighted_loss) /
/// weight` ([`LossSum::objective`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LossSum {
    pub weighted_loss: f64,
    pub weight: f64,
    pub mtp_weighted_loss: f64,
    pub mtp_weight: f64,
}

impl LossSum {
    /// Mean loss per unit weight (0 when nothing was trained on).
    pub fn mean(&self) -> f64 {
        if self.weight > 0.0 {
            self.weighted_loss / self.weight
        } else {
            0.0
        }
    }

    /// Mean MTP loss per unit weight over all depths (0 without MTP).
    pub fn mtp_mean(&self) -> f64 {
        if self.mtp_weight > 0.0 {
            self.mtp_weighted_loss / self.mtp_weight
        } else {
            0.0
        }
    }

    /// The training objective for an MTP loss weight `mtp_loss_weight`:
    /// `(weighted_loss + mtp_loss_weight * mtp_weighted_loss) / weight` (the mean without MTP).
    pub fn objective(&self, mtp_loss_weight: f64) -> f64 {
        if self.weight > 0.0 {
            (self.weighted_loss + mtp_loss_weight * self.mtp_weighted_loss) / self.weight
        } else {
            0.0
        }
    }

    /// Sum of two partial losses (micro-batches, ranks).
    #[allow(clippy::should_implement_trait)] // a named method reads better in folds than `+`
    pub fn add(self, other: LossSum) -> LossSum {
        LossSum {
            weighted_loss: self.weighted_loss + other.weighted_loss,
            weight: self.weight + other.weight,
            mtp_weighted_loss: self.mtp_weighted_loss + other.mtp_weighted_loss,
            mtp_weight: self.mtp_weight + other.mtp_weight,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> Batch {
        Batch {
            tokens: vec![1, 2, 3, 4],
            targets: vec![2, 3, 4, 99],
            loss_weights: vec![1.0, 1.0, 0.5, 0.0],
            doc_ids: vec![0, 0, 1, 1],
            positions: vec![0, 1, 2, 3],
            batch_size: 2,
            seq_len: 2,
        }
    }

    #[test]
    fn ignored_targets_may_be_out_of_range() {
        batch().validate(10).unwrap();
        assert_eq!(batch().loss_weight_sum(), 2.5);
    }

    #[test]
    fn validation_names_the_problem() {
        let mut b = batch();
        b.loss_weights[3] = 1.0;
        assert!(b.validate(10).unwrap_err().to_string().contains("targets[3] = 99"));
        let mut b = batch();
        b.positions.pop();
        assert!(b.validate(10).unwrap_err().to_string().contains("positions has 3 entries"));
        let mut b = batch();
        b.tokens[0] = 10;
        assert!(b.validate(10).unwrap_err().to_string().contains("tokens[0]"));
        let mut b = batch();
        b.loss_weights[0] = f32::NAN;
        assert!(b.validate(10).is_err());
    }

    #[test]
    fn forward_only_is_one_untrained_document() {
        let b = Batch::forward_only(&[7, 3, 9]);
        b.validate(10).unwrap();
        assert_eq!((b.batch_size, b.seq_len, b.tokens.as_slice()), (1, 3, &[7, 3, 9][..]));
        assert_eq!(b.loss_weight_sum(), 0.0);
        assert_eq!(b.positions, [0, 1, 2]);
        assert_eq!(b.doc_ids, [0, 0, 0]);
    }

    #[test]
    fn loss_sum_means_over_weight() {
        let total = LossSum { weighted_loss: 3.0, weight: 2.0, ..LossSum::default() }
            .add(LossSum { weighted_loss: 1.0, weight: 2.0, mtp_weighted_loss: 2.0, mtp_weight: 1.0 });
        assert_eq!(total.mtp_mean(), 2.0);
        assert_eq!(total.objective(0.5), 1.25);
        assert_eq!(total.mean(), 1.0);
        assert_eq!(LossSum::default().mean(), 0.0);
    }
}
