//! `adapter_config.json` of an AdapterHub (`adapters` 1.3) bottleneck adapter:
//! parsed and validated into a [`BottleneckConfig`], written back as
//! `save_adapter` writes it, and checked against a model [`Config`].
//!
//! The file is a wrapper: `{"config": {…BnConfig fields…}, "hidden_size",
//! "model_class", "model_name", "model_type", "name", "version"}`. AdapterHub
//! has no "kind" field: a `BnConfig` is a set of flags, and `seq_bn`,
//! `double_seq_bn` and `par_bn` are presets of them. The kind is read back
//! from `mh_adapter` / `output_adapter` / `is_parallel`, and the flags that
//! change the math (layer norms, residual placement, gating, PHM, …) must have
//! that preset's value: anything else is an [`Error::BottleneckConfig`] naming
//! the field.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::kernels::swiglu::Activation;
use crate::model::source::{ByteSource, ModelFiles};
use crate::model::{Config, ModelType};
use crate::util::json::{brief, int_if_whole, Fields};
use crate::{Error, Result};

/// The `version` webpeft writes: the `adapters` release the fixtures were made with.
pub const ADAPTERS_VERSION: &str = "adapters.1.3.0";

/// The widest bottleneck webpeft accepts, in multiples of hidden_size
/// (AdapterHub allows any reduction_factor > 0; a tiny one would ask for
/// more memory than any device has).
pub const MAX_WIDENING: usize = 8;

/// The adapter name AdapterHub examples use, and webpeft's default.
pub const DEFAULT_ADAPTER_NAME: &str = "bn";

/// Which of AdapterHub's bottleneck presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BottleneckKind {
    /// `seq_bn` (Pfeiffer et al. 2020): one adapter after the MLP.
    SeqBn,
    /// `double_seq_bn` (Houlsby et al. 2019): after attention and after the MLP.
    DoubleSeqBn,
    /// `par_bn` (He et al. 2021): parallel to the MLP, scaled.
    ParBn,
}

impl BottleneckKind {
    /// AdapterHub's name (`"seq_bn"`, `"double_seq_bn"`, `"par_bn"`).
    pub fn name(self) -> &'static str {
        match self {
            BottleneckKind::SeqBn => "seq_bn",
            BottleneckKind::DoubleSeqBn => "double_seq_bn",
            BottleneckKind::ParBn => "par_bn",
        }
    }

    /// From AdapterHub's name, or one of its deprecated aliases
    /// (`pfeiffer`, `houlsby`, `parallel`: `ADAPTER_CONFIG_MAP`).
    pub fn from_name(name: &str) -> Option<BottleneckKind> {
        match name {
            "seq_bn" | "pfeiffer" => Some(BottleneckKind::SeqBn),
            "double_seq_bn" | "houlsby" => Some(BottleneckKind::DoubleSeqBn),
            "par_bn" | "parallel" => Some(BottleneckKind::ParBn),
            _ => None,
        }
    }

    /// `mh_adapter`: an adapter after the attention block.
    pub fn has_attention_adapter(self) -> bool {
        self == BottleneckKind::DoubleSeqBn
    }

    /// `is_parallel`.
    pub fn is_parallel(self) -> bool {
        self == BottleneckKind::ParBn
    }

    /// `original_ln_before` of the preset (the only value webpeft implements).
    fn original_ln_before(self) -> bool {
        self == BottleneckKind::SeqBn
    }
}

/// `init_weights`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BnInit {
    /// `"bert"`: Linear weights N(0, 0.02²), biases 0.
    Bert,
    /// `"mam_adapter"`: down weight kaiming-uniform (a = √5), up weight and all biases 0.
    MamAdapter,
    /// `"houlsby"`: weights truncated N(0, 0.01²) in [−0.02, 0.02], biases 0.
    Houlsby,
}

impl BnInit {
    pub fn name(self) -> &'static str {
        match self {
            BnInit::Bert => "bert",
            BnInit::MamAdapter => "mam_adapter",
            BnInit::Houlsby => "houlsby",
        }
    }

    pub fn from_name(name: &str) -> Option<BnInit> {
        match name {
            "bert" => Some(BnInit::Bert),
            "mam_adapter" => Some(BnInit::MamAdapter),
            "houlsby" => Some(BnInit::Houlsby),
            _ => None,
        }
    }
}

/// A validated AdapterHub bottleneck-adapter configuration (with the wrapper's
/// `name`, `model_name` and `hidden_size`).
#[derive(Debug, Clone, PartialEq)]
pub struct BottleneckConfig {
    pub kind: BottleneckKind,
    /// Bottleneck width is `hidden_size // reduction_factor` (Python floor
    /// division); > 0 and finite. Below 1 widens instead.
    pub reduction_factor: f64,
    /// `non_linearity`; written back as AdapterHub's name (`relu`, `swish`, `gelu`, `tanh`).
    pub non_linearity: Activation,
    /// The factor on the adapter's output (`scaling`; 4.0 for par_bn).
    pub scaling: f64,
    pub init_weights: BnInit,
    /// Dropout on the adapter's output, in [0, 1).
    pub dropout: f64,
    /// Layers without an adapter (`leave_out`), sorted, without repeats.
    pub leave_out: Vec<usize>,
    /// `init_weights_seed` (AdapterHub reseeds torch with it per module); kept for the file.
    pub init_weights_seed: Option<u64>,
    /// The adapter name: the `NAME` in `…adapters.NAME.adapter_down…` keys. Default "bn".
    pub name: String,
    /// The wrapper's `model_name` (the base model's name or path), if known.
    pub model_name: Option<String>,
    /// The wrapper's `hidden_size`, as read (checked against the model by [`check`](Self::check)).
    pub hidden_size: Option<usize>,
    /// `config` fields that have no effect on an adapter webpeft supports
    /// (PHM options while `phm_layer` is false, `cross_adapter`, …), kept as
    /// read so [`to_value`](Self::to_value) writes them back unchanged.
    pub inert: BTreeMap<String, Value>,
}

fn err(field: &str, detail: impl Into<String>) -> Error {
    Error::BottleneckConfig { field: field.to_string(), detail: detail.into() }
}

fn unsupported(field: &str, detail: impl Into<String>) -> Error {
    err(field, format!("not supported: {}", detail.into()))
}

/// `BnConfig` fields that cannot change the math of a supported adapter, with
/// AdapterHub's defaults (`adapters/configuration/adapter_config.py`, `BnConfig`).
fn inert_defaults() -> BTreeMap<String, Value> {
    let pairs = [
        // Only read when ln_after is true (rejected).
        ("adapter_residual_before_ln", json!(false)),
        // Only for encoder-decoder models' cross attention; a Llama has none.
        ("cross_adapter", json!(false)),
        // PHM options: only read when phm_layer is true (rejected).
        ("factorized_phm_W", json!(true)),
        ("factorized_phm_rule", json!(false)),
        ("hypercomplex_nonlinearity", json!("glorot-uniform")),
        ("learn_phm", json!(true)),
        ("phm_bias", json!(true)),
        ("phm_c_init", json!("normal")),
        ("phm_dim", json!(4)),
        ("phm_init_range", json!(0.0001)),
        ("phm_rank", json!(1)),
        ("shared_W_phm", json!(false)),
        ("shared_phm_rule", json!(true)),
        // Only read when inv_adapter is set (rejected).
        ("inv_adapter_reduction_factor", Value::Null),
    ];
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Python's `float.__floordiv__` for a positive divisor (CPython
/// `float_floor_div`): floor of the exact quotient, not of the rounded one
/// (`64 // 0.1 == 639.0`, while `(64.0 / 0.1).floor() == 640.0`).
fn py_floordiv(a: f64, b: f64) -> f64 {
    let m = a % b; // fmod, exact
    let mut div = (a - m) / b;
    if m != 0.0 && ((b < 0.0) != (m < 0.0)) {
        div -= 1.0;
    }
    if div == 0.0 {
        return 0.0f64.copysign(a / b);
    }
    let mut floordiv = div.floor();
    if div - floordiv > 0.5 {
        floordiv += 1.0;
    }
    floordiv
}

fn activation_name(a: Activation) -> &'static str {
    match a {
        Activation::Relu => "relu",
        Activation::Silu => "swish",
        Activation::Gelu => "gelu",
        Activation::Tanh => "tanh",
    }
}

/// `model_class` for a model type (`LlamaForCausalLM`, …).
pub fn model_class(model_type: ModelType) -> &'static str {
    match model_type {
        ModelType::Llama => "LlamaForCausalLM",
        ModelType::Qwen2 => "Qwen2ForCausalLM",
        ModelType::Mistral => "MistralForCausalLM",
        ModelType::Qwen3 => "Qwen3ForCausalLM",
        ModelType::SmolLM3 => "SmolLM3ForCausalLM",
    }
}

/// A flag that must have the preset's value.
fn require_bool(f: &Fields, key: &str, want: bool, kind: BottleneckKind, what: &str) -> Result<()> {
    match f.opt_bool(key)? {
        Some(v) if v != want => Err(unsupported(
            &f.field(key),
            format!("{v} ({what}); webpeft implements {} with {key} = {want} only", kind.name()),
        )),
        _ => Ok(()),
    }
}

impl BottleneckConfig {
    /// AdapterHub's preset for `kind` (`SeqBnConfig()`, `DoubleSeqBnConfig()`,
    /// `ParBnConfig()`), adapter name "bn".
    pub fn new(kind: BottleneckKind) -> BottleneckConfig {
        let (reduction_factor, non_linearity, scaling, init_weights) = match kind {
            BottleneckKind::SeqBn => (16.0, Activation::Relu, 1.0, BnInit::Bert),
            BottleneckKind::DoubleSeqBn => (16.0, Activation::Silu, 1.0, BnInit::Bert),
            BottleneckKind::ParBn => (2.0, Activation::Relu, 4.0, BnInit::MamAdapter),
        };
        BottleneckConfig {
            kind,
            reduction_factor,
            non_linearity,
            scaling,
            init_weights,
            dropout: 0.0,
            leave_out: Vec::new(),
            init_weights_seed: None,
            name: DEFAULT_ADAPTER_NAME.to_string(),
            model_name: None,
            hidden_size: None,
            inert: inert_defaults(),
        }
    }

    /// The bottleneck width m for a model of width `hidden`, as AdapterHub
    /// computes it: `int(hidden_size // reduction_factor)` (bottleneck.py
    /// `add_adapter`), raised to 1 when smaller (modeling.py `Adapter.__init__`).
    pub fn bottleneck_size(&self, hidden: usize) -> usize {
        let m = py_floordiv(hidden as f64, self.reduction_factor);
        if m.is_finite() && m >= 1.0 {
            m as usize
        } else {
            1
        }
    }

    /// The layers that carry an adapter in a model of `n_layers` (all but `leave_out`).
    pub fn adapted_layers(&self, n_layers: usize) -> Vec<usize> {
        (0..n_layers).filter(|i| !self.leave_out.contains(i)).collect()
    }

    /// Checks the numeric options and the name (what [`from_value`](Self::from_value) checks too).
    pub fn validate(&self) -> Result<()> {
        if !(self.reduction_factor.is_finite() && self.reduction_factor > 0.0) {
            return Err(err("reduction_factor", format!("must be a finite number > 0, got {}", self.reduction_factor)));
        }
        if !self.scaling.is_finite() {
            return Err(err("scaling", format!("must be finite, got {}", self.scaling)));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(err("dropout", format!("must be in [0, 1), got {}", self.dropout)));
        }
        if self.name.is_empty() || self.name.contains(['.', '/', '\\']) || self.name.chars().any(char::is_whitespace) {
            return Err(err(
                "name",
                format!(
                    "\"{}\" cannot be an adapter name in tensor keys (empty, or has '.', '/' or spaces)",
                    self.name
                ),
            ));
        }
        Ok(())
    }

    /// Checks the config against the model: `hidden_size` (when the file
    /// gives one) equals the model's, the bottleneck is at most
    /// [`MAX_WIDENING`] × hidden_size, and `leave_out` names existing layers
    /// and leaves at least one.
    pub fn check(&self, model: &Config) -> Result<()> {
        self.validate()?;
        if let Some(h) = self.hidden_size {
            if h != model.hidden_size {
                return Err(err(
                    "hidden_size",
                    format!(
                        "{h}, but the model's hidden_size is {}: the adapter was made for another model",
                        model.hidden_size
                    ),
                ));
            }
        }
        let (hidden, m) = (model.hidden_size, self.bottleneck_size(model.hidden_size));
        if m > MAX_WIDENING * hidden {
            return Err(unsupported(
                "config.reduction_factor",
                format!(
                    "{} gives a bottleneck of {m} for hidden_size {hidden}: wider than {MAX_WIDENING}× the model is not supported",
                    self.reduction_factor
                ),
            ));
        }
        let n = model.num_hidden_layers;
        if let Some(&bad) = self.leave_out.iter().find(|&&i| i >= n) {
            return Err(err("leave_out", format!("layer {bad} does not exist (the model has {n} layers)")));
        }
        if self.adapted_layers(n).is_empty() {
            return Err(err("leave_out", "leaves out every layer: no adapter to train"));
        }
        Ok(())
    }

    /// Reads `adapter_config.json` from an adapter folder.
    pub async fn load<F: ModelFiles>(files: &F) -> Result<BottleneckConfig> {
        let bytes = files.open(super::file::BN_CONFIG_FILE).await?.read_all().await?;
        BottleneckConfig::from_json(&bytes)
    }

    /// Parses and validates the bytes of an AdapterHub `adapter_config.json`.
    pub fn from_json(bytes: &[u8]) -> Result<BottleneckConfig> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| err("(file)", format!("not valid JSON: {e}")))?;
        BottleneckConfig::from_value(&value)
    }

    /// Parses and validates a parsed AdapterHub `adapter_config.json` (the wrapper object).
    pub fn from_value(value: &Value) -> Result<BottleneckConfig> {
        let Value::Object(top) = value else {
            return Err(err("(file)", format!("expected a JSON object, got {}", brief(value))));
        };
        let top = Fields::of(top, "", err);
        // Files from before `version` existed used "gelu" for the tanh approximation
        // (adapters/loading.py `load_weights_config`, `ACTIVATION_RENAME` in utils.py).
        let legacy = top.get("version").is_none();

        let mut c = match top.get("config") {
            None => return Err(err("config", "missing: not an AdapterHub adapter_config.json")),
            Some(Value::String(s)) => match BottleneckKind::from_name(s) {
                Some(kind) => BottleneckConfig::new(kind),
                None => {
                    return Err(unsupported(
                        "config",
                        format!("\"{s}\": webpeft supports the bottleneck adapters seq_bn, double_seq_bn and par_bn"),
                    ))
                }
            },
            Some(Value::Object(m)) => Self::from_bn_config(m, legacy)?,
            Some(v) => return Err(top.wrong("config", "an object or a preset name", v)),
        };

        c.name = match top.opt_str("name")? {
            Some(n) => n.to_string(),
            None => DEFAULT_ADAPTER_NAME.to_string(),
        };
        c.model_name = top.opt_str("model_name")?.map(str::to_string);
        c.hidden_size = match top.get("hidden_size") {
            None => None,
            Some(v) => Some(
                v.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .filter(|&n| n > 0)
                    .ok_or_else(|| top.wrong("hidden_size", "a positive integer", v))?,
            ),
        };
        // model_type / model_class / version are informational; checked for type only.
        for key in ["model_type", "model_class", "version"] {
            top.opt_str(key)?;
        }
        c.validate()?;
        Ok(c)
    }

    /// The `config` object (a `BnConfig` as `asdict` writes it).
    fn from_bn_config(map: &Map<String, Value>, legacy: bool) -> Result<BottleneckConfig> {
        let f = Fields::of(map, "config.", err);
        // AdapterConfig._get_config_class: no "architecture" key is a BnConfig.
        match f.get("architecture") {
            None => {}
            Some(Value::String(a)) if a == "bottleneck" => {}
            Some(Value::String(a)) => {
                let what = if a == "union" {
                    "a union of several methods (MAM, UniPELT, …)"
                } else {
                    "not a bottleneck adapter"
                };
                return Err(unsupported("config.architecture", format!("\"{a}\": {what}")));
            }
            Some(v) => return Err(f.wrong("architecture", "a string", v)),
        }
        let field = |k: &str| f.field(k);
        let mh = f.opt_bool("mh_adapter")?.ok_or_else(|| err(&field("mh_adapter"), "missing"))?;
        let out = f.opt_bool("output_adapter")?.ok_or_else(|| err(&field("output_adapter"), "missing"))?;
        let parallel = f.opt_bool("is_parallel")?.unwrap_or(false);
        let kind = match (mh, out, parallel) {
            (false, true, false) => BottleneckKind::SeqBn,
            (true, true, false) => BottleneckKind::DoubleSeqBn,
            (false, true, true) => BottleneckKind::ParBn,
            (mh, out, par) => {
                return Err(unsupported(
                    "config.mh_adapter",
                    format!(
                        "mh_adapter = {mh}, output_adapter = {out}, is_parallel = {par} is none of seq_bn \
                         (false, true, false), double_seq_bn (true, true, false), par_bn (false, true, true)"
                    ),
                ))
            }
        };
        let mut c = BottleneckConfig::new(kind);

        // Flags that change the math: the preset's value only.
        require_bool(&f, "original_ln_before", kind.original_ln_before(), kind, "residual placement")?;
        require_bool(&f, "original_ln_after", true, kind, "residual placement")?;
        require_bool(&f, "ln_before", false, kind, "a new LayerNorm before the adapter")?;
        require_bool(&f, "ln_after", false, kind, "a new LayerNorm after the adapter")?;
        require_bool(&f, "use_gating", false, kind, "a learned gate")?;
        require_bool(&f, "phm_layer", false, kind, "PHM (Compacter) layers")?;
        match f.get("residual_before_ln") {
            None | Some(Value::Bool(true)) => {}
            Some(v) => {
                return Err(unsupported(
                    &field("residual_before_ln"),
                    format!("{}; webpeft implements {} with residual_before_ln = true only", brief(v), kind.name()),
                ))
            }
        }
        if let Some(v) = f.opt_f64("stochastic_depth")? {
            if v != 0.0 {
                return Err(unsupported(&field("stochastic_depth"), format!("{v}: only 0 is supported")));
            }
        }
        if let Some(v) = f.get("inv_adapter") {
            return Err(unsupported(
                &field("inv_adapter"),
                format!("{}: invertible adapters are not supported", brief(v)),
            ));
        }

        c.reduction_factor = match f.get("reduction_factor") {
            None => c.reduction_factor,
            Some(Value::Object(_)) => {
                return Err(unsupported(
                    &field("reduction_factor"),
                    "a per-layer mapping: give one number for all layers",
                ))
            }
            Some(v) => v.as_f64().ok_or_else(|| f.wrong("reduction_factor", "a number", v))?,
        };
        if !(c.reduction_factor.is_finite() && c.reduction_factor > 0.0) {
            return Err(err(
                &field("reduction_factor"),
                format!("must be a finite number > 0, got {}", c.reduction_factor),
            ));
        }

        if let Some(name) = f.opt_str("non_linearity")? {
            let name_lc = name.to_ascii_lowercase();
            c.non_linearity = match (legacy, name_lc.as_str()) {
                (true, "gelu") => None, // legacy "gelu" meant gelu_new
                (true, "gelu_orig") => Some(Activation::Gelu),
                _ => Activation::from_name(&name_lc),
            }
            .ok_or_else(|| {
                unsupported(&field("non_linearity"), format!("\"{name}\" (supported: relu, swish/silu, gelu, tanh)"))
            })?;
        }

        c.scaling = match f.get("scaling") {
            None => c.scaling,
            Some(Value::String(s)) => {
                return Err(unsupported(
                    &field("scaling"),
                    format!("\"{s}\": only a constant scaling factor is supported"),
                ))
            }
            Some(v) => v.as_f64().ok_or_else(|| f.wrong("scaling", "a number", v))?,
        };
        if !c.scaling.is_finite() {
            return Err(err(&field("scaling"), format!("must be finite, got {}", c.scaling)));
        }

        if let Some(init) = f.opt_str("init_weights")? {
            c.init_weights = BnInit::from_name(init).ok_or_else(|| {
                err(&field("init_weights"), format!("\"{init}\" (expected \"bert\", \"mam_adapter\" or \"houlsby\")"))
            })?;
        }
        c.init_weights_seed = match f.get("init_weights_seed") {
            None => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| f.wrong("init_weights_seed", "a seed (integer ≥ 0)", v))?),
        };
        c.dropout = f.opt_f64("dropout")?.unwrap_or(0.0);
        if !(0.0..1.0).contains(&c.dropout) {
            return Err(err(&field("dropout"), format!("must be in [0, 1), got {}", c.dropout)));
        }

        c.leave_out = match f.get("leave_out") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(|| f.wrong(&format!("leave_out[{i}]"), "a layer index", v))
                })
                .collect::<Result<Vec<_>>>()?,
            Some(v) => return Err(f.wrong("leave_out", "a list of layer indices", v)),
        };
        c.leave_out.sort_unstable();
        c.leave_out.dedup();

        for (key, slot) in c.inert.iter_mut() {
            if let Some(v) = map.get(key) {
                *slot = v.clone();
            }
        }
        Ok(c)
    }

    /// The `config` object as `BnConfig.to_dict()` gives it (keys sorted).
    pub fn bn_config_value(&self) -> Value {
        // AdapterHub's presets have int reduction factors (16, 2) and float scalings (1.0, 4.0).
        let num = int_if_whole;
        let kind = self.kind;
        let mut m: Map<String, Value> = self.inert.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let fields = [
            ("dropout", json!(self.dropout)),
            ("init_weights", json!(self.init_weights.name())),
            ("init_weights_seed", json!(self.init_weights_seed)),
            ("inv_adapter", Value::Null),
            ("is_parallel", json!(kind.is_parallel())),
            ("leave_out", json!(self.leave_out)),
            ("ln_after", json!(false)),
            ("ln_before", json!(false)),
            ("mh_adapter", json!(kind.has_attention_adapter())),
            ("non_linearity", json!(activation_name(self.non_linearity))),
            ("original_ln_after", json!(true)),
            ("original_ln_before", json!(kind.original_ln_before())),
            ("output_adapter", json!(true)),
            ("phm_layer", json!(false)),
            ("reduction_factor", num(self.reduction_factor)),
            ("residual_before_ln", json!(true)),
            ("scaling", json!(self.scaling)),
            ("stochastic_depth", json!(0.0)),
            ("use_gating", json!(false)),
        ];
        for (k, v) in fields {
            m.insert(k.to_string(), v);
        }
        Value::Object(m)
    }

    /// The whole file as `save_adapter` writes it for a model of `model`:
    /// `hidden_size`, `model_class`, `model_type` from the model, `version`
    /// [`ADAPTERS_VERSION`].
    pub fn to_value(&self, model: &Config) -> Value {
        json!({
            "config": self.bn_config_value(),
            "hidden_size": model.hidden_size,
            "model_class": model_class(model.model_type),
            "model_name": self.model_name,
            "model_type": model.model_type.name(),
            "name": self.name,
            "version": ADAPTERS_VERSION,
        })
    }

    /// [`to_value`](Self::to_value) as AdapterHub writes it (`json.dump(indent=2, sort_keys=True)`).
    pub fn to_json(&self, model: &Config) -> String {
        serde_json::to_string_pretty(&self.to_value(model)).expect("a JSON value serializes")
    }
}
