//! Bottleneck adapters, as AdapterHub's `adapters` defines them (`BnConfig`:
//! `seq_bn`, `double_seq_bn`, `par_bn`):
//! `ad(s) = drop(scaling · (W_up · act(W_down · s + b_down) + b_up))` added to
//! the residual stream.
//!
//! - [`config`]: `adapter_config.json` ([`BottleneckConfig`]);
//! - [`file`](mod@file): `adapter.safetensors` ([`BottleneckWeights`]) and AdapterHub's initialisations;
//! - [`layer`]: one unit's forward and backward on the GPU;
//! - [`adapter`]: every layer's units on the GPU ([`BottleneckAdapter`]);
//! - [`hooks`]: where it meets the model (the `residual` hook point).

pub mod adapter;
pub mod config;
pub mod file;
pub mod hooks;
pub mod layer;

pub use adapter::{BnLayer, BottleneckAdapter};
pub use config::{BnInit, BottleneckConfig, BottleneckKind, ADAPTERS_VERSION};
pub use file::{BnPart, BnSite, BottleneckUnit, BottleneckWeights, LayerAdapters, BN_CONFIG_FILE, BN_WEIGHTS_FILE};
pub use layer::{bn_backward, bn_forward, BnCall, BnSaved, BnUnit};
