//! Sharded checkpoints: every shard-owning rank writes its own file, and any shard count can
//! read them back (resharding) or merge them into a single-process checkpoint.
//!
//! Directory layout:
//! ```text
//! sharded.json                         format version, shard count, units (tensor names,
//!                                      shapes, offsets in the unit's flat vector), RunState
//! shard-RRRRR-of-SSSSS.safetensors     for each unit U: `U.param`, `U.exp_avg`, `U.exp_avg_sq`
//!                                      (the rank's unpadded range of the flat vector) + `step`
//! ```
//! Shard rank r of S always owns `ShardRange::of(numel, r, S)` (see [`crate::shard`]), so the
//! metadata need not list ranges. Writes are atomic per file (temp name, fsync, rename);
//! `sharded.json` is removed before and written after all shards (with barriers between), so
//! it exists only when every shard of that save is complete. With hybrid sharding only the
//! first replica group writes. [`ShardedCheckpoint::consolidate`] writes the single-process
//! format of kormo-train (`model.safetensors` with full tensors, `optimizer.safetensors` with
//! `<name>.exp_avg`, `<name>.exp_avg_sq` and `step`) through kormo-checkpoint.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kormo_checkpoint::{CheckpointError, DiskBudget, Manifest, RunState, SafetensorsFile, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::DistError;
use crate::shard::{ShardRange, Unit};
use kormo_model::ParamSpec;

/// What a sharded checkpoint reads from and writes into a rank, whatever holds its shards:
/// [`crate::FsdpRank`] (host vectors), [`crate::DeviceFsdpRank`] (device buffers, copied to the
/// host for writing and uploaded on restore) or [`crate::SingleRank`] (one shard: the whole
/// model). The files are the same for all.
pub trait ShardedState {
    /// This rank in the world and the world size (every rank takes part in a save).
    fn world_rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Sum of host scalars over the world.
    fn all_reduce_world(&self, values: &mut [f64]) -> Result<(), DistError>;
    /// This rank in its shard group, and the group's size (the shard count).
    fn shard_rank(&self) -> usize;
    fn shard_count(&self) -> usize;
    /// Rank among the replicas of this shard (0 unless hybrid); only replica 0 writes.
    fn replica_rank(&self) -> usize;
    fn units(&self) -> &[Unit];
    fn param_specs(&self) -> &[ParamSpec];
    fn ranges(&self) -> &[ShardRange];
    /// Per unit, this rank's parameter, `exp_avg` and `exp_avg_sq` shards (unpadded), and
    /// the optimizer step count.
    #[allow(clippy::type_complexity)]
    fn host_shards(&self) -> Result<([Vec<Vec<f32>>; 3], u64), DistError>;
    /// Replaces the shards and the step count (lengths as [`ShardedState::ranges`]).
    fn load_shards(
        &mut self,
        params: Vec<Vec<f32>>,
        exp_avg: &[Vec<f32>],
        exp_avg_sq: &[Vec<f32>],
        step: u64,
    ) -> Result<(), DistError>;
}

pub const FORMAT_VERSION: u32 = 1;
pub const META_FILE: &str = "sharded.json";
/// File names of the single-process checkpoint (as kormo-train writes them).
pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

const KINDS: [&str; 3] = ["param", "exp_avg", "exp_avg_sq"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorMeta {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitMeta {
    pub name: String,
    pub numel: usize,
    pub tensors: Vec<TensorMeta>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardedMeta {
    pub format_version: u32,
    pub shard_count: usize,
    pub units: Vec<UnitMeta>,
    pub run: RunState,
}

pub fn shard_file_name(rank: usize, count: usize) -> String {
    format!("shard-{rank:05}-of-{count:05}.safetensors")
}

fn unit_metas<S: ShardedState + ?Sized>(rank: &S) -> Vec<UnitMeta> {
    let specs = rank.param_specs();
    rank.units()
        .iter()
        .map(|u| UnitMeta {
            name: u.name.clone(),
            numel: u.numel,
            tensors: u
                .tensors
                .iter()
                .zip(&u.offsets)
                .map(|(&t, &offset)| TensorMeta {
                    name: specs[t].name.clone(),
                    shape: specs[t].shape.clone(),
                    offset,
                })
                .collect(),
        })
        .collect()
}

fn io_error(path: &Path, what: &str, e: std::io::Error) -> DistError {
    DistError::Checkpoint(CheckpointError::new(path, format!("{what}: {e}")))
}

/// Writes `bytes` to `path` atomically: temp file in the same directory, fsync, rename.
fn write_atomic(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), DistError>,
) -> Result<(), DistError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let temp = path.with_file_name(format!(".tmp-{name}-{}", std::process::id()));
    write(&temp)?;
    std::fs::rename(&temp, path).map_err(|e| io_error(path, "cannot rename into place", e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, "cannot fsync directory", e))
}

/// Runs `work` on every rank and fails on all ranks if it failed on any (naming the ranks), so
/// a rank whose disk write failed cannot leave the others waiting at the next barrier.
fn all_or_nothing<S: ShardedState + ?Sized>(
    world: &S,
    what: &str,
    result: Result<(), DistError>,
) -> Result<(), DistError> {
    let mut failed = vec![0.0; world.world_size()];
    failed[world.world_rank()] = if result.is_err() { 1.0 } else { 0.0 };
    world.all_reduce_world(&mut failed)?;
    result?;
    let bad: Vec<String> = failed
        .iter()
        .enumerate()
        .filter(|(_, &f)| f > 0.0)
        .map(|(r, _)| r.to_string())
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(DistError::Config(format!(
            "{what} failed on rank {}",
            bad.join(", rank ")
        )))
    }
}

/// Saves `rank`'s shards into `dir` (collective over the world).
pub fn save<S: ShardedState + ?Sized>(
    rank: &S,
    dir: &Path,
    run: &RunState,
) -> Result<(), DistError> {
    let world = rank;
    let prepare = (|| {
        std::fs::create_dir_all(dir)
            .map_err(|e| io_error(dir, "cannot create checkpoint directory", e))?;
        if world.world_rank() == 0 {
            match std::fs::remove_file(dir.join(META_FILE)) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_error(
                    &dir.join(META_FILE),
                    "cannot remove old metadata",
                    e,
                )),
            }
        } else {
            Ok(())
        }
    })();
    all_or_nothing(world, "preparing the checkpoint directory", prepare)?;

    let (shard_rank, shard_count) = (rank.shard_rank(), rank.shard_count());
    let written = if rank.replica_rank() == 0 {
        (|| {
            let ([params, exp_avg, exp_avg_sq], step) = rank.host_shards()?;
            let mut tensors = Vec::new();
            for (u, unit) in rank.units().iter().enumerate() {
                for (kind, values) in KINDS.iter().zip([&params[u], &exp_avg[u], &exp_avg_sq[u]]) {
                    tensors.push(Tensor::f32(
                        format!("{}.{kind}", unit.name),
                        vec![values.len()],
                        values,
                    ));
                }
            }
            tensors.push(Tensor::u64("step", vec![1], &[step]));
            let metadata = BTreeMap::from([
                ("shard_rank".to_string(), shard_rank.to_string()),
                ("shard_count".to_string(), shard_count.to_string()),
            ]);
            let path = dir.join(shard_file_name(shard_rank, shard_count));
            write_atomic(&path, |temp| {
                Ok(kormo_checkpoint::safetensors::write(
                    temp, &tensors, &metadata,
                )?)
            })
        })()
    } else {
        Ok(())
    };
    all_or_nothing(world, "writing checkpoint shards", written)?;

    let meta_written = if world.world_rank() == 0 {
        let meta = ShardedMeta {
            format_version: FORMAT_VERSION,
            shard_count,
            units: unit_metas(rank),
            run: run.clone(),
        };
        let path = dir.join(META_FILE);
        write_atomic(&path, |temp| {
            use std::io::Write;
            let text = serde_json::to_string_pretty(&meta).expect("metadata serialises");
            let mut file =
                std::fs::File::create(temp).map_err(|e| io_error(temp, "cannot create", e))?;
            file.write_all(text.as_bytes())
                .and_then(|_| file.sync_all())
                .map_err(|e| io_error(temp, "cannot write", e))
        })
    } else {
        Ok(())
    };
    all_or_nothing(world, "writing checkpoint metadata", meta_written)
}

/// A sharded checkpoint opened for reading; shard files are read when first needed.
pub struct ShardedCheckpoint {
    dir: PathBuf,
    meta: ShardedMeta,
    files: RefCell<BTreeMap<usize, SafetensorsFile>>,
}

impl ShardedCheckpoint {
    pub fn open(dir: &Path) -> Result<ShardedCheckpoint, DistError> {
        let path = dir.join(META_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            io_error(
                &path,
                "cannot read sharded checkpoint metadata (missing if the save did not complete)",
                e,
            )
        })?;
        let meta: ShardedMeta = serde_json::from_str(&text).map_err(|e| {
            DistError::Checkpoint(CheckpointError::new(&path, format!("bad metadata: {e}")))
        })?;
        if meta.format_version != FORMAT_VERSION {
            return Err(DistError::Checkpoint(CheckpointError::new(
                &path,
                format!(
                    "format_version {} is not the supported {FORMAT_VERSION}",
                    meta.format_version
                ),
            )));
        }
        if meta.shard_count == 0 {
            return Err(DistError::Checkpoint(CheckpointError::new(
                &path,
                "shard_count must be at least 1",
            )));
        }
        Ok(ShardedCheckpoint {
            dir: dir.to_path_buf(),
            meta,
            files: RefCell::new(BTreeMap::new()),
        })
    }

    pub fn meta(&self) -> &ShardedMeta {
        &self.meta
    }

    /// Elements `[start, end)` of unit `u`'s flat `kind` vector, read from the shards that hold them.
    fn read_range(
        &self,
        u: usize,
        kind: &str,
        start: usize,
        end: usize,
    ) -> Result<Vec<f32>, DistError> {
        let unit = &self.meta.units[u];
        let count = self.meta.shard_count;
        let mut out = Vec::with_capacity(end - start);
        for shard in 0..count {
            let range = ShardRange::of(unit.numel, shard, count);
            let (lo, hi) = (range.start.max(start), range.end.min(end));
            if lo >= hi {
                continue;
            }
            let mut files = self.files.borrow_mut();
            let file = match files.entry(shard) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => e.insert(SafetensorsFile::read(
                    &self.dir.join(shard_file_name(shard, count)),
                )?),
            };
            let values = file.f32(&format!("{}.{kind}", unit.name), Some(&[range.len()]))?;
            out.extend_from_slice(&values[lo - range.start..hi - range.start]);
        }
        Ok(out)
    }

    /// The AdamW step count, which every shard must agree on.
    fn step(&self) -> Result<u64, DistError> {
        let count = self.meta.shard_count;
        let mut step = None;
        for shard in 0..count {
            let path = self.dir.join(shard_file_name(shard, count));
            let value = SafetensorsFile::read(&path)?.u64("step", Some(&[1]))?[0];
            if step.is_some_and(|s| s != value) {
                return Err(DistError::Checkpoint(CheckpointError::new(
                    &path,
                    format!("step {value} differs from shard 0's {}", step.unwrap_or(0)),
                )));
            }
            step = Some(value);
        }
        Ok(step.expect("shard_count >= 1"))
    }

    /// Loads this rank's shards (any shard count) into `rank` and returns the run state.
    pub fn restore<S: ShardedState + ?Sized>(&self, rank: &mut S) -> Result<RunState, DistError> {
        let expected = unit_metas(rank);
        let meta_path = self.dir.join(META_FILE);
        if expected.len() != self.meta.units.len() {
            return Err(DistError::Checkpoint(CheckpointError::new(
                &meta_path,
                format!(
                    "{} units, but the model has {}",
                    self.meta.units.len(),
                    expected.len()
                ),
            )));
        }
        for (want, have) in expected.iter().zip(&self.meta.units) {
            if want != have {
                return Err(DistError::Checkpoint(CheckpointError::new(
                    &meta_path,
                    format!(
                        "unit `{}` ({} elements) does not match the model's unit `{}` ({} elements, tensors {:?})",
                        have.name,
                        have.numel,
                        want.name,
                        want.numel,
                        want.tensors.iter().map(|t| &t.name).collect::<Vec<_>>()
                    ),
                )));
            }
        }
        let mut loaded: [Vec<Vec<f32>>; 3] = Default::default();
        for (u, range) in rank.ranges().to_vec().into_iter().enumerate() {
            for (k, kind) in KINDS.iter().enumerate() {
                loaded[k].push(self.read_range(u, kind, range.start, range.end)?);
            }
        }
        let [params, exp_avg, exp_avg_sq] = loaded;
        rank.load_shards(params, &exp_avg, &exp_avg_sq, self.step()?)?;
        Ok(self.meta.run.clone())
    }

    /// Writes the single-process checkpoint (full tensors and moments) to `target`.
    pub fn consolidate(&self, target: &Path) -> Result<Manifest, DistError> {
        self.consolidate_with_budget(target, &DiskBudget::unlimited())
    }

    /// [`Self::consolidate`] with its writes drawn from `budget`, which fails like a full disk
    /// once spent (the trainer's fault seam); the write is atomic either way, so a failed one
    /// leaves nothing at `target`.
    pub fn consolidate_with_budget(
        &self,
        target: &Path,
        budget: &DiskBudget,
    ) -> Result<Manifest, DistError> {
        let mut model = Vec::new();
        let mut optimizer = Vec::new();
        for (u, unit) in self.meta.units.iter().enumerate() {
            let [params, exp_avg, exp_avg_sq] =
                [0, 1, 2].map(|k| self.read_range(u, KINDS[k], 0, unit.numel));
            let (params, exp_avg, exp_avg_sq) = (params?, exp_avg?, exp_avg_sq?);
            for t in &unit.tensors {
                let n: usize = t.shape.iter().product();
                let span = t.offset..t.offset + n;
                model.push(Tensor::f32(
                    t.name.clone(),
                    t.shape.clone(),
                    &params[span.clone()],
                ));
                optimizer.push(Tensor::f32(
                    format!("{}.exp_avg", t.name),
                    vec![n],
                    &exp_avg[span.clone()],
                ));
                optimizer.push(Tensor::f32(
                    format!("{}.exp_avg_sq", t.name),
                    vec![n],
                    &exp_avg_sq[span],
                ));
            }
        }
        optimizer.push(Tensor::u64("step", vec![1], &[self.step()?]));
        Ok(kormo_checkpoint::save_with_budget(
            target,
            self.meta.run.clone(),
            &[(MODEL_FILE, model), (OPTIMIZER_FILE, optimizer)],
            budget,
        )?)
    }
}

/// A single-process checkpoint at `target` from a sharded engine (collective): every rank
/// saves its shards into a hidden directory next to `target`, rank 0 writes the checkpoint
/// from them (atomically, its writes drawn from `disk`) and removes the shards whether or not
/// that worked, and every rank learns rank 0's outcome, so all continue or all stop with the
/// error (rank 0 with the reason, the others naming rank 0).
pub fn save_consolidated<S: ShardedState + ?Sized>(
    rank: &S,
    target: &Path,
    run: &RunState,
    disk: &DiskBudget,
) -> Result<(), DistError> {
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("checkpoint");
    let shards = target.with_file_name(format!(".sharded-{name}"));
    save(rank, &shards, run)?;
    let mut outcome = Ok(());
    if rank.world_rank() == 0 {
        outcome = ShardedCheckpoint::open(&shards)
            .and_then(|c| c.consolidate_with_budget(target, disk))
            .map(|_| ());
        std::fs::remove_dir_all(&shards).map_err(|e| io_error(&shards, "cannot remove", e))?;
    }
    let mut failed = [if outcome.is_err() { 1.0 } else { 0.0 }];
    rank.all_reduce_world(&mut failed)?;
    match outcome {
        Err(e) => Err(e),
        Ok(()) if failed[0] > 0.0 => Err(DistError::Checkpoint(CheckpointError::new(
            target,
            "rank 0 could not write this checkpoint",
        ))),
        Ok(()) => Ok(()),
    }
}

/// Loads this rank's shards of `full` (the f32 weights of record, in parameter order; None:
/// keep the current shards) into `rank`, with a single-process checkpoint's AdamW moments and
/// step when `checkpoint` is given, zero moments at step 0 otherwise.
pub fn load_state<S: ShardedState + ?Sized>(
    rank: &mut S,
    full: Option<&[Vec<f32>]>,
    checkpoint: Option<&kormo_checkpoint::Checkpoint>,
) -> Result<(), DistError> {
    let specs = rank.param_specs().to_vec();
    let units = rank.units().to_vec();
    let ranges = rank.ranges().to_vec();
    type Tensors<'t> = &'t dyn Fn(usize) -> Result<Vec<f32>, DistError>;
    let shard = |tensor: Tensors<'_>| -> Result<Vec<Vec<f32>>, DistError> {
        units
            .iter()
            .zip(&ranges)
            .map(|(unit, range)| {
                let mut flat = Vec::with_capacity(unit.numel);
                for &t in &unit.tensors {
                    flat.extend(tensor(t)?);
                }
                Ok(flat[range.start..range.end].to_vec())
            })
            .collect()
    };
    let params = match full {
        Some(full) => shard(&|t| Ok(full[t].clone()))?,
        None => rank.host_shards()?.0[0].clone(),
    };
    let Some(checkpoint) = checkpoint else {
        let zeros: Vec<Vec<f32>> = params.iter().map(|p| vec![0.0; p.len()]).collect();
        return rank.load_shards(params, &zeros, &zeros, 0);
    };
    let file = checkpoint.file(OPTIMIZER_FILE)?;
    let moment = |suffix: &str| {
        shard(&|t| {
            let name = format!("{}{suffix}", specs[t].name);
            Ok(file.f32(&name, Some(&[specs[t].numel()]))?)
        })
    };
    let exp_avg = moment(".exp_avg")?;
    let exp_avg_sq = moment(".exp_avg_sq")?;
    let step = file.u64("step", Some(&[1]))?[0];
    rank.load_shards(params, &exp_avg, &exp_avg_sq, step)
}
