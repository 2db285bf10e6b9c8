//! Prompt tuning, as PEFT's `tuners/prompt_tuning` defines it (Lester et al.
//! 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning"): learned
//! embeddings of `num_virtual_tokens` virtual tokens, put before every input.
//!
//! - [`config`]: `adapter_config.json` ([`PromptTuningConfig`]);
//! - [`adapter`]: the embeddings on the GPU, PEFT's init and file ([`PromptTuningAdapter`]);
//! - [`hooks`]: where it meets the model (the `prepend` hook point).

pub mod adapter;
pub mod config;
pub mod hooks;

pub use adapter::{PromptTuningAdapter, PROMPT_KEY};
pub use config::{PromptTuningConfig, PromptTuningInit};
