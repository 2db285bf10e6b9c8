//! P-tuning, as PEFT's `tuners/p_tuning` defines it (Liu et al. 2021, "GPT
//! Understands, Too"): the embeddings of `num_virtual_tokens` virtual tokens,
//! put before every input as prompt tuning's, made by an MLP (PEFT's
//! `PromptEncoder`) from a trained embedding table.
//!
//! - [`config`]: `adapter_config.json` ([`PTuningConfig`]);
//! - [`adapter`]: the prompt, the encoder it comes from, PEFT's file ([`PTuningAdapter`]);
//! - [`hooks`]: where it meets the model (prompt tuning's `prepend` hook point).

pub mod adapter;
pub mod config;
pub mod hooks;

pub use adapter::PTuningAdapter;
pub use config::PTuningConfig;
