//! PEFT adapter files on the CPU (no GPU code): LoRA's `adapter_config.json`
//! ([`LoraConfig`]) and `adapter_model.safetensors` ([`LoraWeights`]), read
//! and written as PEFT 0.21 does, and checked against a model [`Config`](crate::model::Config).

pub mod adapter;
pub mod adapter_set;
pub mod archive;
pub mod bottleneck;
pub mod bottleneck_config;
pub mod bottleneck_file;
pub mod init;
pub mod lora;
pub mod lora_config;
pub mod lora_file;
pub mod lora_linear;
pub mod merge;

pub use bottleneck_config::{BnInit, BottleneckConfig, BottleneckKind, ADAPTERS_VERSION};
pub use bottleneck_file::{
    BnPart, BnSite, BottleneckUnit, BottleneckWeights, LayerAdapters, BN_CONFIG_FILE, BN_WEIGHTS_FILE,
};
pub use init::init_lora;
pub use lora_config::{InitLoraWeights, LoraConfig, TargetModules, LORA_MODULES, PEFT_VERSION};
pub use lora_file::{lora_modules, LoraModule, LoraPair, LoraWeights, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
