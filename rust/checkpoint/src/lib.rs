//! kormo-checkpoint: everything a training run needs to stop and continue bit for bit.
//!
//! A checkpoint is a directory:
//!   manifest.json        format version, step, stage/phase, config hash, RNG state, data cursor,
//!                        free-form trainer state, and for every file its size and every tensor's
//!                        dtype, shape and crc32
//!   <name>.safetensors   one or more tensor files (model weights, optimizer moments, ...)
//! Writes are atomic: everything goes into a hidden temp directory next to the target, every file
//! and the directory are fsynced, then the directory is renamed into place, so a crash leaves
//! either the old checkpoint or the new one, never half of one. Loading re-checks every size and
//! checksum against the manifest and names the offending file. Pruning renames a checkpoint
//! out of the listed `step-*` names before deleting it, and listing requires a complete
//! manifest (every file it names present at its recorded size), so no kill leaves a
//! half-deleted checkpoint that still looks like one. See docs/checkpoint-format.md.

pub mod fault;
pub mod safetensors;

pub use safetensors::{DiskBudget, Dtype, SafetensorsFile, Tensor};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Bumped whenever the layout of the directory or manifest changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;
pub const MANIFEST_FILE: &str = "manifest.json";
const TEMP_PREFIX: &str = ".tmp-";
/// A checkpoint moved aside by [`save`] while its replacement is renamed into place.
const RETIRED_PREFIX: &str = ".old-";
/// A checkpoint moved out of the listed names by [`keep_last`], about to be deleted.
const PRUNED_PREFIX: &str = ".pruned-";

/// An error that names the file (or directory) it is about.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointError {
    pub path: PathBuf,
    pub message: String,
}

impl CheckpointError {
    pub fn new(path: &Path, message: impl Into<String>) -> CheckpointError {
        CheckpointError {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

impl std::error::Error for CheckpointError {}

/// What the manifest records about one tensor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorRecord {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub crc32: u32,
}

/// What the manifest records about one tensor file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRecord {
    pub bytes: u64,
    pub tensors: BTreeMap<String, TensorRecord>,
}

/// The caller-supplied part of a manifest: where the run is and how to continue it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunState {
    /// Optimizer steps taken in this stage.
    pub step: u64,
    pub stage: String,
    pub phase: String,
    /// Hash of the recipe that produced this checkpoint; resuming under another recipe is refused.
    pub config_hash: String,
    pub rng_state: serde_json::Value,
    pub data_cursor: serde_json::Value,
    /// Anything else the trainer needs (phase step, token count, ...).
    pub trainer: serde_json::Value,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub run: RunState,
    pub files: BTreeMap<String, FileRecord>,
}

impl Manifest {
    /// Reads and parses `dir/manifest.json` (format version checked; files not opened).
    pub fn read(dir: &Path) -> Result<Manifest, CheckpointError> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&manifest_path).map_err(|e| {
            CheckpointError::new(
                &manifest_path,
                format!("cannot read checkpoint manifest: {e}"),
            )
        })?;
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| CheckpointError::new(&manifest_path, format!("bad manifest: {e}")))?;
        if manifest.format_version != FORMAT_VERSION {
            return Err(CheckpointError::new(
                &manifest_path,
                format!(
                    "format version {} is not the supported version {FORMAT_VERSION}",
                    manifest.format_version
                ),
            ));
        }
        Ok(manifest)
    }
}

/// True when `dir` holds a manifest that parses and every file it names: the marker that a
/// checkpoint directory is whole (the manifest is written last and the directory appears by
/// one rename), which a deletion stopped half-way does not have. Sizes and checksums are left
/// to [`Checkpoint::load`], so a damaged file is listed and then reported, not hidden.
pub fn is_complete(dir: &Path) -> bool {
    Manifest::read(dir).is_ok_and(|manifest| {
        manifest
            .files
            .keys()
            .all(|name| dir.join(name).is_file())
    })
}

/// A checkpoint read back and fully validated.
#[derive(Debug)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub manifest: Manifest,
    files: BTreeMap<String, SafetensorsFile>,
}

impl Checkpoint {
    /// A tensor file by its name in the manifest (e.g. "model.safetensors").
    pub fn file(&self, name: &str) -> Result<&SafetensorsFile, CheckpointError> {
        self.files.get(name).ok_or_else(|| {
            CheckpointError::new(&self.dir.join(name), "file not in this checkpoint")
        })
    }

    /// Loads and validates the checkpoint directory `dir`.
    pub fn load(dir: &Path) -> Result<Checkpoint, CheckpointError> {
        let manifest = Manifest::read(dir)?;
        let mut files = BTreeMap::new();
        for (name, record) in &manifest.files {
            let path = dir.join(name);
            let bytes = std::fs::read(&path)
                .map_err(|e| CheckpointError::new(&path, format!("cannot read: {e}")))?;
            if bytes.len() as u64 != record.bytes {
                return Err(CheckpointError::new(
                    &path,
                    format!(
                        "size {} bytes but the manifest says {} (truncated or replaced file)",
                        bytes.len(),
                        record.bytes
                    ),
                ));
            }
            let file = SafetensorsFile::parse(&path, bytes)?;
            for (tensor, expected) in &record.tensors {
                let info = file.info(tensor)?;
                if info.dtype != expected.dtype || info.shape != expected.shape {
                    return Err(CheckpointError::new(
                        &path,
                        format!(
                            "tensor `{tensor}` is {} {:?} but the manifest says {} {:?}",
                            info.dtype.name(),
                            info.shape,
                            expected.dtype.name(),
                            expected.shape
                        ),
                    ));
                }
                let actual = crc32fast::hash(file.raw(tensor)?);
                if actual != expected.crc32 {
                    return Err(CheckpointError::new(&path, format!(
                        "checksum mismatch in tensor `{tensor}`: crc32 {actual:08x}, manifest {:08x}", expected.crc32
                    )));
                }
            }
            if let Some(extra) = file
                .tensors()
                .keys()
                .find(|t| !record.tensors.contains_key(*t))
            {
                return Err(CheckpointError::new(
                    &path,
                    format!("tensor `{extra}` is not listed in the manifest"),
                ));
            }
            files.insert(name.clone(), file);
        }
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            manifest,
            files,
        })
    }
}

/// Writes a checkpoint to `target` atomically (replacing an existing one there) and returns its manifest.
/// `files` maps file names (ending in `.safetensors`) to their tensors.
pub fn save(
    target: &Path,
    run: RunState,
    files: &[(&str, Vec<Tensor>)],
) -> Result<Manifest, CheckpointError> {
    save_with_budget(target, run, files, &DiskBudget::unlimited())
}

/// [`save`] with every byte drawn from `budget` (a spent budget fails like a full disk). A
/// failed save removes its temp directory and leaves any checkpoint already at `target` as it
/// was; the error says so.
pub fn save_with_budget(
    target: &Path,
    run: RunState,
    files: &[(&str, Vec<Tensor>)],
    budget: &DiskBudget,
) -> Result<Manifest, CheckpointError> {
    let parent = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let base = target.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        CheckpointError::new(target, "checkpoint path needs a UTF-8 final component")
    })?;
    std::fs::create_dir_all(parent)
        .map_err(|e| CheckpointError::new(parent, format!("cannot create directory: {e}")))?;
    recover_interrupted(parent);
    let unique = format!("{base}-{}-{}", std::process::id(), nanos());
    let temp = parent.join(format!("{TEMP_PREFIX}{unique}"));
    fault::point("create temp directory");
    std::fs::create_dir(&temp)
        .map_err(|e| CheckpointError::new(&temp, format!("cannot create: {e}")))?;
    let written = write_temp(&temp, run, files, budget);
    let manifest = match written {
        Ok(manifest) => manifest,
        Err(mut e) => {
            // Leave nothing half-written behind; the target was not touched.
            let _ = std::fs::remove_dir_all(&temp);
            let previous = if target.join(MANIFEST_FILE).is_file() {
                format!("the previous checkpoint at {} is intact", target.display())
            } else {
                "no checkpoint was written".to_string()
            };
            e.message = format!("{} ({previous})", e.message);
            if e.message.contains("os error 28") {
                e.message
                    .push_str("; the disk is full: free space and resume");
            }
            return Err(e);
        }
    };

    // Move an existing checkpoint aside first: rename cannot replace a non-empty directory.
    let retired = parent.join(format!("{RETIRED_PREFIX}{unique}"));
    let had_previous = target.exists();
    if had_previous {
        fault::point("move the old checkpoint aside");
        std::fs::rename(target, &retired).map_err(|e| {
            CheckpointError::new(target, format!("cannot move old checkpoint aside: {e}"))
        })?;
    }
    fault::point("rename the new checkpoint into place");
    std::fs::rename(&temp, target)
        .map_err(|e| CheckpointError::new(target, format!("cannot rename into place: {e}")))?;
    fault::point("sync the parent directory");
    sync_dir(parent)?;
    if had_previous {
        remove_hidden(&retired)?;
    }
    Ok(manifest)
}

/// Writes every file and the manifest of a checkpoint into the fresh directory `temp`, synced.
fn write_temp(
    temp: &Path,
    run: RunState,
    files: &[(&str, Vec<Tensor>)],
    budget: &DiskBudget,
) -> Result<Manifest, CheckpointError> {
    let mut records = BTreeMap::new();
    for (name, tensors) in files {
        if !name.ends_with(".safetensors") || name.contains('/') || *name == MANIFEST_FILE {
            return Err(CheckpointError::new(
                &temp.join(name),
                "tensor file names must be plain `*.safetensors` names",
            ));
        }
        let path = temp.join(name);
        fault::point("write a tensor file");
        safetensors::write_with_budget(
            &path,
            tensors,
            &BTreeMap::from([("format".to_string(), "pt".to_string())]),
            budget,
        )?;
        let bytes = std::fs::metadata(&path)
            .map_err(|e| CheckpointError::new(&path, e.to_string()))?
            .len();
        let tensors = tensors
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    TensorRecord {
                        dtype: t.dtype,
                        shape: t.shape.clone(),
                        crc32: crc32fast::hash(&t.bytes),
                    },
                )
            })
            .collect();
        records.insert(name.to_string(), FileRecord { bytes, tensors });
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        run,
        files: records,
    };
    let manifest_path = temp.join(MANIFEST_FILE);
    fault::point("write the manifest");
    write_synced(
        &manifest_path,
        serde_json::to_string_pretty(&manifest)
            .expect("manifest serialises")
            .as_bytes(),
        budget,
    )?;
    fault::point("sync the temp directory");
    sync_dir(temp)?;
    Ok(manifest)
}

/// Name of the periodic checkpoint for `step` (zero-padded so names sort by step).
pub fn step_dir_name(step: u64) -> String {
    format!("step-{step:09}")
}

/// Complete periodic checkpoints (`step-*`, see [`is_complete`]) in `dir`, oldest first.
/// Temp, retired and pruned directories are hidden names and never listed.
pub fn list_steps(dir: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut steps: Vec<(u64, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let step = name.strip_prefix("step-")?.parse().ok()?;
            is_complete(&e.path()).then(|| (step, e.path()))
        })
        .collect();
    steps.sort();
    steps
}

/// Deletes all but the newest `keep` periodic checkpoints in `dir`. Each one is first renamed
/// to a hidden `.pruned-` name (one atomic step that takes it out of [`list_steps`]), the
/// directory is synced, and only then are its files deleted; pruned leftovers of an earlier
/// interrupted call are deleted first.
pub fn keep_last(dir: &Path, keep: usize) -> Result<(), CheckpointError> {
    for leftover in hidden_entries(dir, PRUNED_PREFIX) {
        remove_hidden(&leftover)?;
    }
    let steps = list_steps(dir);
    for (_, path) in steps.iter().take(steps.len().saturating_sub(keep)) {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let pruned = dir.join(format!(
            "{PRUNED_PREFIX}{name}-{}-{}",
            std::process::id(),
            nanos()
        ));
        fault::point("rename a pruned checkpoint out of the listing");
        std::fs::rename(path, &pruned).map_err(|e| {
            CheckpointError::new(
                path,
                format!("cannot move old checkpoint aside for removal: {e}"),
            )
        })?;
        fault::point("sync the checkpoints directory");
        sync_dir(dir)?;
        remove_hidden(&pruned)?;
    }
    Ok(())
}

/// Entries of `dir` whose names start with `prefix`.
fn hidden_entries(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect()
}

/// Deletes a checkpoint directory that already has a hidden name, file by file (a checkpoint
/// directory holds only files), so the fault hook can stop it between any two deletions.
fn remove_hidden(path: &Path) -> Result<(), CheckpointError> {
    let io = |e: std::io::Error| {
        CheckpointError::new(path, format!("cannot remove old checkpoint: {e}"))
    };
    for entry in std::fs::read_dir(path).map_err(io)? {
        let entry = entry.map_err(io)?;
        fault::point("delete a file of a hidden checkpoint");
        if entry.file_type().map_err(io)?.is_dir() {
            std::fs::remove_dir_all(entry.path()).map_err(io)?;
        } else {
            std::fs::remove_file(entry.path()).map_err(io)?;
        }
    }
    fault::point("delete a hidden checkpoint directory");
    std::fs::remove_dir(path).map_err(io)
}

/// Tidies the leftovers of an interrupted save or prune in `dir` (every [`save`] does this
/// first; call it before reading checkpoints after a crash): temp and pruned directories are
/// deleted, and a retired checkpoint whose replacement never arrived (a kill between the two
/// renames of [`save`]) is renamed back to its name. Best effort: failing to tidy is no error.
pub fn recover_interrupted(dir: &Path) {
    for prefix in [TEMP_PREFIX, PRUNED_PREFIX, RETIRED_PREFIX] {
        for path in hidden_entries(dir, prefix) {
            if prefix == RETIRED_PREFIX {
                if let Some(original) = retired_original(dir, &path) {
                    if !original.exists() && is_complete(&path) {
                        let _ = std::fs::rename(&path, &original);
                        continue;
                    }
                }
            }
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// `dir/<base>` for a retired `dir/.old-<base>-<pid>-<nanos>`.
fn retired_original(dir: &Path, retired: &Path) -> Option<PathBuf> {
    let name = retired
        .file_name()?
        .to_str()?
        .strip_prefix(RETIRED_PREFIX)?;
    let mut parts = name.rsplitn(3, '-');
    let (_nanos, _pid, base) = (parts.next()?, parts.next()?, parts.next()?);
    Some(dir.join(base))
}

fn write_synced(path: &Path, bytes: &[u8], budget: &DiskBudget) -> Result<(), CheckpointError> {
    use std::io::Write;
    let io = |e: std::io::Error| CheckpointError::new(path, format!("cannot write: {e}"));
    let mut file = budget.writer(std::fs::File::create(path).map_err(io)?);
    file.write_all(bytes).map_err(io)?;
    file.into_inner().sync_all().map_err(io)
}

fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| CheckpointError::new(dir, format!("cannot fsync directory: {e}")))
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}
