//! `adapter_model.safetensors` of a PEFT (IA)³ adapter: per targeted Linear,
//! `base_model.model.<module>.ia3_l`, (1, in) for a feed-forward module and
//! (out, 1) otherwise. Loaded as f32 from F32, F16 or BF16 and checked against
//! the [`Ia3Config`] and the model [`Config`]; written as f32 with PEFT's keys
//! and `{"format":"pt"}`.

use std::collections::{BTreeMap, HashMap};

use ::safetensors::tensor::TensorView;
use ::safetensors::Dtype;

use super::config::{Ia3Config, Ia3Module};
use crate::model::safetensors::SafetensorsFile;
use crate::model::source::ModelFiles;
use crate::model::Config;
use crate::peft::ADAPTER_WEIGHTS_FILE;
use crate::util::rng::Rng;
use crate::{Error, Result};

/// `base_model.model.<module>.ia3_l`.
pub fn key(module: &Ia3Module) -> String {
    format!("base_model.model.{}.ia3_l", module.name())
}

fn tensor_error(tensor: &str, file: &str, detail: impl Into<String>) -> Error {
    Error::AdapterTensor { tensor: tensor.to_string(), file: file.to_string(), detail: detail.into() }
}

/// Every vector of one adapter, in model order, on the CPU.
#[derive(Debug, Clone, PartialEq)]
pub struct Ia3Weights {
    pub vectors: Vec<(Ia3Module, Vec<f32>)>,
}

impl Ia3Weights {
    /// Fresh vectors as PEFT makes them: ones (`init_ia3_weights`), else N(0, 1).
    pub fn init(ia3: &Ia3Config, config: &Config, rng: &mut Rng) -> Result<Ia3Weights> {
        let vectors = ia3
            .modules(config)?
            .into_iter()
            .map(|m| {
                let n = m.shape(config).iter().product();
                let v = if ia3.init_ia3_weights { vec![1.0; n] } else { rng.normal_vec(n, 1.0) };
                (m, v)
            })
            .collect();
        Ok(Ia3Weights { vectors })
    }

    /// Reads `adapter_model.safetensors` from an adapter folder: exactly the
    /// keys of [`Ia3Config::modules`], each of PEFT's shape, F32, F16 or BF16.
    pub async fn load<F: ModelFiles>(files: &F, ia3: &Ia3Config, config: &Config) -> Result<Ia3Weights> {
        let file = SafetensorsFile::open(files.open(ADAPTER_WEIGHTS_FILE).await?).await?;
        let fname = file.name().to_string();
        let modules = ia3.modules(config)?;
        let expected: BTreeMap<String, Vec<usize>> =
            modules.iter().map(|m| (key(m), m.shape(config).to_vec())).collect();
        for t in file.tensors() {
            if !expected.contains_key(&t.name) {
                let hint = if t.name.contains(".default.") { " (saved keys have no `.default.`)" } else { "" };
                return Err(tensor_error(&t.name, &fname, format!("unexpected tensor in an (IA)³ adapter{hint}")));
            }
        }
        for (k, shape) in &expected {
            let Some(info) = file.get(k) else {
                return Err(tensor_error(k, &fname, "missing: adapter_config.json targets this module"));
            };
            if &info.shape != shape {
                return Err(tensor_error(
                    k,
                    &fname,
                    format!(
                        "shape {:?}, expected {shape:?} (feedforward_modules decides (1, in) or (out, 1))",
                        info.shape
                    ),
                ));
            }
            if !matches!(info.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
                return Err(tensor_error(k, &fname, format!("dtype {}, expected F32, F16 or BF16", info.dtype)));
            }
        }
        let mut vectors = Vec::with_capacity(modules.len());
        for m in modules {
            vectors.push((m, file.read_f32(&key(&m)).await?));
        }
        Ok(Ia3Weights { vectors })
    }

    /// The vectors as PEFT's `adapter_model.safetensors`.
    pub fn to_safetensors_bytes(&self, config: &Config) -> Result<Vec<u8>> {
        let file_error = |k: &str, detail: String| tensor_error(k, ADAPTER_WEIGHTS_FILE, detail);
        let data: Vec<(String, Vec<usize>, &[u8])> = self
            .vectors
            .iter()
            .map(|(m, v)| (key(m), m.shape(config).to_vec(), bytemuck::cast_slice::<f32, u8>(v)))
            .collect();
        let views = data
            .iter()
            .map(|(k, shape, bytes)| {
                TensorView::new(Dtype::F32, shape.clone(), bytes)
                    .map(|v| (k.clone(), v))
                    .map_err(|e| file_error(k, e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
        ::safetensors::serialize(views, Some(metadata)).map_err(|e| file_error("*", e.to_string()))
    }
}
