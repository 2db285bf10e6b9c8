//! Llama-family models: the config, and streamed loading of their weights.
//!
//! Loading is plain Rust and runs the same natively and in the browser:
//! - [`source`]: where bytes come from ([`ByteSource`] read by range,
//!   [`ModelFiles`] opened by name): native files, memory, and (in `src/web/`)
//!   a browser `File` or `fetch` Range requests.
//! - [`config`]: `config.json` → a validated [`Config`], and the tensors it
//!   expects ([`Config::tensor_names`]).
//! - [`safetensors`]: one `.safetensors` file, header validated, tensors read
//!   one at a time as f32.
//! - [`checkpoint`]: single-file or sharded checkpoints, checked against a
//!   [`Config`]; [`quantized`] and [`bnb`]: pre-quantized ones (webpeft's
//!   layout, bitsandbytes' 4-bit serialization).
//! - [`llama`]: the model on the GPU: [`Model::load`] streams a checkpoint
//!   up (quantizing the blocks' Linears), `Model::forward` records the logits,
//!   `llama::causal_lm_loss` the loss.
//!
//! ```ignore
//! let files = DirFiles::new("SmolLM2-135M")?;
//! let config = Config::load(&files).await?;
//! let checkpoint = Checkpoint::open_for(&files, &config).await?;
//! for spec in config.tensor_names() {
//!     let w = checkpoint.read_f32(&spec.name).await?; // (spec.shape), one tensor in memory
//!     // … upload, quantize …
//! }
//! ```

pub mod bnb;
pub mod checkpoint;
pub mod config;
pub mod llama;
pub mod quantized;
pub mod safetensors;
pub mod source;
pub mod stop_strings;
pub mod tokenizer;

pub use self::safetensors::{SafetensorsFile, TensorInfo};
pub use checkpoint::Checkpoint;
pub use config::{Config, Llama3Scaling, ModelType, RopeScaling, SlidingWindow, TensorSpec, YarnScaling};
pub use llama::Model;
pub use source::{ByteSource, MemoryFiles, MemorySource, ModelFiles};
#[cfg(not(target_arch = "wasm32"))]
pub use source::{DirFiles, FileSource};
