//! Generation throughput: greedy decoding from a random prompt with the KV
//! cache, reported as new tokens per second.

use std::time::Instant;

use serde::Serialize;

use crate::error::Result;
use crate::gpu::{Gpu, KernelTime, Recorder, Tensor};
use crate::model::llama::{GenerationConfig, Hooks, KvCache, NoHooks};
use crate::model::Model;
use crate::util::rng::Rng;

/// One measured generation.
#[derive(Clone, Debug, Serialize)]
pub struct GenerateFigure {
    pub model: String,
    pub quant: String,
    /// The frozen Linears' arithmetic: "f32", or "f16" (SHADER_F16).
    pub compute_dtype: String,
    /// The adapter generating through its hooks ("LoRA r16 all-linear"), or
    /// None for the base model alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    /// Prompt (prefill) and first token, ms.
    pub first_token_ms: f64,
    /// Sampled ([`SAMPLED`]) rather than greedy.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub sampled: bool,
    /// New tokens after the first, per second (the decode rate).
    pub decode_tokens_per_s: f64,
    /// CPU time to record and submit one decoding step, ms (the GPU idles
    /// through it: each token waits for the last one's sample).
    pub host_ms_per_token: f64,
    /// Kernel launches in one decoding step (after the prompt).
    pub launches_per_token: usize,
    /// GPU time per kernel of one profiled decoding step (one new token after
    /// the prompt), slowest first (empty unless asked for).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kernels: Vec<KernelTime>,
}

/// The sampling of [`generate_figure`]'s sampled figures: temperature 0.7,
/// top-p 0.9 (the logits read back and drawn from on the CPU).
pub const SAMPLED: (f32, f32) = (0.7, 0.9);

/// Generation of `new_tokens` after a random prompt of `prompt_tokens` (one
/// warm-up run first, so pipelines are compiled and tuned), greedy or with
/// `sampled` as [`SAMPLED`] says, through `adapter`'s hooks (a label and the
/// adapter) or the base model alone; with `profile`, then one decoding step
/// with timestamp queries (where the device has them).
pub async fn generate_figure(
    gpu: &Gpu,
    name: &str,
    model: &Model,
    (prompt_tokens, new_tokens): (usize, usize),
    adapter: Option<(&str, &dyn Hooks)>,
    (sampled, profile): (bool, bool),
) -> Result<GenerateFigure> {
    let hooks = adapter.map_or(&NoHooks as &dyn Hooks, |(_, h)| h);
    let mut rng = Rng::new(11);
    let vocab = model.config.vocab_size;
    let prompt: Vec<u32> = (0..prompt_tokens.max(1)).map(|_| rng.below(vocab) as u32).collect();
    let config = match sampled {
        true => GenerationConfig::sampling(new_tokens.max(2), SAMPLED.0, 0, SAMPLED.1, 11),
        false => GenerationConfig { max_new_tokens: new_tokens.max(2), greedy: true, ..GenerationConfig::default() },
    };
    // The warm-up compiles the pipelines and, on a real GPU, tunes after its
    // first one-token step (the third token), so the timed run does neither.
    model
        .generate_adapted(gpu, &prompt, &GenerationConfig { max_new_tokens: 3, ..config.clone() }, hooks, |_| true)
        .await?;
    let start = Instant::now();
    let mut first = None;
    let out = model
        .generate_adapted(gpu, &prompt, &config, hooks, |_| {
            first.get_or_insert_with(|| start.elapsed().as_secs_f64());
            true
        })
        .await?;
    let total = start.elapsed().as_secs_f64();
    let first = first.unwrap_or(total);
    let (host_ms_per_token, launches_per_token) = host_ms_per_step(gpu, model, &prompt, hooks).await?;
    let kernels = match profile && gpu.info().timestamp_query {
        true => profile_decode_step(gpu, model, &prompt, hooks).await?,
        false => Vec::new(),
    };
    gpu.trim_memory();
    Ok(GenerateFigure {
        model: name.to_string(),
        quant: model.format.name().to_string(),
        compute_dtype: model.compute_dtype().name().to_string(),
        adapter: adapter.map(|(label, _)| label.to_string()),
        sampled,
        prompt_tokens: prompt.len(),
        new_tokens: out.len(),
        first_token_ms: first * 1e3,
        decode_tokens_per_s: (out.len().saturating_sub(1)) as f64 / (total - first).max(1e-9),
        host_ms_per_token,
        launches_per_token,
        kernels,
    })
}

/// The CPU time of recording and submitting a decoding step after `prompt`:
/// the mean of 8 steps, each waited for after its timing (so a CPU
/// rasterizer's own work, which shares the cores, is not counted); and the
/// kernel launches a step makes.
async fn host_ms_per_step(gpu: &Gpu, model: &Model, prompt: &[u32], hooks: &dyn Hooks) -> Result<(f64, usize)> {
    const STEPS: usize = 8;
    let frozen = hooks.frozen(); // as `generate` runs them
    let hooks = frozen.as_deref().unwrap_or(hooks);
    let cache = KvCache::new(gpu, model, 1, prompt.len() + STEPS)?;
    let mut rec = Recorder::new(gpu);
    model.forward_cached(&mut rec, &model.input_ids(gpu, &[prompt.to_vec()])?, &cache, 0, hooks)?;
    rec.submit()?;
    gpu.synchronize().await?;
    let token = Tensor::from_slice(gpu, &[1, 1], &prompt[..1])?;
    let (mut host, mut launches) = (0.0, 0);
    for i in 0..STEPS {
        let start = Instant::now();
        let mut rec = Recorder::new(gpu);
        model.forward_cached(&mut rec, &token, &cache, prompt.len() + i, hooks)?;
        launches = rec.dispatches();
        rec.submit()?;
        host += start.elapsed().as_secs_f64();
        gpu.synchronize().await?;
    }
    Ok((host / STEPS as f64 * 1e3, launches))
}

/// GPU time per kernel of the step that decodes one token after `prompt`.
async fn profile_decode_step(gpu: &Gpu, model: &Model, prompt: &[u32], hooks: &dyn Hooks) -> Result<Vec<KernelTime>> {
    let frozen = hooks.frozen(); // as `generate` runs them
    let hooks = frozen.as_deref().unwrap_or(hooks);
    let cache = KvCache::new(gpu, model, 1, prompt.len() + 1)?;
    let mut rec = Recorder::new(gpu);
    model.forward_cached(&mut rec, &model.input_ids(gpu, &[prompt.to_vec()])?, &cache, 0, hooks)?;
    rec.submit()?;
    gpu.synchronize().await?;
    let token = Tensor::from_slice(gpu, &[1, 1], &prompt[..1])?;
    gpu.set_profiling(true)?;
    let mut rec = Recorder::new(gpu);
    let stepped = model.forward_cached(&mut rec, &token, &cache, prompt.len(), hooks).and_then(|_| rec.submit());
    gpu.set_profiling(false)?;
    stepped?;
    gpu.take_profile().await
}

/// The process's peak resident set (VmHWM), in bytes, where the OS says
/// (Linux); `None` elsewhere.
pub fn host_peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
