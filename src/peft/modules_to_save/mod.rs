//! PEFT's `modules_to_save`: whole modules trained beside an adapter. PEFT
//! wraps each in a `ModulesToSaveWrapper` that keeps the frozen module and
//! trains a copy of it (`copy.deepcopy`), used in its place:
//!
//! ```text
//! modules_to_save = ["embed_tokens", "lm_head"]
//! x      = E'[input_ids]      E' (vocab, hidden), starts as model.embed_tokens.weight
//! logits = h·W'ᵀ              W' (vocab, hidden), starts as lm_head.weight
//! ```
//!
//! webpeft trains the two modules people list for new tokens,
//! `embed_tokens` and `lm_head`. Each copy is its own tensor, also on a
//! model whose head is its embedding (`tie_word_embeddings`), as PEFT's
//! deep copies are; with `ensure_weight_tying` on such a model there is one
//! copy, which the head uses too (PEFT's tied wrappers).
//!
//! Saved as PEFT saves them, by the module's own key:
//! `base_model.model.model.embed_tokens.weight`,
//! `base_model.model.lm_head.weight` (a shared copy under both).
//!
//! A sequence classifier (`task_type` SEQ_CLS, a reward model) has a
//! `score` head (num_labels, hidden) in place of `lm_head`, which PEFT
//! trains this way too: it appends `classifier` and `score` to the list
//! (`classifier` names no module of a Llama). A reward model has one
//! label, a classifier `num_labels`; the copy is saved as
//! `base_model.model.score.weight`. A
//! causal-LM checkpoint has no score to copy: transformers draws it,
//! N(0, initializer_range²), and so does webpeft, from the adapter's seed.
//!
//! The copies are f32 weights in row chunks that fit a binding, as the
//! model's own (a 128k-row vocabulary is over one). [`hooks`] puts them in
//! the model's place ([`Hooks::embedding_table`], [`Hooks::head_weight`])
//! and adds their gradients at the embedding's and the head's backward
//! points.
//!
//! [`Hooks::embedding_table`]: crate::model::llama::hooks::Hooks::embedding_table
//! [`Hooks::head_weight`]: crate::model::llama::hooks::Hooks::head_weight

pub(crate) mod hooks;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Recorder, Tensor};
use crate::kernels::qmatmul::{ChunkData, QWeight};
use crate::model::Config;
use crate::peft::lora::config::OuterModule;
use crate::peft::module_names::suffix_match;
use crate::peft::TaskType;
use crate::quant::QuantFormat;
use crate::util::json::{brief, Fields};

/// The config field.
pub const FIELD: &str = "modules_to_save";

/// PEFT's key for a saved module's weight.
pub fn key(module: OuterModule) -> &'static str {
    match module {
        OuterModule::Embedding => "base_model.model.model.embed_tokens.weight",
        OuterModule::Head => "base_model.model.lm_head.weight",
    }
}

/// PEFT's key for the score head's copy (SEQ_CLS).
pub const SCORE_KEY: &str = "base_model.model.score.weight";

/// The entries PEFT appends under SEQ_CLS (`PeftModelForSequenceClassification`).
pub const CLASSIFIER_MODULES: [&str; 2] = ["classifier", "score"];

/// Whether the list names the score head (an entry `score`, or a suffix of it).
pub fn names_score(list: &[String]) -> bool {
    list.iter().any(|e| suffix_match("score", e))
}

/// Which module an entry of the list names (PEFT matches an entry against
/// a module name by equality or as a `.`-separated suffix).
fn module_of(entry: &str) -> Option<OuterModule> {
    crate::peft::lora::config::OUTER_MODULES.into_iter().find(|m| suffix_match(m.name(), entry))
}

/// The modules a list names, in model order, each once.
pub fn modules(list: &[String]) -> Vec<OuterModule> {
    crate::peft::lora::config::OUTER_MODULES
        .into_iter()
        .filter(|m| list.iter().any(|e| module_of(e) == Some(*m)))
        .collect()
}

/// `modules_to_save` of an adapter_config.json: `None` when absent, null or
/// empty; else entries that each name `embed_tokens` or `lm_head`.
pub(crate) fn parse(f: &Fields, task: TaskType) -> Result<Option<Vec<String>>> {
    match f.get(FIELD) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) if items.is_empty() => return Ok(None),
        Some(Value::Array(_)) => {}
        Some(v) => return Err(f.wrong(FIELD, "a list of module names or null", v)),
    }
    let list = f.strings(FIELD)?;
    check(&list, task)?;
    Ok(Some(list))
}

/// Every entry names `embed_tokens` or `lm_head`, or under SEQ_CLS
/// `score` or `classifier` (and then `score` is there, lm_head not).
pub fn check(list: &[String], task: TaskType) -> Result<()> {
    let classifier = |e: &String| CLASSIFIER_MODULES.iter().any(|m| suffix_match(m, e));
    if task == TaskType::SeqCls {
        if !names_score(list) {
            return Err(Error::AdapterConfig {
                field: FIELD.into(),
                detail: "a SEQ_CLS adapter trains its `score` head whole: the list must name `score`".into(),
            });
        }
        if modules(list).contains(&OuterModule::Head) {
            return Err(Error::AdapterConfig {
                field: FIELD.into(),
                detail: "lm_head under SEQ_CLS: a sequence classifier has a `score` head, no lm_head".into(),
            });
        }
    }
    for (i, entry) in list.iter().enumerate() {
        if task == TaskType::SeqCls && classifier(entry) {
            continue;
        }
        if module_of(entry).is_none() {
            return Err(Error::AdapterUnsupported {
                field: format!("{FIELD}[{i}]"),
                detail: format!(
                    "{}: webpeft trains embed_tokens and lm_head as whole modules (and a SEQ_CLS model's score), \
                     no other",
                    brief(&Value::String(entry.clone()))
                ),
            });
        }
    }
    Ok(())
}

/// The list PEFT keeps when `ensure_weight_tying` ties the head to the
/// embedding (`LoraModel._add_modules_to_save_to_tie`): the embedding's
/// name appended where that exact name is missing, then the first entry
/// naming `lm_head` taken out. Idempotent, so a folder PEFT saved reads back as it was.
pub fn tied_list(list: &[String]) -> Vec<String> {
    let mut out = list.to_vec();
    let embed = OuterModule::Embedding.name();
    if !out.iter().any(|e| e == embed) {
        out.push(embed.to_string());
    }
    if let Some(i) = out.iter().position(|e| module_of(e) == Some(OuterModule::Head)) {
        out.remove(i);
    }
    out
}

/// The keys a file holds for `list` on a model of `config`, each with the
/// copy it fills: a shared copy (`ensure_weight_tying` on a tied model) is
/// saved under the embedding's key and the head's.
pub fn file_keys(list: &[String], ensure_weight_tying: bool, config: &Config) -> Vec<(&'static str, OuterModule)> {
    if ensure_weight_tying && config.tie_word_embeddings && !modules(list).is_empty() {
        return vec![
            (key(OuterModule::Embedding), OuterModule::Embedding),
            (key(OuterModule::Head), OuterModule::Embedding),
        ];
    }
    modules(list).into_iter().map(|m| (key(m), m)).collect()
}

/// The trained copies on the GPU (or, as gradients and AdamW moments,
/// values of the same shapes).
#[derive(Clone, Debug)]
pub struct ModulesToSave {
    /// `model.embed_tokens`' copy (vocab, hidden) f32.
    pub embed: Option<QWeight>,
    /// `lm_head`'s copy (vocab, hidden) f32, where it has one of its own.
    pub head: Option<QWeight>,
    /// lm_head uses `embed` (ensure_weight_tying on a tied model).
    pub head_is_embed: bool,
    /// A sequence classifier's `score` copy (num_labels, hidden) f32 (SEQ_CLS).
    pub score: Option<QWeight>,
}

impl ModulesToSave {
    /// Zeros of the copies `list` names for a model of `config`, tied as
    /// `ensure_weight_tying` says where the model ties its head.
    /// `num_labels`: the rows of the score head, where the list names it.
    pub fn zeros(
        gpu: &Gpu,
        list: &[String],
        ensure_weight_tying: bool,
        config: &Config,
        num_labels: usize,
    ) -> Result<ModulesToSave> {
        let which = modules(list);
        let tie = ensure_weight_tying && config.tie_word_embeddings;
        let zeros = || QWeight::zeros(gpu, config.vocab_size, config.hidden_size, QuantFormat::F32);
        let has = |m| which.contains(&m);
        Ok(ModulesToSave {
            embed: (has(OuterModule::Embedding) || tie).then(zeros).transpose()?,
            head: (has(OuterModule::Head) && !tie).then(zeros).transpose()?,
            head_is_embed: tie,
            score: names_score(list)
                .then(|| QWeight::zeros(gpu, num_labels, config.hidden_size, QuantFormat::F32))
                .transpose()?,
        })
    }

    /// Zeros of the same shapes.
    pub fn zeros_like(&self, gpu: &Gpu) -> Result<ModulesToSave> {
        let z = |w: &QWeight| QWeight::zeros(gpu, w.rows, w.cols, QuantFormat::F32);
        Ok(ModulesToSave {
            embed: self.embed.as_ref().map(z).transpose()?,
            head: self.head.as_ref().map(z).transpose()?,
            head_is_embed: self.head_is_embed,
            score: self.score.as_ref().map(z).transpose()?,
        })
    }

    /// Sets every copy to the model's own weight, as PEFT's copies start.
    pub fn start_from_model(&self, gpu: &Gpu, model: &crate::model::Model) -> Result<()> {
        for (m, w) in self.copies() {
            let own = match m {
                OuterModule::Embedding => model.embed_tokens.f32_copy(gpu)?,
                OuterModule::Head => model.lm_head.f32_copy(gpu)?,
            };
            let mut rec = Recorder::new(gpu);
            for (to, from) in w.chunks.iter().zip(&own.chunks) {
                if let (ChunkData::F32(to), ChunkData::F32(from)) = (&to.data, &from.data) {
                    if to.shape() != from.shape() {
                        return Err(Error::shape(
                            FIELD,
                            format!("{} copy {:?} from {:?}", m.name(), to.shape(), from.shape()),
                        ));
                    }
                    rec.copy(from, 0, to, 0, to.numel() as u64 * 4)?;
                }
            }
            rec.submit()?;
        }
        // A classifier checkpoint's own score head, as PEFT's copy starts (a causal LM has none: drawn).
        if let (Some(to), Some(from)) = (&self.score, &model.score) {
            if (to.rows, to.cols) != (from.rows, from.cols) {
                return Err(Error::shape(
                    FIELD,
                    format!(
                        "score copy ({}, {}): the model's score head is ({}, {}), its num_labels {}",
                        to.rows, to.cols, from.rows, from.cols, from.rows
                    ),
                ));
            }
            let (ChunkData::F32(t), ChunkData::F32(f)) = (&to.chunks[0].data, &from.chunks[0].data) else {
                return Err(Error::invalid(FIELD, "score weights are f32"));
            };
            let mut rec = Recorder::new(gpu);
            rec.copy(f, 0, t, 0, t.numel() as u64 * 4)?;
            rec.submit()?;
        }
        Ok(())
    }

    /// The copies with the module each stands for, in model order.
    pub fn copies(&self) -> impl Iterator<Item = (OuterModule, &QWeight)> {
        [(OuterModule::Embedding, &self.embed), (OuterModule::Head, &self.head)]
            .into_iter()
            .filter_map(|(m, w)| w.as_ref().map(|w| (m, w)))
    }

    /// The weight the head uses, where it is trained.
    pub fn head_weight(&self) -> Option<&QWeight> {
        match self.head_is_embed {
            true => self.embed.as_ref(),
            false => self.head.as_ref(),
        }
    }

    /// Every chunk with a key: the module's own key for a copy held in one
    /// chunk, `…weight#c` for chunk c of a larger one (checkpoints, AdamW).
    pub fn tensors(&self) -> Vec<(String, &Tensor)> {
        let mut out = Vec::new();
        for (m, w) in self.copies() {
            for (c, chunk) in w.chunks.iter().enumerate() {
                let ChunkData::F32(t) = &chunk.data else { continue };
                let name = if w.chunks.len() == 1 { key(m).to_string() } else { format!("{}#{c}", key(m)) };
                out.push((name, t));
            }
        }
        if let Some(ChunkData::F32(t)) = self.score.as_ref().and_then(|w| w.chunks.first()).map(|c| &c.data) {
            out.push((SCORE_KEY.to_string(), t));
        }
        out
    }

    /// The keys the file holds, with the copy saved under each (a shared
    /// copy under the embedding's key and the head's).
    pub fn saved(&self) -> Vec<(&'static str, &QWeight)> {
        let mut out: Vec<_> = self.copies().map(|(m, w)| (key(m), w)).collect();
        if let (true, Some(e)) = (self.head_is_embed, &self.embed) {
            out.push((key(OuterModule::Head), e));
        }
        if let Some(s) = &self.score {
            out.push((SCORE_KEY, s));
        }
        out
    }

    /// Writes the score copy's (num_labels·hidden) values.
    pub fn write_score(&self, gpu: &Gpu, values: &[f32]) -> Result<()> {
        let Some(w) = &self.score else {
            return Err(Error::invalid(FIELD, "score has no trained copy here (task_type is not SEQ_CLS)"));
        };
        match w.chunks.first().map(|c| &c.data) {
            Some(ChunkData::F32(t)) if t.numel() == values.len() => t.write(gpu, values),
            _ => Err(Error::AdapterTensor {
                tensor: SCORE_KEY.into(),
                file: crate::peft::ADAPTER_WEIGHTS_FILE.into(),
                detail: format!("{} values, expected ({}, {})", values.len(), w.rows, w.cols),
            }),
        }
    }

    /// Writes `values` ((vocab·hidden) row-major, as the file holds it) into
    /// the copy of `module`.
    pub fn write(&self, gpu: &Gpu, module: OuterModule, values: &[f32]) -> Result<()> {
        let w = match module {
            OuterModule::Embedding => self.embed.as_ref(),
            OuterModule::Head => self.head.as_ref(),
        };
        let Some(w) = w else {
            return Err(Error::invalid(FIELD, format!("{} has no trained copy here", module.name())));
        };
        if values.len() != w.rows * w.cols {
            return Err(Error::AdapterTensor {
                tensor: key(module).into(),
                file: crate::peft::ADAPTER_WEIGHTS_FILE.into(),
                detail: format!("{} values, expected ({}, {})", values.len(), w.rows, w.cols),
            });
        }
        for chunk in &w.chunks {
            if let ChunkData::F32(t) = &chunk.data {
                t.write(gpu, &values[chunk.row_start * w.cols..(chunk.row_start + chunk.rows) * w.cols])?;
            }
        }
        Ok(())
    }
}
