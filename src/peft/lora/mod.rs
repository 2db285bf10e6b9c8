//! LoRA, as PEFT's `tuners/lora` defines it: `y = x·Wᵀ + scaling·(drop(x)·Aᵀ)·Bᵀ`
//! on the targeted Linears, W frozen.
//!
//! - [`config`]: `adapter_config.json` ([`LoraConfig`]);
//! - [`file`](mod@file): `adapter_model.safetensors` ([`LoraWeights`]);
//! - [`init`]: PEFT's initialisations of A and B;
//! - [`init_weight`], [`base_init`]: PiSSA, OLoRA and LoftQ, which start from
//!   the base weight and replace it;
//! - [`convert`]: PiSSA/OLoRA adapters saved as a LoRA on the original base;
//! - [`layer`]: one adapted Linear's forward and backward on the GPU;
//! - [`adapter`]: every layer's factors on the GPU ([`LoraAdapter`]);
//! - [`dora`]: DoRA's variant of the layer (`use_dora`, a magnitude per Linear);
//! - [`outer`]: LoRA on the embedding and the head (`embed_tokens`, `lm_head` targets);
//! - [`hooks`]: where it meets the model (the `linear_low_rank` hook point, `linear` for DoRA,
//!   and the embedding and head points);
//! - [`merge`]: folding B·A into W and back.

pub mod adapter;
pub mod base_init;
pub mod config;
pub mod convert;
pub mod dora;
pub mod file;
pub mod hooks;
pub mod init;
pub mod init_weight;
pub mod layer;
pub mod merge;
pub mod outer;

pub use adapter::{LoraAdapter, LoraLayer};
pub use config::{InitLoraWeights, LoraConfig, OuterModule, TargetModules, LORA_MODULES, PEFT_VERSION};
pub use file::{lora_modules, LoraModule, LoraPair, LoraWeights, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
pub use init::init_lora;
pub use layer::{LoraDropout, LoraFactors, LoraSaved};
pub use merge::LOFTQ_BASE_DIR;
