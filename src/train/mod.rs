//! Training: data (JSONL, chat templates, batching), learning-rate schedules,
//! the optimizer state, the trainer loop and its checkpoints, and the recipe
//! (options and defaults) a run is made from.

pub mod chat;
pub mod checkpoint;
pub mod classification;
pub mod data;
pub mod early_stopping;
pub mod eta;
pub mod grpo;
pub mod kto;
pub mod plan;
pub mod preference;
pub mod preference_loss;
pub mod recipe;
pub mod reward;
pub mod run;
pub mod schedule;
pub mod sft_metrics;
pub mod trainer;
