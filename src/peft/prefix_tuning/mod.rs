//! Prefix tuning, as PEFT's `tuners/prefix_tuning` defines it (Li and Liang
//! 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation"):
//! learned keys and values that every layer's attention sees before the input's.
//!
//! - [`config`]: `adapter_config.json` ([`PrefixTuningConfig`]);
//! - [`adapter`]: the prefix on the GPU, PEFT's init and file ([`PrefixTuningAdapter`]);
//! - [`hooks`]: where it meets the model (the `prefix` hook point).

pub mod adapter;
pub mod config;
pub mod hooks;

pub use adapter::{PrefixTuningAdapter, PREFIX_KEY};
pub use config::PrefixTuningConfig;
