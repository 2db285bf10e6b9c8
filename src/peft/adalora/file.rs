//! `adapter_model.safetensors` of a PEFT AdaLoRA adapter: per targeted
//! Linear, `base_model.model.<module>.lora_A` (r, in), `….lora_E` (r, 1) and
//! `….lora_B` (out, r) — no `.weight` suffix, these are PEFT `Parameter`s.
//! After an allocation PEFT saves only the ranks `rank_pattern` keeps, so r
//! differs between modules (0 for a module that keeps none).

use std::collections::{BTreeMap, HashMap};

use ::safetensors::tensor::TensorView;
use ::safetensors::Dtype;

use super::config::AdaLoraConfig;
use crate::model::safetensors::SafetensorsFile;
use crate::model::source::ModelFiles;
use crate::model::Config;
use crate::peft::lora::{lora_modules, ADAPTER_WEIGHTS_FILE};
use crate::{Error, Result};

const KEY_PREFIX: &str = "base_model.model.";

/// One module's triplet on the CPU.
#[derive(Debug, Clone, PartialEq)]
pub struct SvdTriplet {
    /// lora_A (r, in)
    pub a: Vec<f32>,
    /// lora_E (r, 1)
    pub e: Vec<f32>,
    /// lora_B (out, r)
    pub b: Vec<f32>,
    pub r: usize,
    pub in_features: usize,
    pub out_features: usize,
}

impl SvdTriplet {
    /// The triplet with only the ranks `keep` flags (PEFT's
    /// `resize_state_dict_by_rank_pattern`).
    pub fn keep(&self, keep: &[bool]) -> SvdTriplet {
        let ranks: Vec<usize> = (0..self.r).filter(|&i| keep.get(i).copied().unwrap_or(false)).collect();
        let (inp, out) = (self.in_features, self.out_features);
        SvdTriplet {
            a: ranks.iter().flat_map(|&i| self.a[i * inp..(i + 1) * inp].to_vec()).collect(),
            e: ranks.iter().map(|&i| self.e[i]).collect(),
            b: (0..out).flat_map(|o| ranks.iter().map(move |&i| (o, i))).map(|(o, i)| self.b[o * self.r + i]).collect(),
            r: ranks.len(),
            in_features: inp,
            out_features: out,
        }
    }
}

/// Every module's triplet, by module name (`model.layers.0.self_attn.q_proj`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AdaLoraWeights {
    pub modules: BTreeMap<String, SvdTriplet>,
}

fn key(module: &str, part: &str) -> String {
    format!("{KEY_PREFIX}{module}.{part}")
}

fn tensor_error(tensor: &str, detail: impl Into<String>) -> Error {
    Error::AdapterTensor { tensor: tensor.into(), file: ADAPTER_WEIGHTS_FILE.into(), detail: detail.into() }
}

impl AdaLoraWeights {
    /// Reads the weights of `config` for a model of `model`: exactly the
    /// targeted modules' three tensors, each module at the rank the config
    /// gives it (`init_r`, or what `rank_pattern` keeps); F32, F16 or BF16.
    pub async fn load<F: ModelFiles>(files: &F, config: &AdaLoraConfig, model: &Config) -> Result<AdaLoraWeights> {
        let file = SafetensorsFile::open(files.open(ADAPTER_WEIGHTS_FILE).await?).await?;
        let modules = lora_modules(&config.lora, model)?;
        let mut expected: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for m in &modules {
            let r = config.rank_of(&m.name);
            expected.insert(key(&m.name, "lora_A"), vec![r, m.in_features]);
            expected.insert(key(&m.name, "lora_E"), vec![r, 1]);
            expected.insert(key(&m.name, "lora_B"), vec![m.out_features, r]);
        }
        for t in file.tensors() {
            if !expected.contains_key(&t.name) {
                let hint = if t.name.ends_with(".weight") { " (AdaLoRA's keys have no `.weight`)" } else { "" };
                return Err(tensor_error(&t.name, format!("unexpected tensor in an AdaLoRA adapter{hint}")));
            }
        }
        for (k, shape) in &expected {
            let info =
                file.get(k).ok_or_else(|| tensor_error(k, "missing: adapter_config.json targets this module"))?;
            if &info.shape != shape {
                return Err(tensor_error(
                    k,
                    format!("shape {:?}, expected {shape:?} (init_r and rank_pattern)", info.shape),
                ));
            }
            if !matches!(info.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
                return Err(tensor_error(k, format!("dtype {}, expected F32, F16 or BF16", info.dtype)));
            }
        }
        let mut out = BTreeMap::new();
        for m in modules {
            let a = file.read_f32(&key(&m.name, "lora_A")).await?;
            let e = file.read_f32(&key(&m.name, "lora_E")).await?;
            let b = file.read_f32(&key(&m.name, "lora_B")).await?;
            let r = e.len();
            out.insert(m.name, SvdTriplet { a, e, b, r, in_features: m.in_features, out_features: m.out_features });
        }
        Ok(AdaLoraWeights { modules: out })
    }

    /// PEFT's `adapter_model.safetensors`: f32, keys sorted, `{"format":"pt"}`.
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>> {
        let mut tensors: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
        let bytes = |v: &[f32]| bytemuck::cast_slice::<f32, u8>(v).to_vec();
        for (name, t) in &self.modules {
            tensors.insert(key(name, "lora_A"), (vec![t.r, t.in_features], bytes(&t.a)));
            tensors.insert(key(name, "lora_E"), (vec![t.r, 1], bytes(&t.e)));
            tensors.insert(key(name, "lora_B"), (vec![t.out_features, t.r], bytes(&t.b)));
        }
        let views = tensors
            .iter()
            .map(|(k, (shape, data))| {
                TensorView::new(Dtype::F32, shape.clone(), data)
                    .map(|v| (k.clone(), v))
                    .map_err(|e| tensor_error(k, e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
        ::safetensors::serialize(views, Some(metadata)).map_err(|e| tensor_error("*", e.to_string()))
    }
}
