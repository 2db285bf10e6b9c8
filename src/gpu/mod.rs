//! The GPU runtime: device creation, tensors with byte accounting, the pipeline
//! cache, recording dispatches and submitting them once, and async readback.
//!
//! `Gpu::new().await` is called once; everything else takes `&Gpu`, so the same
//! code runs natively (Vulkan/Metal/DX12, GL as a fallback) and in the browser
//! (WebGPU).

mod bind_groups;
mod device;
mod memory;
mod pipelines;
mod pool;
mod profile;
mod readback;
mod recorder;
mod tensor;

pub use device::{Gpu, GpuInfo, GpuOptions, KernelFamily};
pub use memory::MemoryStats;
pub use pipelines::{Const, Kernel, PipelineKey};
pub use profile::KernelTime;
pub use readback::PendingRead;
pub use recorder::{Encoded, Recorder};
pub use tensor::{DType, Tensor};

/// Re-exported so users can name adapter types without depending on wgpu.
pub use wgpu;
