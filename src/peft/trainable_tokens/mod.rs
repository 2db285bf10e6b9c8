//! PEFT's trainable tokens: `trainable_token_indices` in a LoRA config
//! trains those ids' rows of `embed_tokens` beside the LoRA, as PEFT's
//! `TrainableTokensWrapper` does (`tuners/trainable_tokens/layer.py`):
//!
//! ```text
//! W' = embed_tokens.weight.index_copy(0, indices, delta)    delta (k, D), trained
//! x  = W'[input_ids]
//! logits = lm_head(h) with lm_head = W' where the model ties them (tie_word_embeddings)
//! ```
//!
//! delta starts as the embedding's own rows (PEFT's `init_weights=True`),
//! and is saved as one tensor,
//! `base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta`
//! (k, D), in the adapter's `adapter_model.safetensors`. An untied
//! `lm_head` is left as it is, as PEFT leaves it, unless the dict form names
//! it too (`{"embed_tokens": [...], "lm_head": [...]}`): then those ids'
//! rows of the head are trained as well, rows of their own saved under
//! [`HEAD_DELTA_KEY`].
//!
//! The same rows are PEFT's TRAINABLE_TOKENS method by themselves
//! ([`TrainableTokensAdapter`], [`TrainableTokensConfig`]), saved under
//! `…embed_tokens.trainable_tokens_delta` (and `…lm_head.…` when tied).
//!
//! The kernels are `shaders/token_rows.wgsl` ([`crate::kernels::token_rows`]);
//! [`hooks`] wires them to the model's embedding and head points.

pub mod adapter;
pub mod config;
pub(crate) mod hooks;
pub mod merge;

pub use adapter::TrainableTokensAdapter;
pub use config::TrainableTokensConfig;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Recorder, Tensor};
use crate::kernels::token_rows::TokenRows;
use crate::model::Config;
use crate::peft::module_names::suffix_match;
use crate::util::json::{brief, Fields};

/// The key PEFT saves the rows under.
pub const DELTA_KEY: &str = "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta";
/// The key of an untied `lm_head`'s own trainable rows (the dict form's `"lm_head"`).
pub const HEAD_DELTA_KEY: &str = "base_model.model.lm_head.token_adapter.trainable_tokens_delta";

/// The rows on the CPU, as a file holds them: (k, D) row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenWeights {
    pub shape: [usize; 2],
    pub values: Vec<f32>,
}

/// The trainable rows on the GPU (or, as gradients and AdamW moments, values
/// of the same shapes).
#[derive(Clone, Debug)]
pub struct TrainableTokens {
    /// The ids, in the config's order: row j of `delta` is id `indices[j]`.
    pub indices: Vec<u32>,
    /// (k, D) f32.
    pub delta: Tensor,
    /// (k) u32, the ids on the GPU.
    indices_gpu: Tensor,
    /// (vocab) i32: each id's row, or −1.
    slots: Tensor,
    /// Whether these ids' columns of the logits come from the rows: the
    /// head is the embedding (`tie_word_embeddings`), or the rows are an
    /// untied head's own.
    pub in_head: bool,
}

impl TrainableTokens {
    /// Rows `values` (k·D, row-major) for `indices` of a model of `config`,
    /// checked: every id below vocab_size, none twice.
    pub fn upload(gpu: &Gpu, indices: &[u32], values: &[f32], config: &Config) -> Result<TrainableTokens> {
        check_indices(indices, config.vocab_size)?;
        let (k, d) = (indices.len(), config.hidden_size);
        if values.len() != k * d {
            return Err(Error::AdapterTensor {
                tensor: DELTA_KEY.into(),
                file: crate::peft::ADAPTER_WEIGHTS_FILE.into(),
                detail: format!("{} values, expected {k} rows of hidden_size {d}", values.len()),
            });
        }
        let mut slots = vec![-1i32; config.vocab_size];
        for (j, &id) in indices.iter().enumerate() {
            slots[id as usize] = j as i32;
        }
        Ok(TrainableTokens {
            indices: indices.to_vec(),
            delta: Tensor::from_slice(gpu, &[k, d], values)?,
            indices_gpu: Tensor::from_slice(gpu, &[k], indices)?,
            slots: Tensor::from_slice(gpu, &[config.vocab_size], &slots)?,
            in_head: config.tie_word_embeddings,
        })
    }

    /// Rows of an untied `lm_head` (k·D) for `indices`: the head's columns
    /// of those ids come from them, the embedding is left alone.
    pub fn upload_head(gpu: &Gpu, indices: &[u32], values: &[f32], config: &Config) -> Result<TrainableTokens> {
        if config.tie_word_embeddings {
            return Err(Error::AdapterConfig {
                field: "trainable_token_indices.lm_head".into(),
                detail: "on this model lm_head is the embedding: list the ids under embed_tokens, whose rows the head \
                         shares"
                    .into(),
            });
        }
        Ok(TrainableTokens { in_head: true, ..Self::upload(gpu, indices, values, config)? })
    }

    /// Zeros of the same shape (gradients, AdamW moments), sharing the ids.
    pub fn zeros_like(&self, gpu: &Gpu) -> Result<TrainableTokens> {
        Ok(TrainableTokens { delta: Tensor::zeros(gpu, self.delta.shape(), DType::F32)?, ..self.clone() })
    }

    /// Sets the rows to `model`'s embedding rows of the ids, as PEFT starts them.
    pub fn start_from_embedding(&self, gpu: &Gpu, model: &crate::model::Model) -> Result<()> {
        self.start_from(gpu, &model.embed_tokens)
    }

    /// Sets the rows to `model`'s lm_head rows of the ids (an untied head's own rows).
    pub fn start_from_head(&self, gpu: &Gpu, model: &crate::model::Model) -> Result<()> {
        self.start_from(gpu, &model.lm_head)
    }

    fn start_from(&self, gpu: &Gpu, table: &crate::kernels::qmatmul::QWeight) -> Result<()> {
        let mut rec = Recorder::new(gpu);
        let rows = crate::kernels::embedding::embedding_weight(&mut rec, table, &self.indices_gpu)?; // (k, D)
        rec.copy(&rows, 0, &self.delta, 0, self.delta.numel() as u64 * 4)?;
        rec.submit()
    }

    /// The kernels' view: rows, ids and the id → row map.
    pub fn rows(&self) -> TokenRows<'_> {
        TokenRows { delta: &self.delta, indices: &self.indices_gpu, slots: &self.slots }
    }
}

/// Every id below `vocab`, none twice, at least one.
pub fn check_indices(indices: &[u32], vocab: usize) -> Result<()> {
    let field = |i: usize| format!("trainable_token_indices[{i}]");
    if indices.is_empty() {
        return Err(Error::AdapterConfig {
            field: "trainable_token_indices".into(),
            detail: "an empty list trains no token (use null for none)".into(),
        });
    }
    for (i, &id) in indices.iter().enumerate() {
        if id as usize >= vocab {
            return Err(Error::AdapterConfig {
                field: field(i),
                detail: format!("token id {id} is not below the model's vocab_size {vocab}"),
            });
        }
        if let Some(first) = indices[..i].iter().position(|&other| other == id) {
            return Err(Error::AdapterConfig {
                field: field(i),
                detail: format!("token id {id} is listed twice (first at [{first}]): each id has one trainable row"),
            });
        }
    }
    Ok(())
}

/// The ids of `trainable_token_indices`: the embedding's, and an untied
/// head's own (the dict form's `"lm_head"`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenIndices {
    pub embed: Option<Vec<u32>>,
    pub head: Option<Vec<u32>>,
}

/// `trainable_token_indices` of an adapter_config.json: a list of ids (for
/// `embed_tokens`), or a dict `{"embed_tokens": [...], "lm_head": [...]}`
/// with either key or both; `None`s when absent or null.
pub(crate) fn parse_indices(f: &Fields) -> Result<TokenIndices> {
    const KEY: &str = "trainable_token_indices";
    let unsupported = |detail: String| Error::AdapterUnsupported { field: KEY.into(), detail };
    let named = suffix_match;
    let out = match f.get(KEY) {
        None | Some(Value::Null) => return Ok(TokenIndices::default()),
        Some(Value::Array(_)) => TokenIndices { embed: Some(f.tokens(KEY)?), head: None },
        Some(v @ Value::Object(m)) => {
            let field = |field: &str, detail| Error::AdapterConfig { field: field.into(), detail };
            let entries = Fields::of(m, "trainable_token_indices.", field);
            let mut out = TokenIndices::default();
            for (name, ids) in m {
                let slot = match name.as_str() {
                    n if named(n, "embed_tokens") && out.embed.is_none() => &mut out.embed,
                    n if named(n, "lm_head") && out.head.is_none() => &mut out.head,
                    _ => {
                        return Err(unsupported(format!(
                            "{}: webpeft trains token rows of embed_tokens and lm_head ({{\"embed_tokens\": [...], \"lm_head\": [...]}})",
                            brief(v)
                        )))
                    }
                };
                if !ids.is_array() {
                    return Err(entries.wrong(name, "a list of token ids", ids));
                }
                *slot = Some(entries.tokens(name)?);
            }
            out
        }
        Some(v) => return Err(f.wrong(KEY, "a list of token ids or {\"embed_tokens\": [...]}", v)),
    };
    for ids in [&out.embed, &out.head].into_iter().flatten() {
        check_indices(ids, usize::MAX)?;
    }
    Ok(out)
}
