//! PEFT methods, one folder each, as PEFT keeps `tuners/<method>/`:
//!
//! - [`lora`]: LoRA (PEFT's files: `adapter_config.json` + `adapter_model.safetensors`);
//! - [`bottleneck`]: bottleneck adapters (AdapterHub's files: `adapter_config.json` + `adapter.safetensors`);
//! - [`adalora`]: AdaLoRA (PEFT's files);
//! - [`ia3`]: (IA)³ (PEFT's files);
//! - [`prompt_tuning`]: prompt tuning (PEFT's files);
//! - [`prefix_tuning`]: prefix tuning (PEFT's files);
//! - [`p_tuning`]: P-tuning (PEFT's files);
//! - [`trainable_tokens`]: rows of the embedding trained beside a LoRA (PEFT's `trainable_token_indices`).
//!
//! [`encoder`] is the MLP prefix tuning (with `prefix_projection`) and
//! P-tuning train through.
//!
//! What a method adds to the training step outside the model (a loss term,
//! state kept across steps) is in [`step`].
//!
//! A method hooks into the model through the hook points of
//! [`crate::model::llama::hooks`], implemented on a [`Pass`] of its adapter;
//! the model never names a method. [`Adapter`] is the one place that lists
//! them: it dispatches to each method's adapter, hooks and files.

pub mod adalora;
pub mod adapter;
pub mod adapter_set;
pub mod archive;
pub mod bottleneck;
pub(crate) mod columns;
pub mod encoder;
pub mod ia3;
pub mod lora;
pub mod module_names;
pub mod modules_to_save;
pub mod p_tuning;
pub mod pass;
pub(crate) mod peft_config;
pub use peft_config::TaskType;
pub mod prefix_tuning;
pub mod prompt_tuning;
pub mod shared_input;
pub mod step;
pub mod torch_init;
pub mod trainable_tokens;

pub use adapter::{Adapter, AdapterPass};
pub use bottleneck::{
    BnInit, BnPart, BnSite, BottleneckConfig, BottleneckKind, BottleneckUnit, BottleneckWeights, LayerAdapters,
    ADAPTERS_VERSION, BN_CONFIG_FILE, BN_WEIGHTS_FILE,
};
pub use lora::{
    init_lora, lora_modules, InitLoraWeights, LoraConfig, LoraModule, LoraPair, LoraWeights, TargetModules,
    ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, LORA_MODULES, PEFT_VERSION,
};
pub use pass::Pass;
