//! Generation: a KV cache, the incremental forward and the generate loops.
//!
//! ```text
//! prefill:  logits = forward_cached(prompt, cache, offset 0)       one submit
//! step:     logits = forward_cached([last token], cache, offset n)  one submit
//! ```
//!
//! The token is picked on the GPU (greedy's argmax, or `kernels::sample`'s
//! draw) and read back as one u32 while the next step, which reads it there,
//! is already submitted ([`Model::generate`]).
//!
//! Each layer writes its new keys and values (after RoPE) into its cache rows
//! `offset..offset + T` and attends the new queries against rows
//! `0..offset + T` ([`attention_forward_cached`]). Only the last position goes
//! through the final norm and `lm_head`. On a CPU rasterizer a sampled step's
//! row of logits is read back and drawn from on the CPU ([`sample`]), by the
//! same rule as the GPU's draw.
//!
//! Nothing is kept for a backward, so the residual stream is one tensor a
//! step: where the hooks leave a join plain ([`Hooks::plain_residual`]),
//! o_proj and down_proj add their products into it as they store them
//! (`h = x + o_proj(…)` in x's own buffer), two launches and two passes over
//! it fewer a layer. Where they leave up_proj's output plain
//! ([`Hooks::plain_output`]), up_proj's product gates itself with SwiGLU as
//! it stores (`h = silu(gate)·up`, up never stored): one launch fewer again.

use super::block::{rows2d, Attention, Block, Linear, Mlp};
use super::hooks::{Hooks, LayerHooks, NoHooks, Proj, Sublayer};
use super::rope::RopeTables;
use super::sample::{ban_bad_words, ban_ids, ban_seen_ngrams, no_token, penalize_seen, sample};
use super::{rows, Model};
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, PendingRead, Recorder, Tensor};
use crate::kernels::attention::{attention_forward_cached, write_kv_cache, Variant};
use crate::kernels::blocked::is_real_gpu;
use crate::kernels::qmatmul::qlinear_gated;
use crate::kernels::reduce::{argmax_rows, NO_INDEX};
use crate::kernels::rope::rope_cached;
use crate::kernels::sample::{
    ban_repeated_ngrams, ban_tokens, ban_words, repetition_penalty, sample_rows, seen_tokens, seen_words, Sampling,
    WordTable, DECIDED,
};
use crate::kernels::swiglu::swiglu_forward;
use crate::model::config::GenerationDefaults;

/// Keys and values of every layer, (batch, capacity, n_kv_heads, head_dim)
/// f32 each, on the GPU. Rows past what has been written are never read.
#[derive(Debug)]
pub struct KvCache {
    /// (k, v) per layer.
    pub layers: Vec<(Tensor, Tensor)>,
    batch: usize,
    capacity: usize,
}

impl KvCache {
    /// An empty cache for `batch` rows of up to `capacity` positions
    /// (at most `max_position_embeddings`).
    pub fn new(gpu: &Gpu, model: &Model, batch: usize, capacity: usize) -> Result<KvCache> {
        let c = &model.config;
        if batch == 0 || capacity == 0 {
            return Err(Error::shape("KvCache::new", format!("batch {batch} and capacity {capacity} must be ≥ 1")));
        }
        model.check_seq(capacity)?;
        let shape = [batch, capacity, c.num_key_value_heads, c.head_dim];
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                Ok((
                    Tensor::zeros_named(gpu, &shape, DType::F32, &format!("kv_cache.{i}.k"))?,
                    Tensor::zeros_named(gpu, &shape, DType::F32, &format!("kv_cache.{i}.v"))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache { layers, batch, capacity })
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Positions the cache holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// GPU bytes of all the layers' k and v.
    pub fn bytes(&self) -> u64 {
        self.layers.iter().map(|(k, v)| k.bytes() + v.bytes()).sum()
    }
}

impl Attention {
    /// `residual + self_attn(x)` for x (B, T, D), already normed, at
    /// positions `offset..offset + T`, and `residual` (B, T, D) the stream
    /// it joins (updated in place where the hooks allow, see
    /// [`Linear::forward_residual`]); writes this step's k and v into the
    /// cache first.
    pub fn forward_cached(
        &self,
        rec: &mut Recorder,
        (x, residual): (&Tensor, &Tensor),
        rope: &RopeTables,
        (k_cache, v_cache): &(Tensor, Tensor),
        offset: usize,
        hooks: LayerHooks,
    ) -> Result<Tensor> {
        let (b, t) = (x.shape()[0], x.shape()[1]);
        let (h, kv, hd) = (self.num_heads, self.num_key_value_heads, self.head_dim);
        let q = self.q_proj.forward_hooked(rec, x, hooks, Proj::Q)?.0.reshape(&[b, t, h, hd])?; // (B, T, H, hd)
        let k = self.k_proj.forward_hooked(rec, x, hooks, Proj::K)?.0.reshape(&[b, t, kv, hd])?; // (B, T, KV, hd)
        let (q, k) = match (&self.q_norm, &self.k_norm) {
            (Some(q_norm), Some(k_norm)) => (q_norm.forward(rec, &q)?, k_norm.forward(rec, &k)?), // Qwen3
            _ => (q, k),
        };
        let v = self.v_proj.forward_hooked(rec, x, hooks, Proj::V)?.0.reshape(&[b, t, kv, hd])?; // (B, T, KV, hd)
        if self.use_rope {
            rope_cached(rec, &q, &k, &v, &rope.cos, &rope.sin, k_cache, v_cache, offset)?;
        // q rotated; k, v into the cache
        } else {
            write_kv_cache(rec, &k, k_cache, offset)?; // NoPE: k and v as they are
            write_kv_cache(rec, &v, v_cache, offset)?;
        }
        let starts = self.key_starts(rope);
        let out = attention_forward_cached(rec, &q, k_cache, v_cache, starts, offset, self.scaling, Variant::Auto)?; // (B, T, H, hd)
        self.o_proj.forward_residual(rec, &out.reshape(&[b, t, h * hd])?, hooks, Sublayer::Attention, residual)
    }
}

impl Mlp {
    /// `residual + mlp(x)` for x (…, D), already normed, and `residual` (…, D)
    /// the stream it joins (updated in place where the hooks allow).
    fn forward_cached(&self, rec: &mut Recorder, x: &Tensor, hooks: LayerHooks, residual: &Tensor) -> Result<Tensor> {
        let gate = self.gate_proj.forward_hooked(rec, x, hooks, Proj::Gate)?.0; // (…, I)
        let hidden = if self.up_proj.bias.is_none() && hooks.hooks.plain_output(hooks.layer, Proj::Up) {
            self.up_proj.forward_gated(rec, x, hooks, &gate)? // silu(gate) · up_proj(x), (…, I)
        } else {
            let up = self.up_proj.forward_hooked(rec, x, hooks, Proj::Up)?.0; // (…, I)
            swiglu_forward(rec, &gate, &up)? // (…, I)
        };
        self.down_proj.forward_residual(rec, &hidden, hooks, Sublayer::Mlp, residual)
    }
}

impl Linear {
    /// `r + self(x)` (…, out) through the hooks of `site`'s last Linear (this
    /// one), joining the residual stream r at `site`. Where the hooks leave
    /// that join plain ([`Hooks::plain_residual`]) the product (with its
    /// low-rank term and bias) adds itself into r as it stores, and r,
    /// updated in place, is returned; else a new tensor, as
    /// [`Block::forward`] makes it.
    fn forward_residual(
        &self,
        rec: &mut Recorder,
        x: &Tensor,
        hooks: LayerHooks,
        site: Sublayer,
        r: &Tensor,
    ) -> Result<Tensor> {
        let (layer, proj) = (hooks.layer, site.output_proj());
        if !hooks.hooks.plain_residual(layer, site) {
            let (y, _) = self.forward_hooked(rec, x, hooks, proj)?;
            return Ok(Block::residual(rec, r, &y, hooks, site)?.0);
        }
        let x = rows2d(x)?;
        let x = hooks.hooks.linear_input(rec, layer, proj, &x)?.map_or(x, |(x, _)| x);
        let term = hooks.hooks.linear_low_rank(rec, layer, proj, &x)?.map(|(term, _)| term);
        self.product_into(rec, &x, term.as_ref(), &rows2d(r)?, true)?;
        Ok(r.clone())
    }
}

impl Linear {
    /// `silu(gate)·self(x)` for x (…, in) and gate (…, out), up_proj's
    /// part of SwiGLU, through the hooks of up_proj where they leave its
    /// output plain ([`Hooks::plain_output`]; this Linear has no bias): the
    /// product (with its low-rank term) applies the gate as it stores.
    fn forward_gated(&self, rec: &mut Recorder, x: &Tensor, hooks: LayerHooks, gate: &Tensor) -> Result<Tensor> {
        let (layer, proj) = (hooks.layer, Proj::Up);
        let x = rows2d(x)?;
        let x = hooks.hooks.linear_input(rec, layer, proj, &x)?.map_or(x, |(x, _)| x);
        let term = hooks.hooks.linear_low_rank(rec, layer, proj, &x)?.map(|(term, _)| term);
        qlinear_gated(rec, &x, &self.weight, term.as_ref(), &rows2d(gate)?)?.reshape(gate.shape())
    }
}

impl Block {
    /// [`Block::forward`] at positions `offset..offset + T`, through the
    /// cache. x, the residual stream, may be updated in place: the layer's
    /// output is then x itself.
    pub fn forward_cached(
        &self,
        rec: &mut Recorder,
        x: &Tensor,
        rope: &RopeTables,
        kv: &(Tensor, Tensor),
        offset: usize,
        hooks: LayerHooks,
    ) -> Result<Tensor> {
        let attn = self.input_layernorm.forward(rec, x)?;
        let h = self.self_attn.forward_cached(rec, (&attn, x), rope, kv, offset, hooks)?; // x + self_attn(…)
        let mlp = self.post_attention_layernorm.forward(rec, &h)?;
        self.mlp.forward_cached(rec, &mlp, hooks, &h) // h + mlp(…)
    }
}

impl Model {
    /// The residual stream after the last layer, (B, T, D), for ids (B, T)
    /// at positions `offset..offset + T`, updating the cache.
    fn hidden_cached(
        &self,
        rec: &mut Recorder,
        ids: &Tensor,
        cache: &KvCache,
        offset: usize,
        hooks: &dyn Hooks,
    ) -> Result<Tensor> {
        const OP: &str = "Model::forward_cached";
        ids.expect_dtype(OP, "ids", DType::U32)?;
        let &[b, t] = ids.shape() else {
            return Err(Error::shape(OP, format!("ids {:?} must be (batch, seq)", ids.shape())));
        };
        if b == 0 || t == 0 {
            return Err(Error::shape(OP, format!("ids {:?} is empty", ids.shape())));
        }
        // With virtual tokens (prompt tuning) the first call puts them first,
        // at positions 0..V, and every token after them sits V further on; a
        // prefix (prefix tuning) is written into the cache's first P entries
        // by the first call, and every token sits P further on.
        let (v, p) = (hooks.virtual_tokens(), hooks.prefix_len());
        let (start, front) = if offset == 0 { (p, v) } else { (p + offset + v, 0) };
        let end = start + front + t;
        if b != cache.batch || end > cache.capacity {
            return Err(Error::shape(
                OP,
                format!(
                    "ids {:?} at positions {start}..{end} ({v} virtual tokens first) do not fit a cache of batch {} and capacity {}",
                    ids.shape(),
                    cache.batch,
                    cache.capacity
                ),
            ));
        }
        if cache.layers.len() != self.layers.len() {
            return Err(Error::shape(
                OP,
                format!("the cache has {} layers, the model {}", cache.layers.len(), self.layers.len()),
            ));
        }
        self.check_seq(end)?;
        let mut rope = self.rope.tables(rec.gpu(), end)?;
        let window = self.config.sliding_window.as_ref().map(|s| s.window);
        rope.slide(rec.gpu(), window, (b, front + t), start, None)?;
        let d = self.config.hidden_size;
        let mut x = self.embed_hooked(rec, &ids.reshape(&[b * t])?, hooks)?.reshape(&[b, t, d])?;
        if front > 0 {
            let prompt = self.prompt(rec, hooks, b, front)?; // (B, V, D)
            x = rows::prepend(rec, &prompt, &x)?; // (B, V+T, D)
        }
        if offset == 0 && p > 0 {
            for (i, (k_cache, v_cache)) in cache.layers.iter().enumerate() {
                let (pk, pv) = hooks.prefix_forward(rec, i, b)?.ok_or_else(|| {
                    Error::invalid(OP, format!("the adapter has a prefix of {p} but gave no keys and values"))
                })?; // (B, P, KV, hd)
                write_kv_cache(rec, &pk, k_cache, 0)?;
                write_kv_cache(rec, &pv, v_cache, 0)?;
            }
        }
        for (i, (layer, kv)) in self.layers.iter().zip(&cache.layers).enumerate() {
            x = layer.forward_cached(rec, &x, &rope, kv, start, LayerHooks::new(hooks, i))?;
        }
        if front > 0 {
            x = rows::positions(rec, &x, front, t)?; // the row's own positions (B, T, D)
        }
        Ok(x)
    }

    /// Records the incremental forward of ids (B, T) u32 at positions
    /// `offset..offset + T`, writing their keys and values into `cache`, and
    /// returns the logits of the last position, (B, V).
    pub fn forward_cached(
        &self,
        rec: &mut Recorder,
        ids: &Tensor,
        cache: &KvCache,
        offset: usize,
        hooks: &dyn Hooks,
    ) -> Result<Tensor> {
        let x = self.hidden_cached(rec, ids, cache, offset, hooks)?; // (B, T, D)
        let (b, t, d) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        let last = if t == 1 {
            x.reshape(&[b, d])?
        } else {
            let last = rec.alloc(&[b, d], DType::F32)?;
            let row = d as u64 * 4;
            for i in 0..b {
                rec.copy(&x, (i * t + t - 1) as u64 * row, &last, i as u64 * row, row)?;
            }
            last
        };
        let last = self.norm.forward(rec, &last)?; // (B, D)
        self.head(hooks)?.logits(rec, &last) // (B, V)
    }

    /// [`Model::forward_cached`] returning the logits of every new position,
    /// (B, T, V).
    pub fn forward_cached_all(
        &self,
        rec: &mut Recorder,
        ids: &Tensor,
        cache: &KvCache,
        offset: usize,
        hooks: &dyn Hooks,
    ) -> Result<Tensor> {
        let x = self.hidden_cached(rec, ids, cache, offset, hooks)?;
        let x = self.norm.forward(rec, &x)?;
        self.head(hooks)?.logits(rec, &x)
    }

    /// Generates up to `config.max_new_tokens` tokens after `prompt_ids` (one
    /// sequence), calling `on_token` with each as it comes; stops after an
    /// eos token (which is returned and passed on) or when `on_token` returns
    /// false. Returns the new tokens. The prompt goes through in one forward,
    /// then one token per step: one submit each, and a readback of the token
    /// the GPU picked (greedy, or sampled on a real GPU), or of the V logits
    /// a CPU rasterizer draws from. A repetition penalty, then
    /// no_repeat_ngram_size's bans, then the eos ban before min_new_tokens
    /// and min_length, apply before either pick.
    pub async fn generate(
        &self,
        gpu: &Gpu,
        prompt_ids: &[u32],
        config: &GenerationConfig,
        on_token: impl FnMut(u32) -> bool,
    ) -> Result<Vec<u32>> {
        self.generate_adapted(gpu, prompt_ids, config, &NoHooks, on_token).await
    }

    /// [`Model::generate`] through an adapter's hooks (`&adapter`; [`NoHooks`]:
    /// the base model alone).
    pub async fn generate_adapted(
        &self,
        gpu: &Gpu,
        prompt_ids: &[u32],
        config: &GenerationConfig,
        hooks: &dyn Hooks,
        on_token: impl FnMut(u32) -> bool,
    ) -> Result<Vec<u32>> {
        const OP: &str = "Model::generate";
        config.validate()?;
        if prompt_ids.is_empty() {
            return Err(Error::shape(OP, "the prompt is empty: need at least one token"));
        }
        let max = self.config.max_position_embeddings;
        let v = hooks.virtual_tokens() + hooks.prefix_len();
        let total = v + prompt_ids.len() + config.max_new_tokens;
        if total > max {
            let virtual_tokens = if v > 0 { format!(" after {v} virtual tokens") } else { String::new() };
            return Err(Error::shape(
                OP,
                format!(
                    "a prompt of {} tokens plus max_new_tokens {}{virtual_tokens} is {total} positions, more than max_position_embeddings {max}",
                    prompt_ids.len(),
                    config.max_new_tokens
                ),
            ));
        }
        let vocab = self.config.vocab_size;
        for (i, w) in config.bad_words_ids.iter().enumerate() {
            if let Some(t) = w.iter().find(|&&t| t as usize >= vocab) {
                let detail = format!("bad_words_ids[{i}] holds token {t}, past the vocabulary ({vocab} tokens)");
                return Err(Error::invalid(OP, detail));
            }
        }
        if config.max_new_tokens == 0 {
            return Ok(Vec::new());
        }
        let cache = KvCache::new(gpu, self, 1, total)?;
        let ids = self.input_ids(gpu, &[prompt_ids.to_vec()])?;
        // The adapter does not change during the call: what each forward would
        // recompute from it (DoRA's weight norms, LoRA's stacked A's) is computed once.
        let frozen = hooks.frozen();
        let hooks = frozen.as_deref().unwrap_or(hooks);
        let decoding = Decoding { gpu, cache: &cache, config, hooks, prompt_ids };
        match config.greedy {
            // A CPU rasterizer draws on the CPU: there the GPU's selection
            // passes cost more than the CPU's sort.
            // So do typical_p and the ε/η cutoffs, which the GPU's pick does not have.
            false if !is_real_gpu(gpu) || config.cuts_by_entropy() => {
                self.generate_on_cpu(decoding, ids, on_token).await
            }
            _ => self.generate_on_gpu(decoding, ids, on_token).await,
        }
    }

    /// Decoding with the token picked on the GPU: greedy's [`argmax_rows`],
    /// or on a real GPU the sampled draw ([`sample_rows`]). Each step reads
    /// back its token (a flag with a draw), not V logits, and the next step,
    /// whose embedding reads that token where the pick wrote it, is recorded
    /// and submitted before this one's token is read. The GPU then never
    /// waits for the CPU to record a step or for a readback's round trip
    /// (most of a small model's token on a real GPU, and a browser's
    /// `mapAsync` latency). After the last token (an eos, `on_token` saying
    /// stop) one submitted step goes unread; its cache rows are past every
    /// read one.
    async fn generate_on_gpu(
        &self,
        Decoding { gpu, cache, config, hooks, prompt_ids }: Decoding<'_>,
        prompt: Tensor,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<Vec<u32>> {
        // With a repetition penalty, the sequence's tokens as a set on the
        // GPU: the prompt's now, each picked token as the next step starts.
        let seen = match config.repetition_penalty != 1.0 {
            true => {
                let v = self.config.vocab_size;
                Some(Tensor::from_slice(gpu, &[1, seen_words(v)], &seen_tokens(&[prompt_ids], v)?)?)
            }
            false => None,
        };
        // The bad words and suppressed tokens: words of one token each
        // banned by one launch a step; any longer one, all by the word launch.
        let words = banned_words(config);
        let multi = words.iter().any(|w| w.len() > 1);
        let singles = match multi || words.is_empty() {
            true => None,
            false => Some(Tensor::from_slice(gpu, &[1, words.len()], &words.concat())?),
        };
        let table = multi.then(|| WordTable::new(gpu, &words)).transpose()?;
        let begin = &config.begin_suppress_tokens;
        let begin = (!begin.is_empty()).then(|| Tensor::from_slice(gpu, &[1, begin.len()], begin)).transpose()?;
        // With no_repeat_ngram_size or a word of several tokens, the
        // sequence's tokens on the GPU: the prompt's now, each picked token
        // appended as the next step starts.
        let history = match config.no_repeat_ngram_size == 0 && !multi {
            true => None,
            false => {
                let mut h = prompt_ids.to_vec();
                h.resize(prompt_ids.len() + config.max_new_tokens, 0);
                Some(Tensor::from_slice(gpu, &[1, h.len()], &h)?)
            }
        };
        // Before min_new_tokens (or min_length), the eos ids to ban.
        let eos = match min_new_tokens(config, prompt_ids.len()) {
            0 => None,
            _ if config.eos_token_ids.is_empty() => None,
            _ => Some(Tensor::from_slice(gpu, &[1, config.eos_token_ids.len()], &config.eos_token_ids)?),
        };
        // Submits the step at `offset` for ids (1, T), picking token `draw`:
        // its token (1, 1) and the read of it (and of the draw's flag).
        let step = |ids: &Tensor, offset: usize, draw: usize| -> Result<(Tensor, PendingRead)> {
            let mut rec = Recorder::new(gpu);
            let logits = self.forward_cached(&mut rec, ids, cache, offset, hooks)?; // (1, V)
            if let Some(seen) = &seen {
                // After the prompt's step, ids is the token the last step picked.
                let last = (draw > 0).then_some(ids);
                repetition_penalty(&mut rec, &logits, seen, last, config.repetition_penalty)?;
            }
            if let Some(history) = &history {
                // Each launch appends the last token alike (the same value in the same place).
                let (last, len) = ((draw > 0).then_some(ids), prompt_ids.len() + draw);
                if config.no_repeat_ngram_size > 0 {
                    ban_repeated_ngrams(&mut rec, &logits, history, last, (len, config.no_repeat_ngram_size))?;
                }
                if let Some(table) = &table {
                    ban_words(&mut rec, &logits, table, history, last, len)?;
                }
            }
            if let Some(singles) = &singles {
                ban_tokens(&mut rec, &logits, singles)?;
            }
            if let Some(begin) = begin.as_ref().filter(|_| draw == 0) {
                ban_tokens(&mut rec, &logits, begin)?;
            }
            if let Some(eos) = eos.as_ref().filter(|_| draw < min_new_tokens(config, prompt_ids.len())) {
                ban_tokens(&mut rec, &logits, eos)?;
            }
            let picked = match config.greedy {
                true => argmax_rows(&mut rec, &logits)?, // (1)
                false => sample_rows(&mut rec, &logits, &config.draw_settings(draw as u32))?, // (2): token, flag
            };
            let read = rec.read_after(&picked)?;
            rec.submit()?;
            Ok((picked.reshape_prefix(&[1, 1])?, read))
        };
        let mut out = Vec::with_capacity(config.max_new_tokens);
        let mut offset = prompt.shape()[1];
        let (mut token, mut read) = step(&prompt, 0, 0)?;
        loop {
            // The next step, if one may follow, goes in before this one is
            // read; if it cannot be recorded, this token still reaches
            // `on_token` before the error is returned.
            let next = (out.len() + 1 < config.max_new_tokens).then(|| step(&token, offset, out.len() + 1));
            let bytes = read.read(gpu).await?;
            let word = |i: usize| bytemuck::pod_read_unaligned::<u32>(&bytes[4 * i..4 * i + 4]);
            let picked = match config.greedy {
                true => word(0) != NO_INDEX,
                false => word(1) == DECIDED, // else NO_TOKEN
            };
            if !picked {
                return Err(no_token());
            }
            let id = word(0);
            out.push(id);
            let go_on = on_token(id);
            let Some(next) = next.filter(|_| go_on && !config.eos_token_ids.contains(&id)).transpose()? else {
                return Ok(out);
            };
            offset += 1;
            autotune_after(gpu, out.len()).await;
            (token, read) = next;
        }
    }

    /// Sampled decoding with every draw on the CPU ([`sample`]), for CPU
    /// rasterizers: each step's V logits are read back and drawn from, then
    /// the next step is recorded (the rasterizer runs steps on the cores
    /// that would record the next one).
    async fn generate_on_cpu(
        &self,
        Decoding { gpu, cache, config, hooks, prompt_ids }: Decoding<'_>,
        prompt: Tensor,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<Vec<u32>> {
        // Submits the step at `offset` for ids (1, T): the read of its logits.
        let step = |ids: &Tensor, offset: usize| -> Result<PendingRead> {
            let mut rec = Recorder::new(gpu);
            let logits = self.forward_cached(&mut rec, ids, cache, offset, hooks)?; // (1, V)
            let read = rec.read_after(&logits)?;
            rec.submit()?;
            Ok(read)
        };
        let mut out = Vec::with_capacity(config.max_new_tokens);
        let mut offset = prompt.shape()[1];
        let mut read = step(&prompt, 0)?;
        // With a repetition penalty, the sequence's tokens as a set (the GPU's layout).
        let mut seen = match config.repetition_penalty != 1.0 {
            true => Some(seen_tokens(&[prompt_ids], self.config.vocab_size)?),
            false => None,
        };
        // With no_repeat_ngram_size or bad words, the sequence so far.
        let mut sequence = prompt_ids.to_vec();
        let words = banned_words(config);
        loop {
            let mut row: Vec<f32> = bytemuck::pod_collect_to_vec(&read.read(gpu).await?);
            if let Some(seen) = &seen {
                penalize_seen(&mut row, seen, config.repetition_penalty);
            }
            ban_seen_ngrams(&mut row, &sequence, config.no_repeat_ngram_size);
            ban_bad_words(&mut row, &sequence, &words);
            if out.is_empty() {
                ban_ids(&mut row, &config.begin_suppress_tokens);
            }
            if out.len() < min_new_tokens(config, prompt_ids.len()) {
                ban_ids(&mut row, &config.eos_token_ids);
            }
            let id = sample(&row, config, out.len() as u32)?;
            out.push(id);
            sequence.push(id);
            if let Some(word) = seen.as_mut().and_then(|s| s.get_mut(id as usize / 32)) {
                *word |= 1 << (id % 32);
            }
            if !on_token(id) || config.eos_token_ids.contains(&id) || out.len() == config.max_new_tokens {
                return Ok(out);
            }
            read = step(&Tensor::from_slice(gpu, &[1, 1], &[id])?, offset)?;
            offset += 1;
            autotune_after(gpu, out.len()).await;
        }
    }
}

/// The words banned before each pick: `bad_words_ids` less the words that
/// are just an eos id (transformers drops them), then `suppress_tokens` as
/// words of one token.
fn banned_words(config: &GenerationConfig) -> Vec<Vec<u32>> {
    let eos_alone = |w: &&Vec<u32>| w.len() == 1 && config.eos_token_ids.contains(&w[0]);
    let bad = config.bad_words_ids.iter().filter(|w| !eos_alone(w)).cloned();
    bad.chain(config.suppress_tokens.iter().map(|&t| vec![t])).collect()
}

/// The new tokens before which the eos ids are banned: `min_new_tokens`, or
/// `min_length` less the prompt, whichever is more (transformers applies
/// both processors).
fn min_new_tokens(config: &GenerationConfig, prompt_len: usize) -> usize {
    config.min_new_tokens.max(config.min_length.saturating_sub(prompt_len))
}

/// What a generation's steps share: the device, the cache, the settings,
/// the hooks and the prompt (the first tokens a repetition penalty counts).
struct Decoding<'a> {
    gpu: &'a Gpu,
    cache: &'a KvCache,
    config: &'a GenerationConfig,
    hooks: &'a dyn Hooks,
    prompt_ids: &'a [u32],
}

/// After the second token, the prompt's pass and a one-token step have met
/// every product a token makes: on a real GPU, the shape classes with no tuned
/// choice yet are timed now, once (kernels::tune); a failed tuning keeps the
/// rule's choices, which compute the same sums.
async fn autotune_after(gpu: &Gpu, tokens: usize) {
    if tokens == 2 && crate::kernels::tune::tuning_counts(gpu).1 > 0 {
        let _ = crate::kernels::tune::autotune_pending(gpu).await;
    }
}

/// What a caller (the CLI's flags, the browser's `generate` options) chose
/// of a generation's settings; `None` keeps the model's own
/// ([`GenerationConfig::from_defaults`], [`GenerationConfig::with_choices`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationChoices {
    pub greedy: Option<bool>,
    /// Samples at this temperature (unless `greedy` is `Some(true)`).
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub typical_p: Option<f32>,
    pub epsilon_cutoff: Option<f32>,
    pub eta_cutoff: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub no_repeat_ngram_size: Option<usize>,
    pub min_new_tokens: Option<usize>,
    pub bad_words_ids: Option<Vec<Vec<u32>>>,
    pub suppress_tokens: Option<Vec<u32>>,
    pub seed: Option<u64>,
}

/// How [`Model::generate`] picks tokens and when it stops.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationConfig {
    /// The most tokens to generate.
    pub max_new_tokens: usize,
    /// Logits are divided by this before top-k, top-p and min-p (> 0); ignored when greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens (ties at the k-th kept, as transformers); 0 = off.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability sums to
    /// ≥ top_p (at least one), in (0, 1]; 1 = off.
    pub top_p: f32,
    /// Keep the tokens at least min_p times as likely as the most likely one
    /// (transformers' `min_p`), in [0, 1]; 0 = off.
    pub min_p: f32,
    /// Seeds the draws: token n of a generation draws with (seed, n).
    pub seed: u64,
    /// Generation stops after any of these.
    pub eos_token_ids: Vec<u32>,
    /// Argmax (lowest index on ties) instead of sampling.
    pub greedy: bool,
    /// transformers' `repetition_penalty` (> 0; 1 = off), greedy or sampled:
    /// before the pick, each token already in the sequence (prompt
    /// included) has its logit divided by this where ≥ 0 and multiplied by
    /// it where negative.
    pub repetition_penalty: f32,
    /// transformers' `no_repeat_ngram_size` (0 = off), greedy or sampled:
    /// before the pick, no token may complete an n-gram the sequence
    /// (prompt included) already holds.
    pub no_repeat_ngram_size: usize,
    /// transformers' `min_new_tokens` and `min_length` (prompt included; 0
    /// = off): the eos ids are banned (logit −∞) until the generation has
    /// this many new tokens, or the sequence this many tokens.
    pub min_new_tokens: usize,
    pub min_length: usize,
    /// transformers' `bad_words_ids`, greedy or sampled: before the pick, a
    /// word whose tokens but the last are the sequence's last bans its last
    /// token (logit −∞); a one-token word is banned always, except one that
    /// is just an eos id (transformers drops those, so the eos still stops).
    pub bad_words_ids: Vec<Vec<u32>>,
    /// transformers' `suppress_tokens`: banned before every pick.
    pub suppress_tokens: Vec<u32>,
    /// transformers' `begin_suppress_tokens`: banned before the first new token's pick.
    pub begin_suppress_tokens: Vec<u32>,
    /// transformers' `typical_p` (1 = off), after min-p: keep the tokens whose
    /// −log p is nearest the entropy until their probability reaches it.
    pub typical_p: f32,
    /// transformers' `epsilon_cutoff` (0 = off), after typical: drop the
    /// tokens less likely than it (never the most likely).
    pub epsilon_cutoff: f32,
    /// transformers' `eta_cutoff` (0 = off), last: drop the tokens less likely
    /// than min(η, √η·e^(−entropy)) (never the most likely).
    pub eta_cutoff: f32,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_new_tokens: 20,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 0,
            eos_token_ids: Vec::new(),
            greedy: true,
            repetition_penalty: 1.0,
            no_repeat_ngram_size: 0,
            min_new_tokens: 0,
            min_length: 0,
            bad_words_ids: Vec::new(),
            suppress_tokens: Vec::new(),
            begin_suppress_tokens: Vec::new(),
            typical_p: 1.0,
            epsilon_cutoff: 0.0,
            eta_cutoff: 0.0,
        }
    }
}

impl GenerationConfig {
    /// Greedy decoding of up to `max_new_tokens`, no eos.
    pub fn greedy(max_new_tokens: usize) -> Self {
        GenerationConfig { max_new_tokens, ..Default::default() }
    }

    /// Sampling with the given temperature, top-k, top-p and seed, no eos.
    pub fn sampling(max_new_tokens: usize, temperature: f32, top_k: usize, top_p: f32, seed: u64) -> Self {
        GenerationConfig { max_new_tokens, temperature, top_k, top_p, seed, greedy: false, ..Default::default() }
    }

    /// A model's own settings (its `generation_config.json`, as transformers
    /// resolves it) for up to `max_new_tokens`: sampled where `do_sample`,
    /// stopping at the file's eos ids; seed 0.
    pub fn from_defaults(defaults: &GenerationDefaults, max_new_tokens: usize) -> Self {
        let d = defaults;
        GenerationConfig {
            max_new_tokens,
            temperature: d.temperature,
            top_k: d.top_k,
            top_p: d.top_p,
            min_p: d.min_p,
            seed: 0,
            eos_token_ids: d.eos_token_ids.clone(),
            greedy: !d.do_sample,
            repetition_penalty: d.repetition_penalty,
            no_repeat_ngram_size: d.no_repeat_ngram_size,
            min_new_tokens: d.min_new_tokens,
            min_length: d.min_length,
            bad_words_ids: d.bad_words_ids.clone(),
            suppress_tokens: d.suppress_tokens.clone(),
            begin_suppress_tokens: d.begin_suppress_tokens.clone(),
            typical_p: d.typical_p,
            epsilon_cutoff: d.epsilon_cutoff,
            eta_cutoff: d.eta_cutoff,
        }
    }

    /// These settings with a caller's `choices` over them: a temperature
    /// samples at it, unless `greedy` says otherwise; each other choice
    /// given replaces the setting.
    pub fn with_choices(mut self, choices: &GenerationChoices) -> Self {
        let c = choices;
        if let Some(t) = c.temperature {
            (self.temperature, self.greedy) = (t, false);
        }
        self.greedy = c.greedy.unwrap_or(self.greedy);
        self.top_k = c.top_k.unwrap_or(self.top_k);
        self.top_p = c.top_p.unwrap_or(self.top_p);
        self.min_p = c.min_p.unwrap_or(self.min_p);
        self.typical_p = c.typical_p.unwrap_or(self.typical_p);
        self.epsilon_cutoff = c.epsilon_cutoff.unwrap_or(self.epsilon_cutoff);
        self.eta_cutoff = c.eta_cutoff.unwrap_or(self.eta_cutoff);
        self.repetition_penalty = c.repetition_penalty.unwrap_or(self.repetition_penalty);
        self.no_repeat_ngram_size = c.no_repeat_ngram_size.unwrap_or(self.no_repeat_ngram_size);
        self.min_new_tokens = c.min_new_tokens.unwrap_or(self.min_new_tokens);
        if let Some(words) = &c.bad_words_ids {
            self.bad_words_ids = words.clone();
        }
        if let Some(ids) = &c.suppress_tokens {
            self.suppress_tokens = ids.clone();
        }
        self.seed = c.seed.unwrap_or(self.seed);
        self
    }

    /// Checks the repetition penalty, the bad words (none empty), and
    /// temperature, top_p and min_p when sampling.
    pub fn validate(&self) -> Result<()> {
        let penalty = self.repetition_penalty;
        if !(penalty.is_finite() && penalty > 0.0) {
            let detail = format!("repetition_penalty must be finite and > 0, got {penalty}");
            return Err(Error::invalid("GenerationConfig", detail));
        }
        if let Some(i) = self.bad_words_ids.iter().position(Vec::is_empty) {
            let detail = format!("bad_words_ids[{i}] is empty: each word needs at least one token");
            return Err(Error::invalid("GenerationConfig", detail));
        }
        let (typical, epsilon, eta) = (self.typical_p, self.epsilon_cutoff, self.eta_cutoff);
        if !(typical > 0.0 && typical <= 1.0) {
            let detail = format!("typical_p must be in (0, 1] (1: off), got {typical}");
            return Err(Error::invalid("GenerationConfig", detail));
        }
        for (name, v) in [("epsilon_cutoff", epsilon), ("eta_cutoff", eta)] {
            if !(0.0..1.0).contains(&v) {
                return Err(Error::invalid("GenerationConfig", format!("{name} must be in [0, 1) (0: off), got {v}")));
            }
        }
        match self.greedy {
            true => Ok(()),
            false => self.draw_settings(0).validate("GenerationConfig"),
        }
    }

    /// Whether sampling cuts with typical_p, epsilon_cutoff or eta_cutoff,
    /// which only the CPU's pick applies ([`super::sample::sample`]): such a
    /// generation reads each step's row of logits back, on any GPU.
    pub fn cuts_by_entropy(&self) -> bool {
        !self.greedy && (self.typical_p < 1.0 || self.epsilon_cutoff > 0.0 || self.eta_cutoff > 0.0)
    }

    /// The settings of token `draw`'s draw.
    pub fn draw_settings(&self, draw: u32) -> Sampling {
        let GenerationConfig { temperature, top_k, top_p, min_p, seed, .. } = *self;
        Sampling { temperature, top_k, top_p, min_p, seed, draw }
    }
}

impl Model {
    /// `n` completions of one prompt sampled together (GRPO's group): the
    /// prompt's rows in one batch of `n`, one decoding step for all rows at a
    /// time, row i drawing as [`Model::generate_adapted`] with seed
    /// `config.seed + i` draws (each completion's draw depends on its own
    /// seed, token number and logits only, so it is the one that call makes
    /// from the same logits). A row stops at its eos (kept) or at
    /// `max_new_tokens`; the others go on. The logits are read back and drawn
    /// from on the CPU. Only temperature, top-k, top-p and min-p apply:
    /// penalties, bans and minimum lengths are refused.
    pub async fn sample_group(
        &self,
        gpu: &Gpu,
        prompt_ids: &[u32],
        n: usize,
        config: &GenerationConfig,
        hooks: &dyn Hooks,
    ) -> Result<Vec<Vec<u32>>> {
        const OP: &str = "Model::sample_group";
        config.validate()?;
        let plain = config.repetition_penalty == 1.0
            && config.no_repeat_ngram_size == 0
            && config.bad_words_ids.is_empty()
            && config.suppress_tokens.is_empty()
            && config.begin_suppress_tokens.is_empty()
            && min_new_tokens(config, prompt_ids.len()) == 0;
        if config.greedy || !plain {
            return Err(Error::invalid(
                OP,
                "a sampled group draws with temperature, top-k, top-p and min-p only (no greedy pick, penalty, ban \
                 or minimum length)",
            ));
        }
        if prompt_ids.is_empty() || n == 0 {
            return Err(Error::shape(
                OP,
                format!("{} prompt tokens, {n} rows: need at least one of each", prompt_ids.len()),
            ));
        }
        let total = hooks.virtual_tokens() + hooks.prefix_len() + prompt_ids.len() + config.max_new_tokens;
        if total > self.config.max_position_embeddings {
            return Err(Error::shape(
                OP,
                format!(
                    "a prompt of {} tokens plus max_new_tokens {} is more than max_position_embeddings {}",
                    prompt_ids.len(),
                    config.max_new_tokens,
                    self.config.max_position_embeddings
                ),
            ));
        }
        let mut out = vec![Vec::with_capacity(config.max_new_tokens); n];
        if config.max_new_tokens == 0 {
            return Ok(out);
        }
        let frozen = hooks.frozen();
        let hooks = frozen.as_deref().unwrap_or(hooks);
        let cache = KvCache::new(gpu, self, n, total)?;
        let step = |ids: &Tensor, offset: usize| -> Result<PendingRead> {
            let mut rec = Recorder::new(gpu);
            let logits = self.forward_cached(&mut rec, ids, &cache, offset, hooks)?; // (n, V)
            let read = rec.read_after(&logits)?;
            rec.submit()?;
            Ok(read)
        };
        let mut read = step(&self.input_ids(gpu, &vec![prompt_ids.to_vec(); n])?, 0)?;
        let mut offset = prompt_ids.len();
        let vocab = self.config.vocab_size;
        let mut done = vec![false; n];
        let configs: Vec<GenerationConfig> =
            (0..n).map(|i| GenerationConfig { seed: config.seed.wrapping_add(i as u64), ..config.clone() }).collect();
        loop {
            let logits: Vec<f32> = bytemuck::pod_collect_to_vec(&read.read(gpu).await?);
            let mut next = Vec::with_capacity(n);
            for (i, row) in logits.chunks(vocab).enumerate() {
                if done[i] {
                    next.push(*out[i].last().unwrap_or(&0)); // fed on, never read
                    continue;
                }
                let id = sample(row, &configs[i], out[i].len() as u32)?;
                out[i].push(id);
                done[i] = config.eos_token_ids.contains(&id) || out[i].len() == config.max_new_tokens;
                next.push(id);
            }
            if done.iter().all(|&d| d) {
                return Ok(out);
            }
            read = step(&Tensor::from_slice(gpu, &[n, 1], &next)?, offset)?;
            offset += 1;
        }
    }
}
