//! A Hugging Face checkpoint: `model.safetensors`, or shards listed by
//! `model.safetensors.index.json` (`{"weight_map": {tensor: shard file}}`),
//! checked against what a [`Config`] expects and read one tensor at a time.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use ::safetensors::Dtype;
use serde_json::Value;

use super::config::Config;
use super::quantized;
use super::safetensors::{SafetensorsFile, TensorInfo};
use super::source::{check_file_name, file_error, ByteSource, ModelFiles};
use crate::{Error, Result};

/// The single-file checkpoint's name.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The shard index's name; when present it wins over [`SINGLE_FILE`].
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// The tensors of every shard of one model, by name.
#[derive(Debug)]
pub struct Checkpoint<S> {
    location: String,
    shards: Vec<SafetensorsFile<S>>,
    /// Tensor name → index into `shards`.
    by_name: BTreeMap<String, usize>,
}

impl<S: ByteSource> Checkpoint<S> {
    /// Opens the checkpoint of a model folder: the shards named by
    /// `model.safetensors.index.json` if it exists, else `model.safetensors`.
    /// Reads only headers.
    pub async fn open<F: ModelFiles<Source = S>>(files: &F) -> Result<Self> {
        if let Some(index) = files.try_open(INDEX_FILE).await? {
            return Self::open_sharded(files, index).await;
        }
        match files.try_open(SINGLE_FILE).await? {
            Some(single) => Self::from_shards(files.location(), vec![SafetensorsFile::open(single).await?]),
            None => {
                Err(file_error(files.location(), format!("no {SINGLE_FILE} and no {INDEX_FILE} in the model folder")))
            }
        }
    }

    /// [`open`](Self::open), then [`check`](Self::check) against `config`.
    pub async fn open_for<F: ModelFiles<Source = S>>(files: &F, config: &Config) -> Result<Self> {
        let checkpoint = Self::open(files).await?;
        checkpoint.check(config)?;
        Ok(checkpoint)
    }

    /// Reads the index, opens each shard it names once, and checks that the
    /// index and the shards' headers agree tensor for tensor.
    async fn open_sharded<F: ModelFiles<Source = S>>(files: &F, index: S) -> Result<Self> {
        let bytes = index.read_all().await?;
        let json: Value =
            serde_json::from_slice(&bytes).map_err(|e| file_error(INDEX_FILE, format!("not valid JSON: {e}")))?;
        let Some(Value::Object(map)) = json.get("weight_map") else {
            return Err(file_error(INDEX_FILE, "has no `weight_map` object"));
        };
        let mut weight_map = BTreeMap::new();
        for (tensor, shard) in map {
            let shard = shard.as_str().ok_or_else(|| {
                file_error(INDEX_FILE, format!("weight_map[\"{tensor}\"] must be a file name, got {shard}"))
            })?;
            check_file_name(shard)?;
            weight_map.insert(tensor.as_str(), shard);
        }
        let names: BTreeSet<&str> = weight_map.values().copied().collect();
        let mut shards = Vec::with_capacity(names.len());
        for name in names {
            shards.push(SafetensorsFile::open(files.open(name).await?).await?);
        }
        let checkpoint = Self::from_shards(files.location(), shards)?;

        for (&tensor, &shard) in &weight_map {
            if checkpoint.shard_name(tensor) != Some(shard) {
                return Err(Error::Checkpoint {
                    tensor: tensor.to_string(),
                    file: shard.to_string(),
                    detail: format!("{INDEX_FILE} puts it in this shard, but the shard has no such tensor"),
                });
            }
        }
        if let Some((tensor, &i)) = checkpoint.by_name.iter().find(|(t, _)| !weight_map.contains_key(t.as_str())) {
            return Err(Error::Checkpoint {
                tensor: tensor.clone(),
                file: checkpoint.shards[i].name().to_string(),
                detail: format!("in this shard but not listed in {INDEX_FILE}"),
            });
        }
        Ok(checkpoint)
    }

    /// A checkpoint made of already opened files (one, or several shards).
    /// A tensor in two files is an error. `location` names the model in messages.
    pub fn from_shards(location: &str, shards: Vec<SafetensorsFile<S>>) -> Result<Self> {
        let mut by_name = BTreeMap::new();
        for (i, shard) in shards.iter().enumerate() {
            for t in shard.tensors() {
                if let Some(j) = by_name.insert(t.name.clone(), i) {
                    return Err(Error::Checkpoint {
                        tensor: t.name.clone(),
                        file: shard.name().to_string(),
                        detail: format!("also in {}", shards[j].name()),
                    });
                }
            }
        }
        Ok(Checkpoint { location: location.to_string(), shards, by_name })
    }

    /// Where the model is (folder, URL, "memory").
    pub fn location(&self) -> &str {
        &self.location
    }

    pub fn shards(&self) -> &[SafetensorsFile<S>] {
        &self.shards
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).and_then(|&i| self.shards[i].get(name))
    }

    /// The file that holds `name`.
    pub fn shard_name(&self, name: &str) -> Option<&str> {
        self.by_name.get(name).map(|&i| self.shards[i].name())
    }

    fn shard(&self, name: &str) -> Result<&SafetensorsFile<S>> {
        self.by_name.get(name).map(|&i| &self.shards[i]).ok_or_else(|| Error::Checkpoint {
            tensor: name.to_string(),
            file: self.location.clone(),
            detail: "not in the checkpoint".into(),
        })
    }

    /// The tensor `name` as f32 (see [`SafetensorsFile::read_f32`]).
    pub async fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        self.shard(name)?.read_f32(name).await
    }

    /// The tensor `name`'s raw bytes.
    pub async fn read_bytes(&self, name: &str) -> Result<Vec<u8>> {
        self.shard(name)?.read_bytes(name).await
    }

    /// Checks that the checkpoint holds exactly the tensors `config` expects
    /// ([`Config::tensor_names`]), each with its shape and a float dtype
    /// (F32, F16, BF16). Ignored: RoPE `inv_freq` buffers that old exports
    /// saved, and a `lm_head.weight` of the right shape in a tied model
    /// (transformers ties it to the embedding and never reads it).
    ///
    /// In webpeft's pre-quantized layout (see [`super::quantized`]) the block
    /// Linear weights are expected in their packed form instead.
    pub fn check(&self, config: &Config) -> Result<()> {
        let packed = quantized::stored_format(self)?;
        let bnb = super::bnb::is_bnb_4bit(self);
        let mut expected_names: HashSet<String> = HashSet::new();
        for spec in config.tensor_names() {
            if bnb && quantized::is_packed(self, &spec.name, packed) {
                // Its parts are checked as they are read (bnb::read_4bit).
                expected_names.extend(super::bnb::stored_names(self, &spec.name));
                continue;
            }
            if let Some(format) = packed.filter(|_| quantized::is_block_linear(&spec.name)) {
                for (name, dtype, shape) in quantized::packed_tensors(&spec.name, spec.shape[0], spec.shape[1], format)
                {
                    let info = self.get(&name).ok_or_else(|| Error::Checkpoint {
                        tensor: name.clone(),
                        file: self.location.clone(),
                        detail: format!("missing: the {} layout stores {} this way", format.name(), spec.name),
                    })?;
                    if info.shape != shape || info.dtype != dtype {
                        return Err(self.tensor_error(
                            info,
                            format!(
                                "{} {:?}, but the {} layout needs {dtype} {shape:?}",
                                info.dtype,
                                info.shape,
                                format.name()
                            ),
                        ));
                    }
                    expected_names.insert(name);
                }
                continue;
            }
            let Some(info) = self.get(&spec.name) else {
                return Err(Error::Checkpoint {
                    tensor: spec.name.clone(),
                    file: self.location.clone(),
                    detail: format!(
                        "missing: a {} model with this config needs it, shape {:?}",
                        config.model_type.name(),
                        spec.shape
                    ),
                });
            };
            self.check_tensor(info, &spec.shape)?;
            expected_names.insert(spec.name);
        }

        for name in self.names().filter(|n| !expected_names.contains(*n)) {
            let info = self.get(name).expect("listed tensors exist");
            if name.ends_with("rotary_emb.inv_freq") {
                continue;
            }
            if name == "lm_head.weight" && config.tie_word_embeddings {
                self.check_tensor(info, &[config.vocab_size, config.hidden_size])?;
                continue;
            }
            return Err(self.tensor_error(
                info,
                format!("unexpected: not part of a {} model with this config", config.model_type.name()),
            ));
        }
        Ok(())
    }

    fn check_tensor(&self, info: &TensorInfo, shape: &[usize]) -> Result<()> {
        if info.shape != shape {
            return Err(self.tensor_error(info, format!("shape {:?}, but this config needs {shape:?}", info.shape)));
        }
        if !matches!(info.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            return Err(self.tensor_error(
                info,
                format!("dtype {} is not supported for model weights (expected F32, F16 or BF16)", info.dtype),
            ));
        }
        Ok(())
    }

    fn tensor_error(&self, info: &TensorInfo, detail: String) -> Error {
        Error::Checkpoint {
            tensor: info.name.clone(),
            file: self.shard_name(&info.name).unwrap_or(&self.location).to_string(),
            detail,
        }
    }
}
