//! The browser API (wasm32 only): wasm-bindgen classes `Gpu`, `Model` and
//! `TrainRun` (`api`), their TypeScript option and event types (`types`), and
//! model files read by range from `File`s, URLs or memory (`files`).

mod api;
pub mod files;
mod types;

pub use api::{TrainRun, WebGpu, WebModel};
