//! GPU tensors: a storage buffer, a shape and a dtype. Every buffer is counted
//! by the device's memory tracker from creation until it is released; an op's
//! output (from [`Recorder::alloc`](super::Recorder::alloc)) goes back to the
//! device's pool when its last handle drops.

use std::sync::{Arc, Weak};

use super::memory::MemoryTracker;
use super::pool::Pool;
use super::Gpu;
use crate::error::{Error, Result};

/// Element types a tensor can hold on the GPU. `U8` data is packed four to a
/// 32-bit word (WGSL has no byte type); quantized weights use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    /// bfloat16 (the top half of an f32): frozen weights as bf16 checkpoints hold them.
    BF16,
    U32,
    I32,
    U8,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::U32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::U8 => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::U32 => "u32",
            DType::I32 => "i32",
            DType::U8 => "u8",
        }
    }
}

/// A Rust type that maps to a [`DType`].
pub trait Element: bytemuck::Pod {
    const DTYPE: DType;
}
impl Element for f32 {
    const DTYPE: DType = DType::F32;
}
impl Element for u32 {
    const DTYPE: DType = DType::U32;
}
impl Element for i32 {
    const DTYPE: DType = DType::I32;
}
impl Element for u8 {
    const DTYPE: DType = DType::U8;
}
impl Element for half::bf16 {
    const DTYPE: DType = DType::BF16;
}
impl Element for half::f16 {
    const DTYPE: DType = DType::F16;
}

pub(crate) struct Storage {
    pub(crate) buffer: wgpu::Buffer,
    bytes: u64,
    tracker: Arc<MemoryTracker>,
}

impl Storage {
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        self.tracker.free(self.bytes);
    }
}

/// What the tensors sharing one buffer hold: the buffer, and the pool it
/// returns to when the last of them drops (recorded work may still hold the
/// storage itself until its submission is encoded).
pub(crate) struct Handle {
    pub(crate) storage: Arc<Storage>,
    pool: Option<Weak<Pool>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.as_ref().and_then(Weak::upgrade) {
            pool.give_back(self.storage.clone());
        }
    }
}

/// A tensor on the GPU. Cloning shares the buffer; `reshape` is free.
#[derive(Clone)]
pub struct Tensor {
    pub(crate) handle: Arc<Handle>,
    shape: Vec<usize>,
    dtype: DType,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {})", self.shape, self.dtype.name())
    }
}

fn padded(bytes: u64) -> u64 {
    // Bindings and copies work in whole 32-bit words, never on zero bytes,
    // and a kernel may bind any tensor through a vec4 view as well as a
    // scalar one (the blocked GEMM binds both whichever it loads through),
    // whose binding must hold at least one whole vec4: whole 16-byte units.
    bytes.div_ceil(16).max(1) * 16
}

impl Tensor {
    fn new_storage(gpu: &Gpu, bytes: u64, label: &str) -> Arc<Storage> {
        let buffer = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        gpu.memory.alloc(bytes);
        Arc::new(Storage { buffer, bytes, tracker: gpu.memory.clone() })
    }

    fn checked_bytes(gpu: &Gpu, shape: &[usize], dtype: DType, label: &str) -> Result<u64> {
        let numel: usize = shape.iter().product();
        let bytes = padded((numel * dtype.size()) as u64);
        gpu.check_buffer_size(label, bytes)?;
        gpu.take_allocation(label)?;
        Ok(bytes)
    }

    /// A buffer of its own, zero-filled, that never returns to the pool.
    fn allocate(gpu: &Gpu, shape: &[usize], dtype: DType, label: &str) -> Result<Tensor> {
        let bytes = Self::checked_bytes(gpu, shape, dtype, label)?;
        let storage = Self::new_storage(gpu, bytes, label);
        Ok(Tensor { handle: Arc::new(Handle { storage, pool: None }), shape: shape.to_vec(), dtype })
    }

    /// A pooled buffer: a freed one of the same size when reuse is safe (its
    /// old contents left in it: the `bool` says so), else a new one.
    pub(crate) fn scratch(gpu: &Gpu, shape: &[usize], dtype: DType, label: &str) -> Result<(Tensor, bool)> {
        let bytes = Self::checked_bytes(gpu, shape, dtype, label)?;
        let (storage, reused) = match gpu.pool.take(bytes) {
            Some(s) => (s, true),
            None => (Self::new_storage(gpu, bytes, label), false),
        };
        let handle = Arc::new(Handle { storage, pool: Some(Arc::downgrade(&gpu.pool)) });
        Ok((Tensor { handle, shape: shape.to_vec(), dtype }, reused))
    }

    /// Whether the buffer returns to the pool (an op's output).
    pub fn is_pooled(&self) -> bool {
        self.handle.pool.is_some()
    }

    /// A zero-filled tensor (WebGPU clears new buffers).
    pub fn zeros(gpu: &Gpu, shape: &[usize], dtype: DType) -> Result<Tensor> {
        Self::allocate(gpu, shape, dtype, "tensor")
    }

    /// Like [`Tensor::zeros`], with a label that names the tensor in GPU errors.
    pub fn zeros_named(gpu: &Gpu, shape: &[usize], dtype: DType, label: &str) -> Result<Tensor> {
        Self::allocate(gpu, shape, dtype, label)
    }

    /// Upload `data` as a tensor of the given shape.
    pub fn from_slice<T: Element>(gpu: &Gpu, shape: &[usize], data: &[T]) -> Result<Tensor> {
        Self::from_bytes(gpu, shape, T::DTYPE, bytemuck::cast_slice(data))
    }

    /// Upload raw little-endian bytes as a tensor of `dtype`.
    pub fn from_bytes(gpu: &Gpu, shape: &[usize], dtype: DType, bytes: &[u8]) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        if numel * dtype.size() != bytes.len() {
            return Err(Error::shape(
                "Tensor::from_bytes",
                format!(
                    "shape {shape:?} of {} needs {} bytes, got {}",
                    dtype.name(),
                    numel * dtype.size(),
                    bytes.len()
                ),
            ));
        }
        let t = Self::allocate(gpu, shape, dtype, "tensor")?;
        t.write_bytes(gpu, bytes);
        Ok(t)
    }

    /// Overwrite the contents; `data` must have exactly `numel` elements. Not
    /// for an op's output (a pooled buffer that recorded work may still read:
    /// the queue would write it before that work ran).
    pub fn write<T: Element>(&self, gpu: &Gpu, data: &[T]) -> Result<()> {
        if T::DTYPE != self.dtype || data.len() != self.numel() {
            return Err(Error::shape(
                "Tensor::write",
                format!("{} values of {} into {:?} of {}", data.len(), T::DTYPE.name(), self.shape, self.dtype.name()),
            ));
        }
        if self.is_pooled() {
            return Err(Error::invalid(
                "Tensor::write",
                format!("{:?} is an op's output in the pool; upload into a tensor of its own", self.shape),
            ));
        }
        self.write_bytes(gpu, bytemuck::cast_slice(data));
        Ok(())
    }

    fn write_bytes(&self, gpu: &Gpu, bytes: &[u8]) {
        let whole = bytes.len() / 4 * 4;
        if whole > 0 {
            gpu.queue.write_buffer(&self.handle.storage.buffer, 0, &bytes[..whole]);
        }
        if whole < bytes.len() {
            let mut tail = [0u8; 4];
            tail[..bytes.len() - whole].copy_from_slice(&bytes[whole..]);
            gpu.queue.write_buffer(&self.handle.storage.buffer, whole as u64, &tail);
        }
    }

    /// Download the whole tensor (awaits the GPU; never blocks the browser).
    pub async fn to_vec<T: Element>(&self, gpu: &Gpu) -> Result<Vec<T>> {
        if T::DTYPE != self.dtype {
            return Err(Error::DType {
                op: "Tensor::to_vec",
                arg: "T",
                expected: self.dtype.name(),
                got: T::DTYPE.name(),
            });
        }
        let bytes = self.read_bytes(gpu).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Download the tensor's bytes (exactly `numel * dtype.size()`).
    pub async fn read_bytes(&self, gpu: &Gpu) -> Result<Vec<u8>> {
        let mut bytes =
            super::readback::read_buffer(gpu, &self.handle.storage.buffer, self.handle.storage.bytes).await?;
        bytes.truncate(self.numel() * self.dtype.size());
        Ok(bytes)
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bytes of the buffer (the data rounded up to whole 16-byte units).
    pub fn bytes(&self) -> u64 {
        self.handle.storage.bytes
    }

    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.handle.storage.buffer
    }

    /// The same data seen with another shape of the same element count.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if shape.iter().product::<usize>() != self.numel() {
            return Err(Error::shape("Tensor::reshape", format!("cannot view {:?} as {shape:?}", self.shape)));
        }
        Ok(Tensor { handle: self.handle.clone(), shape: shape.to_vec(), dtype: self.dtype })
    }

    /// A view of the first `shape.iter().product()` elements (at most all of
    /// them) with `shape`: for reusing one buffer for pieces of different
    /// sizes. Kernels size their work from the shape, never from the buffer.
    pub fn reshape_prefix(&self, shape: &[usize]) -> Result<Tensor> {
        if shape.iter().product::<usize>() > self.numel() {
            return Err(Error::shape(
                "Tensor::reshape_prefix",
                format!("{:?} has fewer elements than {shape:?}", self.shape),
            ));
        }
        Ok(Tensor { handle: self.handle.clone(), shape: shape.to_vec(), dtype: self.dtype })
    }

    /// Whether two handles share one buffer.
    pub fn same_buffer(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.handle.storage, &other.handle.storage)
    }

    /// Fail with a typed error unless the dtype is `want`.
    pub fn expect_dtype(&self, op: &'static str, arg: &'static str, want: DType) -> Result<()> {
        if self.dtype != want {
            return Err(Error::DType { op, arg, expected: want.name(), got: self.dtype.name() });
        }
        Ok(())
    }
}
