//! AdaLoRA, as PEFT's `tuners/adalora` defines it: LoRA in SVD form,
//! `y = x·Wᵀ + (drop(x)·(A∘E)ᵀ)·Bᵀ·lora_alpha/(ranknum + 1e-5)`, with an
//! orthogonality regulariser on A and B and a rank allocator that prunes the
//! least important singular values (E) towards `target_r` during training.
//!
//! - [`config`]: `adapter_config.json` ([`AdaLoraConfig`]);
//! - [`file`](mod@file): `adapter_model.safetensors` (A, E, B per module; resized by `rank_pattern`);
//! - [`adapter`]: every module's triplet on the GPU ([`AdaLoraAdapter`]);
//! - [`hooks`]: where it meets the model (the `linear_low_rank` hook point);
//! - [`allocator`]: the regulariser and the rank allocator, around the optimizer step;
//! - [`merge`]: folding B·(A∘E) into W and back.

pub mod adapter;
pub mod allocator;
pub mod config;
pub mod file;
pub mod hooks;
pub mod merge;

pub use adapter::{AdaLoraAdapter, SvdFactors};
pub use allocator::Allocator;
pub use config::AdaLoraConfig;
pub use file::{AdaLoraWeights, SvdTriplet};
