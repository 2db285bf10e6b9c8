//! webpeft: fine-tune Llama-family models with LoRA or bottleneck adapters on
//! WebGPU, in the browser (wasm32) and natively (Vulkan, Metal, DX12).
//!
//! Data flows one way: bytes → tensors on the GPU ([`gpu`]) → kernels
//! ([`kernels`]) → model forward → loss → backward → optimizer → files.

// wgpu's WebGPU handles are not Send on wasm32 (one thread there); the same
// Arc-shared tensors and pool are Send + Sync natively, where threads exist.
#![cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]

pub mod error;
pub mod export;
pub mod gpu;
pub mod kernels;
pub mod model;
pub mod peft;
pub mod quant;
pub mod train;
pub mod util;

#[cfg(not(target_arch = "wasm32"))]
pub mod bench;
#[cfg(not(target_arch = "wasm32"))]
#[doc(hidden)]
pub mod fuzzing;
/// The browser API (its classes on wasm32 only; its option objects everywhere).
pub mod web;

pub use error::{Error, Result};
pub use gpu::{DType, Gpu, GpuOptions, KernelFamily, Tensor};
