//! `adapter.safetensors` of an AdapterHub bottleneck adapter: per adapted
//! layer i and site (`attention_adapters` for double_seq_bn, `output_adapters`
//! for all kinds), for adapter name NAME,
//! `model.layers.{i}.<site>.adapters.NAME.adapter_down.0.weight` (m, D),
//! `….adapter_down.0.bias` (m), `….adapter_up.weight` (D, m), `….adapter_up.bias` (D).
//! Loaded as f32 from F32, F16 or BF16 and checked against the
//! [`BottleneckConfig`] and the model [`Config`]; written as f32 without
//! metadata, as `adapters`' `save_file(state_dict, …)` writes it. Also
//! AdapterHub's initialisations ([`BottleneckWeights::init`]).

use std::collections::BTreeMap;

use ::safetensors::tensor::TensorView;
use ::safetensors::Dtype;

use super::super::torch_init::{kaiming_uniform_sqrt5, trunc_normal};
use super::config::{BnInit, BottleneckConfig};
use crate::model::safetensors::SafetensorsFile;
use crate::model::source::{ByteSource, ModelFiles};
use crate::model::Config;
use crate::util::rng::Rng;
use crate::{Error, Result};

/// The weights file of an AdapterHub adapter folder.
pub const BN_WEIGHTS_FILE: &str = "adapter.safetensors";
/// The config file of an AdapterHub adapter folder.
pub const BN_CONFIG_FILE: &str = "adapter_config.json";

/// Where in a block an adapter sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BnSite {
    /// After the attention block (`attention_adapters`, double_seq_bn only).
    Attention,
    /// After (or, for par_bn, beside) the MLP (`output_adapters`).
    Output,
}

impl BnSite {
    /// The module name in keys.
    pub fn module(self) -> &'static str {
        match self {
            BnSite::Attention => "attention_adapters",
            BnSite::Output => "output_adapters",
        }
    }
}

/// One of the four tensors of a bottleneck unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BnPart {
    /// `adapter_down.0.weight` (m, D).
    DownWeight,
    /// `adapter_down.0.bias` (m).
    DownBias,
    /// `adapter_up.weight` (D, m).
    UpWeight,
    /// `adapter_up.bias` (D).
    UpBias,
}

impl BnPart {
    pub const ALL: [BnPart; 4] = [BnPart::DownWeight, BnPart::DownBias, BnPart::UpWeight, BnPart::UpBias];

    fn suffix(self) -> &'static str {
        match self {
            BnPart::DownWeight => "adapter_down.0.weight",
            BnPart::DownBias => "adapter_down.0.bias",
            BnPart::UpWeight => "adapter_up.weight",
            BnPart::UpBias => "adapter_up.bias",
        }
    }

    /// The tensor's shape for width D and bottleneck m.
    pub fn shape(self, hidden: usize, size: usize) -> Vec<usize> {
        match self {
            BnPart::DownWeight => vec![size, hidden],
            BnPart::DownBias => vec![size],
            BnPart::UpWeight => vec![hidden, size],
            BnPart::UpBias => vec![hidden],
        }
    }
}

/// `model.layers.{layer}.<site>.adapters.{name}.<part>`.
pub fn key(layer: usize, site: BnSite, name: &str, part: BnPart) -> String {
    format!("model.layers.{layer}.{}.adapters.{name}.{}", site.module(), part.suffix())
}

/// One bottleneck: `x ↦ W_up · act(W_down · x + b_down) + b_up`, row-major f32.
#[derive(Debug, Clone, PartialEq)]
pub struct BottleneckUnit {
    /// (m, D)
    pub down_w: Vec<f32>,
    /// (m)
    pub down_b: Vec<f32>,
    /// (D, m)
    pub up_w: Vec<f32>,
    /// (D)
    pub up_b: Vec<f32>,
}

impl BottleneckUnit {
    /// All zeros, for width D and bottleneck m.
    pub fn zeros(hidden: usize, size: usize) -> BottleneckUnit {
        BottleneckUnit {
            down_w: vec![0.0; size * hidden],
            down_b: vec![0.0; size],
            up_w: vec![0.0; hidden * size],
            up_b: vec![0.0; hidden],
        }
    }

    pub fn part(&self, part: BnPart) -> &[f32] {
        match part {
            BnPart::DownWeight => &self.down_w,
            BnPart::DownBias => &self.down_b,
            BnPart::UpWeight => &self.up_w,
            BnPart::UpBias => &self.up_b,
        }
    }

    fn part_mut(&mut self, part: BnPart) -> &mut Vec<f32> {
        match part {
            BnPart::DownWeight => &mut self.down_w,
            BnPart::DownBias => &mut self.down_b,
            BnPart::UpWeight => &mut self.up_w,
            BnPart::UpBias => &mut self.up_b,
        }
    }

    /// AdapterHub's initialisation of one `Adapter` module
    /// (`adapters/methods/modeling.py`, `Adapter.__init__`), with our [`Rng`]:
    /// the distributions of torch's, not its bits.
    pub fn init(init: BnInit, hidden: usize, size: usize, rng: &mut Rng) -> BottleneckUnit {
        let mut u = BottleneckUnit::zeros(hidden, size);
        match init {
            // init_bert_weights: Linear weights N(0, 0.02²), biases zero.
            BnInit::Bert => {
                u.down_w = rng.normal_vec(size * hidden, 0.02);
                u.up_w = rng.normal_vec(hidden * size, 0.02);
            }
            // kaiming_uniform_(a=√5) on adapter_down's Linear (fan_in D), its bias
            // zero; adapter_up weight and bias zero.
            BnInit::MamAdapter => {
                u.down_w = kaiming_uniform_sqrt5(size * hidden, hidden, rng);
            }
            // trunc_normal_(std=1e-2, a=-2e-2, b=2e-2) on both weights, biases zero.
            BnInit::Houlsby => {
                u.down_w = (0..size * hidden).map(|_| trunc_normal(rng, 0.01, -0.02, 0.02)).collect();
                u.up_w = (0..hidden * size).map(|_| trunc_normal(rng, 0.01, -0.02, 0.02)).collect();
            }
        }
        u
    }
}

/// The adapters of one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerAdapters {
    /// After attention (double_seq_bn only).
    pub attention: Option<BottleneckUnit>,
    /// After or beside the MLP (every kind).
    pub output: Option<BottleneckUnit>,
}

impl LayerAdapters {
    pub fn site(&self, site: BnSite) -> Option<&BottleneckUnit> {
        match site {
            BnSite::Attention => self.attention.as_ref(),
            BnSite::Output => self.output.as_ref(),
        }
    }
}

/// The weights of one bottleneck adapter: adapted layer index → its units.
#[derive(Debug, Clone, PartialEq)]
pub struct BottleneckWeights {
    /// D.
    pub hidden: usize,
    /// m, the bottleneck width.
    pub size: usize,
    /// Only the adapted layers (not `leave_out`).
    pub layers: BTreeMap<usize, LayerAdapters>,
}

fn tensor_error(tensor: &str, file: &str, detail: impl Into<String>) -> Error {
    Error::AdapterTensor { tensor: tensor.to_string(), file: file.to_string(), detail: detail.into() }
}

/// The sites a kind has.
fn sites(cfg: &BottleneckConfig) -> &'static [BnSite] {
    if cfg.kind.has_attention_adapter() {
        &[BnSite::Attention, BnSite::Output]
    } else {
        &[BnSite::Output]
    }
}

impl BottleneckWeights {
    /// Zero units for every adapted layer and site of `cfg` in `model`.
    pub fn zeros(cfg: &BottleneckConfig, model: &Config) -> Result<BottleneckWeights> {
        Self::filled(cfg, model, BottleneckUnit::zeros)
    }

    /// Fresh weights as AdapterHub initialises them (`cfg.init_weights`),
    /// drawn from `rng` layer by layer, attention unit before output unit.
    pub fn init(cfg: &BottleneckConfig, model: &Config, rng: &mut Rng) -> Result<BottleneckWeights> {
        Self::filled(cfg, model, |hidden, size| BottleneckUnit::init(cfg.init_weights, hidden, size, rng))
    }

    fn filled(
        cfg: &BottleneckConfig,
        model: &Config,
        mut unit: impl FnMut(usize, usize) -> BottleneckUnit,
    ) -> Result<BottleneckWeights> {
        cfg.check(model)?;
        let hidden = model.hidden_size;
        let size = cfg.bottleneck_size(hidden);
        let mut layers = BTreeMap::new();
        for i in cfg.adapted_layers(model.num_hidden_layers) {
            let attention = cfg.kind.has_attention_adapter().then(|| unit(hidden, size));
            let output = Some(unit(hidden, size));
            layers.insert(i, LayerAdapters { attention, output });
        }
        Ok(BottleneckWeights { hidden, size, layers })
    }

    /// Every key this adapter's file holds, with its shape, sorted.
    pub fn expected_keys(cfg: &BottleneckConfig, model: &Config) -> BTreeMap<String, Vec<usize>> {
        let hidden = model.hidden_size;
        let size = cfg.bottleneck_size(hidden);
        let mut out = BTreeMap::new();
        for i in cfg.adapted_layers(model.num_hidden_layers) {
            for &site in sites(cfg) {
                for part in BnPart::ALL {
                    out.insert(key(i, site, &cfg.name, part), part.shape(hidden, size));
                }
            }
        }
        out
    }

    /// Reads `adapter.safetensors` from an adapter folder and checks it against
    /// `cfg` and `model`: exactly the keys of [`expected_keys`](Self::expected_keys),
    /// each of its shape, dtype F32, F16 or BF16.
    pub async fn load<F: ModelFiles>(files: &F, cfg: &BottleneckConfig, model: &Config) -> Result<BottleneckWeights> {
        let source = files.open(BN_WEIGHTS_FILE).await?;
        let file = SafetensorsFile::open(source).await?;
        Self::read(&file, cfg, model).await
    }

    /// [`load`](Self::load) from an opened safetensors file.
    pub async fn read<S: ByteSource>(
        file: &SafetensorsFile<S>,
        cfg: &BottleneckConfig,
        model: &Config,
    ) -> Result<BottleneckWeights> {
        cfg.check(model)?;
        let fname = file.name().to_string();
        let expected = Self::expected_keys(cfg, model);
        // The whole header is checked before any data is read.
        for t in file.tensors() {
            if !expected.contains_key(&t.name) {
                let hint = if t.name.contains(".attention_adapters.") && !cfg.kind.has_attention_adapter() {
                    format!(" (an attention-side adapter: {} has none; double_seq_bn has)", cfg.kind.name())
                } else if t.name.contains(".adapters.") && !t.name.contains(&format!(".adapters.{}.", cfg.name)) {
                    format!(" (another adapter's tensor: adapter_config.json names this adapter \"{}\")", cfg.name)
                } else if cfg.leave_out.iter().any(|i| t.name.starts_with(&format!("model.layers.{i}."))) {
                    " (a layer in leave_out)".to_string()
                } else {
                    String::new()
                };
                return Err(tensor_error(&t.name, &fname, format!("unexpected tensor in a bottleneck adapter{hint}")));
            }
        }
        let size = cfg.bottleneck_size(model.hidden_size);
        for (k, shape) in &expected {
            let Some(info) = file.get(k) else {
                return Err(tensor_error(k, &fname, format!("missing: a {} adapter has this tensor", cfg.kind.name())));
            };
            if &info.shape != shape {
                return Err(tensor_error(
                    k,
                    &fname,
                    format!(
                        "shape {:?}, expected {shape:?} (hidden_size {}, bottleneck {size} = {} // {})",
                        info.shape, model.hidden_size, model.hidden_size, cfg.reduction_factor
                    ),
                ));
            }
            if !matches!(info.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
                return Err(tensor_error(k, &fname, format!("dtype {}, expected F32, F16 or BF16", info.dtype)));
            }
        }
        let mut w = Self::zeros(cfg, model)?;
        for (&i, layer) in w.layers.iter_mut() {
            for (site, unit) in [(BnSite::Attention, &mut layer.attention), (BnSite::Output, &mut layer.output)] {
                if let Some(unit) = unit {
                    for part in BnPart::ALL {
                        *unit.part_mut(part) = file.read_f32(&key(i, site, &cfg.name, part)).await?;
                    }
                }
            }
        }
        Ok(w)
    }

    /// The weights as `adapters` saves them: AdapterHub's keys for adapter
    /// `cfg.name`, f32, sorted, no `__metadata__`. Every unit's lengths must
    /// fit `hidden` and `size`, and the layers/sites must be those of `cfg`'s kind.
    pub fn to_safetensors_bytes(&self, cfg: &BottleneckConfig) -> Result<Vec<u8>> {
        cfg.validate()?;
        let fname = BN_WEIGHTS_FILE;
        let mut tensors: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
        for (&i, layer) in &self.layers {
            for site in [BnSite::Attention, BnSite::Output] {
                let wanted = sites(cfg).contains(&site);
                let unit = match (layer.site(site), wanted) {
                    (Some(u), true) => u,
                    (None, false) => continue,
                    (Some(_), false) => {
                        return Err(tensor_error(
                            &key(i, site, &cfg.name, BnPart::DownWeight),
                            fname,
                            format!("a {} adapter has no {} unit", cfg.kind.name(), site.module()),
                        ))
                    }
                    (None, true) => {
                        return Err(tensor_error(
                            &key(i, site, &cfg.name, BnPart::DownWeight),
                            fname,
                            format!("layer {i} lacks its {} unit", site.module()),
                        ))
                    }
                };
                for part in BnPart::ALL {
                    let k = key(i, site, &cfg.name, part);
                    let shape = part.shape(self.hidden, self.size);
                    let data = unit.part(part);
                    if data.len() != shape.iter().product::<usize>() {
                        return Err(tensor_error(
                            &k,
                            fname,
                            format!(
                                "{} values, expected {shape:?} for hidden {} and bottleneck {}",
                                data.len(),
                                self.hidden,
                                self.size
                            ),
                        ));
                    }
                    tensors.insert(k, (shape, bytemuck::cast_slice::<f32, u8>(data).to_vec()));
                }
            }
        }
        let views = tensors
            .iter()
            .map(|(k, (shape, data))| {
                TensorView::new(Dtype::F32, shape.clone(), data)
                    .map(|v| (k.clone(), v))
                    .map_err(|e| tensor_error(k, fname, e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        ::safetensors::serialize(views, None).map_err(|e| tensor_error("*", fname, e.to_string()))
    }
}
