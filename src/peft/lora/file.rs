//! `adapter_model.safetensors` of a PEFT LoRA adapter: per targeted Linear,
//! `base_model.model.<module>.lora_A.weight` (r, in) and `….lora_B.weight`
//! (out, r), and with DoRA `….lora_magnitude_vector` (out) (no `.weight`). Loaded as f32 from F32, F16 or BF16 and checked against the
//! model [`Config`]; written as f32 with PEFT's key names and `{"format":"pt"}`.

use std::collections::{BTreeMap, HashMap};

use ::safetensors::tensor::TensorView;
use ::safetensors::Dtype;

use super::config::{module_name, LoraConfig, OuterModule, LORA_MODULES};
use crate::model::safetensors::SafetensorsFile;
use crate::model::source::ModelFiles;
use crate::model::Config;
use crate::peft::modules_to_save;
use crate::peft::trainable_tokens::{TokenWeights, DELTA_KEY, HEAD_DELTA_KEY};
use crate::{Error, Result};

/// The config file of an adapter folder.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// The weights file of a PEFT adapter folder.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// Prefix PEFT puts before module names in saved keys.
const KEY_PREFIX: &str = "base_model.model.";

/// One adapted Linear: its module name, the base weight's shape (out, in)
/// and its LoRA rank (`r`, or `rank_pattern`'s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoraModule {
    pub name: String,
    pub in_features: usize,
    pub out_features: usize,
    pub r: usize,
}

impl LoraModule {
    /// `base_model.model.<name>.lora_A.weight` (the embedding's: `….lora_embedding_A`).
    pub fn key_a(&self) -> String {
        key_a(&self.name)
    }
    /// `base_model.model.<name>.lora_B.weight` (the embedding's: `….lora_embedding_B`).
    pub fn key_b(&self) -> String {
        key_b(&self.name)
    }
    /// `base_model.model.<name>.lora_magnitude_vector` (DoRA).
    pub fn key_m(&self) -> String {
        format!("{KEY_PREFIX}{}.lora_magnitude_vector", self.name)
    }
}

/// A's key for module `name`, as PEFT saves it.
pub fn key_a(name: &str) -> String {
    match name == OuterModule::Embedding.name() {
        true => format!("{KEY_PREFIX}{name}.lora_embedding_A"),
        false => format!("{KEY_PREFIX}{name}.lora_A.weight"),
    }
}

/// B's key for module `name`, as PEFT saves it.
pub fn key_b(name: &str) -> String {
    match name == OuterModule::Embedding.name() {
        true => format!("{KEY_PREFIX}{name}.lora_embedding_B"),
        false => format!("{KEY_PREFIX}{name}.lora_B.weight"),
    }
}

/// The modules `lora` adapts in a model of `config`, in model order, with
/// their shapes (see [`LoraConfig::targets`]), then the embedding and the
/// head where it names them (the embedding's "in" is the vocabulary: A is
/// (r, vocab), B (hidden, r)).
pub fn lora_modules(lora: &LoraConfig, config: &Config) -> Result<Vec<LoraModule>> {
    let (d, i, q, kv) = (config.hidden_size, config.intermediate_size, config.q_dim(), config.kv_dim());
    let shape = |proj: &str| match proj {
        "q_proj" => (q, d),
        "k_proj" | "v_proj" => (kv, d),
        "o_proj" => (d, q),
        "gate_proj" | "up_proj" => (i, d),
        "down_proj" => (d, i),
        _ => unreachable!("not a LoRA module: {proj}"),
    };
    let targets = lora.targets(config)?;
    let outer = lora.outer_targets().into_iter().map(|m| {
        let (out_features, in_features) = match m {
            OuterModule::Embedding => (d, config.vocab_size),
            OuterModule::Head => (config.vocab_size, d),
        };
        LoraModule { name: m.name().to_string(), in_features, out_features, r: lora.rank_of(m.name()) }
    });
    Ok(targets
        .into_iter()
        .map(|name| {
            let proj =
                LORA_MODULES.iter().find(|p| name.ends_with(&format!(".{p}"))).expect("targets are LoRA modules");
            let (out_features, in_features) = shape(proj);
            debug_assert!(super::config::layer_of(&name).is_some_and(|l| module_name(l, proj) == name));
            LoraModule { r: lora.rank_of(&name), name, in_features, out_features }
        })
        .chain(outer)
        .collect())
}

/// One module's LoRA factors, row-major f32.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraPair {
    /// The module's rank.
    pub r: usize,
    /// lora_A: (r, in).
    pub a: Vec<f32>,
    /// lora_B: (out, r).
    pub b: Vec<f32>,
    /// lora_magnitude_vector: (out), DoRA only.
    pub m: Option<Vec<f32>>,
    pub in_features: usize,
    pub out_features: usize,
}

/// The LoRA weights of one adapter: module name → (A, B).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraWeights {
    /// Keyed by module name (`model.layers.0.self_attn.q_proj`).
    pub modules: BTreeMap<String, LoraPair>,
    /// The trainable token rows (k, hidden) where the config has
    /// `trainable_token_indices`.
    pub tokens: Option<TokenWeights>,
    /// An untied lm_head's own trainable rows (the dict form's `"lm_head"`).
    pub head_tokens: Option<TokenWeights>,
    /// `modules_to_save`'s copies, (vocab, hidden) and the values row-major,
    /// by their key in the file (`base_model.model.lm_head.weight`); empty
    /// for fresh weights, whose copies start from the model's.
    pub saved: BTreeMap<String, ([usize; 2], Vec<f32>)>,
}

fn tensor_error(tensor: &str, file: &str, detail: impl Into<String>) -> Error {
    Error::AdapterTensor { tensor: tensor.to_string(), file: file.to_string(), detail: detail.into() }
}

impl LoraWeights {
    /// Zero A and B for every module `lora` adapts in `config` (to be filled
    /// by an initializer).
    pub fn zeros(lora: &LoraConfig, config: &Config) -> Result<LoraWeights> {
        let modules = lora_modules(lora, config)?
            .into_iter()
            .map(|m| {
                let pair = LoraPair {
                    r: m.r,
                    a: vec![0.0; m.r * m.in_features],
                    b: vec![0.0; m.out_features * m.r],
                    m: lora.use_dora.then(|| vec![0.0; m.out_features]),
                    in_features: m.in_features,
                    out_features: m.out_features,
                };
                (m.name, pair)
            })
            .collect();
        let zeros = |ids: &Vec<u32>| TokenWeights {
            shape: [ids.len(), config.hidden_size],
            values: vec![0.0; ids.len() * config.hidden_size],
        };
        let tokens = lora.trainable_token_indices.as_ref().map(zeros);
        let head_tokens = lora.trainable_head_token_indices.as_ref().map(zeros);
        Ok(LoraWeights { modules, tokens, head_tokens, saved: BTreeMap::new() })
    }

    /// Reads `adapter_model.safetensors` from an adapter folder and checks it
    /// against `lora` and the model `config`: exactly the keys of
    /// [`lora_modules`], each of shape (r, in) / (out, r), dtype F32, F16 or BF16.
    pub async fn load<F: ModelFiles>(files: &F, lora: &LoraConfig, config: &Config) -> Result<LoraWeights> {
        let source = files.open(ADAPTER_WEIGHTS_FILE).await?;
        let file = SafetensorsFile::open(source).await?;
        Self::read(&file, lora, config).await
    }

    /// [`load`](Self::load) from an opened safetensors file.
    pub async fn read<S: crate::model::ByteSource>(
        file: &SafetensorsFile<S>,
        lora: &LoraConfig,
        config: &Config,
    ) -> Result<LoraWeights> {
        let fname = file.name().to_string();
        let modules = lora_modules(lora, config)?;
        let mut expected: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for m in &modules {
            expected.insert(m.key_a(), vec![m.r, m.in_features]);
            expected.insert(m.key_b(), vec![m.out_features, m.r]);
            if lora.use_dora {
                expected.insert(m.key_m(), vec![m.out_features]);
            }
        }
        if let Some(ids) = &lora.trainable_token_indices {
            expected.insert(DELTA_KEY.into(), vec![ids.len(), config.hidden_size]);
        }
        if let Some(ids) = &lora.trainable_head_token_indices {
            expected.insert(HEAD_DELTA_KEY.into(), vec![ids.len(), config.hidden_size]);
        }
        let saved_keys = match &lora.modules_to_save {
            Some(list) => modules_to_save::file_keys(list, lora.ensure_weight_tying, config),
            None => Vec::new(),
        };
        for (key, _) in &saved_keys {
            expected.insert(key.to_string(), vec![config.vocab_size, config.hidden_size]);
        }
        // A SEQ_CLS adapter's score head: (num_labels, hidden), its rows as many as the file's
        // (adapter_config.json does not say how many labels there are).
        let score = lora.modules_to_save.as_deref().is_some_and(modules_to_save::names_score);
        let labels = match file.get(modules_to_save::SCORE_KEY) {
            Some(info) if info.shape.len() == 2 && info.shape[0] > 0 => info.shape[0],
            _ => lora.num_labels,
        };
        if score {
            expected.insert(modules_to_save::SCORE_KEY.into(), vec![labels, config.hidden_size]);
        }
        // PEFT also saves the embedding's and the head's own weights where LoRA targets them
        // (`save_embedding_layers`): the base model's are the same unless its vocabulary was resized.
        let base_copies: Vec<String> =
            lora.outer_targets().iter().map(|m| format!("{KEY_PREFIX}{}.base_layer.weight", m.name())).collect();
        // Unexpected keys first (the whole file is checked before any data is read).
        for t in file.tensors() {
            if base_copies.contains(&t.name) {
                let want = [config.vocab_size, config.hidden_size];
                if t.shape != want {
                    return Err(tensor_error(
                        &t.name,
                        &fname,
                        format!("shape {:?}, the model's is {want:?}: a resized vocabulary is not supported", t.shape),
                    ));
                }
                continue; // the model's own weights are used
            }
            if !expected.contains_key(&t.name) {
                let hint = if t.name.contains(".default.") {
                    " (saved keys have no `.default.`)"
                } else if t.name.contains("lora_magnitude_vector") {
                    " (a DoRA tensor, but adapter_config.json has no `use_dora: true`)"
                } else if t.name == DELTA_KEY || t.name == HEAD_DELTA_KEY {
                    " (trainable token rows, but adapter_config.json's `trainable_token_indices` names no such module)"
                } else if [OuterModule::Embedding, OuterModule::Head].iter().any(|&m| t.name == modules_to_save::key(m))
                {
                    " (a whole module's weight, but adapter_config.json's `modules_to_save` does not name it)"
                } else if t.name == modules_to_save::SCORE_KEY {
                    " (a sequence classifier's score head, but adapter_config.json's `task_type` is not SEQ_CLS)"
                } else if t.name.contains("lora_") {
                    " (a LoRA tensor for a module adapter_config.json does not target)"
                } else {
                    ""
                };
                return Err(tensor_error(&t.name, &fname, format!("unexpected tensor in a LoRA adapter{hint}")));
            }
        }
        for (key, shape) in &expected {
            let Some(info) = file.get(key) else {
                let what = if key.ends_with(".lora_magnitude_vector") {
                    "missing: adapter_config.json has `use_dora: true` and targets this module"
                } else if key == DELTA_KEY || key == HEAD_DELTA_KEY {
                    "missing: adapter_config.json has `trainable_token_indices` for this module"
                } else if saved_keys.iter().any(|(k, _)| k == key) || key == modules_to_save::SCORE_KEY {
                    "missing: adapter_config.json's `modules_to_save` names this module"
                } else {
                    "missing: adapter_config.json targets this module"
                };
                return Err(tensor_error(key, &fname, what));
            };
            if &info.shape != shape {
                return Err(tensor_error(
                    key,
                    &fname,
                    format!(
                        "shape {:?}, expected {shape:?} for the config's r (or rank_pattern), trainable tokens \
                         and this model's config",
                        info.shape
                    ),
                ));
            }
            if !matches!(info.dtype, ::safetensors::Dtype::F32 | ::safetensors::Dtype::F16 | ::safetensors::Dtype::BF16)
            {
                return Err(tensor_error(key, &fname, format!("dtype {}, expected F32, F16 or BF16", info.dtype)));
            }
        }
        let mut out = BTreeMap::new();
        for m in modules {
            let a = file.read_f32(&m.key_a()).await?;
            let b = file.read_f32(&m.key_b()).await?;
            let mag = if lora.use_dora { Some(file.read_f32(&m.key_m()).await?) } else { None };
            let pair = LoraPair { r: m.r, a, b, m: mag, in_features: m.in_features, out_features: m.out_features };
            out.insert(m.name, pair);
        }
        let mut rows = Vec::new();
        for (ids, key) in
            [(&lora.trainable_token_indices, DELTA_KEY), (&lora.trainable_head_token_indices, HEAD_DELTA_KEY)]
        {
            rows.push(match ids {
                Some(ids) => {
                    Some(TokenWeights { shape: [ids.len(), config.hidden_size], values: file.read_f32(key).await? })
                }
                None => None,
            });
        }
        let (head_tokens, tokens) = (rows.pop().flatten(), rows.pop().flatten());
        let mut saved = BTreeMap::new();
        for (key, module) in saved_keys {
            if key == modules_to_save::key(module) {
                saved.insert(key.to_string(), ([config.vocab_size, config.hidden_size], file.read_f32(key).await?));
            }
        }
        if score {
            let key = modules_to_save::SCORE_KEY;
            saved.insert(key.to_string(), ([labels, config.hidden_size], file.read_f32(key).await?));
        }
        Ok(LoraWeights { modules: out, tokens, head_tokens, saved })
    }

    /// The weights as PEFT's `adapter_model.safetensors`: keys
    /// `base_model.model.<module>.lora_{A,B}.weight` (and DoRA's
    /// `….lora_magnitude_vector`, the trainable token rows'
    /// [`DELTA_KEY`]), f32, sorted,
    /// `__metadata__` `{"format":"pt"}`.
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>> {
        let mut tensors: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
        for (name, p) in &self.modules {
            let r = p.r;
            if p.a.len() != r * p.in_features
                || p.b.len() != p.out_features * r
                || p.m.as_ref().is_some_and(|m| m.len() != p.out_features)
            {
                return Err(Error::AdapterTensor {
                    tensor: name.clone(),
                    file: ADAPTER_WEIGHTS_FILE.into(),
                    detail: format!(
                        "lora_A/lora_B/lora_magnitude_vector lengths {}/{}/{:?} do not match r = {r} and out = {}",
                        p.a.len(),
                        p.b.len(),
                        p.m.as_ref().map(Vec::len),
                        p.out_features
                    ),
                });
            }
            let bytes = |v: &[f32]| bytemuck::cast_slice::<f32, u8>(v).to_vec();
            tensors.insert(key_a(name), (vec![r, p.in_features], bytes(&p.a)));
            tensors.insert(key_b(name), (vec![p.out_features, r], bytes(&p.b)));
            if let Some(m) = &p.m {
                tensors.insert(format!("{KEY_PREFIX}{name}.lora_magnitude_vector"), (vec![p.out_features], bytes(m)));
            }
        }
        for (t, key) in [(&self.tokens, DELTA_KEY), (&self.head_tokens, HEAD_DELTA_KEY)] {
            let Some(t) = t else { continue };
            if t.values.len() != t.shape[0] * t.shape[1] {
                return Err(Error::AdapterTensor {
                    tensor: key.into(),
                    file: ADAPTER_WEIGHTS_FILE.into(),
                    detail: format!("{} values for shape {:?}", t.values.len(), t.shape),
                });
            }
            tensors.insert(key.into(), (t.shape.to_vec(), bytemuck::cast_slice::<f32, u8>(&t.values).to_vec()));
        }
        for (key, (shape, values)) in &self.saved {
            if values.len() != shape[0] * shape[1] {
                let detail = format!("{} values for shape {shape:?}", values.len());
                return Err(Error::AdapterTensor { tensor: key.clone(), file: ADAPTER_WEIGHTS_FILE.into(), detail });
            }
            tensors.insert(key.clone(), (shape.to_vec(), bytemuck::cast_slice::<f32, u8>(values).to_vec()));
        }
        let views = tensors
            .iter()
            .map(|(key, (shape, data))| {
                TensorView::new(Dtype::F32, shape.clone(), data).map(|v| (key.clone(), v)).map_err(|e| {
                    Error::AdapterTensor {
                        tensor: key.clone(),
                        file: ADAPTER_WEIGHTS_FILE.into(),
                        detail: e.to_string(),
                    }
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
        ::safetensors::serialize(views, Some(metadata)).map_err(|e| Error::AdapterTensor {
            tensor: "*".into(),
            file: ADAPTER_WEIGHTS_FILE.into(),
            detail: e.to_string(),
        })
    }
}
