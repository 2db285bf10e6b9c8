//! A training checkpoint: everything needed to go on training bit for bit as
//! if the run had not stopped — the adapter's parameters, AdamW's two moments,
//! the step count, the dropout RNG — plus the caller's own progress (data
//! position, schedule) as JSON. One safetensors file:
//!
//! - tensors `param.<key>`, `exp_avg.<key>`, `exp_avg_sq.<key>` (f32; `<key>`
//!   as in the adapter's own file, `exp_avg*` named as torch's AdamW state),
//!   `state.<name>` (the method's state across steps: AdaLoRA's allocator) and
//!   `objective.bco_running` (DPO's bco_pair running reward mean and count;
//!   absent from checkpoints written before it, read as a fresh one);
//! - metadata `webpeft.training_state` = "1", `method`, `adapter_config`
//!   (the adapter's `adapter_config.json`), `step`, `rng_state`,
//!   `tokens_seen` (TRL's `num_tokens` so far; absent from checkpoints
//!   written before it, read as 0), `optimizer` (JSON) and `progress` (the
//!   caller's JSON).

use std::collections::{BTreeMap, HashMap};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};

use super::trainer::{OptimizerConfig, Trainer};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::model::Config;
use crate::peft::adapter::{Adapter, AdapterConfig};
use crate::peft::encoder::TABLE_KEY;
use crate::peft::p_tuning::PTuningAdapter;
use crate::peft::prefix_tuning::PrefixTuningAdapter;
use crate::peft::prompt_tuning::PromptTuningAdapter;
use crate::peft::trainable_tokens::TrainableTokensAdapter;

/// The file name the CLI writes next to the adapter.
pub const CHECKPOINT_FILE: &str = "training_state.safetensors";
const FORMAT_KEY: &str = "webpeft.training_state";

fn bad(detail: impl Into<String>) -> Error {
    Error::File { file: CHECKPOINT_FILE.into(), detail: detail.into() }
}

/// The checkpoint of `trainer` as bytes (reads the GPU once per tensor).
pub async fn save_checkpoint(gpu: &Gpu, trainer: &Trainer, model: &Config, progress: &Value) -> Result<Vec<u8>> {
    let (m, v) = trainer.moments();
    let mut data: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    for (prefix, adapter) in [("param.", &trainer.adapter), ("exp_avg.", m), ("exp_avg_sq.", v)] {
        for (key, t) in adapter.tensors() {
            data.insert(format!("{prefix}{key}"), (t.shape().to_vec(), t.to_vec::<f32>(gpu).await?));
        }
    }
    for (key, t) in trainer.adapter.state_tensors() {
        data.insert(format!("{STATE}{key}"), (t.shape().to_vec(), t.to_vec::<f32>(gpu).await?));
    }
    data.insert(BCO_RUNNING.into(), (vec![2], trainer.running.to_vec::<f32>(gpu).await?));
    let o = &trainer.optimizer;
    let metadata: HashMap<String, String> = [
        (FORMAT_KEY, "1".to_string()),
        ("method", trainer.adapter.method().to_string()),
        ("adapter_config", trainer.adapter.config_json(model)),
        ("step", trainer.step.to_string()),
        ("rng_state", trainer.rng_state().to_string()),
        ("tokens_seen", trainer.tokens_seen.to_string()),
        (
            "optimizer",
            json!({"beta1": o.beta1, "beta2": o.beta2, "eps": o.eps, "weight_decay": o.weight_decay,
                   "max_grad_norm": o.max_grad_norm, "loraplus_lr_ratio": o.loraplus_lr_ratio,
                   "loraplus_lr_embedding": o.loraplus_lr_embedding})
            .to_string(),
        ),
        ("progress", progress.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let views = data
        .iter()
        .map(|(k, (shape, values))| {
            TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(values))
                .map(|t| (k.clone(), t))
                .map_err(|e| bad(e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, Some(metadata)).map_err(|e| bad(e.to_string()))
}

/// A checkpoint read on the CPU, checked as far as can be without a GPU.
#[derive(Debug)]
pub struct CheckpointData {
    pub method: String,
    /// The adapter's parsed config (LoRA or AdapterHub).
    pub config: AdapterConfig,
    pub step: u64,
    pub rng_state: u64,
    /// The SFT tokens trained on so far (`Trainer::tokens_seen`).
    pub tokens_seen: u64,
    pub optimizer: OptimizerConfig,
    pub progress: Value,
    /// `param.`, `exp_avg.`, `exp_avg_sq.` tensors by adapter key.
    pub tensors: [BTreeMap<String, Vec<f32>>; 3],
    /// `state.` tensors: the method's state across steps (AdaLoRA's allocator), by name.
    pub state: BTreeMap<String, Vec<f32>>,
    /// DPO's bco_pair running reward mean and its count.
    pub bco_running: [f32; 2],
}

/// The prefix of the method's state tensors.
const STATE: &str = "state.";
/// The objective's state across steps: bco_pair's running mean.
const BCO_RUNNING: &str = "objective.bco_running";

/// Parses checkpoint bytes (no GPU): metadata, configs, and the three sets of
/// f32 tensors.
pub fn read_checkpoint(bytes: &[u8]) -> Result<CheckpointData> {
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let get = |k: &str| meta.get(k).ok_or_else(|| bad(format!("metadata `{k}` is missing")));
    if get(FORMAT_KEY)? != "1" {
        return Err(bad(format!("unknown {FORMAT_KEY} version {:?}", meta.get(FORMAT_KEY))));
    }
    let num = |k: &str| get(k)?.parse::<u64>().map_err(|_| bad(format!("metadata `{k}` is not a whole number")));
    let (step, rng_state) = (num("step")?, num("rng_state")?);
    let tokens_seen = if meta.contains_key("tokens_seen") { num("tokens_seen")? } else { 0 };
    let json = get("adapter_config")?.as_bytes();
    let method = get("method")?.clone();
    let config = AdapterConfig::from_json(&method, json).map_err(|e| match e {
        Error::InvalidArgument { detail, .. } => bad(detail),
        e => e,
    })?;
    let opt: Value = serde_json::from_str(get("optimizer")?).map_err(|e| bad(format!("optimizer: {e}")))?;
    let f = |k: &str| opt.get(k).and_then(Value::as_f64).ok_or_else(|| bad(format!("optimizer.{k} is missing")));
    let optimizer = OptimizerConfig {
        beta1: f("beta1")?,
        beta2: f("beta2")?,
        eps: f("eps")?,
        weight_decay: f("weight_decay")?,
        max_grad_norm: f("max_grad_norm")? as f32,
        loraplus_lr_ratio: opt.get("loraplus_lr_ratio").and_then(Value::as_f64),
        // Checkpoints written before the option hold PEFT's default.
        loraplus_lr_embedding: opt.get("loraplus_lr_embedding").and_then(Value::as_f64).unwrap_or(1e-6),
    };
    let progress: Value = serde_json::from_str(get("progress")?).map_err(|e| bad(format!("progress: {e}")))?;
    let mut tensors: [BTreeMap<String, Vec<f32>>; 3] = Default::default();
    let mut state = BTreeMap::new();
    let mut bco_running = [0.0; 2];
    for (name, view) in st.tensors() {
        if name == BCO_RUNNING {
            let values = bytemuck::pod_collect_to_vec::<u8, f32>(view.data());
            match (view.dtype(), values.as_slice()) {
                (Dtype::F32, &[mean, count]) if count >= 0.0 && mean.is_finite() => bco_running = [mean, count],
                _ => return Err(bad(format!("tensor `{name}` must be two f32 values, a mean and a count ≥ 0"))),
            }
            continue;
        }
        let slot = ["param.", "exp_avg.", "exp_avg_sq.", STATE].iter().position(|p| name.starts_with(p));
        let Some(i) = slot else {
            return Err(bad(format!("unexpected tensor `{name}`")));
        };
        if view.dtype() != Dtype::F32 {
            return Err(bad(format!("tensor `{name}` is {:?}, expected F32", view.dtype())));
        }
        let key = name.split_once('.').map(|(_, k)| k).unwrap_or_default().to_string();
        let values = bytemuck::pod_collect_to_vec::<u8, f32>(view.data());
        match tensors.get_mut(i) {
            Some(t) => t.insert(key, values),
            None => state.insert(key, values),
        };
    }
    Ok(CheckpointData {
        method,
        config,
        step,
        rng_state,
        tokens_seen,
        optimizer,
        progress,
        tensors,
        state,
        bco_running,
    })
}

/// Resumes a [`Trainer`] from checkpoint bytes for `model`; returns it with
/// the caller's progress JSON.
pub fn load_checkpoint(gpu: &Gpu, bytes: &[u8], model: &Config) -> Result<(Trainer, Value)> {
    let data = read_checkpoint(bytes)?;
    // A skeleton of the right shapes: its values are overwritten just below.
    // A prefix or P-tuning prompt trained directly (a folder PEFT saved
    // through its MLP holds only the prompt) has no encoder's table.
    let direct = !data.tensors[0].contains_key(TABLE_KEY);
    let skeleton = match data.config {
        AdapterConfig::PromptTuning(c) => Adapter::PromptTuning(PromptTuningAdapter::zeros(gpu, c)?),
        AdapterConfig::Lora(mut c) => {
            // A classifier's labels are its score head's rows (adapter_config.json does not say).
            if let Some(score) = data.tensors[0].get(crate::peft::modules_to_save::SCORE_KEY) {
                c.num_labels = (score.len() / model.hidden_size.max(1)).max(1);
            }
            Adapter::new_lora(gpu, c, model, 0)? // DoRA's magnitudes too, as zeros
        }
        AdapterConfig::PrefixTuning(c) if direct => {
            let zeros = vec![0.0; c.numel()];
            Adapter::PrefixTuning(PrefixTuningAdapter::upload(gpu, c, &zeros)?)
        }
        AdapterConfig::PTuning(c) if direct => {
            let zeros = vec![0.0; c.num_virtual_tokens * c.token_dim];
            Adapter::PTuning(PTuningAdapter::upload(gpu, c, &zeros)?)
        }
        AdapterConfig::TrainableTokens(c) => {
            let zeros = vec![0.0; c.values_len(model)];
            Adapter::TrainableTokens(TrainableTokensAdapter::upload(gpu, c, &zeros, model)?)
        }
        c => Adapter::new(gpu, c, model, 0)?,
    };
    let mut parts = Vec::new();
    for (prefix, tensors) in ["param.", "exp_avg.", "exp_avg_sq."].iter().zip(&data.tensors) {
        parts.push(
            skeleton
                .with_tensors(gpu, tensors)
                .map_err(|e| bad(format!("the checkpoint does not fit this model ({prefix}*): {e}")))?,
        );
    }
    let v = parts.pop().expect("three parts");
    let m = parts.pop().expect("three parts");
    let adapter = parts.pop().expect("three parts");
    let mut trainer = Trainer::from_parts(gpu, adapter, m, v, data.optimizer, data.step, data.rng_state)?;
    trainer.tokens_seen = data.tokens_seen;
    let own = trainer.adapter.state_tensors();
    if own.len() != data.state.len() {
        return Err(bad(format!("{} state tensors, the method keeps {}", data.state.len(), own.len())));
    }
    for (key, t) in own {
        match data.state.get(&key) {
            Some(values) if values.len() == t.numel() => t.write(gpu, values)?,
            _ => return Err(bad(format!("state tensor `{key}` is missing or of the wrong size"))),
        }
    }
    trainer.running.write(gpu, &data.bco_running)?;
    Ok((trainer, data.progress))
}
