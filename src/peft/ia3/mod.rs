//! (IA)³, as PEFT's `tuners/ia3` defines it (Liu et al. 2022, "Few-Shot
//! Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
//! Learning"): learned vectors that rescale the keys, values and the
//! feed-forward input, initialised to ones.
//!
//! - [`config`]: `adapter_config.json` ([`Ia3Config`]);
//! - [`file`](mod@file): `adapter_model.safetensors` ([`Ia3Weights`]);
//! - [`adapter`]: the vectors on the GPU ([`Ia3Adapter`]);
//! - [`hooks`]: where it meets the model (the `linear_input` and `linear` hook points);
//! - [`merge`]: scaling the base's weights by the vectors and back.

pub mod adapter;
pub mod config;
pub mod file;
pub mod hooks;
pub mod merge;

pub use adapter::{Ia3Adapter, Ia3Vector};
pub use config::{Ia3Config, Ia3Module};
pub use file::Ia3Weights;
