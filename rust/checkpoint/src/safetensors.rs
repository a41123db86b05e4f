//! The safetensors file format, written and read by hand (no third-party crate).
//!
//! Layout: an 8-byte little-endian `u64` N, then N bytes of JSON header, then the data buffer.
//! The header maps each tensor name to `{"dtype", "shape", "data_offsets": [begin, end]}` (offsets
//! relative to the start of the data buffer) plus an optional `"__metadata__"` string map. Tensor
//! data is raw little-endian, row-major. We pad the header with spaces to a multiple of 8 bytes
//! (as the reference implementation does) so every tensor starts 8-byte aligned, and we lay tensors
//! out in name order with no holes. The reader checks all of that: offsets inside the buffer,
//! byte length == dtype size x element count, no overlaps or holes, and the file is not truncated,
//! so a corrupt file becomes an error naming the file instead of garbage weights.

use crate::CheckpointError;
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

    fn parse(name: &str) -> Option<Dtype> {
        [Dtype::F32, Dtype::BF16, Dtype::U32, Dtype::U64]
            .into_iter()
            .find(|d| d.name() == name)
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
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert(
            "__metadata__".into(),
            serde_json::to_value(metadata).expect("string map serialises"),
        );
    }
    let mut offset = 0usize;
    for t in &sorted {
        if t.bytes.len() != t.num_elements() * t.dtype.size_bytes() {
            return Err(CheckpointError::new(
                path,
                format!(
                    "tensor `{}`: {} bytes do not match shape {:?} of {}",
                    t.name,
                    t.bytes.len(),
                    t.shape,
                    t.dtype.name()
                ),
            ));
        }
        if t.name == "__metadata__" || header.contains_key(&t.name) {
            return Err(CheckpointError::new(
                path,
                format!("tensor name `{}` used twice or reserved", t.name),
            ));
        }
        header.insert(
            t.name.clone(),
            serde_json::json!({
                "dtype": t.dtype.name(),
                "shape": t.shape,
                "data_offsets": [offset, offset + t.bytes.len()],
            }),
        );
        offset += t.bytes.len();
    }
    let mut header_bytes = serde_json::to_vec(&header).expect("json map serialises");
    while !header_bytes.len().is_multiple_of(8) {
        header_bytes.push(b' ');
    }
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
        if bytes.len() < 8 {
            return Err(bad(format!(
                "truncated: {} bytes, shorter than the 8-byte header length",
                bytes.len()
            )));
        }
        let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        let data_start = 8u64
            .checked_add(header_len)
            .filter(|&end| end <= bytes.len() as u64)
            .ok_or_else(|| {
                bad(format!(
                    "truncated or bad header: header length {header_len} exceeds file size {}",
                    bytes.len()
                ))
            })? as usize;
        let header: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&bytes[8..data_start])
                .map_err(|e| bad(format!("bad header JSON: {e}")))?;
        let data_len = bytes.len() - data_start;
        let mut metadata = BTreeMap::new();
        let mut tensors = BTreeMap::new();
        for (name, entry) in header {
            if name == "__metadata__" {
                metadata = serde_json::from_value(entry)
                    .map_err(|e| bad(format!("bad __metadata__: {e}")))?;
                continue;
            }
            let info = parse_entry(&entry, data_start, data_len)
                .map_err(|msg| bad(format!("tensor `{name}`: {msg}")))?;
            tensors.insert(name, info);
        }
        let mut ranges: Vec<(&String, &std::ops::Range<usize>)> =
            tensors.iter().map(|(n, t)| (n, &t.range)).collect();
        ranges.sort_by_key(|(_, r)| (r.start, r.end));
        let mut expected_start = data_start;
        for (name, range) in ranges {
            if range.start != expected_start {
                return Err(bad(format!("tensor `{name}` starts at byte {} but the previous tensor ended at {expected_start} (overlap or hole)", range.start)));
            }
            expected_start = range.end;
        }
        if expected_start != bytes.len() {
            return Err(bad(format!(
                "{} trailing bytes after the last tensor",
                bytes.len() - expected_start
            )));
        }
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

fn parse_entry(
    entry: &serde_json::Value,
    data_start: usize,
    data_len: usize,
) -> Result<TensorInfo, String> {
    let dtype_name = entry
        .get("dtype")
        .and_then(|d| d.as_str())
        .ok_or("missing `dtype`")?;
    let dtype = Dtype::parse(dtype_name)
        .ok_or_else(|| format!("unsupported dtype `{dtype_name}` (F32, BF16, U32, U64)"))?;
    let shape: Vec<usize> = entry
        .get("shape")
        .and_then(|s| serde_json::from_value(s.clone()).ok())
        .ok_or("missing or bad `shape`")?;
    let offsets: [usize; 2] = entry
        .get("data_offsets")
        .and_then(|s| serde_json::from_value(s.clone()).ok())
        .ok_or("missing or bad `data_offsets`")?;
    let [begin, end] = offsets;
    if begin > end || end > data_len {
        return Err(format!("data_offsets [{begin}, {end}] outside the {data_len}-byte data buffer (truncated file?)"));
    }
    let elements = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or("shape overflows")?;
    if elements.checked_mul(dtype.size_bytes()) != Some(end - begin) {
        return Err(format!(
            "{} bytes do not match shape {shape:?} of {dtype_name}",
            end - begin
        ));
    }
    Ok(TensorInfo {
        dtype,
        shape,
        range: data_start + begin..data_start + end,
    })
}
