//! Data-parallel sampling: which rows of the global batch each rank trains on.
//!
//! Rank `r` of `W` takes rows `r, r + W, r + 2W, ...` of the global batch, so the global batch
//! (and therefore the data order and the loss) is the same for every world size; each rank then
//! cuts its rows into micro-batches for gradient accumulation. The loss is normalised by the
//! loss-weight sum of the whole global batch (all ranks, all micro-batches), which makes the
//! summed gradient equal the single-rank gradient of the mean loss.

use kormo_model::Batch;

use crate::error::DistError;

/// Rows `rank, rank + world, ...` of `global` as one batch.
pub fn rank_rows(global: &Batch, rank: usize, world: usize) -> Result<Batch, DistError> {
    if world == 0 || rank >= world {
        return Err(DistError::Config(format!(
            "rank {rank} is not below world size {world}"
        )));
    }
    if !global.batch_size.is_multiple_of(world) {
        return Err(DistError::Config(format!(
            "global batch of {} rows does not divide evenly over world size {world}",
            global.batch_size
        )));
    }
    let rows: Vec<usize> = (rank..global.batch_size).step_by(world).collect();
    Ok(select_rows(global, &rows))
}

/// Cuts `batch` into consecutive micro-batches of `rows_per_micro` rows.
pub fn micro_batches(batch: &Batch, rows_per_micro: usize) -> Result<Vec<Batch>, DistError> {
    if rows_per_micro == 0 || !batch.batch_size.is_multiple_of(rows_per_micro) {
        return Err(DistError::Config(format!(
            "micro-batch of {rows_per_micro} rows does not divide the {} rows of a rank's batch",
            batch.batch_size
        )));
    }
    Ok((0..batch.batch_size)
        .step_by(rows_per_micro)
        .map(|first| select_rows(batch, &(first..first + rows_per_micro).collect::<Vec<_>>()))
        .collect())
}

fn select_rows(batch: &Batch, rows: &[usize]) -> Batch {
    let s = batch.seq_len;
    let pick_u32 = |v: &[u32]| {
        rows.iter()
            .flat_map(|&r| v[r * s..(r + 1) * s].iter().copied())
            .collect()
    };
    Batch {
        tokens: pick_u32(&batch.tokens),
        targets: pick_u32(&batch.targets),
        loss_weights: rows
            .iter()
            .flat_map(|&r| batch.loss_weights[r * s..(r + 1) * s].iter().copied())
            .collect(),
        doc_ids: pick_u32(&batch.doc_ids),
        positions: pick_u32(&batch.positions),
        batch_size: rows.len(),
        seq_len: s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn global(rows: usize, seq: usize) -> Batch {
        let n = rows * seq;
        Batch {
            tokens: (0..n as u32).collect(),
            targets: (1..=n as u32).collect(),
            loss_weights: (0..n).map(|i| (i % 3) as f32).collect(),
            doc_ids: (0..n as u32).map(|i| i / 5).collect(),
            positions: (0..n as u32).map(|i| i % seq as u32).collect(),
            batch_size: rows,
            seq_len: seq,
        }
    }

    #[test]
    fn ranks_take_strided_rows_that_partition_the_batch() {
        let g = global(6, 4);
        let r1 = rank_rows(&g, 1, 3).unwrap();
        assert_eq!(r1.batch_size, 2);
        assert_eq!(r1.tokens, vec![4, 5, 6, 7, 16, 17, 18, 19]);
        let total: f64 = (0..3)
            .map(|r| rank_rows(&g, r, 3).unwrap().loss_weight_sum())
            .sum();
        assert_eq!(total, g.loss_weight_sum());
        assert!(rank_rows(&g, 0, 4)
            .unwrap_err()
            .to_string()
            .contains("does not divide"));
    }

    #[test]
    fn micro_batches_are_consecutive_rows() {
        let g = global(4, 2);
        let parts = micro_batches(&g, 2).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].tokens, vec![4, 5, 6, 7]);
        assert_eq!(parts[1].positions, vec![0, 1, 0, 1]);
        assert!(micro_batches(&g, 3).is_err());
    }
}
