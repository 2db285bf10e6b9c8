//! An adapter on the GPU, whatever its method, as the model and the trainer
//! see it: per-layer views for the forward and backward, and a flat list of
//! named tensors for the optimizer and the files.

use super::adalora::{AdaLoraAdapter, AdaLoraConfig};
use super::bottleneck::{BottleneckAdapter, BottleneckConfig, BottleneckWeights, BN_WEIGHTS_FILE};
use super::ia3::{Ia3Adapter, Ia3Config, Ia3Weights};
use super::lora::{init_lora, LoraAdapter, LoraConfig, LoraWeights, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
use super::p_tuning::{PTuningAdapter, PTuningConfig};
use super::pass::{Memo, Pass};
use super::prefix_tuning::{PrefixTuningAdapter, PrefixTuningConfig};
use super::prompt_tuning::{PromptTuningAdapter, PromptTuningConfig, PromptTuningInit};
use super::trainable_tokens::{TrainableTokensAdapter, TrainableTokensConfig};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::model::llama::hooks::{Hooks, NoHooks};
use crate::model::{ByteSource, Config, ModelFiles};
use crate::util::rng::Rng;

/// A trainable adapter (or its gradients, or its AdamW moments: values of
/// the same shapes).
#[derive(Clone, Debug)]
pub enum Adapter {
    Lora(LoraAdapter),
    Bottleneck(BottleneckAdapter),
    Ia3(Ia3Adapter),
    PromptTuning(PromptTuningAdapter),
    PrefixTuning(PrefixTuningAdapter),
    AdaLora(AdaLoraAdapter),
    PTuning(PTuningAdapter),
    TrainableTokens(TrainableTokensAdapter),
}

/// An adapter's configuration, whatever its method, as its library writes
/// it in `adapter_config.json`.
#[derive(Clone, Debug, PartialEq)]
pub enum AdapterConfig {
    Lora(LoraConfig),
    Bottleneck(BottleneckConfig),
    Ia3(Ia3Config),
    PromptTuning(PromptTuningConfig),
    PrefixTuning(PrefixTuningConfig),
    AdaLora(AdaLoraConfig),
    PTuning(PTuningConfig),
    TrainableTokens(TrainableTokensConfig),
}

impl AdapterConfig {
    /// Parses the `adapter_config.json` of method `method` (as [`Adapter::method`] names it).
    pub fn from_json(method: &str, json: &[u8]) -> Result<AdapterConfig> {
        Ok(match method {
            "lora" => AdapterConfig::Lora(LoraConfig::from_json(json)?),
            "ia3" => AdapterConfig::Ia3(Ia3Config::from_json(json)?),
            "prompt_tuning" => AdapterConfig::PromptTuning(PromptTuningConfig::from_json(json)?),
            "prefix_tuning" => AdapterConfig::PrefixTuning(PrefixTuningConfig::from_json(json)?),
            "adalora" => AdapterConfig::AdaLora(AdaLoraConfig::from_json(json)?),
            "p_tuning" => AdapterConfig::PTuning(PTuningConfig::from_json(json)?),
            "trainable_tokens" => AdapterConfig::TrainableTokens(TrainableTokensConfig::from_json(json)?),
            "seq_bn" | "double_seq_bn" | "par_bn" => AdapterConfig::Bottleneck(BottleneckConfig::from_json(json)?),
            other => return Err(Error::invalid("AdapterConfig", format!("unknown method {other:?}"))),
        })
    }

    /// Positions the adapter puts before every row (prompt tuning's virtual tokens), 0 for the others.
    pub fn virtual_tokens(&self) -> usize {
        match self {
            AdapterConfig::PromptTuning(c) => c.num_virtual_tokens,
            AdapterConfig::PrefixTuning(c) => c.num_virtual_tokens,
            AdapterConfig::PTuning(c) => c.num_virtual_tokens,
            _ => 0,
        }
    }

    /// The `adapter_config.json` text (PEFT's or AdapterHub's).
    pub fn to_json(&self, model: &Config) -> String {
        match self {
            AdapterConfig::Lora(c) => c.to_json(),
            AdapterConfig::Bottleneck(c) => c.to_json(model),
            AdapterConfig::Ia3(c) => c.to_json(),
            AdapterConfig::PromptTuning(c) => c.to_json(),
            AdapterConfig::PrefixTuning(c) => c.to_json(),
            AdapterConfig::AdaLora(c) => c.to_json(),
            AdapterConfig::PTuning(c) => c.to_json(),
            AdapterConfig::TrainableTokens(c) => c.to_json(),
        }
    }
}

/// One pass of an [`Adapter`] through the model, whatever its method; the
/// model calls its [`AdapterPass::hooks`] (see [`Adapter::pass`]).
#[derive(Debug)]
pub enum AdapterPass<'a> {
    Lora(Pass<'a, LoraAdapter>),
    Bottleneck(Pass<'a, BottleneckAdapter>),
    Ia3(Pass<'a, Ia3Adapter>),
    PromptTuning(Pass<'a, PromptTuningAdapter>),
    PrefixTuning(Pass<'a, PrefixTuningAdapter>),
    AdaLora(Pass<'a, AdaLoraAdapter>),
    PTuning(Pass<'a, PTuningAdapter>),
    TrainableTokens(Pass<'a, TrainableTokensAdapter>),
}

impl<'a> AdapterPass<'a> {
    /// The method's own hooks.
    pub fn hooks(&self) -> &dyn Hooks {
        match self {
            AdapterPass::Lora(p) => p,
            AdapterPass::Bottleneck(p) => p,
            AdapterPass::Ia3(p) => p,
            AdapterPass::PromptTuning(p) => p,
            AdapterPass::PrefixTuning(p) => p,
            AdapterPass::AdaLora(p) => p,
            AdapterPass::PTuning(p) => p,
            AdapterPass::TrainableTokens(p) => p,
        }
    }
}

impl Adapter {
    /// A pass through the model: `dropout_seed` turns dropout on (training;
    /// `None` evaluates), and `grads` (an adapter of the same method and
    /// shapes, e.g. [`Adapter::zeros_like`]) receives the backward's
    /// gradients. The same pass runs the forward and the backward.
    pub fn pass<'a>(&'a self, dropout_seed: Option<u32>, grads: Option<&'a Adapter>) -> Result<AdapterPass<'a>> {
        Ok(match (self, grads) {
            (Adapter::Lora(params), None) => AdapterPass::Lora(Pass::new(params, None, dropout_seed)),
            (Adapter::Lora(params), Some(Adapter::Lora(g))) => {
                AdapterPass::Lora(Pass::new(params, Some(g), dropout_seed))
            }
            (Adapter::Bottleneck(params), None) => AdapterPass::Bottleneck(Pass::new(params, None, dropout_seed)),
            (Adapter::Bottleneck(params), Some(Adapter::Bottleneck(g))) => {
                AdapterPass::Bottleneck(Pass::new(params, Some(g), dropout_seed))
            }
            (Adapter::Ia3(params), None) => AdapterPass::Ia3(Pass::new(params, None, dropout_seed)),
            (Adapter::Ia3(params), Some(Adapter::Ia3(g))) => AdapterPass::Ia3(Pass::new(params, Some(g), dropout_seed)),
            (Adapter::PromptTuning(params), None) => AdapterPass::PromptTuning(Pass::new(params, None, dropout_seed)),
            (Adapter::PromptTuning(params), Some(Adapter::PromptTuning(g))) => {
                AdapterPass::PromptTuning(Pass::new(params, Some(g), dropout_seed))
            }
            (Adapter::PrefixTuning(params), None) => AdapterPass::PrefixTuning(Pass::new(params, None, dropout_seed)),
            (Adapter::PrefixTuning(params), Some(Adapter::PrefixTuning(g))) => {
                AdapterPass::PrefixTuning(Pass::new(params, Some(g), dropout_seed))
            }
            (Adapter::AdaLora(params), None) => AdapterPass::AdaLora(Pass::new(params, None, dropout_seed)),
            (Adapter::AdaLora(params), Some(Adapter::AdaLora(g))) => {
                AdapterPass::AdaLora(Pass::new(params, Some(g), dropout_seed))
            }
            (Adapter::PTuning(params), None) => AdapterPass::PTuning(Pass::new(params, None, dropout_seed)),
            (Adapter::PTuning(params), Some(Adapter::PTuning(g))) => {
                AdapterPass::PTuning(Pass::new(params, Some(g), dropout_seed))
            }
            (Adapter::TrainableTokens(params), None) => {
                AdapterPass::TrainableTokens(Pass::new(params, None, dropout_seed))
            }
            (Adapter::TrainableTokens(params), Some(Adapter::TrainableTokens(g))) => {
                AdapterPass::TrainableTokens(Pass::new(params, Some(g), dropout_seed))
            }
            (_, Some(g)) => {
                return Err(Error::invalid(
                    "Adapter::pass",
                    format!("gradients of a {} adapter for a {} adapter", g.method(), self.method()),
                ))
            }
        })
    }

    /// The evaluation pass: no dropout, no gradients.
    pub fn eval(&self) -> AdapterPass<'_> {
        match self {
            Adapter::Lora(l) => AdapterPass::Lora(Pass::eval(l)),
            Adapter::Bottleneck(b) => AdapterPass::Bottleneck(Pass::eval(b)),
            Adapter::Ia3(a) => AdapterPass::Ia3(Pass::eval(a)),
            Adapter::PromptTuning(p) => AdapterPass::PromptTuning(Pass::eval(p)),
            Adapter::PrefixTuning(p) => AdapterPass::PrefixTuning(Pass::eval(p)),
            Adapter::AdaLora(a) => AdapterPass::AdaLora(Pass::eval(a)),
            Adapter::PTuning(p) => AdapterPass::PTuning(Pass::eval(p)),
            Adapter::TrainableTokens(t) => AdapterPass::TrainableTokens(Pass::eval(t)),
        }
    }
}

/// The hooks of an optional adapter: the base model when there is none.
pub fn hooks_of(adapter: Option<&Adapter>) -> &dyn Hooks {
    match adapter {
        Some(a) => a,
        None => &NoHooks,
    }
}

// An adapter by itself is its evaluation pass (`model.forward_adapted(rec, ids, &adapter)`);
// for a generation, the same with a memo where a forward would recompute something.
crate::forward_hooks!(Adapter, |a| a.eval().hooks(), frozen: |a| a.frozen_eval());

/// An adapter's evaluation pass for one generation: what its forwards would
/// each recompute from the unchanging parameters is kept in `memo`
/// ([`Adapter::frozen_eval`]).
pub struct FrozenAdapter<'a> {
    adapter: &'a Adapter,
    memo: Memo,
}

crate::forward_hooks!(FrozenAdapter<'_>, |f| f.adapter.memo_pass(&f.memo).hooks());

impl Adapter {
    /// [`Hooks::frozen`]: a LoRA adapter keeps across a generation's
    /// forwards its DoRA layers' weight norms (each forward of an unfrozen
    /// pass rebuilds W + s·B·A, dequantized, to take them, as PEFT does)
    /// and, where Linears on one input (q, k, v; gate, up) are adapted, their
    /// A's stacked, so each forward computes their x·Aᵀ in one product; an
    /// AdaLoRA adapter keeps each A∘E (and stacks them so); (IA)³ keeps
    /// nothing but scales its outputs in place, saving nothing for a
    /// backward; the other methods have nothing to change.
    fn frozen_eval(&self) -> Option<Box<dyn Hooks + '_>> {
        let keeps = match self {
            Adapter::Lora(l) => l.keeps_across_forwards(),
            Adapter::AdaLora(_) => true, // A∘E, stacked where Linears share an input
            Adapter::Ia3(_) => true,     // nothing kept: outputs scaled in place, nothing saved
            _ => false,
        };
        keeps.then(|| Box::new(FrozenAdapter { adapter: self, memo: Memo::default() }) as Box<dyn Hooks>)
    }

    /// The evaluation pass that keeps what its forwards recompute in `memo`.
    fn memo_pass<'a>(&'a self, memo: &'a Memo) -> AdapterPass<'a> {
        let mut pass = self.eval();
        match &mut pass {
            AdapterPass::Lora(p) => p.memo = Some(memo),
            AdapterPass::Bottleneck(p) => p.memo = Some(memo),
            AdapterPass::Ia3(p) => p.memo = Some(memo),
            AdapterPass::PromptTuning(p) => p.memo = Some(memo),
            AdapterPass::PrefixTuning(p) => p.memo = Some(memo),
            AdapterPass::AdaLora(p) => p.memo = Some(memo),
            AdapterPass::PTuning(p) => p.memo = Some(memo),
            AdapterPass::TrainableTokens(p) => p.memo = Some(memo),
        }
        pass
    }
}

impl Adapter {
    /// Zeros of the same shapes.
    pub fn zeros_like(&self, gpu: &Gpu) -> Result<Adapter> {
        Ok(match self {
            Adapter::Lora(l) => Adapter::Lora(l.zeros_like(gpu)?),
            Adapter::Bottleneck(b) => Adapter::Bottleneck(b.zeros_like(gpu)?),
            Adapter::Ia3(a) => Adapter::Ia3(a.zeros_like(gpu)?),
            Adapter::PromptTuning(p) => Adapter::PromptTuning(p.zeros_like(gpu)?),
            Adapter::PrefixTuning(p) => Adapter::PrefixTuning(p.zeros_like(gpu)?),
            Adapter::AdaLora(a) => Adapter::AdaLora(a.zeros_like(gpu)?),
            Adapter::PTuning(p) => Adapter::PTuning(p.zeros_like(gpu)?),
            Adapter::TrainableTokens(t) => Adapter::TrainableTokens(t.zeros_like(gpu)?),
        })
    }

    /// Every trainable tensor with the key it is saved under, in a fixed order.
    pub fn tensors(&self) -> Vec<(String, &Tensor)> {
        match self {
            Adapter::Lora(l) => l.tensors(),
            Adapter::Bottleneck(b) => b.tensors(),
            Adapter::Ia3(a) => a.tensors(),
            Adapter::PromptTuning(p) => p.tensors(),
            Adapter::PrefixTuning(p) => p.tensors(),
            Adapter::AdaLora(a) => a.tensors(),
            Adapter::PTuning(p) => p.tensors(),
            Adapter::TrainableTokens(t) => t.tensors(),
        }
    }

    /// Trainable parameters.
    pub fn num_params(&self) -> usize {
        self.tensors().iter().map(|(_, t)| t.numel()).sum()
    }

    /// GPU bytes of the tensors.
    pub fn bytes(&self) -> u64 {
        self.tensors().iter().map(|(_, t)| t.bytes()).sum()
    }

    /// The method's name as the CLI spells it (`lora`, `seq_bn`, …).
    pub fn method(&self) -> &'static str {
        match self {
            Adapter::Lora(_) => "lora",
            Adapter::Bottleneck(b) => b.config.kind.name(),
            Adapter::Ia3(_) => "ia3",
            Adapter::PromptTuning(_) => "prompt_tuning",
            Adapter::PrefixTuning(_) => "prefix_tuning",
            Adapter::AdaLora(_) => "adalora",
            Adapter::PTuning(_) => "p_tuning",
            Adapter::TrainableTokens(_) => "trainable_tokens",
        }
    }

    /// PEFT's `task_type`: SEQ_CLS for a sequence classifier or reward model
    /// (a LoRA with a score head), CAUSAL_LM for everything else.
    pub fn task_type(&self) -> crate::peft::TaskType {
        match self {
            Adapter::Lora(l) => l.config.task_type,
            _ => crate::peft::TaskType::CausalLm,
        }
    }

    /// A SEQ_CLS adapter's labels (its score head's rows); 1 for the others.
    pub fn num_labels(&self) -> usize {
        match self {
            Adapter::Lora(l) => l.config.num_labels,
            _ => 1,
        }
    }
}

impl Adapter {
    /// Whether a training forward applies dropout.
    pub fn has_dropout(&self) -> bool {
        match self {
            Adapter::Lora(l) => l.config.lora_dropout > 0.0,
            Adapter::Bottleneck(b) => b.config.dropout > 0.0,
            Adapter::AdaLora(a) => a.config.lora.lora_dropout > 0.0,
            Adapter::Ia3(_)
            | Adapter::PromptTuning(_)
            | Adapter::PrefixTuning(_)
            | Adapter::PTuning(_)
            | Adapter::TrainableTokens(_) => false,
        }
    }
}

impl Adapter {
    /// A fresh adapter of `config`'s method for `model`, initialised as its
    /// library does, from `seed`.
    pub fn new(gpu: &Gpu, config: AdapterConfig, model: &Config, seed: u64) -> Result<Adapter> {
        match config {
            AdapterConfig::Lora(c) if c.use_dora => Err(Error::invalid(
                "Adapter::new",
                "DoRA's magnitudes start from the model's weights: use Adapter::new_for_model",
            )),
            AdapterConfig::Lora(c) if c.init_lora_weights.adjusts_base() => Err(Error::invalid(
                "Adapter::new",
                "PiSSA, OLoRA and LoftQ start from the model's weights and change them: use Adapter::new_adjusting_base",
            )),
            AdapterConfig::Lora(c) if c.starts_from_model() => Err(Error::invalid(
                "Adapter::new",
                "trainable tokens and modules_to_save start from the model's weights: use Adapter::new_for_model",
            )),
            AdapterConfig::Lora(c) => Adapter::new_lora(gpu, c, model, seed),
            AdapterConfig::Bottleneck(c) => Adapter::new_bottleneck(gpu, c, model, seed),
            AdapterConfig::Ia3(c) => Adapter::new_ia3(gpu, c, model, seed),
            AdapterConfig::PromptTuning(c) => match c.init {
                PromptTuningInit::Random => {
                    let values = Rng::new(seed).normal_vec(c.num_virtual_tokens * c.token_dim, 1.0);
                    Ok(Adapter::PromptTuning(PromptTuningAdapter::upload(gpu, c, &values)?))
                }
                _ => Err(Error::invalid(
                    "Adapter::new",
                    "SAMPLE_VOCAB and TEXT prompts start from the model's embeddings: use Adapter::new_for_model",
                )),
            },
            AdapterConfig::PrefixTuning(c) => {
                c.check(model)?;
                Ok(Adapter::PrefixTuning(PrefixTuningAdapter::init(gpu, c, seed)?))
            }
            AdapterConfig::AdaLora(c) => Ok(Adapter::AdaLora(AdaLoraAdapter::init(gpu, c, model, seed)?)),
            AdapterConfig::PTuning(c) => Ok(Adapter::PTuning(PTuningAdapter::init(gpu, c, model, seed)?)),
            AdapterConfig::TrainableTokens(c) if !c.init_weights => {
                let values = Rng::new(seed).normal_vec(c.values_len(model), 1.0);
                Ok(Adapter::TrainableTokens(TrainableTokensAdapter::upload(gpu, c, &values, model)?))
            }
            AdapterConfig::TrainableTokens(_) => Err(Error::invalid(
                "Adapter::new",
                "trainable tokens start from the model's embedding rows: use Adapter::new_for_model",
            )),
        }
    }

    /// [`Adapter::new`] with the loaded model (and its tokenizer) at hand, as
    /// prompt tuning's `SAMPLE_VOCAB` and `TEXT` initialisations need.
    pub fn new_for_model(
        gpu: &Gpu,
        config: AdapterConfig,
        model: &crate::model::Model,
        tokenizer: Option<&crate::model::tokenizer::Tokenizer>,
        seed: u64,
    ) -> Result<Adapter> {
        match config {
            AdapterConfig::PromptTuning(c) => {
                Ok(Adapter::PromptTuning(PromptTuningAdapter::init(gpu, c, model, tokenizer, seed)?))
            }
            AdapterConfig::TrainableTokens(c) => {
                Ok(Adapter::TrainableTokens(TrainableTokensAdapter::init(gpu, c, model, seed)?))
            }
            AdapterConfig::Lora(c) if c.use_dora || c.starts_from_model() => {
                let ad = Adapter::new_lora(gpu, c, &model.config, seed)?;
                if let Adapter::Lora(l) = &ad {
                    l.init_from_model(gpu, model)?;
                }
                Ok(ad)
            }
            c => Adapter::new(gpu, c, &model.config, seed),
        }
    }

    /// A fresh LoRA adapter for `model`, initialised as PEFT does
    /// (`config.init_lora_weights`) from `seed`. A DoRA adapter's magnitudes
    /// start at zero here: they start from the weights, which
    /// [`Adapter::new_for_model`] has ([`LoraAdapter::init_magnitudes`]).
    pub fn new_lora(gpu: &Gpu, config: LoraConfig, model: &Config, seed: u64) -> Result<Adapter> {
        let mut weights = fresh_lora_weights(&config, model)?;
        let mut rng = Rng::new(seed);
        init_lora(&mut weights, config.init_lora_weights, &mut rng)?;
        if config.modules_to_save.as_deref().is_some_and(crate::peft::modules_to_save::names_score) {
            // A causal-LM checkpoint has no score head: transformers draws it, N(0, initializer_range²).
            let std = model.initializer_range;
            let shape = [config.num_labels, model.hidden_size];
            let values = (0..shape[0] * shape[1]).map(|_| (rng.normal() * std) as f32).collect();
            weights.saved.insert(crate::peft::modules_to_save::SCORE_KEY.into(), (shape, values));
        }
        Ok(Adapter::Lora(LoraAdapter::upload(gpu, config, &weights, model)?))
    }

    /// [`Adapter::new_for_model`], and for a LoRA whose `init_lora_weights`
    /// starts from the base weights (PiSSA, OLoRA, LoftQ) the adapter PEFT
    /// makes, with `model`'s adapted weights replaced as PEFT replaces them
    /// ([`crate::peft::lora::base_init`]; `files`: the model's files, read
    /// again on a quantized base).
    pub async fn new_adjusting_base<F: ModelFiles>(
        gpu: &Gpu,
        config: AdapterConfig,
        model: &mut crate::model::Model,
        files: Option<&F>,
        tokenizer: Option<&crate::model::tokenizer::Tokenizer>,
        seed: u64,
    ) -> Result<Adapter> {
        match config {
            AdapterConfig::Lora(c) if c.init_lora_weights.adjusts_base() => {
                let weights = fresh_lora_weights(&c, &model.config)?;
                let lora = crate::peft::lora::base_init::init_from_base(gpu, model, files, c, weights, seed).await?;
                if lora.config.starts_from_model() {
                    lora.init_from_model(gpu, model)?;
                }
                Ok(Adapter::Lora(lora))
            }
            c => Adapter::new_for_model(gpu, c, model, tokenizer, seed),
        }
    }

    /// A fresh bottleneck adapter for `model`, initialised as AdapterHub does
    /// (`config.init_weights`) from `seed`.
    pub fn new_bottleneck(gpu: &Gpu, config: BottleneckConfig, model: &Config, seed: u64) -> Result<Adapter> {
        let weights = BottleneckWeights::init(&config, model, &mut Rng::new(seed))?;
        Ok(Adapter::Bottleneck(BottleneckAdapter::upload(gpu, config, &weights, model)?))
    }

    /// A fresh (IA)³ adapter for `model`, initialised as PEFT does (ones, or
    /// N(0, 1) from `seed` when `init_ia3_weights` is false).
    pub fn new_ia3(gpu: &Gpu, config: Ia3Config, model: &Config, seed: u64) -> Result<Adapter> {
        config.validate()?;
        let weights = Ia3Weights::init(&config, model, &mut Rng::new(seed))?;
        Ok(Adapter::Ia3(Ia3Adapter::upload(gpu, config, &weights, model)?))
    }

    /// Loads an adapter folder: PEFT's (`adapter_model.safetensors`, the
    /// method from `adapter_config.json`'s `peft_type`) or AdapterHub's
    /// (`adapter.safetensors`), told apart by the weights file.
    pub async fn load<F: ModelFiles>(gpu: &Gpu, files: &F, model: &Config) -> Result<Adapter> {
        if files.try_open(ADAPTER_WEIGHTS_FILE).await?.is_some() {
            return Ok(match peft_type(files).await?.as_deref() {
                Some("IA3") => Adapter::Ia3(Ia3Adapter::load(gpu, files, model).await?),
                Some("PROMPT_TUNING") => Adapter::PromptTuning(PromptTuningAdapter::load(gpu, files, model).await?),
                Some("PREFIX_TUNING") => Adapter::PrefixTuning(PrefixTuningAdapter::load(gpu, files, model).await?),
                Some("ADALORA") => Adapter::AdaLora(AdaLoraAdapter::load(gpu, files, model).await?),
                Some("P_TUNING") => Adapter::PTuning(PTuningAdapter::load(gpu, files, model).await?),
                Some("TRAINABLE_TOKENS") => {
                    Adapter::TrainableTokens(TrainableTokensAdapter::load(gpu, files, model).await?)
                }
                Some(other) if other != "LORA" => {
                    return Err(Error::AdapterUnsupported {
                        field: "peft_type".into(),
                        detail: format!("\"{other}\": webpeft loads PEFT's LORA, ADALORA, IA3, PROMPT_TUNING, PREFIX_TUNING, P_TUNING and TRAINABLE_TOKENS adapters (and AdapterHub's bottleneck adapters)"),
                    })
                }
                _ => Adapter::Lora(LoraAdapter::load(gpu, files, model).await?),
            });
        }
        if files.try_open(BN_WEIGHTS_FILE).await?.is_some() {
            return Ok(Adapter::Bottleneck(BottleneckAdapter::load(gpu, files, model).await?));
        }
        Err(Error::File {
            file: files.location().to_string(),
            detail: format!(
                "not an adapter folder: no {ADAPTER_WEIGHTS_FILE} (PEFT) or {BN_WEIGHTS_FILE} (AdapterHub) next to {ADAPTER_CONFIG_FILE}"
            ),
        })
    }

    /// The adapter's files, as the library it comes from writes them: PEFT's
    /// `adapter_config.json` + `adapter_model.safetensors`, or AdapterHub's
    /// `adapter_config.json` + `adapter.safetensors`. Reads the GPU once.
    pub async fn to_files(&self, gpu: &Gpu, model: &Config) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(match self {
            Adapter::Lora(l) => {
                let (config, weights) = l.export(gpu).await?;
                vec![
                    (ADAPTER_CONFIG_FILE.to_string(), config.to_json().into_bytes()),
                    (ADAPTER_WEIGHTS_FILE.to_string(), weights.to_safetensors_bytes()?),
                ]
            }
            Adapter::Bottleneck(b) => {
                let weights = b.download(gpu).await?;
                vec![
                    (ADAPTER_CONFIG_FILE.to_string(), b.config.to_json(model).into_bytes()),
                    (BN_WEIGHTS_FILE.to_string(), weights.to_safetensors_bytes(&b.config)?),
                ]
            }
            Adapter::Ia3(a) => {
                let weights = a.download(gpu).await?;
                vec![
                    (ADAPTER_CONFIG_FILE.to_string(), a.config.to_json().into_bytes()),
                    (ADAPTER_WEIGHTS_FILE.to_string(), weights.to_safetensors_bytes(model)?),
                ]
            }
            Adapter::PromptTuning(p) => vec![
                (ADAPTER_CONFIG_FILE.to_string(), p.config.to_json().into_bytes()),
                (ADAPTER_WEIGHTS_FILE.to_string(), p.to_safetensors_bytes(gpu).await?),
            ],
            Adapter::PrefixTuning(p) => vec![
                (ADAPTER_CONFIG_FILE.to_string(), p.config.to_json().into_bytes()),
                (ADAPTER_WEIGHTS_FILE.to_string(), p.to_safetensors_bytes(gpu).await?),
            ],
            Adapter::AdaLora(a) => {
                let (config, weights) = a.download(gpu, model).await?;
                vec![
                    (ADAPTER_CONFIG_FILE.to_string(), config.to_json().into_bytes()),
                    (ADAPTER_WEIGHTS_FILE.to_string(), weights.to_safetensors_bytes()?),
                ]
            }
            Adapter::PTuning(p) => vec![
                (ADAPTER_CONFIG_FILE.to_string(), p.config.to_json().into_bytes()),
                (ADAPTER_WEIGHTS_FILE.to_string(), p.to_safetensors_bytes(gpu).await?),
            ],
            Adapter::TrainableTokens(t) => vec![
                (ADAPTER_CONFIG_FILE.to_string(), t.config.to_json().into_bytes()),
                (ADAPTER_WEIGHTS_FILE.to_string(), t.to_safetensors_bytes(gpu).await?),
            ],
        })
    }

    /// The `adapter_config.json` text.
    pub fn config_json(&self, model: &Config) -> String {
        match self {
            Adapter::Lora(l) => l.config.to_json(),
            Adapter::Bottleneck(b) => b.config.to_json(model),
            Adapter::Ia3(a) => a.config.to_json(),
            Adapter::PromptTuning(p) => p.config.to_json(),
            Adapter::PrefixTuning(p) => p.config.to_json(),
            Adapter::AdaLora(a) => a.config.to_json(),
            Adapter::PTuning(p) => p.config.to_json(),
            Adapter::TrainableTokens(t) => t.config.to_json(),
        }
    }

    /// Builds an adapter of this one's method and config from named f32
    /// tensors (a training checkpoint), checking every name and shape.
    pub fn with_tensors(&self, gpu: &Gpu, tensors: &std::collections::BTreeMap<String, Vec<f32>>) -> Result<Adapter> {
        let fresh = self.zeros_like(gpu)?;
        let own = fresh.tensors();
        if own.len() != tensors.len() {
            return Err(Error::invalid(
                "Adapter::with_tensors",
                format!("{} tensors given, the adapter has {}", tensors.len(), own.len()),
            ));
        }
        for (key, t) in own {
            let data = tensors
                .get(&key)
                .ok_or_else(|| Error::invalid("Adapter::with_tensors", format!("tensor `{key}` is missing")))?;
            if data.len() != t.numel() {
                return Err(Error::shape(
                    "Adapter::with_tensors",
                    format!("`{key}` has {} values, the adapter's is {:?}", data.len(), t.shape()),
                ));
            }
            t.write(gpu, data)?;
        }
        let mut rec = crate::gpu::Recorder::new(gpu);
        fresh.record_derive(&mut rec)?; // what the hooks read, from the tensors just written
        rec.submit()?;
        Ok(fresh)
    }
}

/// Zero factors of every module `config` adapts in `model`, checked: a rank
/// above a layer's smaller side adds parameters and no capacity.
fn fresh_lora_weights(config: &LoraConfig, model: &Config) -> Result<LoraWeights> {
    config.validate()?;
    let weights = LoraWeights::zeros(config, model)?;
    if let Some((name, p)) = weights.modules.iter().find(|(_, p)| p.r > p.in_features.min(p.out_features)) {
        return Err(Error::AdapterConfig {
            field: if p.r == config.r { "r" } else { "rank_pattern" }.into(),
            detail: format!(
                "r = {} is larger than {name} ({} × {}): B·A cannot have a rank above {}",
                p.r,
                p.out_features,
                p.in_features,
                p.in_features.min(p.out_features)
            ),
        });
    }
    Ok(weights)
}

/// `peft_type` in a PEFT folder's `adapter_config.json`, when it is there
/// and a string (the method's own parser reports anything else).
async fn peft_type<F: ModelFiles>(files: &F) -> Result<Option<String>> {
    let Some(source) = files.try_open(ADAPTER_CONFIG_FILE).await? else { return Ok(None) };
    let bytes = source.read_all().await?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    Ok(value.get("peft_type").and_then(|v| v.as_str()).map(str::to_string))
}
