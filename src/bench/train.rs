//! Training throughput: optimizer steps on a model of a given size, reported
//! as target tokens per second and peak GPU bytes. The models are random
//! (built in memory from a config), since speed does not depend on the values.

use std::time::Instant;

use safetensors::tensor::TensorView;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::gpu::{Gpu, KernelTime};
use crate::model::{Config, MemoryFiles, Model};
use crate::peft::adalora::AdaLoraConfig;
use crate::peft::adapter::Adapter;
use crate::peft::adapter::AdapterConfig;
use crate::peft::ia3::Ia3Config;
use crate::peft::p_tuning::PTuningConfig;
use crate::peft::prefix_tuning::PrefixTuningConfig;
use crate::peft::prompt_tuning::{PromptTuningConfig, PromptTuningInit};
use crate::peft::{BottleneckConfig, BottleneckKind, LoraConfig, TargetModules};
use crate::quant::QuantFormat;
use crate::train::data::Batch;
use crate::train::plan::{PlanAdapter, PlanInput};
use crate::train::trainer::{OptimizerConfig, Trainer};
use crate::util::rng::Rng;

/// One measured training setup.
#[derive(Clone, Debug, Serialize)]
pub struct TrainFigure {
    pub model: String,
    pub parameters: u64,
    pub quant: String,
    /// The frozen Linears' arithmetic: "f32", or "f16" (SHADER_F16).
    pub compute_dtype: String,
    pub method: String,
    /// LoRA's rank (0 for a bottleneck adapter).
    pub r: usize,
    pub checkpointing: bool,
    /// Examples packed in each row (1: one sequence a row).
    pub examples_per_row: usize,
    /// Whether a low-rank term (LoRA's, AdaLoRA's) was fused into the frozen
    /// products where `kernels::low_rank::fuses` (off: `set_fused(false)`).
    pub term_fused: bool,
    pub adapter_parameters: usize,
    pub batch: usize,
    pub seq: usize,
    /// Median step time, ms.
    pub step_ms: f64,
    /// Target tokens per second (B·(T−k) per step over the median step, k
    /// examples a row: an example's first token has no target).
    pub tokens_per_s: f64,
    /// Peak bytes of GPU buffers during the steps (weights and the pool
    /// included), from the library's own accounting.
    pub peak_gpu_bytes: u64,
    /// Of which the frozen weights.
    pub weight_bytes: u64,
    /// GPU time per kernel in one profiled step, slowest first (empty unless
    /// asked for).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kernels: Vec<KernelTime>,
}

/// A Llama `config.json` for a model of hidden size `d`, `layers` layers.
pub fn llama_config(vocab: usize, d: usize, inter: usize, layers: usize, heads: usize, kv: usize) -> String {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
        "hidden_size": d, "intermediate_size": inter, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv, "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": false,
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32"
    })
    .to_string()
}

/// Llama-3.2-1B's shape (V 128,256, D 2048, I 8192, 16 layers, 32 heads, 8
/// KV heads, the lm_head tied to the embedding), as a `config.json`, stored
/// in bf16 as the real checkpoint is.
pub fn llama_1b_config() -> String {
    llama_config(128256, 2048, 8192, 16, 32, 8)
        .replace("\"tie_word_embeddings\":false", "\"tie_word_embeddings\":true")
        .replace("\"torch_dtype\":\"float32\"", "\"torch_dtype\":\"bfloat16\"")
}

/// The big-model target: NF4, LoRA r 16 on all seven projections,
/// batch 1 × 512, gradient checkpointing, on a real GPU's kernels.
pub fn llama_1b_plan_input() -> PlanInput {
    PlanInput {
        quant: QuantFormat::Nf4,
        four_bit: Default::default(),
        adapter: PlanAdapter::Lora {
            r: 16,
            targets: crate::peft::LORA_MODULES.iter().map(|s| s.to_string()).collect(),
            dropout: false,
            dora: false,
            adjusts_base: false,
            outer_params: 0,
        },
        batch: 1,
        seq: 512,
        grad_accum: 1,
        checkpointing: true,
        kernels: crate::gpu::KernelFamily::Gpu,
    }
}

/// A random checkpoint for `config_json`, as model files in memory: bf16
/// where the config's `torch_dtype` says bfloat16, else f32.
pub fn random_model_files(config_json: &str, seed: u64) -> Result<MemoryFiles> {
    let config = Config::from_json(config_json.as_bytes())?;
    let mut rng = Rng::new(seed);
    let bf16 = config.torch_dtype == Some(safetensors::Dtype::BF16);
    let dtype = if bf16 { safetensors::Dtype::BF16 } else { safetensors::Dtype::F32 };
    // Each tensor's bytes in the checkpoint's dtype (one f32 copy at a time).
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = config
        .tensor_names()
        .into_iter()
        .map(|t| {
            let n = t.shape.iter().product();
            let values = if t.name.ends_with("norm.weight") { vec![1.0; n] } else { rng.uniform_vec(n, -0.05, 0.05) };
            let bytes = match bf16 {
                true => bytemuck::cast_slice(&crate::quant::to_bf16(&values)).to_vec(),
                false => bytemuck::cast_slice(&values).to_vec(),
            };
            (t.name, t.shape, bytes)
        })
        .collect();
    let views = tensors
        .iter()
        .map(|(n, s, b)| {
            TensorView::new(dtype, s.clone(), b)
                .map(|t| (n.clone(), t))
                .map_err(|e| Error::invalid("random_model_files", e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, None).map_err(|e| Error::invalid("random_model_files", e.to_string()))?;
    let mut files = MemoryFiles::new();
    files.insert("config.json", config_json.as_bytes().to_vec());
    files.insert("model.safetensors", bytes);
    Ok(files)
}

/// What to time: a method on a base format at a batch shape.
#[derive(Clone, Debug)]
pub struct StepSetup {
    pub quant: QuantFormat,
    /// "lora" or "dora" (all seven projections), "adalora" (all seven, init_r r, target_r r/2), "ia3" (PEFT's default modules),
    /// "prompt_tuning", "prefix_tuning", "prefix_projection" (prefix tuning through
    /// PEFT's MLP, as wide as token_dim) or "p_tuning" (MLP as wide as the
    /// model) (20 virtual tokens each), or a bottleneck kind ("seq_bn", …).
    pub method: String,
    /// LoRA's rank (alpha is 2r).
    pub r: usize,
    pub batch: usize,
    pub seq: usize,
    pub checkpointing: bool,
    /// Examples packed in each row: k ≥ 2 cuts every row into k examples
    /// (the last takes the remainder) with their own positions and attention.
    pub examples_per_row: usize,
    /// Timed steps; the figure is their median.
    pub steps: usize,
    /// One untimed step first (pipelines compile in it).
    pub warmup: bool,
    /// After the timed steps, one more with timestamp queries on every
    /// dispatch, for the per-kernel table (where the device has them).
    pub profile: bool,
}

impl StepSetup {
    pub fn new(quant: QuantFormat, method: &str, batch: usize, seq: usize) -> StepSetup {
        StepSetup {
            quant,
            method: method.to_string(),
            r: 16,
            batch,
            seq,
            checkpointing: false,
            examples_per_row: 1,
            steps: 3,
            warmup: true,
            profile: false,
        }
    }
}

/// Steps of `setup.method` on `files` stored as `setup.quant`: a warm-up
/// step, then the median of `setup.steps`.
pub async fn train_figure(gpu: &Gpu, name: &str, files: &MemoryFiles, setup: &StepSetup) -> Result<TrainFigure> {
    let model = Model::load(gpu, files, setup.quant).await?;
    train_figure_on(gpu, name, &model, setup).await
}

/// [`train_figure`] on a loaded model.
pub async fn train_figure_on(gpu: &Gpu, name: &str, model: &Model, setup: &StepSetup) -> Result<TrainFigure> {
    let StepSetup { batch, seq, r, .. } = *setup;
    let parameters = model.config.tensor_names().iter().map(|t| t.shape.iter().product::<usize>() as u64).sum();
    let adapter = match setup.method.as_str() {
        "lora" => {
            Adapter::new_lora(gpu, LoraConfig::new(r, 2.0 * r as f64, TargetModules::AllLinear)?, &model.config, 1)?
        }
        "dora" => {
            let mut config = LoraConfig::new(r, 2.0 * r as f64, TargetModules::AllLinear)?;
            config.use_dora = true;
            Adapter::new_for_model(gpu, AdapterConfig::Lora(config), model, None, 1)?
        }
        "adalora" => {
            // init_r r → r/2 over a 100-step run: every timed step scores and masks the ranks.
            let lora = LoraConfig::new(8, 2.0 * r as f64, TargetModules::AllLinear)?;
            let config = AdaLoraConfig::new(lora, r, (r / 2).max(1), 100)?;
            Adapter::new(gpu, AdapterConfig::AdaLora(config), &model.config, 1)?
        }
        "ia3" => Adapter::new_ia3(gpu, Ia3Config::default_for(model.config.model_type), &model.config, 1)?,
        "prompt_tuning" => {
            let config = PromptTuningConfig::new(20, PromptTuningInit::Random, &model.config)?;
            Adapter::new(gpu, AdapterConfig::PromptTuning(config), &model.config, 1)?
        }
        "prefix_tuning" | "prefix_projection" => {
            let mut config = PrefixTuningConfig::new(20, &model.config)?;
            config.prefix_projection = setup.method == "prefix_projection";
            Adapter::new(gpu, AdapterConfig::PrefixTuning(config), &model.config, 1)?
        }
        "p_tuning" => {
            let config = PTuningConfig::new(20, None, &model.config)?;
            Adapter::new(gpu, AdapterConfig::PTuning(config), &model.config, 1)?
        }
        kind => {
            let kind = BottleneckKind::from_name(kind)
                .ok_or_else(|| Error::invalid("train_figure", format!("unknown method {kind:?}")))?;
            Adapter::new_bottleneck(gpu, BottleneckConfig::new(kind), &model.config, 1)?
        }
    };
    let adapter_parameters = adapter.num_params();
    let mut trainer = Trainer::new(gpu, adapter, OptimizerConfig::default(), 0)?;
    trainer.gradient_checkpointing = setup.checkpointing;
    let mut rng = Rng::new(7);
    let vocab = model.config.vocab_size;
    let ids: Vec<Vec<u32>> = (0..batch).map(|_| (0..seq).map(|_| rng.below(vocab) as u32).collect()).collect();
    let labels = ids.iter().map(|r| r.iter().map(|&v| v as i32).collect()).collect();
    let mut b = Batch::new(ids, labels);
    let k = setup.examples_per_row.clamp(1, seq);
    if k > 1 {
        let positions: Vec<u32> = (0..seq).map(|t| (t - (t / (seq / k)).min(k - 1) * (seq / k)) as u32).collect();
        for labels in &mut b.labels {
            for (label, &p) in labels.iter_mut().zip(&positions) {
                if p == 0 {
                    *label = crate::model::llama::IGNORE_INDEX;
                }
            }
        }
        b.position_ids = Some(vec![positions; batch]);
    }
    gpu.reset_peak_memory();
    if setup.warmup {
        trainer.step(gpu, model, std::slice::from_ref(&b), 1e-4).await?; // pipelines compile
    }
    let mut times = Vec::with_capacity(setup.steps);
    for _ in 0..setup.steps.max(1) {
        let start = Instant::now();
        trainer.step(gpu, model, std::slice::from_ref(&b), 1e-4).await?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let step = times[times.len() / 2];
    let peak = gpu.memory().peak_bytes;
    let kernels = if setup.profile && gpu.info().timestamp_query {
        gpu.set_profiling(true)?;
        let stepped = trainer.step(gpu, model, std::slice::from_ref(&b), 1e-4).await;
        gpu.set_profiling(false)?;
        stepped?;
        gpu.take_profile().await?
    } else {
        Vec::new()
    };
    drop(trainer);
    gpu.trim_memory();
    Ok(TrainFigure {
        model: name.to_string(),
        parameters,
        quant: model.format.name().to_string(),
        compute_dtype: model.compute_dtype().name().to_string(),
        method: setup.method.clone(),
        r: if matches!(setup.method.as_str(), "lora" | "dora") { r } else { 0 },
        checkpointing: setup.checkpointing,
        examples_per_row: k,
        term_fused: crate::kernels::low_rank::fused(gpu),
        adapter_parameters,
        batch,
        seq,
        step_ms: step * 1e3,
        tokens_per_s: (batch * (seq - k)) as f64 / step,
        peak_gpu_bytes: peak,
        weight_bytes: model.bytes(),
        kernels,
    })
}
