//! The architecture of a Llama-family model, read from Hugging Face's
//! `config.json` (transformers 4.57: `LlamaConfig`, `Qwen2Config`,
//! `MistralConfig`; SmolLM is `llama`).
//!
//! Only fields that change the math are kept. Defaults are transformers' own
//! for fields it defaults; the sizes have no sensible default and are
//! required. Anything the forward pass would get wrong (another RoPE scaling,
//! an activation other than SiLU, a sliding window that can bite, MLP biases)
//! is an [`Error::Config`](crate::Error::Config) naming the field, never
//! silently ignored.

use ::safetensors::Dtype;
use serde_json::Value;

use super::source::{ByteSource, ModelFiles};
use crate::kernels::classification::ProblemType;
use crate::util::json::{brief, Fields};
use crate::{Error, Result};

fn config_error(field: &str, detail: impl Into<String>) -> Error {
    Error::Config { field: field.to_string(), detail: detail.into() }
}

fn positive(field: &str, n: usize) -> Result<usize> {
    if n == 0 {
        return Err(config_error(field, "must be at least 1, got 0"));
    }
    Ok(n)
}

pub use super::llama::rope::{Llama3Scaling, RopeScaling, YarnScaling};

/// `model_type` in config.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelType {
    /// Llama 1–3, SmolLM, TinyLlama, …
    Llama,
    /// Qwen2 / Qwen2.5: q/k/v biases, no o_proj bias.
    Qwen2,
    /// Mistral: no biases; sliding-window attention on every layer
    /// (`sliding_window`, 4096 when absent).
    Mistral,
    /// Qwen3: Qwen2 without the q/k/v biases (all four projections follow
    /// `attention_bias`), and `q_norm`/`k_norm`, RMSNorms over each head's
    /// head_dim values of q and k before RoPE; head_dim 128 by default.
    Qwen3,
    /// SmolLM3: Llama with NoPE layers (`no_rope_layers`: by default every
    /// fourth layer's attention rotates nothing) and tied embeddings by
    /// default.
    SmolLM3,
}

impl ModelType {
    pub fn name(self) -> &'static str {
        match self {
            ModelType::Llama => "llama",
            ModelType::Qwen2 => "qwen2",
            ModelType::Mistral => "mistral",
            ModelType::Qwen3 => "qwen3",
            ModelType::SmolLM3 => "smollm3",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "llama" => Ok(ModelType::Llama),
            "qwen2" => Ok(ModelType::Qwen2),
            "mistral" => Ok(ModelType::Mistral),
            "qwen3" => Ok(ModelType::Qwen3),
            "smollm3" => Ok(ModelType::SmolLM3),
            other => Err(config_error(
                "model_type",
                format!("unsupported model_type \"{other}\" (supported: llama, qwen2, qwen3, mistral, smollm3)"),
            )),
        }
    }

    /// transformers' default `max_position_embeddings` for the class.
    fn default_max_positions(self) -> usize {
        match self {
            ModelType::Llama => 2048,
            ModelType::Qwen2 | ModelType::Qwen3 | ModelType::SmolLM3 => 32768,
            ModelType::Mistral => 4096 * 32,
        }
    }
}

/// A checkpoint tensor this config expects: its name and shape, in the
/// checkpoint's own naming (Linear weights are (out, in)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    fn new(name: impl Into<String>, shape: &[usize]) -> Self {
        TensorSpec { name: name.into(), shape: shape.to_vec() }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A validated model configuration. Shapes below: V vocab, D hidden,
/// I intermediate, H heads, KV key/value heads, hd head_dim.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub model_type: ModelType,
    /// V.
    pub vocab_size: usize,
    /// D: width of the residual stream.
    pub hidden_size: usize,
    /// I: width of the SwiGLU MLP.
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    /// H: query heads.
    pub num_attention_heads: usize,
    /// KV: key/value heads (GQA when < H); divides H. Default H.
    pub num_key_value_heads: usize,
    /// hd: may differ from D / H (then q_proj is (H·hd, D)). Default D / H.
    pub head_dim: usize,
    /// RMSNorm epsilon. Default 1e-6.
    pub rms_norm_eps: f64,
    /// RoPE base. Default 10000.
    pub rope_theta: f64,
    /// `None` for plain RoPE; else `rope_scaling`'s type and factors.
    pub rope_scaling: Option<RopeScaling>,
    /// Per layer: whether its attention rotates q and k. All true but for
    /// SmolLM3's NoPE layers (`no_rope_layers[i] == 0`).
    pub rope_layers: Vec<bool>,
    pub max_position_embeddings: usize,
    /// Sliding-window attention (Mistral; Qwen2 and Qwen3 with
    /// `use_sliding_window`): the layers whose queries see only the last
    /// `window` keys. `None` when no layer slides.
    pub sliding_window: Option<SlidingWindow>,
    /// No `lm_head.weight`: the head reuses `model.embed_tokens.weight`.
    pub tie_word_embeddings: bool,
    /// q/k/v_proj have biases (Qwen2 always; Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// o_proj has a bias (Llama and Qwen3 with `attention_bias`; never Qwen2/Mistral).
    pub o_bias: bool,
    /// Each attention has `q_norm` and `k_norm` (hd) (Qwen3).
    pub qk_norm: bool,
    /// On-disk dtype the config declares (`dtype`, or `torch_dtype` before
    /// transformers 4.56): F32, F16 or BF16. Informational: every tensor's
    /// header says its own dtype.
    pub torch_dtype: Option<Dtype>,
    pub bos_token_id: Option<u32>,
    /// Empty, one id, or several (Llama 3 instruct lists three).
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// A bitsandbytes folder's `quantization_config.bnb_4bit_compute_dtype`
    /// ("float32", "float16", "bfloat16"), as written.
    pub bnb_4bit_compute_dtype: Option<String>,
    /// The std of transformers' normal init of new weights (a sequence
    /// classifier's `score` head). Default 0.02.
    pub initializer_range: f64,
    /// The checkpoint's head, by its `architectures`: a causal LM's
    /// `lm_head`, or a sequence classifier's `score`.
    pub head: ModelHead,
}

/// What a checkpoint's hidden states end in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelHead {
    /// `lm_head.weight` (V, D), or the embedding where tied: `…ForCausalLM`.
    CausalLm,
    /// `score.weight` (num_labels, D) and no lm_head:
    /// `…ForSequenceClassification` (a reward model or classifier), its
    /// labels `id2label`'s count (transformers' `num_labels`, 2 without it)
    /// and its `problem_type` where the config names one.
    SequenceClassification { num_labels: usize, problem_type: Option<ProblemType> },
}

impl ModelHead {
    /// A classifier's labels, `None` for a causal LM.
    pub fn num_labels(self) -> Option<usize> {
        match self {
            ModelHead::CausalLm => None,
            ModelHead::SequenceClassification { num_labels, .. } => Some(num_labels),
        }
    }
}

/// The head `architectures` names: a classifier where its first entry ends
/// in `ForSequenceClassification`.
fn model_head(value: &Value, f: &Fields) -> Result<ModelHead> {
    let arch = value.get("architectures").and_then(|a| a.get(0)).and_then(Value::as_str).unwrap_or("");
    if !arch.ends_with("ForSequenceClassification") {
        return Ok(ModelHead::CausalLm);
    }
    let num_labels = match value.get("id2label") {
        Some(Value::Object(labels)) if !labels.is_empty() => labels.len(),
        Some(Value::Object(_)) | None => 2, // transformers' PretrainedConfig default
        Some(other) => return Err(config_error("id2label", format!("must be an object of label names, got {other}"))),
    };
    let problem_type = match f.opt_str("problem_type")? {
        None => None,
        Some(name) => Some(ProblemType::from_name(name).ok_or_else(|| {
            config_error(
                "problem_type",
                format!("{name:?}: transformers knows regression, single_label_classification and multi_label_classification"),
            )
        })?),
    };
    Ok(ModelHead::SequenceClassification { num_labels, problem_type })
}

/// A sequence classifier checkpoint's head.
pub const SCORE_WEIGHT: &str = "score.weight";

/// The most layers a config may declare.
pub const MAX_LAYERS: usize = 4096;
/// The most elements one weight may have (2^40).
pub const MAX_TENSOR_ELEMENTS: u64 = 1 << 40;

impl Config {
    /// The arithmetic a bitsandbytes folder asks for: f16 for its "float16"
    /// and "bfloat16" (webpeft has no bf16 arithmetic; f16 is the 16-bit one
    /// it has, and `Model::set_compute_dtype` refuses it for weights past f16's
    /// safe range), f32 for "float32", None without a bitsandbytes config.
    pub fn bnb_compute_dtype(&self) -> Option<crate::quant::ComputeDtype> {
        self.bnb_4bit_compute_dtype.as_deref().map(|d| match d {
            "float16" | "bfloat16" => crate::quant::ComputeDtype::F16,
            _ => crate::quant::ComputeDtype::F32,
        })
    }

    /// Parses and validates the bytes of a `config.json`.
    pub fn from_json(bytes: &[u8]) -> Result<Config> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| config_error("(file)", format!("not valid JSON: {e}")))?;
        Config::from_value(&value)
    }

    /// Reads `config.json` from a model folder.
    pub async fn load<F: ModelFiles>(files: &F) -> Result<Config> {
        let bytes = files.open("config.json").await?.read_all().await?;
        Config::from_json(&bytes)
    }

    /// What `generation_config.json` sets for `generate()`, as transformers'
    /// `GenerationConfig.from_pretrained` resolves it: its fields, and
    /// transformers' defaults where the file is silent (or absent). Its eos
    /// ids are ones generation stops at as well as `config.json`'s: a chat
    /// model may end its turns with a token only this file names (Llama 3
    /// Instruct's `<|eot_id|>`).
    pub async fn generation_defaults<F: ModelFiles>(files: &F) -> Result<GenerationDefaults> {
        let Some(source) = files.try_open(GenerationDefaults::FILE).await? else {
            return Ok(GenerationDefaults::default());
        };
        GenerationDefaults::from_json(&source.read_all().await?)
    }

    /// Parses and validates a parsed `config.json`.
    pub fn from_value(value: &Value) -> Result<Config> {
        let f = Fields::new(value, "", "(file)", config_error)?;
        let model_type =
            ModelType::parse(f.opt_str("model_type")?.ok_or_else(|| config_error("model_type", "missing"))?)?;

        let hidden_size = f.size("hidden_size")?;
        let num_attention_heads = f.size("num_attention_heads")?;
        let num_key_value_heads = match f.opt_usize("num_key_value_heads")? {
            Some(n) => positive("num_key_value_heads", n)?,
            None => num_attention_heads,
        };
        let head_dim = match f.opt_usize("head_dim")? {
            Some(n) => positive("head_dim", n)?,
            None if model_type == ModelType::Qwen3 => 128,
            None if hidden_size % num_attention_heads == 0 => hidden_size / num_attention_heads,
            None => {
                return Err(config_error(
                    "num_attention_heads",
                    format!(
                    "{num_attention_heads} heads do not divide hidden_size {hidden_size} (and head_dim is not given)"
                ),
                ))
            }
        };

        check_activation(&f)?;
        let (qkv_bias, o_bias) = biases(model_type, &f)?;
        let max_position_embeddings = match f.opt_usize("max_position_embeddings")? {
            Some(n) => positive("max_position_embeddings", n)?,
            None => model_type.default_max_positions(),
        };
        let num_hidden_layers = f.size("num_hidden_layers")?;
        // Bounded before the per-layer lists below are made (validate() checks it again).
        if num_hidden_layers > MAX_LAYERS {
            return Err(config_error(
                "num_hidden_layers",
                format!("{num_hidden_layers} layers is more than the {MAX_LAYERS} webpeft accepts"),
            ));
        }
        let rope_layers = rope_layers(model_type, &f, num_hidden_layers)?;
        let sliding_window = sliding_window(model_type, &f, &rope_layers)?;

        let config = Config {
            model_type,
            vocab_size: f.size("vocab_size")?,
            hidden_size,
            intermediate_size: f.size("intermediate_size")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: f.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: f.opt_f64("rope_theta")?.unwrap_or(10000.0),
            rope_scaling: rope_scaling(&f, max_position_embeddings)?,
            rope_layers,
            max_position_embeddings,
            sliding_window,
            // PretrainedConfig's default (true) where the class sets none (SmolLM3Config).
            tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(model_type == ModelType::SmolLM3),
            qkv_bias,
            o_bias,
            qk_norm: model_type == ModelType::Qwen3,
            torch_dtype: torch_dtype(&f)?,
            bos_token_id: f.opt_token("bos_token_id")?,
            eos_token_ids: f.tokens("eos_token_id")?,
            pad_token_id: f.opt_token("pad_token_id")?,
            bnb_4bit_compute_dtype: value
                .get("quantization_config")
                .filter(|q| q.get("quant_method").and_then(Value::as_str) == Some("bitsandbytes"))
                .and_then(|q| q.get("bnb_4bit_compute_dtype"))
                .and_then(Value::as_str)
                .map(str::to_string),
            initializer_range: match f.opt_f64("initializer_range")? {
                Some(std) if !(std.is_finite() && std >= 0.0) => {
                    return Err(f.error("initializer_range", format!("must be a finite number ≥ 0, got {std}")))
                }
                std => std.unwrap_or(0.02),
            },
            head: model_head(value, &f)?,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the invariants the model code relies on (also for configs built
    /// by hand): non-zero sizes, KV dividing H, an even head_dim, positive
    /// eps and theta.
    pub fn validate(&self) -> Result<()> {
        for (field, n) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            positive(field, n)?;
        }
        // Bounds far above any real model, so sizes never overflow and a
        // config can't make the loader list billions of tensors. (Found by
        // the fuzz smoke test: a huge num_hidden_layers ran out of memory.)
        if self.num_hidden_layers > MAX_LAYERS {
            return Err(config_error(
                "num_hidden_layers",
                format!("{} layers is more than the {MAX_LAYERS} webpeft accepts", self.num_hidden_layers),
            ));
        }
        let elements = |a: usize, b: usize| a.checked_mul(b).filter(|&n| n as u64 <= MAX_TENSOR_ELEMENTS);
        let d = self.hidden_size;
        let weights = [
            ("vocab_size", Some(self.vocab_size)),
            ("intermediate_size", Some(self.intermediate_size)),
            ("num_attention_heads × head_dim", elements(self.num_attention_heads, self.head_dim)),
            ("num_key_value_heads × head_dim", elements(self.num_key_value_heads, self.head_dim)),
        ];
        for (field, rows) in weights {
            if rows.and_then(|r| elements(r, d)).is_none() {
                return Err(config_error(
                    field,
                    format!("with hidden_size {d} it makes a weight over 2^40 elements, more than any device holds"),
                ));
            }
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(config_error(
                "num_key_value_heads",
                format!(
                    "{} key/value heads do not divide num_attention_heads {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            ));
        }
        if self.head_dim % 2 != 0 {
            return Err(config_error("head_dim", format!("must be even for RoPE, got {}", self.head_dim)));
        }
        for (field, x) in [("rms_norm_eps", self.rms_norm_eps), ("rope_theta", self.rope_theta)] {
            if !(x.is_finite() && x > 0.0) {
                return Err(config_error(field, format!("must be a positive number, got {x}")));
            }
        }
        Ok(())
    }

    /// H·hd: width of the attention's query side (q_proj out, o_proj in).
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    /// KV·hd: width of k_proj and v_proj outputs.
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// Every tensor the checkpoint must hold, in model order, with its shape.
    pub fn tensor_names(&self) -> Vec<TensorSpec> {
        let (v, d, i) = (self.vocab_size, self.hidden_size, self.intermediate_size);
        let (q, kv) = (self.q_dim(), self.kv_dim());
        let mut t = vec![TensorSpec::new("model.embed_tokens.weight", &[v, d])];
        for l in 0..self.num_hidden_layers {
            let p = format!("model.layers.{l}");
            t.push(TensorSpec::new(format!("{p}.input_layernorm.weight"), &[d]));
            for (proj, out) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
                t.push(TensorSpec::new(format!("{p}.self_attn.{proj}.weight"), &[out, d]));
                if self.qkv_bias {
                    t.push(TensorSpec::new(format!("{p}.self_attn.{proj}.bias"), &[out]));
                }
            }
            t.push(TensorSpec::new(format!("{p}.self_attn.o_proj.weight"), &[d, q]));
            if self.o_bias {
                t.push(TensorSpec::new(format!("{p}.self_attn.o_proj.bias"), &[d]));
            }
            if self.qk_norm {
                t.push(TensorSpec::new(format!("{p}.self_attn.q_norm.weight"), &[self.head_dim]));
                t.push(TensorSpec::new(format!("{p}.self_attn.k_norm.weight"), &[self.head_dim]));
            }
            t.push(TensorSpec::new(format!("{p}.post_attention_layernorm.weight"), &[d]));
            t.push(TensorSpec::new(format!("{p}.mlp.gate_proj.weight"), &[i, d]));
            t.push(TensorSpec::new(format!("{p}.mlp.up_proj.weight"), &[i, d]));
            t.push(TensorSpec::new(format!("{p}.mlp.down_proj.weight"), &[d, i]));
        }
        t.push(TensorSpec::new("model.norm.weight", &[d]));
        match self.head {
            ModelHead::SequenceClassification { num_labels, .. } => {
                t.push(TensorSpec::new(SCORE_WEIGHT, &[num_labels, d]))
            }
            ModelHead::CausalLm if !self.tie_word_embeddings => t.push(TensorSpec::new("lm_head.weight", &[v, d])),
            ModelHead::CausalLm => {}
        }
        t
    }

    /// Number of parameters, a tied embedding counted once (what
    /// `model.num_parameters()` reports).
    pub fn parameter_count(&self) -> u64 {
        self.tensor_names().iter().map(|t| t.numel() as u64).sum()
    }
}

/// `hidden_act`: SiLU only ("swish" is transformers' other name for it).
fn check_activation(f: &Fields) -> Result<()> {
    match f.opt_str("hidden_act")?.unwrap_or("silu") {
        "silu" | "swish" => Ok(()),
        other => Err(config_error("hidden_act", format!("unsupported activation \"{other}\" (only silu)"))),
    }
}

/// (q/k/v bias, o bias) as each transformers class builds its Linears.
fn biases(model_type: ModelType, f: &Fields) -> Result<(bool, bool)> {
    match model_type {
        // SmolLM3 builds its Linears as Llama does.
        ModelType::Llama | ModelType::SmolLM3 => {
            if f.opt_bool("mlp_bias")? == Some(true) {
                return Err(config_error("mlp_bias", "MLP biases are not supported yet"));
            }
            let b = f.opt_bool("attention_bias")?.unwrap_or(false);
            Ok((b, b))
        }
        // Qwen2Attention: q/k/v bias=True, o_proj bias=False, whatever attention_bias says.
        ModelType::Qwen2 => Ok((true, false)),
        // MistralAttention: no biases at all.
        ModelType::Mistral => Ok((false, false)),
        // Qwen3Attention: every projection's bias is attention_bias; the MLP has none.
        ModelType::Qwen3 => {
            let b = f.opt_bool("attention_bias")?.unwrap_or(false);
            Ok((b, b))
        }
    }
}

/// `dtype` (transformers ≥ 4.56) or `torch_dtype`.
fn torch_dtype(f: &Fields) -> Result<Option<Dtype>> {
    let key = if f.contains("dtype") { "dtype" } else { "torch_dtype" };
    let Some(s) = f.opt_str(key)? else { return Ok(None) };
    match s.strip_prefix("torch.").unwrap_or(s) {
        "float32" => Ok(Some(Dtype::F32)),
        "float16" => Ok(Some(Dtype::F16)),
        "bfloat16" => Ok(Some(Dtype::BF16)),
        other => Err(config_error(key, format!("unsupported dtype \"{other}\" (float32, float16 or bfloat16)"))),
    }
}

/// `rope_scaling`: `null`, `{"rope_type": "default"}`, linear, dynamic, yarn
/// or llama3. The key was spelled `type` before transformers 4.45;
/// transformers copies `type` over `rope_type`, so both are read and must
/// agree. Factors must be positive and finite; transformers only warns about
/// a factor below 1.
fn rope_scaling(top: &Fields, max_position_embeddings: usize) -> Result<Option<RopeScaling>> {
    let Some(value) = top.get("rope_scaling").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let f = Fields::new(value, "rope_scaling.", "rope_scaling", config_error)?;
    let (new, old) = (f.opt_str("rope_type")?, f.opt_str("type")?);
    let (key, kind) = match (new, old) {
        (Some(a), Some(b)) if a != b => {
            return Err(config_error(
                "rope_scaling.type",
                format!("\"{b}\" disagrees with rope_scaling.rope_type \"{a}\""),
            ))
        }
        (Some(a), _) => ("rope_scaling.rope_type", a),
        (None, Some(b)) => ("rope_scaling.type", b),
        (None, None) => ("rope_scaling.rope_type", "default"),
    };
    let positive = |name: &str, v: f64| {
        if v > 0.0 && v.is_finite() {
            Ok(v)
        } else {
            Err(config_error(&format!("rope_scaling.{name}"), format!("must be positive, got {v}")))
        }
    };
    let factor = || positive("factor", f.f64("factor")?);
    match kind {
        "default" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear { factor: factor()? })),
        "dynamic" => Ok(Some(RopeScaling::Dynamic { factor: factor()?, max_position_embeddings })),
        "yarn" => {
            let factor = factor()?;
            let original = match f.opt_f64("original_max_position_embeddings")? {
                Some(n) => positive("original_max_position_embeddings", n)?,
                None => max_position_embeddings as f64,
            };
            // transformers' get_mscale; `mscale and mscale_all_dim` is Python truthiness.
            let mscale = |m: f64| if factor <= 1.0 { 1.0 } else { 0.1 * m * factor.ln() + 1.0 };
            let attention_factor =
                match (f.opt_f64("attention_factor")?, f.opt_f64("mscale")?, f.opt_f64("mscale_all_dim")?) {
                    (Some(a), _, _) => a,
                    (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => mscale(m) / mscale(all),
                    _ => mscale(1.0),
                };
            if !attention_factor.is_finite() || attention_factor < 0.0 {
                return Err(config_error(
                    "rope_scaling.attention_factor",
                    format!("must be a finite number ≥ 0, got {attention_factor}"),
                ));
            }
            // `get("beta_fast") or 32`: absent, null and 0 take the default.
            let beta = |name: &str, default: f64| -> Result<f64> {
                match f.opt_f64(name)? {
                    Some(b) if b != 0.0 => positive(name, b),
                    _ => Ok(default),
                }
            };
            Ok(Some(RopeScaling::Yarn(YarnScaling {
                factor,
                original_max_position_embeddings: original,
                attention_factor,
                beta_fast: beta("beta_fast", 32.0)?,
                beta_slow: beta("beta_slow", 1.0)?,
                truncate: f.opt_bool("truncate")?.unwrap_or(true),
            })))
        }
        "llama3" => {
            let factor = factor()?;
            let low_freq_factor = f.f64("low_freq_factor")?;
            let high_freq_factor = f.f64("high_freq_factor")?;
            if high_freq_factor <= low_freq_factor {
                return Err(config_error(
                    "rope_scaling.high_freq_factor",
                    format!("must be greater than low_freq_factor {low_freq_factor}, got {high_freq_factor}"),
                ));
            }
            let old_ctx = f.size("original_max_position_embeddings")?;
            let original_max_position_embeddings = u32::try_from(old_ctx).map_err(|_| {
                config_error("rope_scaling.original_max_position_embeddings", format!("{old_ctx} is too large"))
            })?;
            Ok(Some(RopeScaling::Llama3(Llama3Scaling {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            })))
        }
        other => Err(config_error(
            key,
            format!("unsupported RoPE scaling \"{other}\" (supported: default, linear, dynamic, yarn, llama3)"),
        )),
    }
}

/// Per layer, whether attention applies RoPE: SmolLM3's `no_rope_layers`
/// (1: RoPE, 0: NoPE; by default 0 on every `no_rope_layer_interval`-th
/// layer, 4), every layer for the other types.
fn rope_layers(model_type: ModelType, f: &Fields, layers: usize) -> Result<Vec<bool>> {
    if model_type != ModelType::SmolLM3 {
        return Ok(vec![true; layers]);
    }
    let Some(value) = f.get("no_rope_layers").filter(|v| !v.is_null()) else {
        let interval = match f.opt_usize("no_rope_layer_interval")?.unwrap_or(4) {
            0 => return Err(config_error("no_rope_layer_interval", "must be at least 1")),
            n => n,
        };
        return Ok((0..layers).map(|i| (i + 1) % interval != 0).collect());
    };
    let Value::Array(items) = value else {
        return Err(config_error("no_rope_layers", format!("expected a list, got {}", brief(value))));
    };
    if items.len() != layers {
        return Err(config_error("no_rope_layers", format!("has {} entries for {layers} layers", items.len())));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item.as_u64() {
            Some(0) => Ok(false),
            Some(1) => Ok(true),
            _ => Err(config_error(&format!("no_rope_layers[{i}]"), format!("expected 0 or 1, got {}", brief(item)))),
        })
        .collect()
}

/// Sliding-window attention as transformers configures it: query i of a
/// sliding layer sees keys j with `i − window < j ≤ i`, the last `window`
/// positions, itself included (`masking_utils.sliding_window_overlay`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlidingWindow {
    /// Keys a query sees, itself included (`sliding_window`).
    pub window: usize,
    /// Per layer: whether it slides (`layer_types[i] == "sliding_attention"`).
    pub layers: Vec<bool>,
}

impl Config {
    /// The window layer `layer` attends within, `None` for full attention.
    pub fn attention_window(&self, layer: usize) -> Option<usize> {
        self.sliding_window.as_ref().filter(|s| s.layers.get(layer) == Some(&true)).map(|s| s.window)
    }
}

/// The sliding window as transformers reads it: Mistral slides on every
/// layer (window 4096 when the key is absent, none when it is `null`);
/// Qwen2, Qwen3 and SmolLM3 only with `use_sliding_window`, on the layers
/// whose `layer_types` entry is "sliding_attention" (by default Qwen's from
/// `max_window_layers` on, SmolLM3's NoPE layers); Llama never. Sliding layers without a window
/// (`layer_types` naming them while `use_sliding_window` is false) are
/// refused: transformers fails on them at the first forward.
fn sliding_window(model_type: ModelType, f: &Fields, rope_layers: &[bool]) -> Result<Option<SlidingWindow>> {
    let layers = rope_layers.len();
    // Absent means transformers' default 4096; `null` means no window.
    let window = || -> Result<Option<usize>> {
        if f.get("sliding_window").is_none() && f.contains_key("sliding_window") {
            return Ok(None);
        }
        match f.opt_usize("sliding_window")?.unwrap_or(4096) {
            0 => Err(config_error("sliding_window", "must be at least 1 (a query sees itself)")),
            w => Ok(Some(w)),
        }
    };
    let (window, sliding) = match model_type {
        ModelType::Llama => (None, vec![false; layers]),
        ModelType::Mistral => (window()?, vec![true; layers]),
        ModelType::Qwen2 | ModelType::Qwen3 | ModelType::SmolLM3 => {
            let window = if f.opt_bool("use_sliding_window")?.unwrap_or(false) {
                match model_type {
                    // SmolLM3Config: sliding_window defaults to None.
                    ModelType::SmolLM3 => f.opt_usize("sliding_window")?.map(|w| w.max(1)),
                    _ => window()?,
                }
            } else {
                None
            };
            let sliding = match f.get("layer_types") {
                Some(types) => layer_types(types, layers)?,
                None if window.is_none() => vec![false; layers],
                // SmolLM3: the NoPE layers slide.
                None if model_type == ModelType::SmolLM3 => rope_layers.iter().map(|&rope| !rope).collect(),
                None => {
                    let full = f.opt_usize("max_window_layers")?.unwrap_or(28);
                    (0..layers).map(|i| i >= full).collect()
                }
            };
            if window.is_none() && sliding.contains(&true) {
                return Err(config_error(
                    "layer_types",
                    "names sliding_attention layers, but use_sliding_window is false or sliding_window null: \
                     there is no window for them",
                ));
            }
            (window, sliding)
        }
    };
    Ok(window.filter(|_| sliding.contains(&true)).map(|window| SlidingWindow { window, layers: sliding }))
}

/// Qwen2's `layer_types`, checked as transformers' `layer_type_validation`
/// checks it: per layer, whether it is "sliding_attention".
fn layer_types(types: &Value, layers: usize) -> Result<Vec<bool>> {
    let Value::Array(items) = types else {
        return Err(config_error("layer_types", format!("expected a list, got {}", brief(types))));
    };
    if items.len() != layers {
        return Err(config_error("layer_types", format!("has {} entries for {layers} layers", items.len())));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item.as_str() {
            Some("full_attention") => Ok(false),
            Some("sliding_attention") => Ok(true),
            _ => Err(config_error(&format!("layer_types[{i}]"), format!("unsupported layer type {}", brief(item)))),
        })
        .collect()
}

/// The generation settings of a model's `generation_config.json`, resolved
/// as transformers resolves them: a field the file leaves out (or the file
/// itself) takes `GenerationConfig`'s default. `top_k: null` is no top-k (0).
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationDefaults {
    /// `eos_token_id`: an id or a list; empty when absent.
    pub eos_token_ids: Vec<u32>,
    /// `do_sample` (false): sample, or pick the argmax.
    pub do_sample: bool,
    /// `temperature` (1.0).
    pub temperature: f32,
    /// `top_k` (50; 0 or null: off).
    pub top_k: usize,
    /// `top_p` (1.0: off).
    pub top_p: f32,
    /// `min_p` (null: off, 0).
    pub min_p: f32,
    /// `repetition_penalty` (1.0: off).
    pub repetition_penalty: f32,
    /// `no_repeat_ngram_size` (0 or null: off).
    pub no_repeat_ngram_size: usize,
    /// `min_new_tokens` (0 or null: off) and `min_length` (0: off).
    pub min_new_tokens: usize,
    pub min_length: usize,
    /// `bad_words_ids` (lists of token ids), `suppress_tokens` and
    /// `begin_suppress_tokens` (token ids); empty when absent.
    pub bad_words_ids: Vec<Vec<u32>>,
    pub suppress_tokens: Vec<u32>,
    pub begin_suppress_tokens: Vec<u32>,
    /// `typical_p` (1.0: off), `epsilon_cutoff` and `eta_cutoff` (0.0: off);
    /// values transformers' `generate` leaves off (a cutoff of 1 or more) are off.
    pub typical_p: f32,
    pub epsilon_cutoff: f32,
    pub eta_cutoff: f32,
    /// Settings the file gives that change transformers' output and that
    /// webpeft does not apply ("num_beams 4"): callers say so where they
    /// generate.
    pub unsupported: Vec<String>,
    /// `stop_strings` (a string or a list; empty: none): see
    /// [`StopStrings`](crate::model::stop_strings::StopStrings).
    pub stop_strings: Vec<String>,
    /// `max_new_tokens`, where the file gives it.
    pub max_new_tokens: Option<usize>,
    /// `max_length` (prompt and new tokens together), where the file gives
    /// it: transformers' default of 20 is not taken, so a file silent on
    /// both leaves the length to the caller.
    pub max_length: Option<usize>,
}

impl Default for GenerationDefaults {
    fn default() -> Self {
        GenerationDefaults {
            eos_token_ids: Vec::new(),
            do_sample: false,
            temperature: 1.0,
            top_k: 50,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            no_repeat_ngram_size: 0,
            min_new_tokens: 0,
            min_length: 0,
            bad_words_ids: Vec::new(),
            suppress_tokens: Vec::new(),
            begin_suppress_tokens: Vec::new(),
            typical_p: 1.0,
            epsilon_cutoff: 0.0,
            eta_cutoff: 0.0,
            unsupported: Vec::new(),
            stop_strings: Vec::new(),
            max_new_tokens: None,
            max_length: None,
        }
    }
}

/// The settings of a `generation_config.json` that transformers' `generate`
/// would act on and webpeft does not, each as "name value": beam search
/// and its relatives, contrastive search, forced tokens, sequence biases, a length
/// penalty's decay, classifier-free guidance, watermarking and a time limit.
fn unsupported(value: &Value) -> Vec<String> {
    let number = |k: &str| value.get(k).and_then(Value::as_f64);
    let mut out = Vec::new();
    let mut note = |k: &str, v: &Value| out.push(format!("{k} {v}"));
    for (key, active) in [
        ("num_beams", number("num_beams").is_some_and(|n| n > 1.0)),
        ("num_beam_groups", number("num_beam_groups").is_some_and(|n| n > 1.0)),
        ("penalty_alpha", number("penalty_alpha").is_some_and(|a| a > 0.0)),
        ("dola_layers", value.get("dola_layers").is_some_and(|v| !v.is_null())),
        ("force_words_ids", value.get("force_words_ids").is_some_and(|v| !v.is_null())),
        ("forced_bos_token_id", value.get("forced_bos_token_id").is_some_and(|v| !v.is_null())),
        ("forced_eos_token_id", value.get("forced_eos_token_id").is_some_and(|v| !v.is_null())),
        ("sequence_bias", value.get("sequence_bias").is_some_and(|v| !v.is_null())),
        (
            "exponential_decay_length_penalty",
            value.get("exponential_decay_length_penalty").is_some_and(|v| !v.is_null()),
        ),
        ("guidance_scale", number("guidance_scale").is_some_and(|g| g != 1.0)),
        ("watermarking_config", value.get("watermarking_config").is_some_and(|v| !v.is_null())),
        ("max_time", value.get("max_time").is_some_and(|v| !v.is_null())),
    ] {
        if active {
            note(key, &value[key]);
        }
    }
    out
}

impl GenerationDefaults {
    pub const FILE: &'static str = "generation_config.json";

    /// Parses a `generation_config.json`. A value generation would refuse is
    /// a typed error naming the file and the field: a temperature that is
    /// not > 0 where `do_sample` is true, a top_p outside (0, 1], a min_p
    /// outside [0, 1], a repetition_penalty that is not > 0.
    pub fn from_json(bytes: &[u8]) -> Result<GenerationDefaults> {
        fn field_error(field: &str, detail: String) -> Error {
            Error::File { file: GenerationDefaults::FILE.to_string(), detail: format!("{field}: {detail}") }
        }
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| field_error("(file)", format!("not valid JSON: {e}")))?;
        let f = Fields::new(&value, "", "(file)", field_error)?;
        let d = GenerationDefaults::default();
        let number = |key: &str, default: f32| -> Result<f32> { Ok(f.opt_f64(key)?.map_or(default, |x| x as f32)) };
        // `top_k: null` is None in transformers (no top-k), unlike a missing field (50).
        let top_k = match f.contains_key("top_k") && !f.contains("top_k") {
            true => 0,
            false => f.opt_usize("top_k")?.unwrap_or(d.top_k),
        };
        let out = GenerationDefaults {
            eos_token_ids: f.tokens("eos_token_id")?,
            do_sample: f.opt_bool("do_sample")?.unwrap_or(d.do_sample),
            temperature: number("temperature", d.temperature)?,
            top_k,
            top_p: number("top_p", d.top_p)?,
            min_p: number("min_p", d.min_p)?,
            repetition_penalty: number("repetition_penalty", d.repetition_penalty)?,
            no_repeat_ngram_size: f.opt_usize("no_repeat_ngram_size")?.unwrap_or(0),
            min_new_tokens: f.opt_usize("min_new_tokens")?.unwrap_or(0),
            min_length: f.opt_usize("min_length")?.unwrap_or(0),
            bad_words_ids: f.token_lists("bad_words_ids")?,
            suppress_tokens: f.tokens("suppress_tokens")?,
            begin_suppress_tokens: f.tokens("begin_suppress_tokens")?,
            // As `_get_logits_processor` builds its warpers: a cutoff outside (0, 1) is none.
            typical_p: number("typical_p", d.typical_p)?.min(1.0),
            epsilon_cutoff: Some(number("epsilon_cutoff", 0.0)?).filter(|e| *e > 0.0 && *e < 1.0).unwrap_or(0.0),
            eta_cutoff: Some(number("eta_cutoff", 0.0)?).filter(|e| *e > 0.0 && *e < 1.0).unwrap_or(0.0),
            unsupported: unsupported(&value),
            stop_strings: f.strings("stop_strings")?,
            max_new_tokens: f.opt_usize("max_new_tokens")?,
            max_length: f.opt_usize("max_length")?,
        };
        if out.do_sample && out.temperature <= 0.0 {
            return Err(f.error("temperature", format!("must be > 0 where do_sample is true, got {}", out.temperature)));
        }
        if !(out.top_p > 0.0 && out.top_p <= 1.0) {
            return Err(f.error("top_p", format!("must be in (0, 1], got {}", out.top_p)));
        }
        if !(out.typical_p > 0.0 && out.typical_p <= 1.0) {
            return Err(f.error("typical_p", format!("must be in (0, 1], got {}", out.typical_p)));
        }
        if !(0.0..=1.0).contains(&out.min_p) {
            return Err(f.error("min_p", format!("must be in [0, 1], got {}", out.min_p)));
        }
        if out.repetition_penalty <= 0.0 {
            return Err(f.error("repetition_penalty", format!("must be > 0, got {}", out.repetition_penalty)));
        }
        if let Some(i) = out.bad_words_ids.iter().position(Vec::is_empty) {
            return Err(f.error(&format!("bad_words_ids[{i}]"), "is empty: a word needs at least one token"));
        }
        if let Some(i) = out.stop_strings.iter().position(String::is_empty) {
            return Err(f.error(&format!("stop_strings[{i}]"), "is empty: a stop string needs at least one character"));
        }
        Ok(out)
    }

    /// The new tokens to generate after a prompt of `prompt_len` tokens, as
    /// transformers counts them: `max_new_tokens`, else `max_length` less the
    /// prompt (at least one: generation stops after a token, not before the
    /// first); None where the file gives neither.
    pub fn new_tokens(&self, prompt_len: usize) -> Option<usize> {
        self.max_new_tokens.or_else(|| self.max_length.map(|l| l.saturating_sub(prompt_len).max(1)))
    }
}
