//! One `.safetensors` file, read from a [`ByteSource`] without holding it:
//! the header once, then one tensor's byte range at a time.
//!
//! Layout (<https://github.com/huggingface/safetensors>): an 8-byte
//! little-endian header length N, N bytes of JSON
//! `{"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, …,
//! "__metadata__": {..}}`, then the data; offsets count from the end of the
//! header. Every entry is checked on open: a known dtype, a byte range that
//! matches shape × dtype, inside the file, overlapping no other tensor.

use std::collections::{BTreeMap, HashMap};

use ::safetensors::Dtype;
use half::{bf16, f16};
use serde_json::{Map, Value};

use super::source::{file_error, ByteSource};
use crate::{Error, Result};

/// Headers longer than this are rejected before reading them (the
/// `safetensors` crate's own limit): a corrupt length must not allocate gigabytes.
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Tensors are read and converted in pieces of this many bytes, so a bf16
/// tensor never exists twice in full (bytes and f32) at once.
const READ_CHUNK_BYTES: usize = 8 << 20;

/// One tensor entry of a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Absolute position of the first byte in the file (header included).
    pub offset: u64,
    /// Length of the data in bytes: numel × dtype size.
    pub len: u64,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// An opened safetensors file: its validated header and its source.
#[derive(Debug)]
pub struct SafetensorsFile<S> {
    source: S,
    /// Sorted by offset.
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    metadata: BTreeMap<String, String>,
}

impl<S: ByteSource> SafetensorsFile<S> {
    /// Reads and validates the header (two reads: the length, then the JSON).
    pub async fn open(source: S) -> Result<Self> {
        let name = source.name().to_string();
        let file_len = source.len();
        if file_len < 8 {
            return Err(file_error(
                &name,
                format!("only {file_len} bytes: truncated, or not a safetensors file (no 8-byte header length)"),
            ));
        }
        let head: [u8; 8] = source.read(0, 8).await?.try_into().map_err(|got: Vec<u8>| {
            file_error(&name, format!("the source returned {} bytes for the 8-byte header length", got.len()))
        })?;
        let n = u64::from_le_bytes(head);
        if n > MAX_HEADER_BYTES {
            return Err(file_error(
                &name,
                format!("header length {n} bytes is over the {MAX_HEADER_BYTES}-byte limit: corrupt, or not a safetensors file"),
            ));
        }
        if 8 + n > file_len {
            return Err(file_error(
                &name,
                format!("header length {n} bytes runs past the end of the file ({file_len} bytes): truncated, or not a safetensors file"),
            ));
        }
        let json = source.read(8, n as usize).await?;
        let (tensors, metadata) = parse_header(&name, &json, 8 + n, file_len)?;
        let by_name = tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(SafetensorsFile { source, tensors, by_name, metadata })
    }

    /// The file name.
    pub fn name(&self) -> &str {
        self.source.name()
    }

    /// Every tensor entry, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The header's `__metadata__` (e.g. `{"format": "pt"}`).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.get(name).ok_or_else(|| self.tensor_error(name, "not in this file"))
    }

    fn tensor_error(&self, tensor: &str, detail: impl Into<String>) -> Error {
        Error::Checkpoint { tensor: tensor.to_string(), file: self.name().to_string(), detail: detail.into() }
    }

    /// The tensor's raw little-endian bytes (for U8/I64/… tensors).
    pub async fn read_bytes(&self, name: &str) -> Result<Vec<u8>> {
        let info = self.info(name)?;
        let len = usize::try_from(info.len).map_err(|_| self.tensor_error(name, "too large for this platform"))?;
        self.source.read(info.offset, len).await
    }

    /// The tensor as f32, (numel) row-major. F32 is copied, F16 and BF16 are
    /// widened exactly; any other dtype is an error. Reads in chunks, so peak
    /// memory is the f32 result plus one chunk.
    pub async fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.info(name)?;
        let widen: fn(&[u8]) -> f32 = match info.dtype {
            Dtype::F32 => |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            Dtype::F16 => |b| f16::from_le_bytes([b[0], b[1]]).to_f32(),
            Dtype::BF16 => |b| bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            other => {
                return Err(
                    self.tensor_error(name, format!("dtype {other} cannot be read as f32 (expected F32, F16 or BF16)"))
                )
            }
        };
        let size = info.dtype.bitsize() / 8;
        let numel = info.numel();
        let mut out = Vec::with_capacity(numel);
        let chunk_elems = READ_CHUNK_BYTES / size;
        let mut done = 0;
        while done < numel {
            let n = chunk_elems.min(numel - done);
            let bytes = self.source.read(info.offset + (done * size) as u64, n * size).await?;
            out.extend(bytes.chunks_exact(size).map(widen));
            done += n;
        }
        Ok(out)
    }
}

/// Parses and validates the header JSON of file `file`, whose data starts at
/// `data_start` and which is `file_len` bytes long. Returns the entries sorted
/// by offset, and `__metadata__`.
fn parse_header(
    file: &str,
    json: &[u8],
    data_start: u64,
    file_len: u64,
) -> Result<(Vec<TensorInfo>, BTreeMap<String, String>)> {
    let header: Map<String, Value> =
        serde_json::from_slice(json).map_err(|e| file_error(file, format!("header is not a JSON object: {e}")))?;
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(header.len());
    for (name, entry) in &header {
        if name == "__metadata__" {
            metadata = parse_metadata(file, entry)?;
            continue;
        }
        let info = parse_entry(file, name, entry, data_start)?;
        if info.offset + info.len > file_len {
            return Err(Error::Checkpoint {
                tensor: name.clone(),
                file: file.to_string(),
                detail: format!(
                    "data ends at byte {}, past the end of the file ({file_len} bytes): the file is truncated",
                    info.offset + info.len
                ),
            });
        }
        tensors.push(info);
    }
    tensors.sort_by_key(|t| (t.offset, t.len));
    let nonempty: Vec<&TensorInfo> = tensors.iter().filter(|t| t.len > 0).collect();
    for pair in nonempty.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if b.offset < a.offset + a.len {
            return Err(Error::Checkpoint {
                tensor: b.name.clone(),
                file: file.to_string(),
                detail: format!(
                    "its bytes [{}, {}) overlap those of `{}` [{}, {})",
                    b.offset - data_start,
                    b.offset + b.len - data_start,
                    a.name,
                    a.offset - data_start,
                    a.offset + a.len - data_start
                ),
            });
        }
    }
    Ok((tensors, metadata))
}

fn parse_metadata(file: &str, value: &Value) -> Result<BTreeMap<String, String>> {
    let bad = || file_error(file, "header `__metadata__` must be an object of strings");
    let Value::Object(map) = value else { return Err(bad()) };
    map.iter().map(|(k, v)| Ok((k.clone(), v.as_str().ok_or_else(bad)?.to_string()))).collect()
}

/// One `{"dtype", "shape", "data_offsets"}` entry, checked on its own.
fn parse_entry(file: &str, name: &str, entry: &Value, data_start: u64) -> Result<TensorInfo> {
    let err = |detail: String| Error::Checkpoint { tensor: name.to_string(), file: file.to_string(), detail };
    let field = |key: &str| entry.get(key).ok_or_else(|| err(format!("header entry has no `{key}`")));

    let dtype_value = field("dtype")?;
    let dtype_name = dtype_value.as_str().ok_or_else(|| err(format!("dtype must be a string, got {dtype_value}")))?;
    let dtype: Dtype = serde_json::from_value(Value::String(dtype_name.to_string()))
        .map_err(|_| err(format!("unknown dtype \"{dtype_name}\"")))?;

    let shape_value = field("shape")?;
    let shape: Vec<usize> = shape_value
        .as_array()
        .and_then(|dims| dims.iter().map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok())).collect())
        .ok_or_else(|| err(format!("shape must be a list of non-negative integers, got {shape_value}")))?;

    let offsets_value = field("data_offsets")?;
    let (begin, end) = match offsets_value.as_array().map(|a| a.iter().map(Value::as_u64).collect::<Vec<_>>()) {
        Some(v) if v.len() == 2 && v[0].is_some() && v[1].is_some() => (v[0].unwrap(), v[1].unwrap()),
        _ => return Err(err(format!("data_offsets must be [begin, end], got {offsets_value}"))),
    };
    if end < begin {
        return Err(err(format!("data_offsets [{begin}, {end}] end before they begin")));
    }

    let bits = shape
        .iter()
        .try_fold(dtype.bitsize() as u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| err(format!("shape {shape:?} is too large")))?;
    if bits % 8 != 0 {
        return Err(err(format!("shape {shape:?} of {dtype} is not a whole number of bytes")));
    }
    if bits / 8 != end - begin {
        return Err(err(format!(
            "shape {shape:?} of {dtype} needs {} bytes, but data_offsets [{begin}, {end}] span {}",
            bits / 8,
            end - begin
        )));
    }
    let offset = data_start
        .checked_add(begin)
        .filter(|o| o.checked_add(end - begin).is_some())
        .ok_or_else(|| err(format!("data_offsets [{begin}, {end}] are out of range")))?;
    Ok(TensorInfo { name: name.to_string(), dtype, shape, offset, len: end - begin })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str, data_len: u64) -> Result<Vec<TensorInfo>> {
        parse_header("t.safetensors", json.as_bytes(), 100, 100 + data_len).map(|(t, _)| t)
    }

    #[test]
    fn entries_are_sorted_and_absolute() {
        let t = parse(
            r#"{"b":{"dtype":"BF16","shape":[2,3],"data_offsets":[16,28]},
                "a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},
                "e":{"dtype":"F32","shape":[0],"data_offsets":[16,16]},
                "__metadata__":{"format":"pt"}}"#,
            28,
        )
        .unwrap();
        let names: Vec<&str> = t.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "e", "b"]);
        assert_eq!((t[2].offset, t[2].len, t[2].numel()), (116, 12, 6));
    }

    #[test]
    fn bad_entries_name_the_tensor() {
        let cases = [
            (r#"{"w":{"dtype":"Q9","shape":[1],"data_offsets":[0,4]}}"#, "unknown dtype \"Q9\""),
            (r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#, "needs 8 bytes"),
            (r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}"#, "end before they begin"),
            (r#"{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, "shape must be"),
            (r#"{"w":{"dtype":"F32","shape":[1]}}"#, "no `data_offsets`"),
            (r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, "truncated"),
        ];
        for (json, want) in cases {
            let err = parse(json, 4).unwrap_err();
            assert!(matches!(&err, Error::Checkpoint { tensor, .. } if tensor == "w"), "{err}");
            assert!(err.to_string().contains(want), "{json}: {err}");
        }
        let err = parse(r#"[1, 2]"#, 4).unwrap_err();
        assert!(matches!(err, Error::File { .. }), "{err}");
    }

    /// A bf16 tensor over two read chunks comes back whole and in order.
    #[test]
    fn reads_across_chunks() {
        let n = READ_CHUNK_BYTES / 2 + 1000;
        let bits = |i: usize| (i % 65_000) as u16 & 0x7f7f; // finite bf16 patterns
        let header = format!(r#"{{"w":{{"dtype":"BF16","shape":[{n}],"data_offsets":[0,{}]}}}}"#, 2 * n);
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header.as_bytes());
        bytes.extend((0..n).flat_map(|i| bits(i).to_le_bytes()));
        let file = pollster::block_on(SafetensorsFile::open(super::super::MemorySource::new("big", bytes))).unwrap();
        let got = pollster::block_on(file.read_f32("w")).unwrap();
        assert_eq!(got.len(), n);
        assert!(got.iter().enumerate().all(|(i, x)| x.to_bits() == (bits(i) as u32) << 16));
    }
}
