//! The browser API (wasm32 only): wasm-bindgen classes `Gpu`, `Model` and
//! `TrainRun` (`api`), their TypeScript option and event types (`types`),
//! model files read by range from `File`s, URLs or memory (`files`), and the
//! GGUF export handed to JS in chunks (`gguf`). The option objects that make
//! an adapter or a run, and their conversion into the library's recipe
//! (`options`), compile natively too, so they can be tested beside the CLI's.

#[cfg(target_arch = "wasm32")]
mod api;
#[cfg(target_arch = "wasm32")]
pub mod files;
#[cfg(target_arch = "wasm32")]
mod gguf;
#[cfg(target_arch = "wasm32")]
mod grpo;
pub mod options;
#[cfg(target_arch = "wasm32")]
mod types;

#[cfg(target_arch = "wasm32")]
pub use api::{TrainRun, WebGpu, WebModel};
#[cfg(target_arch = "wasm32")]
pub use grpo::GrpoRun;
