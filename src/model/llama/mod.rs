//! A Llama-family causal LM (Llama, Qwen2, Qwen3, Mistral, SmolLM) on the GPU:
//!
//! ```text
//! x      = model.embed_tokens[input_ids]                       (B, T, D)
//! x      = layer(x) for each of model.layers                   (see Block::forward)
//! logits = lm_head(model.norm(x))                              (B, T, V)
//! ```
//!
//! - [`block`]: the decoder layer, `h = x + attn(norm1(x)); out = h + mlp(norm2(h))`.
//! - [`hooks`]: where a PEFT method changes a layer (a Linear's output, a
//!   sub-layer's join with the residual stream); `peft/` implements them.
//! - [`weights`]: streaming the checkpoint onto the GPU, quantizing as it goes.
//! - [`rope`]: the RoPE tables.
//! - [`loss`]: the causal-LM loss.
//!
//! Every op records into the caller's [`Recorder`]; nothing is submitted or
//! read back until the caller says so ([`Model::logits_and_loss`] records one
//! step, submits once and reads back once).

pub mod block;
pub mod generate;
pub mod head;
pub mod hooks;
pub mod loss;
pub mod neftune;
pub mod rope;
pub(crate) mod rows;
pub mod sample;
pub mod score;
mod weights;

pub use weights::LoadProgress;

pub use block::{Attention, Block, Linear, Mlp, RmsNorm};
pub use generate::{GenerationChoices, GenerationConfig, KvCache};
pub use head::Head;
pub use hooks::{Hooks, LayerHooks, NoHooks, Proj, Saved, Sublayer};
pub use loss::{causal_lm_loss, shift_labels, shift_labels_after, CausalTargets, SftLoss, IGNORE_INDEX};
pub use neftune::EmbeddingNoise;
pub use rope::RopeTables;
pub use sample::{argmax, ban_bad_words, ban_seen_ngrams, penalize_seen, sample};

use self::rope::RopeCache;
use self::weights::Loader;
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Recorder, Tensor};
use crate::kernels::elementwise::add_uniform_noise;
use crate::kernels::embedding::embedding_weight;
use crate::kernels::qmatmul::{Chunk, ChunkData, QWeight};
use crate::model::config::{ModelHead, SCORE_WEIGHT};
use crate::model::source::ModelFiles;
use crate::model::{Checkpoint, Config};
use crate::quant::{ComputeDtype, FourBitOptions, QuantFormat};

/// What one layer's forward kept: everything its backward needs, or, with
/// gradient checkpointing, only its input (the backward recomputes the rest).
#[derive(Debug)]
enum LayerSaved {
    Full(Box<block::BlockSaved>),
    Input(Tensor),
}

/// What [`Model::forward_adapted`] keeps for [`Model::backward`].
#[derive(Debug)]
pub struct ModelSaved {
    layers: Vec<LayerSaved>,
    /// The last layer's output (B, T, D) and `model.norm`'s rstd (B·T).
    x: Tensor,
    rstd: Tensor,
    rope: RopeTables,
    /// Virtual tokens put before every row (prompt tuning), 0 for none.
    virtual_tokens: usize,
    /// The rows' ids (B·T) u32, for the embedding's backward point.
    ids: Tensor,
}

/// A loaded model: frozen weights on the GPU, in the checkpoint's names.
#[derive(Debug)]
pub struct Model {
    pub config: Config,
    /// How the blocks' Linear weights are stored.
    pub format: QuantFormat,
    /// `model.embed_tokens.weight` (V, D), f32, in row chunks that fit a binding.
    pub embed_tokens: QWeight,
    /// `model.layers`.
    pub layers: Vec<Block>,
    /// `model.norm` (D).
    pub norm: RmsNorm,
    /// `lm_head.weight` (V, D), f32. With `tie_word_embeddings` it is
    /// `embed_tokens` itself: the same chunk buffers, no second copy. A
    /// sequence classifier has none: [`Model::head`] refuses it (this field
    /// then holds the embedding's buffers, read by nothing).
    pub lm_head: QWeight,
    /// A sequence classifier checkpoint's `score.weight` (num_labels, D),
    /// f32 ([`ModelHead::SequenceClassification`]); `None` for a causal LM.
    pub score: Option<QWeight>,
    rope: RopeCache,
    compute: ComputeDtype,
}

impl Model {
    /// Reads `config.json`, opens and checks the checkpoint, and streams every
    /// tensor to the GPU one at a time: the blocks' Linears as `format`
    /// (quantized on the GPU), everything else f32.
    ///
    /// A pre-quantized folder ([`crate::model::quantized`]) loads in its own
    /// format without quantizing; asking for another one is an error.
    pub async fn load<F: ModelFiles>(gpu: &Gpu, files: &F, format: QuantFormat) -> Result<Model> {
        Self::load_with_progress(gpu, files, format, &mut |_| {}).await
    }

    /// [`Model::load`], calling `progress` after each tensor is on the GPU.
    pub async fn load_with_progress<F: ModelFiles>(
        gpu: &Gpu,
        files: &F,
        format: QuantFormat,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Model> {
        Self::load_with_options(gpu, files, format, FourBitOptions::default(), progress).await
    }

    /// [`Model::load_with_progress`] with bitsandbytes' 4-bit options for
    /// quantizing to NF4 on load: FP4 levels (`bnb_4bit_quant_type="fp4"`)
    /// and double quantization (`bnb_4bit_use_double_quant`). They need
    /// `format` NF4 and a checkpoint that is not already quantized.
    pub async fn load_with_options<F: ModelFiles>(
        gpu: &Gpu,
        files: &F,
        format: QuantFormat,
        four_bit: FourBitOptions,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Model> {
        if four_bit != FourBitOptions::default() && format != QuantFormat::Nf4 {
            return Err(Error::invalid(
                "Model::load",
                format!("FP4 and double quantization are options of 4-bit loading: load as nf4, not {}", format.name()),
            ));
        }
        let config = Config::load(files).await?;
        let checkpoint = Checkpoint::open_for(files, &config).await?;
        let stored = crate::model::quantized::stored_format(&checkpoint)?;
        let format = match stored {
            Some(s) if s != format => {
                return Err(Error::invalid(
                    "Model::load",
                    format!(
                        "{} is stored as {}; load it as {} (asked for {})",
                        files.location(),
                        s.name(),
                        s.name(),
                        format.name()
                    ),
                ))
            }
            Some(_) if four_bit != FourBitOptions::default() => {
                return Err(Error::invalid(
                    "Model::load",
                    format!(
                        "{} is already quantized: FP4 and double quantization apply when quantizing on load",
                        files.location()
                    ),
                ))
            }
            Some(s) => s,
            None => format,
        };
        let total: u64 = checkpoint.shards().iter().map(|s| s.tensors().iter().map(|t| t.len).sum::<u64>()).sum();
        let loader = Loader {
            progress: std::cell::RefCell::new((0, total, progress)),
            gpu,
            config: &config,
            checkpoint: &checkpoint,
            format,
            stored,
            four_bit,
        };
        const EMBED: &str = "model.embed_tokens.weight";
        let embed_tokens = loader.qweight(EMBED, loader.float_format(EMBED)).await?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            layers.push(loader.block(i).await?);
        }
        let norm = loader.norm("model.norm").await?;
        let classifier = config.head != ModelHead::CausalLm;
        let lm_head = match config.tie_word_embeddings || classifier {
            true => embed_tokens.clone(), // shares the buffers
            false => loader.qweight("lm_head.weight", loader.float_format("lm_head.weight")).await?,
        };
        let score = match classifier {
            true => Some(loader.qweight(SCORE_WEIGHT, QuantFormat::F32).await?),
            false => None,
        };
        let rope = RopeCache::new(gpu, &config)?;
        gpu.check("Model::load")?;
        Ok(Model { config, format, embed_tokens, layers, norm, lm_head, score, rope, compute: ComputeDtype::F32 })
    }

    /// The arithmetic of the blocks' Linears from now on (bitsandbytes'
    /// `bnb_4bit_compute_dtype`), returning the dtype in effect: f16 needs a
    /// quantized or f16 base and a device with SHADER_F16, and gives f32
    /// otherwise, so a page can ask for it everywhere. A Linear whose weights
    /// reach past ±[`crate::quant::F16_COMPUTE_MAX_ABS`] refuses f16 with an
    /// error naming it, and then nothing changes.
    pub fn set_compute_dtype(&mut self, gpu: &Gpu, dtype: ComputeDtype) -> Result<ComputeDtype> {
        let mut linears = Vec::new();
        for (i, l) in self.layers.iter_mut().enumerate() {
            let a = &mut l.self_attn;
            let m = &mut l.mlp;
            for (name, linear) in [
                ("self_attn.q_proj", &mut a.q_proj),
                ("self_attn.k_proj", &mut a.k_proj),
                ("self_attn.v_proj", &mut a.v_proj),
                ("self_attn.o_proj", &mut a.o_proj),
                ("mlp.gate_proj", &mut m.gate_proj),
                ("mlp.up_proj", &mut m.up_proj),
                ("mlp.down_proj", &mut m.down_proj),
            ] {
                linears.push((i, name, &mut linear.weight));
            }
        }
        // Every weight is checked before any changes.
        for (i, name, w) in &linears {
            w.compute_for(gpu, dtype).map_err(|e| {
                Error::invalid("Model::set_compute_dtype", format!("model.layers.{i}.{name}.weight: {e}"))
            })?;
        }
        let mut effective = ComputeDtype::F32;
        for (_, _, w) in linears {
            effective = w.set_compute(gpu, dtype)?;
        }
        self.compute = effective;
        Ok(effective)
    }

    /// The arithmetic of the blocks' Linears (see [`Model::set_compute_dtype`]).
    pub fn compute_dtype(&self) -> ComputeDtype {
        self.compute
    }

    /// GPU bytes of the weights (a tied head counted once).
    /// The blocks' Linear weights stored in another format than the model's
    /// (Q8_0 rows that are not a multiple of 32 stay f16), by checkpoint name.
    pub fn weights_not_in_format(&self) -> Vec<(String, QuantFormat)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            for (name, lin) in l.linears() {
                if lin.weight.format != self.format {
                    out.push((format!("model.layers.{i}.{name}.weight"), lin.weight.format));
                }
            }
        }
        out
    }

    pub fn bytes(&self) -> u64 {
        let blocks: u64 = self
            .layers
            .iter()
            .map(|l| {
                let qk = [&l.self_attn.q_norm, &l.self_attn.k_norm].map(|n| n.as_ref().map_or(0, |n| n.weight.bytes()));
                let norms =
                    l.input_layernorm.weight.bytes() + l.post_attention_layernorm.weight.bytes() + qk[0] + qk[1];
                let linears = l.linears().map(|(_, p)| p.weight.bytes() + p.bias.as_ref().map_or(0, Tensor::bytes));
                norms + linears.iter().sum::<u64>()
            })
            .sum();
        let head = if self.lm_head_is_tied() { 0 } else { self.lm_head.bytes() };
        self.embed_tokens.bytes() + blocks + self.norm.weight.bytes() + head
    }

    /// Whether `lm_head` shares `embed_tokens`' buffers.
    pub fn lm_head_is_tied(&self) -> bool {
        let buffer = |c: &Chunk| match &c.data {
            ChunkData::F32(t) => t.clone(),
            ChunkData::Quant(p) => p.codes.clone(),
        };
        let (head, table) = (&self.lm_head.chunks, &self.embed_tokens.chunks);
        head.len() == table.len() && head.iter().zip(table).all(|(a, b)| buffer(a).same_buffer(&buffer(b)))
    }

    /// transformers' `rotary_emb.inv_freq`, (head_dim / 2).
    pub fn rope_inv_freq(&self) -> &[f32] {
        self.rope.inv_freq()
    }

    /// Checks a batch of token ids on the CPU (rows of one length, 1 ≤ T ≤
    /// max_position_embeddings, ids < vocab_size) and uploads it as (B, T) u32.
    pub fn input_ids(&self, gpu: &Gpu, ids: &[Vec<u32>]) -> Result<Tensor> {
        const OP: &str = "input_ids";
        let seq = ids.first().map_or(0, Vec::len);
        if seq == 0 {
            return Err(Error::shape(OP, "the batch is empty: need at least one row of one token"));
        }
        self.check_seq(seq)?;
        let vocab = self.config.vocab_size;
        let mut flat = Vec::with_capacity(ids.len() * seq);
        for (b, row) in ids.iter().enumerate() {
            if row.len() != seq {
                return Err(Error::shape(OP, format!("row {b} has {} tokens, row 0 has {seq}", row.len())));
            }
            if let Some(t) = row.iter().position(|&id| id as usize >= vocab) {
                return Err(Error::invalid(
                    OP,
                    format!("token id {} at [{b}, {t}] is not below vocab_size {vocab}", row[t]),
                ));
            }
            flat.extend_from_slice(row);
        }
        Tensor::from_slice(gpu, &[ids.len(), seq], &flat)
    }

    fn check_seq(&self, seq: usize) -> Result<()> {
        let max = self.config.max_position_embeddings;
        if seq > max {
            return Err(Error::shape(
                "Model::forward",
                format!("a sequence of {seq} tokens is longer than max_position_embeddings {max}"),
            ));
        }
        Ok(())
    }

    /// Records the forward pass: input_ids (B, T) u32 → logits (B, T, V).
    /// Positions are 0..T in every row (no padding). Ids live on the GPU and
    /// can't be checked here: an id ≥ vocab_size embeds as zeros; upload
    /// them with [`Model::input_ids`], which rejects them.
    pub fn forward(&self, rec: &mut Recorder, input_ids: &Tensor) -> Result<Tensor> {
        Ok(self.forward_adapted(rec, input_ids, &NoHooks)?.0)
    }

    /// [`Model::forward`] through an adapter's hooks (`&adapter` evaluates it;
    /// a training pass carries its dropout seed and gradients), returning what
    /// [`Model::backward`] needs too. The logits are the rows' own positions',
    /// (B, T, V), with or without virtual tokens before them.
    pub fn forward_adapted(
        &self,
        rec: &mut Recorder,
        input_ids: &Tensor,
        hooks: &dyn Hooks,
    ) -> Result<(Tensor, ModelSaved)> {
        let (mut xn, saved) = self.hidden_adapted(rec, input_ids, hooks)?;
        if saved.virtual_tokens > 0 {
            let t = input_ids.shape()[1];
            xn = rows::positions(rec, &xn, 1, t)?; // without the last virtual position
        }
        let logits = self.head(hooks)?.logits(rec, &xn)?; // (B, T, V)
        Ok((logits, saved))
    }

    /// The forward up to `model.norm`: returns the normed hidden states
    /// (B, T, D), the lm_head's input, and what the backward needs. After
    /// virtual tokens (prompt tuning) they are (B, 1+T, D): the last virtual
    /// position first, whose logits predict each row's first token (PEFT's
    /// loss counts it; [`shift_labels_after`] makes the matching targets).
    pub fn hidden_adapted(
        &self,
        rec: &mut Recorder,
        input_ids: &Tensor,
        hooks: &dyn Hooks,
    ) -> Result<(Tensor, ModelSaved)> {
        self.hidden_checkpointed(rec, input_ids, hooks, false)
    }

    /// [`Model::hidden_adapted`], with gradient checkpointing when
    /// `checkpoint` is on: each layer keeps only its input (B, T, D), and the
    /// backward recomputes the layer's forward right before its backward. The
    /// gradients are the same, bit for bit (dropout masks are regenerated from
    /// their seeds); the step does one more forward through the layers, and
    /// only one layer's activations are alive at a time.
    pub fn hidden_checkpointed(
        &self,
        rec: &mut Recorder,
        input_ids: &Tensor,
        hooks: &dyn Hooks,
        checkpoint: bool,
    ) -> Result<(Tensor, ModelSaved)> {
        self.hidden_packed(rec, input_ids, None, hooks, checkpoint, None)
    }

    /// [`Model::forward_adapted`] of packed rows: several examples in a row,
    /// `position_ids` (B, T) counting 0, 1, … in each (see
    /// [`Batch::position_ids`](crate::train::data::Batch::position_ids));
    /// `None` is the plain forward.
    pub fn forward_packed(
        &self,
        rec: &mut Recorder,
        input_ids: &Tensor,
        position_ids: Option<&[Vec<u32>]>,
        hooks: &dyn Hooks,
    ) -> Result<(Tensor, ModelSaved)> {
        let Some(positions) = position_ids else { return self.forward_adapted(rec, input_ids, hooks) };
        let (xn, saved) = self.hidden_packed(rec, input_ids, Some(positions), hooks, false, None)?; // no virtual tokens
        Ok((self.head(hooks)?.logits(rec, &xn)?, saved))
    }

    /// [`Model::hidden_checkpointed`] of packed rows: with `position_ids`
    /// (B, T), each token is roped at its position in its own example and
    /// attends only within it, as transformers with `position_ids` and the
    /// block-diagonal causal mask. Methods that put virtual tokens or prefix
    /// keys before every row (prompt, prefix and p-tuning) would put them
    /// before the first example only: refused. `noise` adds NEFTune's noise
    /// to the embeddings (training only).
    pub fn hidden_packed(
        &self,
        rec: &mut Recorder,
        input_ids: &Tensor,
        position_ids: Option<&[Vec<u32>]>,
        hooks: &dyn Hooks,
        checkpoint: bool,
        noise: Option<EmbeddingNoise>,
    ) -> Result<(Tensor, ModelSaved)> {
        input_ids.expect_dtype("Model::forward", "input_ids", DType::U32)?;
        let &[b, t] = input_ids.shape() else {
            return Err(Error::shape(
                "Model::forward",
                format!("input_ids {:?} must be (batch, seq)", input_ids.shape()),
            ));
        };
        if b == 0 || t == 0 {
            return Err(Error::shape("Model::forward", format!("input_ids {:?} is empty", input_ids.shape())));
        }
        // Prompt tuning's virtual tokens and prefix tuning's keys take positions before the row's.
        let (v, p) = (hooks.virtual_tokens(), hooks.prefix_len());
        self.check_seq(p + v + t)?;
        let window = self.config.sliding_window.as_ref().map(|s| s.window);
        let rope = match position_ids {
            None => {
                let mut rope = self.rope.tables(rec.gpu(), p + v + t)?;
                rope.slide(rec.gpu(), window, (b, p + v + t), 0, None)?;
                rope
            }
            Some(_) if v + p > 0 => {
                return Err(Error::invalid(
                    "Model::forward",
                    format!(
                        "packed rows with {} virtual tokens before every row: they would precede only each row's \
                         first example (prompt, prefix and p-tuning train on unpacked rows)",
                        v + p
                    ),
                ))
            }
            Some(positions) => self.rope.packed(rec.gpu(), positions, (b, t), window)?,
        };
        let d = self.config.hidden_size;

        let ids = input_ids.reshape(&[b * t])?;
        let mut x = self.embed_hooked(rec, &ids, hooks)?.reshape(&[b, t, d])?; // (B, T, D)
        if let Some(noise) = noise {
            add_uniform_noise(rec, &x, noise.magnitude(d), noise.seed)?; // NEFTune: the embedding module's output
        }
        if v > 0 {
            let prompt = self.prompt(rec, hooks, b, v)?; // (B, V, D)
            x = rows::prepend(rec, &prompt, &x)?; // (B, V+T, D)
        }
        let mut layers = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let (out, saved) = layer.forward(rec, &x, &rope, LayerHooks::new(hooks, i))?; // (B, V+T, D)
            layers.push(if checkpoint { LayerSaved::Input(x) } else { LayerSaved::Full(Box::new(saved)) });
            x = out;
        }
        if v > 0 {
            // The row's own positions, and the last virtual one before them:
            // its logits predict the row's first token (B, 1+T, D).
            x = rows::positions(rec, &x, v - 1, t + 1)?;
        }
        let (xn, rstd) = self.norm.forward_saving(rec, &x)?; // (B, T, D), or (B, 1+T, D)
        Ok((xn, ModelSaved { layers, x, rstd, rope, virtual_tokens: v, ids }))
    }

    /// Rows of `model.embed_tokens` (or the hooks' trained copy of it) for
    /// ids (N) u32, (N, D), through the hooks' embedding point.
    pub fn embed_hooked(&self, rec: &mut Recorder, ids: &Tensor, hooks: &dyn Hooks) -> Result<Tensor> {
        let x = match hooks.embedding_table() {
            Some(table) => embedding_weight(rec, &table, ids)?, // a trained copy (modules_to_save)
            None => embedding_weight(rec, &self.embed_tokens, ids)?, // (N, D)
        };
        hooks.embedding_forward(rec, ids, &x)?;
        Ok(x)
    }

    /// `lm_head` (or the hooks' trained copy of it) through the hooks' head
    /// point; an error on a sequence classifier, which has no lm_head.
    pub fn head<'a>(&self, hooks: &'a dyn Hooks) -> Result<Head<'a>> {
        if let ModelHead::SequenceClassification { num_labels, .. } = self.config.head {
            return Err(Error::invalid(
                "lm_head",
                format!(
                    "the model is a sequence classifier (…ForSequenceClassification, {num_labels} labels): it has a \
                     score head and no lm_head, so it scores and classifies text (score, classify, a SEQ_CLS \
                     adapter trained with objective reward or classification) but predicts no tokens"
                ),
            ));
        }
        Ok(Head { weight: hooks.head_weight().unwrap_or_else(|| self.lm_head.clone()), hooks })
    }

    /// Rows of `model.embed_tokens` for token ids (N) u32: (N, D), copied.
    pub fn embed(&self, rec: &mut Recorder, ids: &Tensor) -> Result<Tensor> {
        embedding_weight(rec, &self.embed_tokens, ids)
    }

    /// The `prepend` hook's embeddings for a batch of `b` rows, (B, V, D).
    fn prompt(&self, rec: &mut Recorder, hooks: &dyn Hooks, b: usize, v: usize) -> Result<Tensor> {
        let p = hooks.prepend_forward(rec, b)?.ok_or_else(|| {
            Error::invalid("Model::forward", format!("the adapter has {v} virtual tokens but gave no embeddings"))
        })?;
        let want = [b, v, self.config.hidden_size];
        if p.shape() != want {
            return Err(Error::shape(
                "Model::forward",
                format!("virtual token embeddings {:?}, expected {want:?}", p.shape()),
            ));
        }
        Ok(p)
    }

    /// Records the backward pass from dlogits (B, T, V) through the same
    /// `hooks` as the forward, which add the adapter's gradients where they
    /// keep them. Nothing frozen gets a gradient; the ids need none, and
    /// the embedding's output gradient goes to the hooks' embedding point.
    /// The head's input is recomputed from the saved hidden states (one
    /// RMSNorm) for the head's backward point; training's loss chunks keep it.
    pub fn backward(&self, rec: &mut Recorder, dlogits: &Tensor, saved: &ModelSaved, hooks: &dyn Hooks) -> Result<()> {
        // The head's input again (the head's backward point reads it): model.norm of the saved x.
        let mut xn = self.norm.forward(rec, &saved.x)?;
        if saved.virtual_tokens > 0 {
            xn = rows::positions(rec, &xn, 1, xn.shape()[1] - 1)?; // the rows' own positions, as the logits
        }
        let (n, d) = (xn.numel() / self.config.hidden_size, self.config.hidden_size);
        let mut dxn = rec.zeros(xn.shape(), DType::F32)?; // (B, T, D)
        let v = self.lm_head.rows;
        self.head(hooks)?.backward_into(
            rec,
            &xn.reshape(&[n, d])?,
            &dlogits.reshape(&[n, v])?,
            &dxn.reshape(&[n, d])?,
        )?;
        if saved.virtual_tokens > 0 {
            dxn = rows::pad_front(rec, &dxn, 1)?; // the last virtual position's logits were not returned
        }
        self.backward_from_hidden(rec, &dxn, saved, hooks)
    }

    /// [`Model::backward`] from the gradient at the lm_head's input, dxn (B, T, D).
    pub fn backward_from_hidden(
        &self,
        rec: &mut Recorder,
        dxn: &Tensor,
        saved: &ModelSaved,
        hooks: &dyn Hooks,
    ) -> Result<()> {
        let mut dx = self.norm.backward(rec, dxn, &saved.x, &saved.rstd)?; // (B, T, D)
        let v = saved.virtual_tokens;
        if v > 0 {
            dx = rows::pad_front(rec, &dx, v - 1)?; // (B, V+T, D): the other virtual positions had no loss
        }
        for (i, layer) in self.layers.iter().enumerate().rev() {
            let at = LayerHooks::new(hooks, i);
            dx = match &saved.layers[i] {
                LayerSaved::Full(s) => layer.backward(rec, &dx, s, &saved.rope, at)?,
                LayerSaved::Input(x) => {
                    let (_, s) = layer.forward(rec, x, &saved.rope, at)?; // recompute, then free after use
                    layer.backward(rec, &dx, &s, &saved.rope, at)?
                }
            };
        }
        if v > 0 {
            let d_prompt = rows::positions(rec, &dx, 0, v)?; // (B, V, D)
            hooks.prepend_backward(rec, &d_prompt)?;
        } else {
            let n = saved.ids.numel();
            hooks.embedding_backward(rec, &saved.ids, &dx.reshape(&[n, self.config.hidden_size])?)?;
        }
        Ok(())
    }

    /// Logits (B·T·V, row-major) and the causal-LM loss for a batch, recorded
    /// into one submission and read back once. `labels` default to the ids.
    pub async fn logits_and_loss(
        &self,
        gpu: &Gpu,
        ids: &[Vec<u32>],
        labels: Option<&[Vec<i32>]>,
    ) -> Result<(Vec<f32>, f32)> {
        let input_ids = self.input_ids(gpu, ids)?;
        let own_labels: Vec<Vec<i32>>;
        let labels = match labels {
            Some(l) => l,
            None => {
                own_labels = ids.iter().map(|row| row.iter().map(|&id| id as i32).collect()).collect();
                &own_labels
            }
        };
        if labels.len() != ids.len() || labels.iter().zip(ids).any(|(l, i)| l.len() != i.len()) {
            return Err(Error::shape("logits_and_loss", "labels must have the shape of the ids (batch, seq)"));
        }
        let targets = CausalTargets::new(gpu, labels, self.config.vocab_size)?;

        let mut rec = Recorder::new(gpu);
        let logits = self.forward(&mut rec, &input_ids)?; // (B, T, V)
        let loss = causal_lm_loss(&mut rec, &logits, &targets)?; // (1)
                                                                 // One readback: logits then the loss, copied into one buffer.
        let n = logits.numel();
        let out = Tensor::zeros(gpu, &[n + 1], DType::F32)?;
        rec.copy(&logits, 0, &out, 0, n as u64 * 4)?;
        rec.copy(&loss, 0, &out, n as u64 * 4, 4)?;
        rec.submit()?;
        let mut all = out.to_vec::<f32>(gpu).await?;
        let loss = all.pop().unwrap_or(f32::NAN);
        Ok((all, loss))
    }
}
