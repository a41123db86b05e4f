//! The safetensors file format, parsed and serialised by the `safetensors` crate (the format's
//! reference implementation); this module adds what a checkpoint needs around it: errors naming the
//! file and the tensor, kormo's four dtypes, fsynced writes through a [`DiskBudget`].
//!
//! Layout: an 8-byte little-endian `u64` N, then N bytes of JSON header, then the data buffer.
//! The header maps each tensor name to `{"dtype", "shape", "data_offsets": [begin, end]}` (offsets
//! relative to the start of the data buffer) plus an optional `"__metadata__"` string map. Tensor
//! data is raw little-endian, row-major. The header is padded with spaces to a multiple of 8 bytes
//! (as the crate's own writer does) and tensors are laid out in name order with no holes, as kormo
//! has always written them (the crate's `serialize` would order them by dtype instead). The crate
//! validates every file on load: offsets inside the buffer, byte length == dtype size x element
//! count, no overlaps or holes, and the file not truncated, so a corrupt file becomes an error
//! naming the file (and, where one is at fault, the tensor) instead of garbage weights.

use crate::CheckpointError;
use safetensors::tensor::{Metadata, TensorInfo as HeaderEntry, TensorView};
use safetensors::{SafeTensorError, SafeTensors};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Element types kormo stores: f32 weights and moments, bf16 exports, u32/u64 counters and ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Dtype {
    F32,
    BF16,
    U32,
    U64,
}

impl Dtype {
    pub fn size_bytes(self) -> usize {
        match self {
            Dtype::BF16 => 2,
            Dtype::F32 | Dtype::U32 => 4,
            Dtype::U64 => 8,
        }
    }

    /// The spelling used in safetensors headers.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::BF16 => "BF16",
            Dtype::U32 => "U32",
            Dtype::U64 => "U64",
        }
    }

    fn to_header(self) -> safetensors::Dtype {
        match self {
            Dtype::F32 => safetensors::Dtype::F32,
            Dtype::BF16 => safetensors::Dtype::BF16,
            Dtype::U32 => safetensors::Dtype::U32,
            Dtype::U64 => safetensors::Dtype::U64,
        }
    }

    fn from_header(dtype: safetensors::Dtype) -> Option<Dtype> {
        [Dtype::F32, Dtype::BF16, Dtype::U32, Dtype::U64]
            .into_iter()
            .find(|d| d.to_header() == dtype)
    }
}

/// One tensor to write: its bytes are already little-endian.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl Tensor {
    pub fn f32(name: impl Into<String>, shape: Vec<usize>, values: &[f32]) -> Tensor {
        Tensor::encoded(name, Dtype::F32, shape, values, f32::to_le_bytes)
    }

    /// bf16 values given as their raw 16-bit patterns.
    pub fn bf16(name: impl Into<String>, shape: Vec<usize>, bits: &[u16]) -> Tensor {
        Tensor::encoded(name, Dtype::BF16, shape, bits, u16::to_le_bytes)
    }

    pub fn u32(name: impl Into<String>, shape: Vec<usize>, values: &[u32]) -> Tensor {
        Tensor::encoded(name, Dtype::U32, shape, values, u32::to_le_bytes)
    }

    pub fn u64(name: impl Into<String>, shape: Vec<usize>, values: &[u64]) -> Tensor {
        Tensor::encoded(name, Dtype::U64, shape, values, u64::to_le_bytes)
    }

    /// A tensor of `values`, each stored as `encode` gives it (little-endian).
    fn encoded<const N: usize, T: Copy>(
        name: impl Into<String>,
        dtype: Dtype,
        shape: Vec<usize>,
        values: &[T],
        encode: fn(T) -> [u8; N],
    ) -> Tensor {
        Tensor {
            name: name.into(),
            dtype,
            shape,
            bytes: values.iter().flat_map(|&v| encode(v)).collect(),
        }
    }

    pub fn num_elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Serialises `tensors` (any order; written sorted by name) with `metadata` into one file and
/// fsyncs it. Fails on duplicate names or a byte length that does not match the shape.
pub fn write(
    path: &Path,
    tensors: &[Tensor],
    metadata: &BTreeMap<String, String>,
) -> Result<(), CheckpointError> {
    write_with_budget(path, tensors, metadata, &DiskBudget::unlimited())
}

/// [`write`] through `budget`, which fails like a full disk once it is spent (see [`DiskBudget`]).
pub(crate) fn write_with_budget(
    path: &Path,
    tensors: &[Tensor],
    metadata: &BTreeMap<String, String>,
    budget: &DiskBudget,
) -> Result<(), CheckpointError> {
    let mut sorted: Vec<&Tensor> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let header_bytes = header(path, &sorted, metadata)?;
    let io = |e: std::io::Error| CheckpointError::new(path, format!("cannot write: {e}"));
    let file = std::fs::File::create(path).map_err(io)?;
    let mut out = std::io::BufWriter::new(budget.writer(file));
    out.write_all(&(header_bytes.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(&header_bytes).map_err(io)?;
    for t in &sorted {
        out.write_all(&t.bytes).map_err(io)?;
    }
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.into_inner().sync_all().map_err(io)?;
    Ok(())
}

/// The padded JSON header of `sorted` (tensors in name order, laid out back to back) and
/// `metadata`, checked and serialised by the crate.
fn header(
    path: &Path,
    sorted: &[&Tensor],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>, CheckpointError> {
    let bad = |msg: String| CheckpointError::new(path, msg);
    let mut entries = Vec::with_capacity(sorted.len());
    let mut offset = 0usize;
    for (i, t) in sorted.iter().enumerate() {
        if t.name == "__metadata__" || (i > 0 && sorted[i - 1].name == t.name) {
            return Err(bad(format!(
                "tensor name `{}` used twice or reserved",
                t.name
            )));
        }
        let view = TensorView::new(t.dtype.to_header(), t.shape.clone(), &t.bytes);
        if view.is_err() {
            return Err(bad(format!(
                "tensor `{}`: {} bytes do not match shape {:?} of {}",
                t.name,
                t.bytes.len(),
                t.shape,
                t.dtype.name()
            )));
        }
        let end = offset + t.bytes.len();
        entries.push((
            t.name.clone(),
            HeaderEntry {
                dtype: t.dtype.to_header(),
                shape: t.shape.clone(),
                data_offsets: (offset, end),
            },
        ));
        offset = end;
    }
    let metadata = (!metadata.is_empty()).then(|| {
        metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    });
    let header = Metadata::new(metadata, entries).map_err(|e| bad(format!("bad header: {e}")))?;
    let mut bytes = serde_json::to_vec(&header).map_err(|e| bad(format!("bad header: {e}")))?;
    bytes.resize(bytes.len().next_multiple_of(8), b' ');
    Ok(bytes)
}

/// How many more bytes checkpoint writes may put on disk before failing with ENOSPC, as a full
/// disk does (writes up to the limit land, the next one fails). Unlimited in normal use; a
/// limit is the fault-injection seam that tests the disk-full path of the real writer.
#[derive(Debug)]
pub struct DiskBudget {
    remaining: std::cell::Cell<Option<u64>>,
}

impl DiskBudget {
    pub fn unlimited() -> DiskBudget {
        DiskBudget {
            remaining: std::cell::Cell::new(None),
        }
    }

    /// Fails every write after `bytes` bytes in total.
    pub fn fail_after(bytes: u64) -> DiskBudget {
        DiskBudget {
            remaining: std::cell::Cell::new(Some(bytes)),
        }
    }

    pub(crate) fn writer(&self, file: std::fs::File) -> BudgetedFile<'_> {
        BudgetedFile { file, budget: self }
    }
}

/// A file whose writes draw on a [`DiskBudget`].
pub(crate) struct BudgetedFile<'a> {
    file: std::fs::File,
    budget: &'a DiskBudget,
}

impl BudgetedFile<'_> {
    pub(crate) fn into_inner(self) -> std::fs::File {
        self.file
    }
}

impl Write for BudgetedFile<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let allowed = match self.budget.remaining.get() {
            None => buf.len(),
            Some(0) if !buf.is_empty() => {
                // ENOSPC, exactly what write(2) reports on a full disk.
                return Err(std::io::Error::from_raw_os_error(28));
            }
            Some(left) => buf.len().min(left.try_into().unwrap_or(usize::MAX)),
        };
        let written = self.file.write(&buf[..allowed])?;
        if let Some(left) = self.budget.remaining.get() {
            self.budget.remaining.set(Some(left - written as u64));
        }
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Where one tensor lives inside a loaded file.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Absolute byte range inside the file.
    pub range: std::ops::Range<usize>,
}

/// A whole safetensors file in memory, validated on load.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    bytes: Vec<u8>,
    tensors: BTreeMap<String, TensorInfo>,
    metadata: BTreeMap<String, String>,
}

impl SafetensorsFile {
    pub fn read(path: &Path) -> Result<SafetensorsFile, CheckpointError> {
        let bytes = std::fs::read(path)
            .map_err(|e| CheckpointError::new(path, format!("cannot read: {e}")))?;
        Self::parse(path, bytes)
    }

    /// Parses and validates `bytes` (the contents of `path`, named in errors).
    pub fn parse(path: &Path, bytes: Vec<u8>) -> Result<SafetensorsFile, CheckpointError> {
        let bad = |msg: String| CheckpointError::new(path, msg);
        let (header_len, header) =
            SafeTensors::read_metadata(&bytes).map_err(|e| bad(describe(e, &bytes)))?;
        let data_start = 8 + header_len;
        let mut tensors = BTreeMap::new();
        for name in header.offset_keys() {
            let entry = header
                .info(&name)
                .expect("offset_keys names header entries");
            let dtype = Dtype::from_header(entry.dtype).ok_or_else(|| {
                bad(format!(
                    "tensor `{name}`: unsupported dtype `{}` (F32, BF16, U32, U64)",
                    entry.dtype
                ))
            })?;
            let (begin, end) = entry.data_offsets;
            let info = TensorInfo {
                dtype,
                shape: entry.shape.clone(),
                range: data_start + begin..data_start + end,
            };
            tensors.insert(name, info);
        }
        let metadata = header
            .metadata()
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            bytes,
            tensors,
            metadata,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    pub fn info(&self, name: &str) -> Result<&TensorInfo, CheckpointError> {
        self.tensors
            .get(name)
            .ok_or_else(|| CheckpointError::new(&self.path, format!("missing tensor `{name}`")))
    }

    /// The raw little-endian bytes of one tensor.
    pub fn raw(&self, name: &str) -> Result<&[u8], CheckpointError> {
        Ok(&self.bytes[self.info(name)?.range.clone()])
    }

    fn typed(
        &self,
        name: &str,
        dtype: Dtype,
        expect_shape: Option<&[usize]>,
    ) -> Result<&[u8], CheckpointError> {
        let info = self.info(name)?;
        if info.dtype != dtype {
            return Err(CheckpointError::new(
                &self.path,
                format!(
                    "tensor `{name}` is {}, expected {}",
                    info.dtype.name(),
                    dtype.name()
                ),
            ));
        }
        if let Some(shape) = expect_shape {
            if info.shape != shape {
                return Err(CheckpointError::new(
                    &self.path,
                    format!(
                        "tensor `{name}` has shape {:?}, expected {:?}",
                        info.shape, shape
                    ),
                ));
            }
        }
        self.raw(name)
    }

    /// An F32 tensor's values; `expect_shape` (when given) must match exactly.
    pub fn f32(
        &self,
        name: &str,
        expect_shape: Option<&[usize]>,
    ) -> Result<Vec<f32>, CheckpointError> {
        let raw = self.typed(name, Dtype::F32, expect_shape)?;
        Ok(from_little_endian(raw, f32::from_le_bytes))
    }

    pub fn u64(
        &self,
        name: &str,
        expect_shape: Option<&[usize]>,
    ) -> Result<Vec<u64>, CheckpointError> {
        let raw = self.typed(name, Dtype::U64, expect_shape)?;
        Ok(from_little_endian(raw, u64::from_le_bytes))
    }

    pub fn u32(
        &self,
        name: &str,
        expect_shape: Option<&[usize]>,
    ) -> Result<Vec<u32>, CheckpointError> {
        let raw = self.typed(name, Dtype::U32, expect_shape)?;
        Ok(from_little_endian(raw, u32::from_le_bytes))
    }

    /// bf16 values as raw 16-bit patterns.
    pub fn bf16(
        &self,
        name: &str,
        expect_shape: Option<&[usize]>,
    ) -> Result<Vec<u16>, CheckpointError> {
        let raw = self.typed(name, Dtype::BF16, expect_shape)?;
        Ok(from_little_endian(raw, u16::from_le_bytes))
    }
}

/// Decodes little-endian `N`-byte elements (`raw.len()` is a multiple of `N`, checked when
/// the file was opened).
fn from_little_endian<const N: usize, T>(raw: &[u8], decode: fn([u8; N]) -> T) -> Vec<T> {
    raw.chunks_exact(N)
        .map(|c| decode(c.try_into().expect("chunks_exact yields N bytes")))
        .collect()
}

/// What is wrong with `bytes`, which the crate rejected with `error`, in words that name the
/// tensor at fault (the crate leaves it out of some errors) and say how far the file got.
fn describe(error: SafeTensorError, bytes: &[u8]) -> String {
    let header_len = bytes
        .get(..8)
        .map_or(0, |n| u64::from_le_bytes(n.try_into().expect("8 bytes")));
    match error {
        SafeTensorError::HeaderTooSmall => format!(
            "truncated: {} bytes, shorter than the 8-byte header length",
            bytes.len()
        ),
        SafeTensorError::HeaderTooLarge => {
            format!("bad header: header length {header_len} is over the format's 100 MB limit")
        }
        SafeTensorError::InvalidHeaderLength => format!(
            "truncated or bad header: header length {header_len} exceeds file size {}",
            bytes.len()
        ),
        SafeTensorError::InvalidHeader(e) => format!("bad header JSON: not UTF-8 ({e})"),
        SafeTensorError::InvalidHeaderDeserialization(e) => format!("bad header JSON: {e}"),
        // The framing and the JSON are sound: the entries themselves do not fit together.
        error => {
            let header_end =
                usize::try_from(header_len).map_or(usize::MAX, |n| n.saturating_add(8));
            let described = bytes
                .get(8..header_end)
                .and_then(|json| describe_layout(&header_entries(json), bytes.len() - header_end));
            described.unwrap_or_else(|| error.to_string())
        }
    }
}

/// The header's tensor entries in data order (the header parsed, but failed validation).
fn header_entries(json: &[u8]) -> Vec<(String, HeaderEntry)> {
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(json).unwrap_or_default();
    let mut entries: Vec<(String, HeaderEntry)> = map
        .into_iter()
        .filter(|(name, _)| name != "__metadata__")
        .filter_map(|(name, v)| Some((name, serde_json::from_value(v).ok()?)))
        .collect();
    entries.sort_by_key(|(_, e)| e.data_offsets);
    entries
}

/// The first flaw in how `entries` cover a `data_len`-byte buffer: a tensor whose byte range
/// does not match its shape, an overlap or hole, a range past the end, or trailing bytes.
fn describe_layout(entries: &[(String, HeaderEntry)], data_len: usize) -> Option<String> {
    let mut previous_end = 0;
    for (name, entry) in entries {
        let (begin, end) = entry.data_offsets;
        let bytes = entry
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .and_then(|n| n.checked_mul(entry.dtype.bitsize()))
            .filter(|bits| bits % 8 == 0)
            .map(|bits| bits / 8);
        if begin != previous_end || end < begin {
            return Some(format!("tensor `{name}`: data_offsets [{begin}, {end}] do not start where the previous tensor ended, at {previous_end} (overlap or hole)"));
        }
        if bytes != Some(end - begin) {
            return Some(format!(
                "tensor `{name}`: {} bytes do not match shape {:?} of {}",
                end - begin,
                entry.shape,
                entry.dtype
            ));
        }
        if end > data_len {
            return Some(format!("tensor `{name}`: data_offsets [{begin}, {end}] outside the {data_len}-byte data buffer (truncated file?)"));
        }
        previous_end = end;
    }
    (previous_end < data_len).then(|| {
        format!(
            "{} trailing bytes after the last tensor",
            data_len - previous_end
        )
    })
}
