//! The GGUF container (version 3), written front to back into any
//! [`std::io::Write`], so a file never has to exist whole in memory.
//!
//! Layout (ggml's `docs/gguf.md`; gguf-py's `GGUFWriter` writes the same):
//! magic `GGUF`, version u32 3, tensor count u64, KV count u64; each KV as
//! key (u64 length + UTF-8), value type u32, value; each tensor info as name,
//! n_dims u32, dims u64 innermost first (ggml's ne: the reverse of PyTorch's
//! shape), type u32, offset u64 from the data start; zero padding to the
//! alignment (32, the default, so no `general.alignment` key); then each
//! tensor's bytes, each padded to the alignment. All little-endian.

use std::io::Write;

use crate::{Error, Result};

/// GGUF's default data alignment in bytes.
pub const ALIGNMENT: u64 = 32;
const MAGIC: &[u8; 4] = b"GGUF";
const VERSION: u32 = 3;

/// A metadata value, with the GGUF value type it is written as.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    /// An array of strings (`tokenizer.ggml.tokens`, `merges`).
    StrArray(Vec<String>),
    /// An array of i32 (`tokenizer.ggml.token_type`).
    I32Array(Vec<i32>),
}

impl Value {
    /// GGUF's value type code (gguf-py `GGUFValueType`).
    pub fn type_code(&self) -> u32 {
        match self {
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::StrArray(_) | Value::I32Array(_) => 9,
        }
    }

    /// The type as gguf-py names it: `UINT32`, `ARRAY:STRING`, …
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U32(_) => "UINT32",
            Value::I32(_) => "INT32",
            Value::F32(_) => "FLOAT32",
            Value::Bool(_) => "BOOL",
            Value::Str(_) => "STRING",
            Value::StrArray(_) => "ARRAY:STRING",
            Value::I32Array(_) => "ARRAY:INT32",
        }
    }
}

/// The ggml tensor types an export writes (`GGMLQuantizationType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q8_0,
}

impl GgmlType {
    pub fn code(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q8_0 => 8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q8_0 => "Q8_0",
        }
    }

    /// The type a front end names: "f32", "f16" or "q8_0" (the converters' `--outtype`).
    pub fn from_outtype(name: &str) -> Option<GgmlType> {
        match name {
            "f32" => Some(GgmlType::F32),
            "f16" => Some(GgmlType::F16),
            "q8_0" => Some(GgmlType::Q8_0),
            _ => None,
        }
    }

    /// Bytes of a tensor of `numel` values (Q8_0: 34 bytes per 32 values).
    pub fn bytes(self, numel: usize) -> u64 {
        match self {
            GgmlType::F32 => 4 * numel as u64,
            GgmlType::F16 => 2 * numel as u64,
            GgmlType::Q8_0 => (numel / 32 * 34) as u64,
        }
    }
}

/// One tensor's entry in the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml's ne: innermost (a row's length) first.
    pub ne: Vec<u64>,
    pub ty: GgmlType,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.ne.iter().product::<u64>() as usize
    }
    pub fn bytes(&self) -> u64 {
        self.ty.bytes(self.numel())
    }
}

/// Writes a GGUF file: [`begin`](Self::begin) with all metadata and tensor
/// infos, then [`tensor`](Self::tensor) once per info, in order, then
/// [`finish`](Self::finish).
pub struct GgufWriter<W: Write> {
    out: W,
    infos: Vec<TensorInfo>,
    next: usize,
    written: u64,
}

fn io_error(e: std::io::Error) -> Error {
    Error::Io { file: "GGUF output".into(), source: e }
}

fn padding(n: u64) -> usize {
    ((ALIGNMENT - n % ALIGNMENT) % ALIGNMENT) as usize
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn put_value(buf: &mut Vec<u8>, v: &Value) {
    buf.extend_from_slice(&v.type_code().to_le_bytes());
    match v {
        Value::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => buf.push(*x as u8),
        Value::Str(s) => put_str(buf, s),
        Value::StrArray(items) => {
            buf.extend_from_slice(&8u32.to_le_bytes());
            buf.extend_from_slice(&(items.len() as u64).to_le_bytes());
            items.iter().for_each(|s| put_str(buf, s));
        }
        Value::I32Array(items) => {
            buf.extend_from_slice(&5u32.to_le_bytes());
            buf.extend_from_slice(&(items.len() as u64).to_le_bytes());
            items.iter().for_each(|x| buf.extend_from_slice(&x.to_le_bytes()));
        }
    }
}

impl<W: Write> GgufWriter<W> {
    /// Writes the header, every KV pair in order, the tensor infos (offsets
    /// from the sizes, each padded to 32 bytes) and the padding before the data.
    pub fn begin(mut out: W, kv: &[(String, Value)], infos: Vec<TensorInfo>) -> Result<Self> {
        let mut buf = Vec::new();
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&VERSION.to_le_bytes());
        buf.extend_from_slice(&(infos.len() as u64).to_le_bytes());
        buf.extend_from_slice(&(kv.len() as u64).to_le_bytes());
        for (key, value) in kv {
            put_str(&mut buf, key);
            put_value(&mut buf, value);
        }
        let mut offset = 0u64;
        for info in &infos {
            put_str(&mut buf, &info.name);
            buf.extend_from_slice(&(info.ne.len() as u32).to_le_bytes());
            info.ne.iter().for_each(|n| buf.extend_from_slice(&n.to_le_bytes()));
            buf.extend_from_slice(&info.ty.code().to_le_bytes());
            buf.extend_from_slice(&offset.to_le_bytes());
            offset += info.bytes() + padding(info.bytes()) as u64;
        }
        buf.resize(buf.len() + padding(buf.len() as u64), 0);
        out.write_all(&buf).map_err(io_error)?;
        Ok(GgufWriter { out, infos, next: 0, written: buf.len() as u64 })
    }

    /// The next tensor's data, exactly its info's size, then its padding.
    pub fn tensor(&mut self, data: &[u8]) -> Result<()> {
        let info = self.infos.get(self.next).ok_or_else(|| {
            Error::invalid("GGUF writer", format!("a tensor past the {} announced", self.infos.len()))
        })?;
        if data.len() as u64 != info.bytes() {
            return Err(Error::invalid(
                "GGUF writer",
                format!("tensor `{}` announced {} bytes, got {}", info.name, info.bytes(), data.len()),
            ));
        }
        let pad = padding(info.bytes());
        self.out.write_all(data).map_err(io_error)?;
        self.out.write_all(&[0u8; ALIGNMENT as usize][..pad]).map_err(io_error)?;
        self.written += (data.len() + pad) as u64;
        self.next += 1;
        Ok(())
    }

    /// Checks every announced tensor was written; returns the sink and the
    /// file's length.
    pub fn finish(mut self) -> Result<(W, u64)> {
        if self.next != self.infos.len() {
            return Err(Error::invalid(
                "GGUF writer",
                format!("{} of {} tensors written", self.next, self.infos.len()),
            ));
        }
        self.out.flush().map_err(io_error)?;
        Ok((self.out, self.written))
    }
}
