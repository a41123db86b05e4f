//! How parameters are cut into FSDP units and shards.
//!
//! A unit is a group of tensors that is gathered, used and freed together: the embedding, each
//! decoder layer, and the final norm with the LM head (KORMo's recipe wraps per decoder layer).
//! A unit's tensors are concatenated in canonical order into one flat vector of `numel`
//! elements, padded to a multiple of the shard count and cut into equal shards: rank `r` of `S`
//! owns `[r * L, (r + 1) * L)` clipped to `numel`, with `L = ceil(numel / S)`. The padding never
//! holds data, so a shard's contents do not depend on anything but `numel`, `r` and `S`, which
//! is what lets a checkpoint saved at one shard count be read at another.

use kormo_model::{params, ModelConfig, ParamSpec};

/// One FSDP unit: tensor indices into [`params::layout`] and where each starts in the flat vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// `embed`, `layers.{i}` or `head` (final norm + LM head); the key of the unit in checkpoints.
    pub name: String,
    /// Which part of the model this is (what the model's unit hooks announce).
    pub kind: params::Unit,
    pub tensors: Vec<usize>,
    pub offsets: Vec<usize>,
    pub numel: usize,
}

/// The units of `config` in forward order: the model's own units ([`params::units`]), so
/// what is gathered together is exactly what the model runs together.
pub fn units(config: &ModelConfig) -> Vec<Unit> {
    let specs = params::layout(config);
    params::units(config)
        .into_iter()
        .map(|kind| {
            let tensors: Vec<usize> = params::unit_tensors(config, kind).collect();
            let mut offsets = Vec::with_capacity(tensors.len());
            let mut numel = 0;
            for &t in &tensors {
                offsets.push(numel);
                numel += specs[t].numel();
            }
            let name = match kind {
                params::Unit::Embedding => "embed".to_string(),
                params::Unit::Layer(layer) => format!("layers.{layer}"),
                params::Unit::Head => "head".to_string(),
            };
            Unit {
                name,
                kind,
                tensors,
                offsets,
                numel,
            }
        })
        .collect()
}

/// The part `[start, end)` of a unit's flat vector that one rank owns, and the padded shard
/// length `padded` that every rank of the group uses on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardRange {
    pub start: usize,
    pub end: usize,
    pub padded: usize,
}

impl ShardRange {
    pub fn of(numel: usize, rank: usize, shards: usize) -> ShardRange {
        let padded = numel.div_ceil(shards);
        let start = (rank * padded).min(numel);
        let end = (start + padded).min(numel);
        ShardRange { start, end, padded }
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// The part of one tensor inside one rank's shard of a unit: the optimizer works per segment,
/// so each keeps its tensor's weight-decay flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub unit: usize,
    pub tensor: usize,
    /// Position in the shard vector of the unit.
    pub shard_offset: usize,
    pub len: usize,
}

/// Segments of every unit's shard, in unit then tensor order.
pub fn segments(units: &[Unit], ranges: &[ShardRange], specs: &[ParamSpec]) -> Vec<Segment> {
    let mut out = Vec::new();
    for (u, (unit, range)) in units.iter().zip(ranges).enumerate() {
        for (&tensor, &offset) in unit.tensors.iter().zip(&unit.offsets) {
            let start = offset.max(range.start);
            let end = (offset + specs[tensor].numel()).min(range.end);
            if start < end {
                out.push(Segment {
                    unit: u,
                    tensor,
                    shard_offset: start - range.start,
                    len: end - start,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_cover_every_tensor_once_in_order() {
        let cfg = ModelConfig::tiny();
        let all: Vec<usize> = units(&cfg).iter().flat_map(|u| u.tensors.clone()).collect();
        assert_eq!(all, (0..params::layout(&cfg).len()).collect::<Vec<_>>());
        let u = units(&cfg);
        assert_eq!(u.len(), cfg.layers + 2);
        assert_eq!(u[2].name, "layers.1");
        let total: usize = u.iter().map(|u| u.numel).sum();
        assert_eq!(total as u64, cfg.param_count());
    }

    #[test]
    fn shards_tile_the_flat_vector_with_padding_at_the_end() {
        for numel in [1usize, 7, 8, 9, 1000] {
            for shards in 1..=5 {
                let ranges: Vec<ShardRange> = (0..shards)
                    .map(|r| ShardRange::of(numel, r, shards))
                    .collect();
                assert_eq!(ranges[0].start, 0);
                for pair in ranges.windows(2) {
                    assert_eq!(pair[0].end, pair[1].start);
                }
                assert_eq!(ranges[shards - 1].end, numel);
                assert!(ranges
                    .iter()
                    .all(|r| r.padded * shards >= numel && r.len() <= r.padded));
            }
        }
        // 7 elements over 4 ranks: 2, 2, 2, 1.
        assert_eq!(
            ShardRange::of(7, 3, 4),
            ShardRange {
                start: 6,
                end: 7,
                padded: 2
            }
        );
    }

    #[test]
    fn segments_split_shards_at_tensor_boundaries() {
        let cfg = ModelConfig::tiny();
        let specs = params::layout(&cfg);
        let u = units(&cfg);
        for shards in 1..=3 {
            let mut covered = vec![0usize; specs.len()];
            for rank in 0..shards {
                let ranges: Vec<ShardRange> = u
                    .iter()
                    .map(|unit| ShardRange::of(unit.numel, rank, shards))
                    .collect();
                for s in segments(&u, &ranges, &specs) {
                    covered[s.tensor] += s.len;
                    assert!(s.shard_offset + s.len <= ranges[s.unit].len());
                }
            }
            assert!(covered
                .iter()
                .zip(&specs)
                .all(|(&c, spec)| c == spec.numel()));
        }
    }
}
